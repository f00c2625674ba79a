"""Remote execution: the server, its backends, the requests of a run, and what goes wrong.

Every line of nnct that talks to a server is here. A remote run sends its examples in
groups (`pack`: whole examples, up to `request_cells` cells each) as one nnsight session
per group (`request`: the local engine's traces, inside the session, so that the base
runs' caches stay on the server and only the measures come back). `Server` says where to
(the host from `--ndif-host`, `NDIF_HOST` or nnsight's config, and the API key from
`NDIF_API_KEY` or nnsight's config); `backend` builds the nnsight backend that carries a
session there (counting the bytes each way); `Requests` runs a run's requests, waiting for
them or submitting them and collecting them later (their job ids kept in a file), and
turns the ways a request fails into nnct's typed errors:

- a refused, failed or timed-out request, or a server that went away, is retried with
  exponential backoff a bounded number of times (`Retry`), then raises `RemoteFailed`;
- a refused API key raises `RemoteAuthError` at once (retrying cannot help);
- a model the server cannot run raises `ModelNotHosted`, listing the ones it hosts.

The API key is sent in nnsight's `ndif-api-key` header and nowhere else: it is not part of
any setting a run stores, and every message that could quote it is scrubbed.

`remote="local"` is nnsight's local simulation: the session is serialised as a real
request would be and run here, against local weights.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from ..errors import ConfigError, ModelNotHosted, NnctError, RemoteAuthError, RemoteFailed

LOCAL = "local"
PUBLIC_HOST = "https://api.ndif.us"

T = TypeVar("T")


@dataclass(frozen=True)
class Server:
    host: str
    api_key: str = field(default="", repr=False)

    def scrub(self, text: str) -> str:
        """`text` with the API key blanked out, also as an error may quote it: stripped of
        whitespace, or escaped (a key with a newline from a config file)."""
        for form in sorted({self.api_key, self.api_key.strip(), repr(self.api_key)[1:-1]} - {""}, key=len, reverse=True):
            text = text.replace(form, "<api key>")
        return text

    def headers(self) -> dict:
        return {"ndif-api-key": self.api_key} if self.api_key else {}


def server(host: str | None = None) -> Server:
    """The server to use: `host`, else `NDIF_HOST`, else nnsight's configured host (NDIF's
    public one unless changed); the key from `NDIF_API_KEY`, else nnsight's config."""
    from nnsight import CONFIG

    host = (host or os.environ.get("NDIF_HOST") or CONFIG.API.HOST or PUBLIC_HOST).rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise ConfigError(f"--ndif-host {host}: a URL, e.g. http://127.0.0.1:8001 or {PUBLIC_HOST}")
    return Server(host, os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY or "")


class Deadline:
    """In place of nnsight's status display (nnct shows its own progress): silent, but its
    `refresh`, which nnsight calls whenever the result stream has been quiet for `TICK`
    seconds, raises once the request is older than `timeout` seconds (0: never)."""

    TICK = 5.0
    enabled = False

    def __init__(self, timeout: float, clock=time.monotonic):
        self.timeout, self.clock, self.started = timeout, clock, clock()

    def update(self, response) -> None:
        pass

    def refresh(self) -> None:
        if self.timeout and self.clock() - self.started > self.timeout:
            raise TimeoutError(f"no result after {self.timeout:.0f} s (--request-timeout)")


@functools.cache
def _remote_backend_class():
    from .. import compat

    class DeadlineBackend(compat.counting_backend_class()):
        """nnsight's remote backend, quiet, with a deadline, counting the bytes of the request
        and of the result."""

        def __init__(self, *args, timeout: float = 0, **kwargs):
            super().__init__(*args, **kwargs)
            self.display = Deadline(timeout)

        def request(self, request, tracer):
            import websocket

            # nnsight waits on the result stream without a timeout; this one wakes it each
            # TICK seconds, when it asks the display to refresh and the deadline can act.
            previous = websocket.getdefaulttimeout()
            websocket.setdefaulttimeout(Deadline.TICK)
            try:
                return super().request(request, tracer)
            finally:
                websocket.setdefaulttimeout(previous)

    return DeadlineBackend


def backend(target: Server | str, adapter, blocking: bool = True, job_id: str | None = None, timeout: float = 0):
    """An nnsight backend that runs a session on `target` (a Server, or "local"), giving up
    on a result after `timeout` seconds (0: waits as long as it takes)."""
    import nnsight

    # The server has no nnct installed: the engine's code travels with each request.
    nnsight.register("nnct")
    if target == LOCAL:
        from nnsight.intervention.backends.local import LocalSimulationBackend

        return LocalSimulationBackend(adapter.nn)
    return _remote_backend_class()(model_key(adapter), host=target.host, api_key=target.api_key or None,
                                   blocking=blocking, job_id=job_id, timeout=timeout)


def model_key(adapter) -> str:
    return adapter.nn.to_model_key()


def deployments(srv: Server) -> dict[str, dict]:
    """The server's models by model key (by repo id for those it lists without one, e.g.
    COLD ones): {repo_id, level, state} as its /status gives them."""
    import httpx

    try:
        response = httpx.get(f"{srv.host}/status", headers=srv.headers(), timeout=httpx.Timeout(10.0, read=60.0))
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise RemoteFailed(f"{srv.host}: cannot read the server's status: {srv.scrub(str(exc))}") from None
    out = {}
    for name, info in (body.get("deployments") or {}).items():
        out[info.get("model_key") or name] = {
            "repo_id": str(info.get("repo_id") or name),
            "level": info.get("deployment_level") or "?",
            "state": info.get("application_state") or "?",
        }
    return out


def listed(models: dict[str, dict], key: str) -> dict | None:
    """The server's entry for the model of `key`: by key, or by repo id (COLD models)."""
    if key in models:
        return models[key]
    repo = json.loads(key.split(":", 1)[1]).get("repo_id") if ":" in key else None
    return next((m for m in models.values() if m["repo_id"] == repo), None)


def hosted_list(models: dict[str, dict]) -> str:
    if not models:
        return "it hosts no model now"
    return "it hosts: " + ", ".join(sorted(f"{m['repo_id']} ({m['level']}, {m['state']})" for m in models.values()))


def _http_error(exc: BaseException):
    """The httpx response behind an error (nnsight wraps them in RemoteError), if any."""
    for e in (exc, exc.__cause__, exc.__context__):
        response = getattr(e, "response", None)
        if getattr(response, "status_code", None) is not None:
            return response
    return None


def classify(exc: BaseException, srv: Server, adapter) -> NnctError:
    """A request's failure as nnct's error: a refused key (401/403 from the server itself, or
    a 400 about the key), a model the server cannot run (a job that failed while the server
    lists no such model), or a failure worth another try (RemoteFailed)."""
    from nnsight.intervention.backends.remote import RemoteError

    message = srv.scrub(str(exc) or type(exc).__name__)
    response = _http_error(exc)
    if response is not None and str(response.request.url).startswith(srv.host):
        code = response.status_code  # not a download from the object store (an expired link is a 403)
        if code in (401, 403) or (code == 400 and "API key" in message):
            return RemoteAuthError(f"{srv.host} refused the API key (NDIF_API_KEY or nnsight's config): {message}")
    failed = RemoteFailed(f"{srv.host}: {type(exc).__name__}: {message}")
    if isinstance(exc, TimeoutError) or (isinstance(exc, RemoteError) and exc.__cause__ is None):
        # Too slow, or failed on the server (out of memory, its own time limit): too big, maybe.
        failed = RemoteFailed(f"{failed}; if requests are too big for the server, a smaller --request-cells makes smaller ones")
    if isinstance(exc, RemoteError) and exc.__cause__ is None:  # the server's word on the job
        try:
            models = deployments(srv)
        except RemoteFailed:
            return failed  # the status cannot be read now: the next try may tell
        if listed(models, model_key(adapter)) is None:
            return ModelNotHosted(f"{adapter.name}: {srv.host} cannot run this model ({message}); {hosted_list(models)}")
    return failed


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a failed request is tried again."""

    attempts: int = 4  # tries in all
    delay: float = 2.0  # seconds before the first retry; doubled after each
    max_delay: float = 60.0

    def run(self, fn: Callable[[], T], classify_error: Callable[[BaseException], NnctError],
            on_retry: Callable[[int, NnctError, float], None] | None = None, sleep=time.sleep) -> T:
        """fn(), tried again on a retryable failure; the last failure raised as nnct's error."""
        delay = self.delay
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except NnctError:
                raise
            except Exception as exc:  # noqa: BLE001 - nnsight, httpx and websocket raise many kinds
                error = classify_error(exc)
                if not isinstance(error, RemoteFailed) or attempt == self.attempts:
                    if isinstance(error, RemoteFailed):
                        error = RemoteFailed(f"{error} (after {attempt} tries)")
                    raise error from None
                if on_retry:
                    on_retry(attempt, error, delay)
                sleep(delay)
                delay = min(self.max_delay, delay * 2)
        raise AssertionError("unreachable")


def check(srv: Server, adapter, retry: Retry = Retry(attempts=1)) -> str:
    """A line saying that the model runs on the server, after one tiny request (which
    deploys it where the server deploys on demand); raises the error it meets otherwise."""
    import nnsight
    import torch

    entry = listed(deployments(srv), model_key(adapter))
    started = time.perf_counter()
    nn, token = adapter.nn, torch.tensor([[adapter.tokenizer.bos_token_id or 0]])

    def probe():
        top = None
        with nn.trace(token, backend=backend(srv, adapter)):
            top = nnsight.save(int(nn.output.logits[0, -1].argmax()))
        return top

    retry.run(probe, lambda exc: classify(exc, srv, adapter))
    state = f"listed as {entry['level']}, {entry['state']}" if entry else "not listed before this request"
    return f"{adapter.name}: runs on {srv.host} ({state}; a one-token request took {time.perf_counter() - started:.1f} s)"


def pack(examples: list[int], cells: list[int], budget: int) -> list[list[int]]:
    """`examples` in order, in groups of at most `budget` cells (`cells[k]` per example),
    each at least one example: a request holds whole examples, so that the base runs'
    caches stay on the server and never travel."""
    groups: list[list[int]] = []
    total = 0
    for k in examples:
        if groups and total + cells[k] <= budget:
            groups[-1].append(k)
            total += cells[k]
        else:
            groups.append([k])
            total = cells[k]
    return groups


def kind(remote: str | None) -> str:
    """The `backend` attr of a cube: "local", nnsight's simulation, or the host."""
    if remote is None:
        return "local"
    return "nnsight remote=local" if remote == LOCAL else remote


@dataclass
class Reply:
    """What one request brought back: its examples' measures and where the server ran them."""

    results: list
    device: str
    dtype: str


def request(engine, jobs: list, backend) -> Reply | None:
    """The measures of `jobs` ((ids, corrupted RunInput, answers, spellings) each) from one nnsight
    session sent through `backend`: the base runs' caches stay with the model between the
    traces, and only the measures come back (None when the backend does not wait for the
    result: `decode` what `Requests` collects later). The session reads the model's device
    and dtype from the weights it finds there."""
    import dataclasses

    import nnsight

    from .engine import Engine

    parts, out = engine.parts, None  # a backend that does not wait leaves the session's names unset
    with parts.nn.session(backend=backend):
        weight = parts.embed.weight
        there = Engine(dataclasses.replace(parts, device=str(weight.device), torch_dtype=weight.dtype), engine.settings)
        results = []  # a loop, not a comprehension: nnsight runs the body with its own locals
        for ids, corrupt, answers, spellings in jobs:
            results.append(dataclasses.asdict(there.trace(ids, corrupt, answers, spellings)))
        out = nnsight.save({"results": results, "device": str(weight.device), "dtype": str(weight.dtype)})
    return None if out is None else decode({"out": out})


def decode(saves: dict) -> Reply:
    """A request's saved values (by name, as a backend collects them) as a Reply."""
    from .engine import Measures

    out = saves["out"]
    return Reply([Measures(**r) for r in out["results"]], out["device"], out["dtype"].removeprefix("torch."))


class Channel:
    """The one path every request to a server takes, whatever the method: a fresh nnsight
    backend per try (a Server, or "local": nnsight's simulation), a deadline of `timeout`
    seconds on each result, retries with backoff, nnct's typed errors, and the requests and
    bytes counted. `on_retry(attempt, error, delay)` hears each retry."""

    def __init__(self, target, adapter, retries: int = 3, retry_delay: float = 2.0, timeout: float = 3600.0,
                 on_retry: Callable[[int, NnctError, float], None] | None = None):
        self.target, self.adapter = target, adapter
        self.retry = Retry(attempts=retries + 1, delay=retry_delay)
        self.timeout, self.on_retry = timeout, on_retry
        self.sent = self.bytes_sent = self.bytes_received = 0

    def classify(self, exc: BaseException) -> NnctError:
        if self.target == LOCAL:
            return RemoteFailed(f"nnsight's local simulation: {type(exc).__name__}: {exc}")
        return classify(exc, self.target, self.adapter)

    def call(self, fn: Callable[[object], T], blocking: bool = True, job_id: str | None = None) -> tuple[T, object]:
        """(fn(backend), backend), with a fresh backend per try, retried."""

        def attempt():
            b = backend(self.target, self.adapter, blocking=blocking, job_id=job_id, timeout=self.timeout)
            self.sent += job_id is None
            try:
                return fn(b), b
            finally:
                self.bytes_sent += getattr(b, "sent", 0)
                self.bytes_received += getattr(b, "received", 0)

        return self.retry.run(attempt, self.classify, self.on_retry)

    def value(self, fn: Callable[[object], T]) -> T:
        """fn(backend), waited for: the usual call of a method that needs one session's result."""
        return self.call(fn)[0]


def channel(where: str | None, adapter, retries: int = 3, retry_delay: float = 2.0, timeout: float = 3600.0,
            on_retry=None) -> Channel | None:
    """The Channel to `where` (a host URL, "local", or None: here, no channel)."""
    if where is None:
        return None
    return Channel(where if where == LOCAL else server(where), adapter, retries, retry_delay, timeout, on_retry)


class Requests:
    """A cube run's remote requests over a `Channel`: packing, jobs submitted without
    waiting, and their counts."""

    POLL_SECONDS = 2.0
    # A job the server has not heard of for this long is taken as lost (its status store was
    # wiped, e.g. by a restart): right after a submit, its first status may still be on the way.
    LOST_AFTER = 120.0

    def __init__(self, channel: Channel, progress, request_cells: int = 10000, wait: bool = True):
        self.channel, self.progress = channel, progress
        self.target, self.adapter, self.retry = channel.target, channel.adapter, channel.retry
        self.request_cells, self.wait = request_cells, wait
        self.pending = 0

    @property
    def sent(self) -> int:
        return self.channel.sent

    @property
    def bytes_sent(self) -> int:
        return self.channel.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.channel.bytes_received

    def run(self, engine, names: list[str], todo: list[int], n_cells: list[int], job, keep, jobs: list, save_jobs,
            placed) -> None:
        """Trace examples `todo` remotely: `job(k)` is example k's (ids, corrupted input,
        answers), `keep(k, measures)` stores its result, `placed(device, dtype)` hears where
        the server ran it. `jobs` are the jobs submitted earlier without waiting;
        `save_jobs(jobs)` keeps the list whenever it changes (empty: none left)."""
        finished: set[int] = set()

        def take(examples: list[int], reply: Reply) -> None:
            placed(reply.device, reply.dtype)
            for k, result in zip(examples, reply.results):
                keep(k, result)
                finished.add(k)
                self.progress.cells(n_cells[k])

        # Jobs submitted earlier without waiting: collect what finished; a failed one's
        # examples go again, as their own request, until they have had their tries.
        again: list[tuple[list[int], int]] = []
        for entry in list(jobs):
            saved = self._collect(entry)
            if isinstance(saved, RemoteFailed):
                self.progress.failed_job(entry["job_id"], saved)
                if entry["tries"] >= self.retry.attempts:
                    raise RemoteFailed(f"{saved} (job {entry['job_id']}; its examples have failed {entry['tries']} times)")
                again.append((entry["examples"], entry["tries"] + 1))
                jobs.remove(entry)
            elif saved is not None:
                take(entry["examples"], decode(saved))
                jobs.remove(entry)
            save_jobs(jobs)
        submitted = {k for entry in jobs for k in entry["examples"]} | {k for group, _ in again for k in group}
        fresh = pack([k for k in todo if k not in submitted | finished], n_cells, self.request_cells)
        for group, tries in again + [(g, 1) for g in fresh]:
            for k in group:
                self.progress.example(names[k])
            send = functools.partial(request, engine, [job(k) for k in group])
            if self.wait:
                take(group, self.channel.value(send))
            else:
                b = self.channel.call(send, blocking=False)[1]
                jobs.append({"examples": group, "job_id": b.job_id, "submitted": time.time(), "tries": tries})
                save_jobs(jobs)
        self.pending = len(jobs)
        if not jobs:
            save_jobs(jobs)

    def _collect(self, entry: dict):
        """A submitted job's saved values; None while it runs (waiting for it with `wait`);
        a RemoteFailed when it failed, was lost, or its result can no longer be downloaded
        (a result's link expires). Errors that concern the run (a refused key, a model the
        server cannot run) are raised."""
        import httpx
        from nnsight.intervention.backends.remote import RemoteError

        def poll(b):
            try:
                return b.poll(), b.status
            except RemoteError as exc:  # the job itself failed
                return exc, None
            except httpx.HTTPStatusError as exc:
                if str(exc.request.url).startswith(self.target.host):
                    raise  # the server refused the poll itself: retried, or a refused key
                return RemoteFailed(f"its result can no longer be downloaded ({exc.response.status_code})"), None

        while True:
            saved, status = self.channel.call(poll, blocking=False, job_id=entry["job_id"])[0]
            if isinstance(saved, RemoteError):
                error = self.channel.classify(saved)
                if not isinstance(error, RemoteFailed):
                    raise error
                return error
            if isinstance(saved, RemoteFailed):
                return saved
            if saved is None and status is None and time.time() - entry["submitted"] > self.LOST_AFTER:
                return RemoteFailed(f"{self.target.host} has no record of the job")
            if saved is not None or not self.wait:
                return saved
            time.sleep(self.POLL_SECONDS)
