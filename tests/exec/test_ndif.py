"""`nnct trace --remote` against a real NDIF server (ndif 0.1.2, CPU, on loopback; see
tests/ndif/). The server checks API keys as the public one does (a Postgres of keys; ours has
no `trusted` tag, so requests run in ndif's sandbox like a public user's) and deploys the
embedded model from its local directory. Checked against the local run of the same
settings: the remote cube (max |difference| <= 1e-5), a server killed mid-run and resumed,
submit-then-collect, a model the server cannot run, a refused key, status and check.

Needs `just ndif-setup` once (the server's own venv); skipped with that hint otherwise."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import ROOT
from nnct.results.cube import open_cube
from nnct.methods.run import partial_dir

pytestmark = [pytest.mark.ndif, pytest.mark.embedded]

HERE = ROOT / "tests" / "ndif"
WORK = Path(os.environ.get("NDIF_WORK", Path(os.environ.get("TMPDIR", "/tmp")) / "local-ndif"))
HOST = "http://127.0.0.1:8001"
DATA = str(ROOT / "experiments" / "data" / "known_smollm2.jsonl")
# The first two records (the noise level is measured over the records of the run: keep them).
TRACE = ["trace", "--data", DATA, "--experiment", "subject-noctx", "--samples", "2", "--components", "hidden",
         "--max-examples", "2", "-q"]
TOL = 1e-5  # the issue's bound on |remote - local|


def sh(*args, env=None, timeout=300) -> str:
    done = subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


class Server:
    """The local NDIF with auth on; `stop`/`start` restart it with the same keys."""

    def __init__(self):
        self.key = str(uuid.uuid4())
        self.db_url = sh(HERE / "auth-db.sh", "start", self.key, "none").strip()

    def start(self):
        sh(HERE / "local-ndif.sh", "start", env={**os.environ, "NDIF_POSTGRES_URL": self.db_url}, timeout=240)

    def stop(self):
        sh(HERE / "local-ndif.sh", "stop", timeout=120)


def _ready() -> str | None:
    """Why the local NDIF cannot run here, or None."""
    python = WORK / "venv" / "bin" / "python"
    if not python.is_file() or subprocess.run([python, "-c", "import ndif, asyncpg"], capture_output=True).returncode:
        return f"no local NDIF in {WORK}: run `just ndif-setup` once"
    return None


@pytest.fixture(scope="module")
def server():
    reason = _ready()
    if reason:
        pytest.skip(reason)
    sh(HERE / "local-ndif.sh", "stop", timeout=120)  # one of ours left running: its settings are unknown
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8001)) == 0:
            pytest.skip("port 8001 is taken by a server these tests did not start")
    srv = Server()
    srv.start()
    yield srv
    srv.stop()
    sh(HERE / "auth-db.sh", "stop")


def nnct(*args, key: str | None, timeout=900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NDIF_API_KEY", "NDIF_HOST")}
    if key is not None:
        env["NDIF_API_KEY"] = key
    return subprocess.run([sys.executable, "-c", "from nnct.cli import main; main()", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The same trace run here."""
    out = tmp_path_factory.mktemp("local") / "local.nc"
    done = nnct(*TRACE, "--out", out, key=None)
    assert done.returncode == 0, done.stderr
    return open_cube(out)


def assert_same_cube(path: Path, local: xr.Dataset) -> xr.Dataset:
    there = open_cube(path)
    probs = [k for k in local.data_vars if local[k].dtype.kind == "f"]  # every measured value (readouts too)
    for name in probs:
        diff = np.nanmax(np.abs(there[name].values - local[name].values))
        scale = max(1.0, float(np.nanmax(np.abs(local[name].values))))  # 1 for probabilities
        # a rank is a step function: two logits within rounding of each other may swap places
        bound = 1.0 if name.startswith("rank_") else TOL * scale
        assert diff <= bound, f"{name}: max |remote - local| = {diff}"
        np.testing.assert_array_equal(np.isnan(there[name].values), np.isnan(local[name].values))
    xr.testing.assert_equal(there.drop_vars(probs), local.drop_vars(probs))
    assert there.attrs["noise_level"] == pytest.approx(local.attrs["noise_level"], rel=1e-6)
    assert (there.attrs["backend"], there.attrs["device"], there.attrs["dtype"]) == (HOST, "cpu", "float32")
    return there


def test_remote_trace_writes_the_local_cube(server, local, tmp_path):
    out = tmp_path / "remote.nc"
    done = nnct(*TRACE, "--remote", "--ndif-host", HOST, "--out", out, key=server.key)
    assert done.returncode == 0, done.stderr
    # The noise level's request, then both examples in one; only probabilities come back:
    # one run's hidden states alone would be 30 layers x 9 tokens x 576 x 4 bytes = 622 KB.
    counts = re.search(r"^2 requests, ([\d,]+) bytes sent, ([\d,]+) received$", done.stdout, re.M)
    assert counts, done.stdout
    sent, received = (int(g.replace(",", "")) for g in counts.groups())
    assert received < 20_000 and sent < 200_000
    assert_same_cube(out, local)
    for text in (done.stdout, done.stderr, out.read_bytes().decode("latin-1")):
        assert server.key not in text


def here_and_there(server, tmp_path, *args) -> xr.Dataset:
    """One example of the embedded model run here and on the server: the remote cube, checked
    against the local one."""
    args = [*args, "--data", DATA, "--experiment", "subject-noctx", "--samples", "2", "--max-examples", "1", "-q"]
    here, there = tmp_path / "here.nc", tmp_path / "there.nc"
    done = nnct(*args, "--out", here, key=None)
    assert done.returncode == 0, done.stderr
    done = nnct(*args, "--remote", "--ndif-host", HOST, "--out", there, key=server.key)
    assert done.returncode == 0, done.stderr
    return assert_same_cube(there, open_cube(here))


def test_heads_and_severed_paths_remotely(server, tmp_path):
    """A head at every position and a severed path: their writes run on the server too."""
    ds = here_and_there(server, tmp_path, "trace", "--components", "head_all_pos,hidden-sever-attn")
    assert "p_restored_head_all_pos" in ds and list(ds.component.values) == ["hidden-sever-attn"]


def test_attribution_patching_remotely(server, tmp_path):
    """AtP's gradient path on the server: requires_grad on the input embeddings there (the
    hosted weights have none), the backward pass read through nnsight, then the screen's top
    cells patched exactly; the local estimates and cells. (GradDrop's gradient setting runs
    through nnsight's serialised session in test_attribution: L backward passes on this
    server would take a minute.)"""
    ds = here_and_there(server, tmp_path, "attribute", "--components", "hidden,head", "--window", "1",
                        "--verify-top", "2", "--verify-sample", "1")
    assert {"ie_atp", "ie_atp_logit", "ie_atp_head", "p_restored", "p_restored_head"} <= set(ds.data_vars)
    assert ds.attrs["method"] == "atp" and int(np.isfinite(ds.p_restored.values[..., 0]).sum()) == 3


def test_an_edit_evaluated_on_the_server(server):
    """A committed ROME edit (the first of the 30 at layer 4) applied as the intervention
    out += left * (key . right) to the model the server hosts: its logits on the edited
    prompt equal the local model's with the edit written into its weights, and the new
    object is the answer there."""
    import nnsight
    import torch

    from nnct.exec import remote, rome
    from nnct.model import load
    from nnct.results import edits as edits_file

    edit = edits_file.read(ROOT / "analysis" / "results" / "editing" / "edits-30-layer4.nc")[0][0]
    triple = [(edit.layer, edit.left, edit.right)]
    here = load()
    ids = here.tokenizer(edit.prompt, return_tensors="pt").input_ids
    with torch.no_grad(), rome.edited_weights(here, triple):
        want = here.hf(ids).logits[0, -1]
    there = load(weights=False)
    target = remote.Server(HOST, server.key)
    with there.parts.nn.session(backend=remote.backend(target, there)):
        with there.parts.nn.trace(ids):
            rome.apply_in_trace(there.parts, triple)
            logits = there.parts.nn.output.logits[0, -1].save()
        got = nnsight.save(logits)
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        before = here.hf(ids).logits[0, -1]
    answer = [here.tokenizer.decode(int(x.argmax())).strip() for x in (before, got)]
    assert answer == [edit.target_true.strip(), edit.target_new.strip()]


def test_a_memit_batch_evaluated_on_the_server(server):
    """A committed MEMIT batch (5 held-out facts over 5 layers, rank-5 factors per layer)
    applied as interventions (`rome.apply_in_trace`, out += (key @ right) @ left.T) to the
    model the server hosts: its logits on two edited prompts equal the local model's with the
    factors written into its weights. (The 20-fact batch's 1.7 MB of float64 factors are
    refused by the server's request parser, which reads at most 1 MB per part.)"""
    import nnsight
    import torch

    from nnct.exec import remote, rome
    from nnct.model import load
    from nnct.results import edits as edits_file

    path = ROOT / "analysis" / "results" / "editing" / "memit-heldout5.nc"
    made, attrs = edits_file.read(path)
    updates = edits_file.read_updates(path)
    assert attrs["method"] == "memit" and len({layer for layer, _, _ in updates}) == 5 and updates[0][1].shape[1] == 5
    here = load()
    ids = here.tokenizer([e.prompt for e in made[:2]], return_tensors="pt", padding=True).input_ids
    with torch.no_grad(), rome.edited_weights(here, updates):
        want = here.hf(ids).logits[:, -1]
    there = load(weights=False)
    target = remote.Server(HOST, server.key)
    with there.parts.nn.session(backend=remote.backend(target, there)):
        with there.parts.nn.trace(ids):
            rome.apply_in_trace(there.parts, updates)
            logits = there.parts.nn.output.logits[:, -1].save()
        got = nnsight.save(logits)
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)


def test_circuit_scores_remotely(server, tmp_path):
    """`nnct circuit find --remote`: the gradients, the score products and every patched
    forward of the search run on the server; the scores equal the local run's (1e-4)."""
    from nnct.results import circuit as circuit_file

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": "p1", "clean": "The Eiffel Tower is in the city of", "corrupt": "The Colosseum is in the city of",'
                     ' "target": "Paris", "alt": "Rome"}\n')
    args = ["circuit", "find", "--pairs", pairs, "--ig-steps", "2", "--target", "0.5", "-q"]
    here, there = tmp_path / "here.nc", tmp_path / "there.nc"
    done = nnct(*args, "--out", here, key=None)
    assert done.returncode == 0, done.stderr
    done = nnct(*args, "--remote", "--ndif-host", HOST, "--out", there, key=server.key)
    assert done.returncode == 0, done.stderr
    a, b = circuit_file.read(here), circuit_file.read(there)
    scale = float(np.nanmax(np.abs(a.score.values)))
    np.testing.assert_allclose(b.score.values, a.score.values, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(b.search_faithfulness.values[:3], a.search_faithfulness.values[:3], atol=1e-3)
    assert b.attrs["backend"] == HOST


def test_a_server_killed_mid_run_leaves_a_run_that_resumes(server, local, tmp_path):
    out = tmp_path / "remote.nc"
    args = [*TRACE, "--remote", "--ndif-host", HOST, "--out", str(out), "--request-cells", "1",
            "--retries", "1"]
    env = {**os.environ, "NDIF_API_KEY": server.key}
    run = subprocess.Popen([sys.executable, "-c", "from nnct.cli import main; main()", *args], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list(partial_dir(out).glob("*.npz")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    server.stop()
    stdout, stderr = run.communicate(timeout=300)
    kept = len(list(partial_dir(out).glob("*.npz")))
    assert run.returncode == 2 and "rerun with --resume" in stderr, stderr
    assert kept == 1 and not out.exists()
    server.start()
    done = nnct(*args, "--resume", key=server.key)
    assert done.returncode == 0, done.stderr
    assert f"{kept} resumed" in done.stdout
    assert_same_cube(out, local)


def test_submit_now_collect_later(server, local, tmp_path):
    out = tmp_path / "remote.nc"
    done = nnct(*TRACE, "--remote", "--ndif-host", HOST, "--out", out, "--request-cells", "1",
                "--no-wait", key=server.key)
    assert done.returncode == 0, done.stderr
    assert "2 requests running on the server" in done.stdout and not out.exists()
    done = nnct("remote", "collect", out, "--wait", "-q", key=server.key)
    assert done.returncode == 0, done.stderr
    assert_same_cube(out, local)


def test_status_and_check(server):
    done = nnct("remote", "check", "smollm2-135m", "--ndif-host", HOST, key=server.key)
    assert done.returncode == 0 and "runs on http://127.0.0.1:8001" in done.stdout, done.stderr
    done = nnct("remote", "status", "--ndif-host", HOST, key=server.key)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "smollm2-135m" in line)
    assert "HOT" in line and "RUNNING" in line


def test_a_model_the_server_cannot_run_lists_the_hosted_ones(server, tmp_path):
    from nnct.model import embedded

    assert nnct("remote", "check", "smollm2-135m", "--ndif-host", HOST, key=server.key).returncode == 0
    unknown = tmp_path / "no-weights"  # the client can build it; the server has no weights to load
    unknown.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded.local_dir() / name, unknown / name)
    done = nnct(*TRACE, "--model", unknown, "--remote", "--ndif-host", HOST,
                "--out", tmp_path / "c.nc", key=server.key)
    assert done.returncode == 2
    assert f"{unknown}: {HOST} cannot run this model" in done.stderr, done.stderr
    assert f"it hosts: {embedded.local_dir()} (HOT, RUNNING)" in done.stderr


@pytest.mark.parametrize("key, says", [
    (None, "Missing or invalid API key"),
    ("not-a-key", "Invalid API key format"),
    (str(uuid.uuid4()), "Invalid API key."),
])
def test_a_refused_key_says_so_and_is_not_shown(server, key, says, tmp_path):
    done = nnct(*TRACE, "--remote", "--ndif-host", HOST, "--out", tmp_path / "c.nc", key=key)
    assert done.returncode == 2
    assert "refused the API key" in done.stderr and says in done.stderr, done.stderr
    assert key is None or key not in done.stderr + done.stdout


def test_edit_and_memorization_scores_remotely(server, tmp_path):
    """`edit --remote` and `memorization score --remote` on the server, which has no nnct (every
    function of a request travels by value): the edit (each Adam step one request) and its
    metrics equal the local run's; the greedy tokens, and so the scores, are the local ones."""
    from nnct.results import edits

    args = ["edit", "--data", DATA, "--layer", "4", "--no-covariance", "--max-examples", "1", "-q"]
    here, there = tmp_path / "here.nc", tmp_path / "there.nc"
    done = nnct(*args, "--out", here, key=None)
    assert done.returncode == 0, done.stderr
    done = nnct(*args, "--remote", "--ndif-host", HOST, "--out", there, key=server.key)
    assert done.returncode == 0, done.stderr
    (a,), _ = edits.read(here)
    (b,), attrs = edits.read(there)
    assert attrs["backend"] == HOST
    np.testing.assert_allclose(b.left, a.left, rtol=1e-3, atol=1e-3 * np.abs(a.left).max())
    np.testing.assert_allclose(b.right, a.right, rtol=1e-3, atol=1e-3 * np.abs(a.right).max())
    assert b.metrics["p_new"] == pytest.approx(a.metrics["p_new"], rel=1e-2) and b.metrics["efficacy"] == a.metrics["efficacy"]
    texts = tmp_path / "t.txt"
    texts.write_text("Permission is hereby granted, free of charge, to any person obtaining a copy of this software")
    scores = []
    for name, extra, key in (("here", [], None), ("there", ["--remote", "--ndif-host", HOST], server.key)):
        out = tmp_path / f"{name}.jsonl"
        done = nnct("memorization", "score", "--texts", texts, "--prefix", "8", "--continuation", "4", "--stride", "4",
                    "--out", out, "-q", *extra, key=key)
        assert done.returncode == 0, done.stderr
        scores.append([(line["id"], line["greedy"]) for line in map(json.loads, out.read_text().splitlines())])
    assert scores[0] == scores[1] and len(scores[0]) >= 2


def test_readouts_and_mean_ablation_remotely(server, tmp_path):
    """Named readouts (KL to the clean run, rank, every spelling) and mean ablation's
    reference forwards run in the server's session: the local cube's values."""
    reference = tmp_path / "reference.jsonl"
    reference.write_text('{"prompt": "Catalonia belongs to the continent of"}\n{"prompt": "The Eiffel Tower is in"}\n')
    ds = here_and_there(server, tmp_path, "ablate", "--op", "mean", "--reference", reference, "--components", "hidden,head",
                        "--window", "1", "--readout", "kl,rank,prob_any")
    assert {"p_ablated", "kl_ablated", "rank_ablated_head", "prob_any_clean"} <= set(ds.data_vars)


def _pairs(tmp_path) -> Path:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": "p1", "clean": "The Eiffel Tower is in the city of", "corrupt": "The Colosseum is in the city of",'
                     ' "target": "Paris", "alt": "Rome"}\n')
    return pairs


def test_path_patching_and_steering_remotely(server, tmp_path):
    """Path patching through one head's inputs and a steering sweep with its continuations,
    sent as nnsight sessions to the server: the files made here."""
    pairs = _pairs(tmp_path)
    contrast = tmp_path / "contrast.jsonl"
    contrast.write_text('{"positive": "I love this", "negative": "I hate this"}\n')
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The film was", "target": "good", "alt": "bad"}\n')
    runs = {"path": ["patch", "--path", "--pairs", pairs, "--receivers", "L23H4", "--readout", "kl"],
            "steer": ["steer", "--contrast", contrast, "--prompts", prompts, "--layers", "3,20", "--alphas", "-2,2",
                      "--new-tokens", "3", "--readout", "kl", "-q"]}
    for name, args in runs.items():
        here, there = tmp_path / f"{name}-here.nc", tmp_path / f"{name}-there.nc"
        done = nnct(*args, "--out", here, key=None)
        assert done.returncode == 0, done.stderr
        done = nnct(*args, "--remote", "--ndif-host", HOST, "--out", there, key=server.key)
        assert done.returncode == 0, done.stderr
        a, b = open_cube(here), open_cube(there)
        for k in a.data_vars:
            if a[k].dtype.kind == "f":
                np.testing.assert_allclose(b[k].values, a[k].values, atol=1e-4, rtol=1e-4, err_msg=f"{name} {k}")
            else:
                np.testing.assert_array_equal(b[k].values, a[k].values, err_msg=f"{name} {k}")
        assert b.attrs["backend"] == HOST
