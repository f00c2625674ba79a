"""A trace over a data set: records -> examples -> engine -> cube, resumable at any point.

A run keeps its finished examples in `<out>.partial/` beside the output: `run.json` (the
settings and everything derived from the whole data set, such as the noise level) and one
file per finished example, each written atomically. A run killed at any moment (kill -9
included) therefore keeps every example it finished; `resume=True` checks that the
settings are the same, skips what is done, and assembles the same cube an uninterrupted
run would have written (same noise, same batches, same `created`). The cube is written
to a temporary file and renamed over `out`, and only then is the partial directory
removed.

A remote run (`remote`: a host, or "local" for nnsight's simulation) sends the examples in
requests of whole examples, up to `request_cells` cells each (at least one example), each
retried with backoff (`remote.Retry`). Without `wait`, the requests are submitted and
their job ids kept in `jobs.json` in the partial directory; a later call (`nnct remote
collect`) collects what finished, submits again what failed, and writes the cube once
every example is in.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__, cube, noise, remote, spans
from .data import load_records
from .errors import ConfigError, DataError, RecordError, RemoteFailed, ResumeMismatch, SpanNotFound
from .models import REMOTE
from .plan import components as parse_components
from .prompts import Example, examples_for, experiment


@dataclass(frozen=True)
class RunConfig:
    data: str
    out: str
    model: str = "smollm2-135m"
    experiment: str = "subject"
    prompt_format: str | None = None  # None: the experiment's default
    samples: int = 10
    window: int = 10
    noise_level: str = "s3"
    seed: int = 0
    components: str = "hidden,mlp,attn"
    max_cf: int = 1
    max_examples: int | None = None  # counts records, as the seed's --max_datapoints
    replace: bool = False
    reverse: bool = False
    batch_rows: int | None = None  # None: chosen from the memory available
    device: str = "cpu"
    dtype: str = "float32"
    resume: bool = False
    definition: str | None = None  # the experiment definition's label, e.g. "subject v1"
    shard: str | None = None  # "i/n": only records i, i+n, i+2n, ... (0-based); see `parse_shard`
    remote: str | None = None  # None: here; a host URL; "local": nnsight's simulation of a request
    request_cells: int = 10000  # remote: cells per request (whole examples, at least one)
    retries: int = 3  # remote: tries after a failed one, with exponential backoff
    retry_delay: float = 2.0  # remote: seconds before the first retry
    request_timeout: float = 3600.0  # remote: seconds a request may take before it is retried (0: no limit)
    wait: bool = True  # remote: False submits the requests and returns; collect them later


@dataclass
class Item:
    """An example ready to trace."""

    example: Example
    tokens: spans.Tokens
    span: list[int]
    answers: tuple[int, int]
    segments: list[str]
    index: int  # the record's position among the data set's records
    line: int  # the record's line in the data file


@dataclass
class Summary:
    out: str
    records: int  # records traced
    examples: int
    skipped: list[RecordError] = field(default_factory=list)
    resumed: int = 0
    noise_level: float = 0.0
    pending: int = 0  # remote, not waiting: requests submitted and not collected yet
    requests: int = 0  # remote: requests sent (retries included)
    bytes_sent: int = 0
    bytes_received: int = 0


class Progress:
    """Callbacks a front end may implement; the default does nothing."""

    def start(self, total_examples: int, total_cells: int, done_examples: int, done_cells: int) -> None: ...

    def example(self, example_id: str) -> None: ...

    def cells(self, n: int) -> None: ...

    def skipped(self, problems: list[RecordError]) -> None:
        """The records that will not be traced, before tracing starts."""

    def retry(self, attempt: int, error: Exception, delay: float) -> None:
        """A remote request failed and is tried again after `delay` seconds."""

    def failed_job(self, job_id: str, error: Exception) -> None:
        """A submitted remote job failed; its examples are submitted again."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"i/n" -> (i, n) with 0 <= i < n: shard i of n takes every n-th record from the i-th."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text}: expected i/n, e.g. 0/4 (shards are numbered from 0)") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def _validate(cfg: RunConfig) -> None:
    if cfg.samples < 1:
        raise ConfigError(f"--samples {cfg.samples}: need at least 1")
    if cfg.window < 1:
        raise ConfigError(f"--window {cfg.window}: need at least 1")
    if cfg.max_cf < 0:
        raise ConfigError(f"--max-cf {cfg.max_cf}: cannot be negative")
    if cfg.max_examples is not None and cfg.max_examples < 1:
        raise ConfigError(f"--max-examples {cfg.max_examples}: need at least 1")
    if cfg.batch_rows is not None and cfg.batch_rows < 1:
        raise ConfigError(f"--batch-size {cfg.batch_rows}: need at least 1 row")
    if Path(cfg.out).suffix != ".nc":
        raise ConfigError(f"--out {cfg.out}: the cube is a NetCDF file, name it *.nc")
    if not Path(cfg.data).is_file():
        raise DataError(f"{cfg.data}: no such data file")
    experiment(cfg.experiment)
    parse_components(cfg.components)
    noise.parse(cfg.noise_level)
    parse_shard(cfg.shard)
    if cfg.remote is not None:
        if cfg.remote != remote.LOCAL:
            remote.server(cfg.remote)
        if cfg.request_cells < 1:
            raise ConfigError(f"--request-cells {cfg.request_cells}: need at least 1")
        if cfg.retries < 0:
            raise ConfigError(f"--retries {cfg.retries}: cannot be negative")
        if cfg.request_timeout < 0:
            raise ConfigError(f"--request-timeout {cfg.request_timeout}: cannot be negative (0: no limit)")
    if not cfg.wait and cfg.remote in (None, remote.LOCAL):
        raise ConfigError("--no-wait needs a remote server: a run here (or nnsight's local simulation) has nothing to collect later")


def prepare(adapter, cfg: RunConfig) -> tuple[list[Item], list[RecordError], list[int]]:
    """The items of every record of the run (all shards), the records skipped with their
    reasons, and the line of each record (by position)."""
    exp = experiment(cfg.experiment)
    fmt = cfg.prompt_format or exp.prompt_format
    loaded = load_records(cfg.data)
    problems = list(loaded.problems)
    records = loaded.records[: cfg.max_examples] if cfg.max_examples is not None else loaded.records
    items: list[Item] = []
    for index, record in enumerate(records):
        try:
            made = []
            for ex in examples_for(record, exp, fmt, cfg.max_cf, loaded.path):
                tokens = spans.tokenize(adapter.tokenizer, ex.prompt)
                try:
                    span = spans.span_positions(tokens, ex)
                except SpanNotFound as exc:
                    raise RecordError(loaded.path, record.line, exp.span, str(exc)) from None
                answers = spans.answer_tokens(adapter.tokenizer, ex, loaded.path, record.line)
                made.append(Item(ex, tokens, span, answers, spans.segments(tokens, ex), index, record.line))
        except RecordError as exc:
            problems.append(exc)
            continue
        items.extend(made)
    problems.sort(key=lambda p: p.line)
    return items, problems, [r.line for r in records]


def _shard(items: list[Item], problems: list[RecordError], lines: list[int], shard: tuple[int, int] | None):
    """The items and problems of one shard. A line that is no record (bad JSON) is shard 0's."""
    if shard is None:
        return items, problems
    i, n = shard
    if n > len(lines):
        raise ConfigError(f"--shard {i}/{n}: the data set has only {len(lines)} records, so some shards would be empty")
    index = {line: k for k, line in enumerate(lines)}
    mine = [p for p in problems if (index[p.line] % n == i if p.line in index else i == 0)]
    return [it for it in items if it.index % n == i], mine


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _settings(cfg: RunConfig, adapter) -> dict:
    """What must match for a resumed run to complete the same cube."""
    s = asdict(cfg)
    # How requests are sized, retried and waited for changes no number.
    for k in ("out", "resume", "wait", *REQUESTING):
        s.pop(k)
    if adapter.device == REMOTE:
        s.pop("dtype")  # the server's choice, not a setting of the run
    s["nnct_version"] = __version__
    s["device"] = adapter.device
    s["prompt_format"] = cfg.prompt_format or experiment(cfg.experiment).prompt_format
    s["experiment"] = experiment(cfg.experiment).name
    s["components"] = ",".join(parse_components(cfg.components))
    s["data"] = str(Path(cfg.data).resolve())
    s["data_sha256"] = _sha256(cfg.data)
    s["model_revision"] = adapter.revision
    return s


def _remove(pdir: Path) -> None:
    """Remove a partial directory: renamed first, so that a kill midway never leaves example
    files without their run.json where a later run would take them for its own."""
    trash = pdir.with_name(f".{pdir.name}.removing-{os.getpid()}")
    os.replace(pdir, trash)
    shutil.rmtree(trash)


def _open_partial(cfg: RunConfig, settings: dict) -> tuple[Path, dict]:
    pdir = partial_dir(cfg.out)
    meta = pdir / "run.json"
    if pdir.is_dir() and not meta.is_file():
        _remove(pdir)  # killed before its run.json was written: nothing in it is usable
    if meta.is_file():
        if not cfg.resume:
            raise ResumeMismatch(f"{pdir} holds an unfinished run: add --resume to complete it, or delete it to start over")
        stored = json.loads(meta.read_text())
        diff = {k: (stored["settings"].get(k), v) for k, v in settings.items() if stored["settings"].get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ResumeMismatch(f"{pdir}: cannot resume with other settings ({lines})")
        return pdir, stored
    pdir.mkdir(parents=True, exist_ok=True)
    return pdir, {"settings": settings, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# How a remote run makes its requests: free to change on resume, kept for `collect`.
REQUESTING = ("request_cells", "retries", "retry_delay", "request_timeout")


def _target(cfg: RunConfig):
    """Where the examples run: None (here), "local" (nnsight's simulation) or a Server."""
    if cfg.remote is None or cfg.remote == remote.LOCAL:
        return cfg.remote
    return remote.server(cfg.remote)


def trace(cfg: RunConfig, adapter=None, progress: Progress | None = None) -> Summary:
    """Run (or resume, or collect) a trace and write its cube to `cfg.out` once every
    example is in."""
    from . import models
    from .engine import Engine, Prepared, Settings, memory_budget

    _validate(cfg)  # before the model loads, so that a typo fails at once
    comps = parse_components(cfg.components)
    spec = noise.parse(cfg.noise_level)
    target = _target(cfg)
    weights = target is None or target == remote.LOCAL  # a server has its own
    adapter = adapter or models.load(cfg.model, device=cfg.device, dtype=cfg.dtype, weights=weights)
    progress = progress or Progress()
    requests = _Requests(cfg, target, adapter, progress)
    every, problems, lines = prepare(adapter, cfg)
    items, problems = _shard(every, problems, lines, parse_shard(cfg.shard))
    progress.skipped(problems)
    if not items:
        reasons = "; ".join(str(p) for p in problems[:3])
        raise DataError(f"{cfg.data}: no record could be traced ({len(problems)} skipped: {reasons}{'; ...' if len(problems) > 3 else ''})")
    settings = _settings(cfg, adapter)
    pdir, meta = _open_partial(cfg, settings)
    ids = [it.example.id for it in items]
    if meta.get("examples", ids) != ids:
        raise ResumeMismatch(f"{pdir}: the stored run traced other examples than this data set gives now")
    if "noise_level" not in meta:
        # Over the whole data set, not the shard: every shard of a run uses the same level.
        spans_ids = [[it.tokens.ids[i] for i in it.span] for it in every]
        std = requests.embedding_std(spans_ids) if spec.multiplier is not None else None
        meta["noise_level"] = spec.level(std)
        meta["examples"] = ids
        meta["batch_budget"] = memory_budget(adapter.device)
        _write_json(pdir / "run.json", meta)
    level = float(meta["noise_level"])
    if target is not None:
        meta["requesting"] = {k: getattr(cfg, k) for k in REQUESTING}  # `collect` asks the same way
        _write_json(pdir / "run.json", meta)

    engine = Engine(adapter, Settings(comps, cfg.samples, cfg.window, cfg.replace, cfg.reverse, cfg.batch_rows,
                                      meta["batch_budget"]))
    files = [pdir / f"{i:06d}.npz" for i in range(len(items))]
    n_cells = [len(it.tokens) * adapter.n_layers * len(comps) for it in items]
    done = [f.is_file() for f in files]
    progress.start(len(items), sum(n_cells), sum(done), sum(n for n, d in zip(n_cells, done) if d))

    def prepared(k: int) -> Prepared:
        item = items[k]
        return Prepared(ids=item.tokens.ids, span=tuple(item.span), answers=item.answers,
                        noise=noise.draw(cfg.seed, cfg.samples, len(item.span), adapter.d_model, level))

    def keep(k: int, result) -> None:
        item, ex = items[k], items[k].example
        cube.ExampleRecord(
            example=ex.id, record_id=ex.record_id, variant=ex.variant, prompt=ex.prompt,
            target_str=ex.target, alt_str=ex.alt, line=item.line, token_ids=list(item.tokens.ids),
            token_str=[adapter.tokenizer.decode([t]) for t in item.tokens.ids], segment=item.segments,
            span=item.span, p_clean=result.p_clean, p_corrupt=result.p_corrupt, p_restored=result.p_restored,
            answer_ids=list(item.answers), clean_top1=result.clean_top1,
            clean_top1_str=adapter.tokenizer.decode([result.clean_top1]),
        ).save(files[k])

    todo = [k for k, finished in enumerate(done) if not finished]
    if target is None:
        for k in todo:
            progress.example(items[k].example.id)
            keep(k, engine.trace(prepared(k), on_batch=progress.cells))
        placed = {"device": adapter.device, "dtype": adapter.dtype}
    else:
        placed = requests.run(engine, ids, todo, n_cells, prepared, keep, pdir, meta)
    summary = Summary(cfg.out, len({it.example.record_id for it in items}), len(items), problems, sum(done), level,
                      requests.pending, requests.sent, requests.bytes_sent, requests.bytes_received)
    if requests.pending:
        return summary

    attrs = {
        "model": cfg.model, "model_revision": adapter.revision, "nnct_version": __version__,
        "experiment": settings["experiment"], "prompt_format": settings["prompt_format"],
        "samples": cfg.samples, "window": cfg.window, "noise_rule": spec.rule, "noise_level": level,
        "seed": cfg.seed, "replace": int(cfg.replace), "reverse_patching": int(cfg.reverse),
        "dtype": placed["dtype"], "backend": remote.kind(cfg.remote),
        "device": placed["device"], "created": meta["created"],
        "components": settings["components"], "max_cf": cfg.max_cf, "data": settings["data"],
        "answer_token": "first token of ' ' + answer", "definition": cfg.definition or "",
        "shard": cfg.shard or "", "data_sha256": settings["data_sha256"],
        "max_examples": -1 if cfg.max_examples is None else cfg.max_examples,
    }
    ds = cube.assemble([cube.ExampleRecord.load(f, i) for f, i in zip(files, ids)], adapter.n_layers, comps, attrs)
    cube.write(ds, cfg.out)
    _remove(pdir)
    return summary


def _write_json(path: Path, value) -> None:
    """Written beside and renamed over `path`: a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


class _Requests:
    """A run's remote requests: packing, retries, submitted jobs, and their counts."""

    POLL_SECONDS = 2.0

    def __init__(self, cfg: RunConfig, target, adapter, progress: Progress):
        self.cfg, self.target, self.adapter, self.progress = cfg, target, adapter, progress
        self.retry = remote.Retry(attempts=cfg.retries + 1, delay=cfg.retry_delay)
        self.pending = self.sent = self.bytes_sent = self.bytes_received = 0

    def _classify(self, exc: BaseException):
        if self.target == remote.LOCAL:
            return RemoteFailed(f"nnsight's local simulation: {type(exc).__name__}: {exc}")
        return remote.classify(exc, self.target, self.adapter)

    def _call(self, fn, blocking: bool = True, job_id: str | None = None):
        """fn(backend) with a fresh backend per try, retried; the bytes counted."""

        def attempt():
            backend = remote.backend(self.target, self.adapter, blocking=blocking, job_id=job_id,
                                     timeout=self.cfg.request_timeout)
            self.sent += job_id is None
            try:
                return fn(backend), backend
            finally:
                self.bytes_sent += getattr(backend, "sent", 0)
                self.bytes_received += getattr(backend, "received", 0)

        return self.retry.run(attempt, self._classify, self.progress.retry)

    def embedding_std(self, span_ids: list[list[int]]) -> float:
        if self.target is None:
            return noise.embedding_std(self.adapter, span_ids)
        return self._call(lambda backend: noise.embedding_std(self.adapter, span_ids, backend))[0]

    def run(self, engine, names: list[str], todo: list[int], n_cells: list[int], prepared, keep, pdir: Path, meta: dict) -> dict:
        """Trace examples `todo` remotely; returns where the server ran them."""
        jobs_file = pdir / "jobs.json"
        jobs = json.loads(jobs_file.read_text()) if jobs_file.is_file() else []

        finished: set[int] = set()

        def take(examples: list[int], reply) -> None:
            if "placed" not in meta:
                meta["placed"] = {"device": reply.device, "dtype": reply.dtype}
                _write_json(pdir / "run.json", meta)
            elif meta["placed"]["dtype"] != reply.dtype:
                raise RemoteFailed(f"the server now runs the model in {reply.dtype}; this run began in {meta['placed']['dtype']}")
            for k, result in zip(examples, reply.results):
                keep(k, result)
                finished.add(k)
                self.progress.cells(n_cells[k])

        # Jobs submitted earlier without waiting: collect what finished; a failed one's
        # examples go again, as their own request, until they have had their tries.
        again: list[tuple[list[int], int]] = []
        for job in list(jobs):
            saved = self._collect(engine, job)
            if isinstance(saved, RemoteFailed):
                self.progress.failed_job(job["job_id"], saved)
                if job["tries"] >= self.retry.attempts:
                    raise RemoteFailed(f"{saved} (job {job['job_id']}; its examples have failed {job['tries']} times)")
                again.append((job["examples"], job["tries"] + 1))
                jobs.remove(job)
            elif saved is not None:
                take(job["examples"], engine.decode(saved))
                jobs.remove(job)
            _write_json(jobs_file, jobs)
        submitted = {k for job in jobs for k in job["examples"]} | {k for group, _ in again for k in group}
        fresh = remote.pack([k for k in todo if k not in submitted | finished], n_cells, self.cfg.request_cells)
        for group, tries in again + [(g, 1) for g in fresh]:
            for k in group:
                self.progress.example(names[k])
            send = functools.partial(engine.request, [prepared(k) for k in group])
            if self.cfg.wait:
                take(group, self._call(send)[0])
            else:
                backend = self._call(send, blocking=False)[1]
                jobs.append({"examples": group, "job_id": backend.job_id, "submitted": time.time(), "tries": tries})
                _write_json(jobs_file, jobs)
        self.pending = len(jobs)
        if not jobs and jobs_file.is_file():
            jobs_file.unlink()
        return meta.get("placed", {"device": "", "dtype": ""})

    # A job the server has not heard of for this long is taken as lost (its status store was
    # wiped, e.g. by a restart): right after a submit, its first status may still be on the way.
    LOST_AFTER = 120.0

    def _collect(self, engine, job: dict):
        """A submitted job's saved values; None while it runs (waiting for it with `wait`);
        a RemoteFailed when it failed, was lost, or its result can no longer be downloaded
        (a result's link expires). Errors that concern the run (a refused key, a model the
        server cannot run) are raised."""
        import httpx
        from nnsight.intervention.backends.remote import RemoteError

        def poll(backend):
            try:
                return backend.poll(), backend.status
            except RemoteError as exc:  # the job itself failed
                return exc, None
            except httpx.HTTPStatusError as exc:
                if str(exc.request.url).startswith(self.target.host):
                    raise  # the server refused the poll itself: retried, or a refused key
                return RemoteFailed(f"its result can no longer be downloaded ({exc.response.status_code})"), None

        while True:
            saved, status = self._call(poll, blocking=False, job_id=job["job_id"])[0]
            if isinstance(saved, RemoteError):
                error = self._classify(saved)
                if not isinstance(error, RemoteFailed):
                    raise error
                return error
            if isinstance(saved, RemoteFailed):
                return saved
            if saved is None and status is None and time.time() - job["submitted"] > self.LOST_AFTER:
                return RemoteFailed(f"{self.target.host} has no record of the job")
            if saved is not None or not self.cfg.wait:
                return saved
            time.sleep(self.POLL_SECONDS)


def collect(out: str, wait: bool = False, progress: Progress | None = None, **requesting) -> Summary:
    """Collect the requests a remote run submitted without waiting (and submit again what
    failed), asking as the run did unless `requesting` (see REQUESTING) says otherwise; the
    cube is written once every example is in."""
    from dataclasses import fields

    meta_file = partial_dir(out) / "run.json"
    if not meta_file.is_file():
        raise DataError(f"{partial_dir(out)}: no unfinished run to collect for {out}")
    meta = json.loads(meta_file.read_text())
    stored = meta["settings"]
    if stored.get("remote") in (None, remote.LOCAL):
        raise ConfigError(f"{out}: its run has no server to collect from; complete it with nnct trace --resume")
    known = {f.name for f in fields(RunConfig)}
    how = {**meta.get("requesting", {}), **{k: v for k, v in requesting.items() if v is not None}}
    cfg = RunConfig(**{k: v for k, v in stored.items() if k in known and k != "out"}, **how, out=out, resume=True, wait=wait)
    return trace(cfg, progress=progress)
