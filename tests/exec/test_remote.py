"""The remote path without a server: the engine inside an nnsight session sent through
nnsight's local simulation (`remote="local"`: the session is serialised as a real request
would be, then run here) gives the local numbers; requests are packed as `--request-cells`
says; retries back off and stop; a failed run resumes; submitted jobs are collected, and
failed ones submitted again (a fake server in a dict); errors are classified with the key
scrubbed. The real server is tested in `test_ndif.py`."""

from __future__ import annotations

import dataclasses
import itertools

import httpx
import numpy as np
import pytest
import xarray as xr

from conftest import config, make_adapter, write_jsonl
from examples import TOL, pair, prepared
import nnct.model.loading
from nnct.errors import ConfigError, ModelNotHosted, RemoteAuthError, RemoteFailed
from nnct.exec import engine as engine_lib, remote
from nnct.exec.engine import Engine, Settings
from nnct.methods.run import Progress, collect, execute, partial_dir
from nnct.results.cube import open_cube

SIM = remote.LOCAL


@pytest.mark.parametrize("family, reverse", [("llama", False), ("gptj", False), ("qwen2", True)])
def test_one_session_gives_the_local_numbers_for_several_examples(family, reverse):
    adapter = make_adapter(family)
    jobs = [(ex.ids, ex.corrupt, ex.answers, ((), ())) for ex in (prepared(adapter), prepared(adapter, seed=1), pair(adapter))]
    engine = Engine(adapter, Settings(window=3, reverse=reverse, batch_rows=9))
    reply = remote.request(engine, jobs, remote.backend(SIM, adapter))
    assert (reply.device, reply.dtype) == ("cpu", "float32")  # read in the session, from the weights
    assert len(reply.results) == 3
    for job, there in zip(jobs, reply.results):
        here = engine.trace(*job)
        for field in ("p_clean", "p_corrupt", "p_restored", "logit_restored"):
            np.testing.assert_allclose(getattr(there, field), getattr(here, field), atol=TOL, err_msg=field)
        assert there.clean_top1 == here.clean_top1
    assert not np.allclose(reply.results[0].p_restored, reply.results[1].p_restored, equal_nan=True)  # other noise


@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_heads_and_severed_paths_through_a_session(reverse):
    """Heads (a slice of the output projection's input), all positions and severed paths
    travel in the serialised session too."""
    adapter = make_adapter("llama")
    comps = ("hidden-sever-mlp", "hidden-sever-attn", "head", "head_all_pos")
    jobs = [(ex.ids, ex.corrupt, ex.answers, ((), ())) for ex in (prepared(adapter, samples=2), pair(adapter))]
    engine = Engine(adapter, Settings(comps, window=3, reverse=reverse, batch_rows=8))
    reply = remote.request(engine, jobs, remote.backend(SIM, adapter))
    for job, there in zip(jobs, reply.results):
        here = engine.trace(*job)
        assert set(there.restored) == set(here.restored) == {f"{m}_{v}" for m in ("p", "logit")
                                                              for v in ("restored", "restored_head", "restored_head_all_pos")}
        for name, values in here.restored.items():
            np.testing.assert_allclose(there.restored[name], values, atol=TOL, err_msg=name)


def test_the_request_carries_no_weights(monkeypatch):
    """The session is serialised with the engine in it: only envoys may travel by reference.
    A model with 16 MiB of MLP weights must still make a request of a few hundred KiB."""
    from nnsight.schema.request import RequestModel

    sizes, serialize = [], RequestModel.serialize

    def counting(tracer, *args, **kwargs):
        blob = serialize(tracer, *args, **kwargs)
        sizes.append(len(blob))
        return blob

    monkeypatch.setattr(RequestModel, "serialize", staticmethod(counting))
    adapter = make_adapter("llama", intermediate_size=16384)
    weights = sum(p.numel() * p.element_size() for p in adapter.hf.parameters())
    engine = Engine(adapter, Settings(components=("hidden",), window=3))
    ex = prepared(adapter, samples=2)
    remote.request(engine, [(ex.ids, ex.corrupt, ex.answers, ((), ()))] * 3, remote.backend(SIM, adapter))
    assert len(sizes) == 1  # one request for the three examples
    assert weights > 16 << 20 and sizes[0] < 1 << 20


def test_embedding_std_through_a_session_equals_the_weights_rows():
    adapter = make_adapter("gemma")  # scales its embeddings: the module's output, not the weight rows
    ids = [[3, 4, 5], [6, 3]]
    direct = adapter.hf.get_submodule("model.embed_tokens")(__import__("torch").tensor([[3, 4, 5, 6, 3]]))
    expected = float(direct.detach().double().std())
    assert engine_lib.embedding_std(adapter.parts, ids) == pytest.approx(expected, rel=1e-12)
    assert engine_lib.embedding_std(adapter.parts, ids, remote.backend(SIM, adapter)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("cells, budget, groups", [
    ([5, 5, 5, 20, 1], 10, [[0, 1], [2], [3], [4]]),  # an example over the budget goes alone
    ([3, 3, 3], 100, [[0, 1, 2]]),
    ([3, 3, 3], 1, [[0], [1], [2]]),
    ([4, 6, 1, 9], 10, [[0, 1], [2, 3]]),
])
def test_pack_keeps_order_and_budget(cells, budget, groups):
    assert remote.pack(list(range(len(cells))), cells, budget) == groups


def test_pack_skips_examples_not_asked_for():
    assert remote.pack([1, 3], [9, 4, 9, 4], 8) == [[1, 3]]


KW = dict(experiment="subject", max_cf=1, components="hidden,attn", batch_rows=6)


@pytest.fixture(scope="module")
def local_cube(tiny_model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "here.nc"
    execute(config(tiny_model_dir, data_file, out, **KW))
    return open_cube(out)


def assert_same_numbers(there: xr.Dataset, here: xr.Dataset) -> None:
    probs = ["p_restored", "p_clean", "p_corrupt", "logit_restored", "logit_clean", "logit_corrupt"]
    for name in probs:
        np.testing.assert_allclose(there[name].values, here[name].values, atol=TOL, err_msg=name)
    xr.testing.assert_equal(there.drop_vars(probs), here.drop_vars(probs))


def cells_per_example(ds: xr.Dataset) -> list[int]:
    return [int(n) * ds.sizes["layer"] * ds.sizes["component"] for n in (ds.token_id >= 0).sum("token").values]


@pytest.mark.parametrize("request_cells", [1, 10**6, None])
def test_run_packs_examples_into_requests(request_cells, local_cube, tiny_model_dir, data_file, tmp_path,
                                          monkeypatch):
    cells = cells_per_example(local_cube)
    budget = request_cells or cells[0] + cells[1]  # None: the first two examples fit, no third
    seen = []
    real = remote.request
    monkeypatch.setattr(remote, "request", lambda engine, jobs, backend: seen.append(len(jobs)) or real(engine, jobs, backend))
    out = tmp_path / "there.nc"
    summary = execute(config(tiny_model_dir, data_file, out, remote=SIM, request_cells=budget, **KW))
    assert seen == [len(g) for g in remote.pack(list(range(len(cells))), cells, budget)]
    assert summary.requests == len(seen) + 1  # and one for the noise level
    there = open_cube(out)
    assert there.attrs["backend"] == "nnsight remote=local" and local_cube.attrs["backend"] == "local"
    assert_same_numbers(there, local_cube)


class Flaky:
    """remote.backend, refusing the connection of the calls whose numbers (from 1) are in `fail`."""

    def __init__(self, fail):
        self.fail, self.error, self.calls = set(fail), ConnectionRefusedError("[Errno 111] Connection refused"), itertools.count(1)
        self.real = remote.backend

    def __call__(self, target, adapter, blocking=True, job_id=None, timeout=0):
        if next(self.calls) in self.fail:
            error = self.error

            class Failing:
                def __call__(self, tracer):
                    raise error

            return Failing()
        return self.real(target, adapter, blocking, job_id, timeout)


class Retries(Progress):
    def __init__(self):
        self.seen = []

    def retry(self, attempt, error, delay):
        self.seen.append((attempt, delay))


def test_failed_requests_are_retried_with_backoff(local_cube, tiny_model_dir, data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "backend", Flaky({2, 3}))  # the first example's request fails twice
    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    progress = Retries()
    out = tmp_path / "there.nc"
    summary = execute(config(tiny_model_dir, data_file, out, remote=SIM, request_cells=1, retries=2, retry_delay=0.5, **KW),
                    progress=progress)
    assert progress.seen == [(1, 0.5), (2, 1.0)]
    assert summary.requests == 1 + local_cube.sizes["example"] + 2
    assert_same_numbers(open_cube(out), local_cube)


def test_a_run_whose_retries_run_out_resumes(local_cube, tiny_model_dir, data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    out = tmp_path / "there.nc"
    cfg = config(tiny_model_dir, data_file, out, remote=SIM, request_cells=1, retries=1, **KW)
    monkeypatch.setattr(remote, "backend", Flaky({4, 5}))  # std, example 0, example 1, then example 2 twice
    with pytest.raises(RemoteFailed, match=r"ConnectionRefusedError.*after 2 tries"):
        execute(cfg)
    kept = sorted(p.name for p in partial_dir(out).glob("*.npz"))
    assert kept == ["000000.npz", "000001.npz"] and not out.exists()
    monkeypatch.setattr(remote, "backend", Flaky(set()))
    summary = execute(dataclasses.replace(cfg, resume=True))
    assert summary.resumed == 2 and summary.requests == local_cube.sizes["example"] - 2
    assert_same_numbers(open_cube(out), local_cube)


class FakeServer:
    """Non-blocking jobs in a dict: a submitted request is computed at once by the local
    engine and kept under a job id. A poll returns it, or None for the jobs in `running`;
    it fails as ndif does for the jobs in `failing`, and knows nothing of the jobs in `lost`
    (as after a restart of the server)."""

    def __init__(self):
        self.done, self.running, self.failing, self.lost = {}, set(), set(), set()
        self.ids = (f"job{i}" for i in itertools.count())

    def backend(self, target, adapter, blocking=True, job_id=None, timeout=0):
        server = self

        class Backend:
            def __init__(self):
                self.job_id, self.status = job_id, None

            def poll(self):
                from nnsight.intervention.backends.remote import RemoteError

                if self.job_id in server.lost:
                    return None
                self.status = "RUNNING"
                if self.job_id in server.failing:
                    raise RemoteError("CUDA out of memory")
                return None if self.job_id in server.running else server.done[self.job_id]

        return Backend()

    def request(self, engine, jobs, backend):
        assert backend.job_id is None
        backend.job_id = next(self.ids)
        results = [dataclasses.asdict(engine.trace(*job)) for job in jobs]
        self.done[backend.job_id] = {"out": {"results": results, "device": "cuda:0", "dtype": "torch.float32"}}
        return None


@pytest.fixture
def fake_server(local_cube, monkeypatch):
    server = FakeServer()
    monkeypatch.setattr(remote, "backend", server.backend)
    monkeypatch.setattr(remote, "request", server.request)
    monkeypatch.setattr(remote, "server", lambda host=None: remote.Server("http://fake:1"))
    monkeypatch.setattr(engine_lib, "embedding_std", lambda parts, ids, backend=None: local_cube.attrs["noise_level"] / 3)
    load = nnct.model.loading.load  # the fake server computes here, with the weights
    monkeypatch.setattr(nnct.model.loading, "load", lambda name, device, dtype, weights: load(name, device, dtype))
    return server


class Failures(Progress):
    def __init__(self):
        self.jobs = []

    def failed_job(self, job_id, error):
        self.jobs.append((job_id, str(error)))


def test_submit_then_collect(fake_server, local_cube, tiny_model_dir, data_file, tmp_path):
    server, out, n = fake_server, tmp_path / "there.nc", local_cube.sizes["example"]
    first = execute(config(tiny_model_dir, data_file, out, remote="http://fake:1", request_cells=1, wait=False, **KW))
    assert first.pending == n and not out.exists()
    server.running, server.failing = {"job0"}, {"job1"}
    progress = Failures()
    second = collect(str(out), progress=progress)  # job1 failed: its example goes again, as job n
    assert [j for j, _ in progress.jobs] == ["job1"] and "out of memory" in progress.jobs[0][1]
    assert second.pending == 2 and not out.exists()
    server.running = set()
    third = collect(str(out))
    assert third.pending == 0 and third.resumed == n - 2
    there = open_cube(out)
    assert there.attrs["backend"] == "http://fake:1" and there.attrs["device"] == "cuda:0"
    assert not partial_dir(out).exists()
    assert_same_numbers(there.assign_attrs(backend="local", device="cpu"), local_cube)


def test_collect_sends_lost_jobs_again_and_gives_up_on_failing_ones(fake_server, local_cube, tiny_model_dir,
                                                                     data_file, tmp_path, monkeypatch):
    server, out = fake_server, tmp_path / "there.nc"
    execute(config(tiny_model_dir, data_file, out, remote="http://fake:1", request_cells=10**6, retries=1, wait=False, **KW))
    server.lost = {"job0"}  # every example in one job, which the server then forgets
    assert collect(str(out)).pending == 1  # just submitted: not lost yet
    monkeypatch.setattr(remote.Requests, "LOST_AFTER", -1.0)
    progress = Failures()
    assert collect(str(out), progress=progress).pending == 1
    assert progress.jobs == [("job0", "http://fake:1 has no record of the job")]
    server.failing = {"job1"}  # sent again as job1, which fails: its examples' second try
    with pytest.raises(RemoteFailed, match=r"out of memory.*job1; its examples have failed 2 times"):
        collect(str(out))
    with pytest.raises(RemoteFailed, match="job1"):  # the failed job is kept: collecting again says so again
        collect(str(out))
    assert collect(str(out), retries=2).pending == 1  # one more try allowed: sent again
    assert collect(str(out)).pending == 0 and out.exists()
    assert_same_numbers(open_cube(out).assign_attrs(backend="local", device="cpu"), local_cube)


KEY = "0f2b7a44-8b1e-4a43-9d6c-3d2f0f1e2a11"


def http_error(code: int, detail: str, url: str = "http://h/request") -> Exception:
    from nnsight.intervention.backends.remote import RemoteError

    request = httpx.Request("POST", url)
    response = httpx.Response(code, json={"detail": detail}, request=request)
    try:
        raise RemoteError(f"Failed to send request: {detail}") from httpx.HTTPStatusError("x", request=request, response=response)
    except RemoteError as exc:
        return exc


def test_classify_refused_key_is_not_retried_and_hides_the_key():
    srv, adapter = remote.Server("http://h", KEY), make_adapter("llama")
    error = remote.classify(http_error(400, f"Invalid API key format: '{KEY}'."), srv, adapter)
    assert isinstance(error, RemoteAuthError) and KEY not in str(error) and "<api key>" in str(error)
    assert isinstance(remote.classify(http_error(403, "Invalid API key."), srv, adapter), RemoteAuthError)
    calls = []
    with pytest.raises(RemoteAuthError):
        remote.Retry(attempts=5, delay=0).run(lambda: calls.append(1) or (_ for _ in ()).throw(http_error(403, "no")),
                                               lambda e: remote.classify(e, srv, adapter), sleep=lambda s: None)
    assert len(calls) == 1


def test_a_403_from_the_result_store_is_an_expired_link_not_a_refused_key():
    error = remote.classify(http_error(403, "Request has expired", "http://127.0.0.1:9000/results/job1?X-Amz-Signature=1"),
                            remote.Server("http://h", KEY), make_adapter("llama"))
    assert isinstance(error, RemoteFailed)


def test_scrub_covers_the_forms_an_error_may_quote():
    srv = remote.Server("http://h", KEY + "\n")  # a key read from a file with its newline
    for text in (f"Illegal header value b'{KEY}\\n'", f"key {KEY}\n", f"key {KEY}"):
        assert KEY not in srv.scrub(text) and "<api key>" in srv.scrub(text)


def test_classify_a_job_failing_on_an_unlisted_model_names_the_hosted_ones(monkeypatch):
    from nnsight.intervention.backends.remote import RemoteError

    adapter = make_adapter("llama")
    hosted = {"key-a": {"repo_id": "meta-llama/Llama-3.1-8B", "level": "HOT", "state": "RUNNING"}}
    monkeypatch.setattr(remote, "model_key", lambda a: "key-mine")
    monkeypatch.setattr(remote, "deployments", lambda srv: hosted)
    error = remote.classify(RemoteError("Error starting model."), remote.Server("http://h"), adapter)
    assert isinstance(error, ModelNotHosted)
    assert "meta-llama/Llama-3.1-8B (HOT, RUNNING)" in str(error) and "Error starting model" in str(error)
    monkeypatch.setattr(remote, "model_key", lambda a: "key-a")  # a listed model's failure may pass: retried
    assert isinstance(remote.classify(RemoteError("Error starting model."), remote.Server("http://h"), adapter), RemoteFailed)
    # A COLD model is listed by its repo id alone.
    hosted["meta-llama/Llama-3.1-70B"] = {"repo_id": "meta-llama/Llama-3.1-70B", "level": "COLD", "state": "?"}
    monkeypatch.setattr(remote, "model_key", lambda a: 'nnsight.X:{"repo_id": "meta-llama/Llama-3.1-70B", "revision": null}')
    assert isinstance(remote.classify(RemoteError("Error starting model."), remote.Server("http://h"), adapter), RemoteFailed)


def test_connection_failures_are_retried_then_reported():
    srv, adapter = remote.Server("http://h"), make_adapter("llama")
    waits = []

    def fail():
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(RemoteFailed, match=r"ConnectError.*after 4 tries"):
        remote.Retry(attempts=4, delay=1.0, max_delay=3.0).run(fail, lambda e: remote.classify(e, srv, adapter),
                                                                sleep=waits.append)
    assert waits == [1.0, 2.0, 3.0]


def test_the_deadline_stops_a_quiet_wait_only_once_it_has_passed():
    now = [100.0]
    deadline = remote.Deadline(60, clock=lambda: now[0])
    now[0] = 159.0
    deadline.refresh()
    now[0] = 161.0
    with pytest.raises(TimeoutError, match="no result after 60 s"):
        deadline.refresh()
    remote.Deadline(0, clock=lambda: now[0] + 1e9).refresh()  # 0: no limit
    srv = remote.Server("http://h")
    assert isinstance(remote.classify(TimeoutError("no result after 60 s"), srv, make_adapter("llama")), RemoteFailed)


def test_server_settings(monkeypatch):
    monkeypatch.setenv("NDIF_HOST", "http://env-host:8001/")
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    srv = remote.server()
    assert srv.host == "http://env-host:8001" and srv.api_key == KEY and KEY not in repr(srv)
    assert remote.server("https://other").host == "https://other"
    with pytest.raises(ConfigError, match="a URL"):
        remote.server("ftp://x")


def test_no_wait_needs_a_server(tiny_model_dir, data_file, tmp_path):
    for where in (None, SIM):
        with pytest.raises(ConfigError, match="--no-wait needs a remote server"):
            execute(config(tiny_model_dir, data_file, tmp_path / "c.nc", remote=where, wait=False))


def test_cli_remote_options(tiny_model_dir, data_file, tmp_path):
    from click.testing import CliRunner

    from nnct.cli import main

    base = ["trace", "--model", str(tiny_model_dir), "--data", str(data_file), "--experiment", "subject-noctx",
            "--samples", "2", "--components", "hidden", "-q"]
    out = tmp_path / "sim.nc"
    done = CliRunner().invoke(main, [*base, "--out", str(out), "--remote", "local"])
    assert done.exit_code == 0, done.output
    assert open_cube(out).attrs["backend"] == "nnsight remote=local"
    assert "2 requests" in done.output  # the noise level's, then all three examples in one
    for args, says in [
        (["--remote", "local", "--ndif-host", "http://h:1"], "takes no --ndif-host"),
        (["--remote", "ftp://h"], "use --remote alone, --remote local, or --remote URL"),
        (["--ndif-host", "h:1"], "a URL, e.g."),
        (["--no-wait"], "--no-wait needs a remote server"),
        (["--remote", "local", "--request-cells", "0"], "--request-cells 0: need at least 1"),
    ]:
        done = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "x.nc"), *args])
        assert done.exit_code == 2 and says in done.output, (args, done.output)


@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_prompt_pairs_and_full_answers_run_remotely_as_here(tiny_model_dir, tmp_path, reverse):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"clean": "the Eiffel Tower is in the city of", "corrupt": "the Vinson Massif is in the city of", "target": "Paris city",
         "alt": "Rome"},
        {"clean": "Beats Music is owned by", "corrupt": "Beats Music was owned by", "target": "Apple", "alt": "Amazon"}])
    kw = dict(method="patch", components="hidden,mlp", reverse=reverse, answer="full")
    here = execute(config(tiny_model_dir, pairs, tmp_path / "here.nc", **kw)).cube
    summary = execute(config(tiny_model_dir, pairs, tmp_path / "there.nc", remote=SIM, **kw))
    assert summary.requests == 1  # no noise level to measure: one request for both pairs
    assert summary.cube.attrs["backend"] == "nnsight remote=local"
    assert_same_numbers(summary.cube.assign_attrs(backend="local"), here)


@pytest.fixture
def silent_server():
    """A server on loopback that accepts connections and never answers (bounded: it stops
    with the test)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.5)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.ndif  # mostly waiting: it runs beside the rest (Justfile's `test`)
def test_every_remote_command_gives_up_on_a_silent_server_with_one_line(silent_server, tiny_model_dir, data_file, tmp_path):
    """`--request-timeout 5 --retries 0` against a server that never answers: each command
    exits 2 within a minute with one line naming the host (nnct 0.5: `circuit find` died with
    a WebSocketTimeoutException traceback; `edit` and `memorization score` had no --remote)."""
    import os
    import subprocess
    import sys
    import time

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": "p1", "clean": "the Eiffel Tower is located in the city of",
         "corrupt": "the Vinson Massif is located in the city of", "target": "Paris", "alt": "Rome"}])
    texts = tmp_path / "t.txt"
    texts.write_text("the Eiffel Tower is located in the city of Paris France")
    model = ["--model", str(tiny_model_dir), "--ndif-host", silent_server, "--request-timeout", "5", "--retries", "0"]
    commands = {
        "trace": ["trace", "--data", data_file, "--experiment", "subject-noctx", "--components", "hidden", "--samples", "2",
                  "--out", tmp_path / "t.nc", "-q"],
        "patch": ["patch", "--pairs", pairs, "--components", "hidden", "--out", tmp_path / "p.nc", "-q"],
        "attribute": ["attribute", "--pairs", pairs, "--components", "hidden", "--out", tmp_path / "a.nc", "-q"],
        "circuit find": ["circuit", "find", "--pairs", pairs, "--out", tmp_path / "c.nc", "-q"],
        "edit": ["edit", "--data", data_file, "--layer", "1", "--no-covariance", "--out", tmp_path / "e.nc", "-q"],
        "memorization score": ["memorization", "score", "--texts", texts, "--prefix", "4", "--continuation", "3",
                               "--out", tmp_path / "s.jsonl", "-q"],
    }
    env = {**os.environ, "NDIF_API_KEY": "", "PYTHONWARNINGS": "ignore"}
    started = time.monotonic()
    running = {name: subprocess.Popen([sys.executable, "-m", "nnct.cli", *map(str, args), *model], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, args in commands.items()}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=120)
        seconds = time.monotonic() - started
        lines = [line for line in err.splitlines() if line.startswith("nnct: error:")]
        assert proc.returncode == 2, (name, out, err)
        assert len(lines) == 1 and "127.0.0.1" in lines[0] and "Traceback" not in err, (name, err)
        assert seconds < 60, (name, seconds)


def test_collect_of_a_server_run_asks_for_no_device(tmp_path, monkeypatch, data_file):
    """A run on a server stores the device its model reports ("remote", the server's);
    `collect` must not ask for it again (the shared options' check refuses "--device remote")."""
    from nnct.methods import run as run_lib

    out = tmp_path / "there.nc"
    settings = {**dataclasses.asdict(run_lib.RunConfig(data=str(data_file), remote="http://fake:1")), "device": "remote"}
    for k in ("out", "resume", "wait"):
        settings.pop(k)
    partial_dir(out).mkdir()
    (partial_dir(out) / "run.json").write_text(__import__("json").dumps({"settings": settings, "created": "now"}))
    seen = []
    monkeypatch.setattr(run_lib, "execute", lambda cfg, progress=None: seen.append(cfg))
    collect(str(out))
    (cfg,) = seen
    assert cfg.device == "cpu" and cfg.remote == "http://fake:1" and cfg.resume
    run_lib._validate(run_lib.normalised(cfg))
