"""`nnct.methods.run.execute` end to end on the tiny llama saved as a local model directory: the cube
it writes (docs/method.md's attrs and dims), the noise level it stores, resuming after an
interruption (KeyboardInterrupt and kill -9), refusing to resume with other settings, and
skipping bad records."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from conftest import RECORDS, config, write_jsonl
import nnct
from nnct.cli import main
from nnct.results.cube import open_cube
from nnct.errors import DataError, RecordError, ResumeMismatch
from nnct.methods.run import Progress, RunConfig, partial_dir, execute

# docs/method.md, "The effect cube": the attrs names and the dimensions.
METHOD_ATTRS = (
    "model", "model_revision", "nnct_version", "experiment", "prompt_format", "samples", "window", "noise_rule",
    "noise_level", "seed", "replace", "reverse_patching", "dtype", "backend", "device", "created",
)
METHOD_DIMS = {"example", "token", "layer", "component", "answer"}



def without_created(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != "created"}
    return ds


def assert_same_cube(a: xr.Dataset, b: xr.Dataset) -> None:
    """Identical data, coords and attrs, except `created` (two separate runs)."""
    xr.testing.assert_identical(without_created(a), without_created(b))


class InterruptAt(Progress):
    """Raises KeyboardInterrupt in the first `cells` callback of example number `at` (1-based)."""

    def __init__(self, at: int = 2):
        self.at, self.started = at, 0

    def example(self, example_id):
        self.started += 1

    def cells(self, n):
        if self.started >= self.at:
            raise KeyboardInterrupt


class Recorder(Progress):
    def __init__(self):
        self.starts, self.examples, self.cells_seen = [], [], 0

    def start(self, *args):
        self.starts.append(args)

    def example(self, example_id):
        self.examples.append(example_id)

    def cells(self, n):
        self.cells_seen += n


def interrupted(cfg: RunConfig) -> Path:
    """Run `cfg` until the second example is under way, then interrupt it."""
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, progress=InterruptAt(2))
    return partial_dir(cfg.out)


def listing(pdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pdir.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, data_file):
    """An uninterrupted run with the SMALL settings: (summary, cube, path)."""
    out = tmp_path_factory.mktemp("reference") / "reference.nc"
    summary = execute(config(tiny_model_dir, data_file, out))
    return summary, open_cube(out), out


# --- the cube ------------------------------------------------------------------------------


def test_cube_has_method_attrs_and_dims(reference, tiny_model_dir):
    summary, ds, out = reference
    assert Path(summary.out) == out and out.is_file()
    assert not partial_dir(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left

    missing = [k for k in METHOD_ATTRS if k not in ds.attrs]
    assert not missing, f"attrs missing: {missing}"
    a = ds.attrs
    assert a["model"] == str(tiny_model_dir)
    import hashlib

    files = sorted(f for f in tiny_model_dir.iterdir() if f.suffix == ".safetensors")
    by_hand = hashlib.sha256("".join(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n" for f in files).encode())
    assert a["model_revision"] == "sha256:" + by_hand.hexdigest()[:16]
    assert a["batch_budget"] == 1 << 30
    assert a["nnct_version"] == nnct.__version__
    assert a["experiment"] == "subject-noctx"
    assert a["prompt_format"] == "{prompt}"
    assert (a["samples"], a["window"], a["seed"]) == (2, 3, 0)
    assert a["noise_rule"] == "s3"
    assert float(a["noise_level"]) == pytest.approx(summary.noise_level) and summary.noise_level > 0
    assert (a["replace"], a["reverse_patching"]) == (0, 0)
    assert (a["dtype"], a["backend"], a["device"]) == ("float32", "local", "cpu")
    assert dt.datetime.fromisoformat(a["created"]).tzinfo is not None

    assert set(ds.p_restored.dims) == METHOD_DIMS and set(ds.sizes) == METHOD_DIMS
    assert list(ds.example.values) == ["r1/fact", "r2/fact", "r3/fact"]
    assert list(ds.layer.values) == [0, 1, 2, 3]
    assert list(ds.component.values) == ["hidden", "mlp", "attn"]
    assert list(ds.answer.values) == ["target", "alt"]
    assert ds.sizes["token"] == int(ds.n_tokens.max())
    assert (summary.records, summary.examples, summary.skipped, summary.resumed) == (3, 3, [], 0)
    for i, n in enumerate(ds.n_tokens.values):
        assert not ds.p_restored.isel(example=i, token=slice(0, int(n))).isnull().any()
        assert ds.p_restored.isel(example=i, token=slice(int(n), None)).isnull().all()


# --- the noise level -----------------------------------------------------------------------


def span_token_ids(tokenizer, prompt: str, start: int, end: int) -> list[int]:
    """docs/method.md: a token is in the span if its characters overlap the mention (no specials)."""
    enc = tokenizer(prompt, return_offsets_mapping=True, return_special_tokens_mask=True)
    return [
        i for i, (a, b), special in zip(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"])
        if not special and b > a and a < end and start < b
    ]


def expected_std(model_dir, span_ids: list[int]) -> float:
    """Unbiased float64 std of the input embeddings of `span_ids`, from the saved model itself."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        rows = model.get_input_embeddings()(torch.tensor([span_ids]))[0]
    return float(rows.double().std())


def test_noise_s3_is_three_stds_of_span_embeddings_noctx(reference, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = []
    for r in RECORDS:  # subject-noctx: prompt = prompt_wo_ctx, span = the subject in it
        prompt = r["prompt_wo_ctx"]
        start = prompt.index(r["subj"])
        ids += span_token_ids(tok, prompt, start, start + len(r["subj"]))
    assert len(ids) == 6  # two words a subject
    level = 3 * expected_std(tiny_model_dir, ids)
    summary, ds, _ = reference
    assert float(ds.attrs["noise_level"]) == pytest.approx(level, rel=1e-9)
    assert summary.noise_level == pytest.approx(level, rel=1e-9)


@pytest.mark.parametrize("exp", ["object", "subject"])
def test_noise_s3_counts_span_tokens_of_every_example(exp, tmp_path, tiny_model_dir, data_file):
    """Context experiments, `fact` and `cf1` per record: for `object` the span of `fact` is
    `obj` and that of `cf1` is `obj_cf[0]`; for `subject` both variants corrupt the subject,
    whose tokens then count twice (every example's span tokens, repeats included)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = []
    for r in RECORDS:
        passage = r["passages"][0]["text"]
        for target in (r["obj"], r["obj_cf"][0]):
            text = passage.replace(r["obj"], target)
            prompt = f"C: {text} {r['prompt_wo_ctx']}"
            mention = target if exp == "object" else r["subj"]
            start = prompt.index(mention, 3, 3 + len(text))
            ids += span_token_ids(tok, prompt, start, start + len(mention))
    assert len(ids) == {"object": 6, "subject": 12}[exp]
    level = 3 * expected_std(tiny_model_dir, ids)
    out = tmp_path / f"{exp}.nc"
    summary = execute(config(tiny_model_dir, data_file, out, experiment=exp, components="hidden", max_cf=1))
    ds = open_cube(out)
    assert summary.examples == 6
    assert ds.attrs["noise_rule"] == "s3"
    assert float(ds.attrs["noise_level"]) == pytest.approx(level, rel=1e-9)


def test_noise_plain_float_is_used_as_is(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "float.nc"
    summary = execute(config(tiny_model_dir, data_file, out, noise_level="0.5", components="hidden", max_examples=1))
    ds = open_cube(out)
    assert float(ds.attrs["noise_level"]) == 0.5 and summary.noise_level == 0.5
    assert ds.attrs["noise_rule"] == "0.5"


# --- resuming ------------------------------------------------------------------------------


def test_resume_after_keyboard_interrupt(tmp_path, tiny_model_dir, data_file, reference):
    cfg = config(tiny_model_dir, data_file, tmp_path / "run.nc")
    pdir = interrupted(cfg)
    assert not Path(cfg.out).exists()
    assert sorted(p.name for p in pdir.glob("*.npz")) == ["000000.npz"]
    assert not [p.name for p in pdir.iterdir() if p.name.startswith(".tmp")]
    meta = json.loads((pdir / "run.json").read_text())
    created = meta["created"]
    # a run stored before --verify-top existed resumes as one made without it
    for key in ("verify_top", "verify_sample"):
        del meta["settings"][key]
    (pdir / "run.json").write_text(json.dumps(meta))

    progress = Recorder()
    summary = execute(replace(cfg, resume=True), progress=progress)
    assert (summary.examples, summary.resumed) == (3, 1)
    # Progress is told what is already done, and sees only the rest.
    per_token = 4 * 3  # layers x components
    n_tokens = [int(n) for n in reference[1].n_tokens.values]
    assert progress.starts == [(3, sum(n_tokens) * per_token, 1, n_tokens[0] * per_token)]
    assert progress.examples == ["r2/fact", "r3/fact"]
    assert progress.cells_seen == sum(n_tokens[1:]) * per_token
    assert not pdir.exists()
    ds = open_cube(cfg.out)
    assert ds.attrs["created"] == created  # the run's, not the resumption's
    assert_same_cube(ds, reference[1])


def test_existing_partial_without_resume_is_refused(tmp_path, tiny_model_dir, data_file):
    cfg = config(tiny_model_dir, data_file, tmp_path / "run.nc")
    pdir = interrupted(cfg)
    before = listing(pdir)
    with pytest.raises(ResumeMismatch) as exc:
        execute(cfg)
    assert "--resume" in str(exc.value)
    assert listing(pdir) == before  # nothing deleted, nothing overwritten
    assert not Path(cfg.out).exists()


def test_resume_with_other_settings_names_the_setting(tmp_path, tiny_model_dir, data_file):
    cfg = config(tiny_model_dir, data_file, tmp_path / "run.nc")
    pdir = interrupted(cfg)
    before = listing(pdir)
    with pytest.raises(ResumeMismatch) as exc:
        execute(replace(cfg, samples=3, resume=True))
    assert "samples" in str(exc.value)
    assert "window" not in str(exc.value)
    assert listing(pdir) == before
    assert not Path(cfg.out).exists()


def test_resume_after_kill_9(tmp_path, tiny_model_dir):
    """`nnct trace` killed with SIGKILL once its first example is stored; `--resume` then
    completes the cube an uninterrupted run writes."""
    data = write_jsonl(tmp_path / "facts.jsonl", RECORDS)
    out = tmp_path / "killed.nc"
    pdir = partial_dir(out)
    args = [
        "trace", "--model", str(tiny_model_dir), "--experiment", "subject", "--data", str(data),
        "--samples", "2", "--window", "3", "--max-cf", "2", "--components", "hidden", "--batch-size", "8", "--quiet",
    ]
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "nnct.cli", *args, "--out", str(out)],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and not (pdir / "000000.npz").exists():
                assert time.monotonic() < deadline, "the first example never finished"
                time.sleep(0.005)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:  # only after a failed assertion above
                proc.kill()
                proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    assert killed or proc.returncode == 0, (tmp_path / "stderr.txt").read_text()
    if killed:
        assert not out.exists()
        done = sorted(p.name for p in pdir.glob("*.npz"))
        assert "000000.npz" in done and len(done) < 8  # 3 + 3 + 2 examples

    result = CliRunner().invoke(main, [*args, "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert not pdir.exists()
    if killed:
        assert "8 examples" in result.stdout
        assert ", 0 resumed" not in result.stdout

    # An uninterrupted run of the same settings (the CLI's defaults included).
    ref = tmp_path / "reference.nc"
    cfg = RunConfig(data=str(data), out=str(ref), model=str(tiny_model_dir), experiment="subject", samples=2,
                    window=3, max_cf=2, components="hidden", batch_rows=8)
    execute(cfg)
    assert_same_cube(open_cube(out), open_cube(ref))


# --- bad records ---------------------------------------------------------------------------


def test_bad_records_are_skipped_and_counted(tmp_path, tiny_model_dir):
    no_subj = {k: v for k, v in RECORDS[1].items() if k != "subj"}
    subj_elsewhere = {**RECORDS[1], "id": "r4", "subj": "Eiffel Tower"}  # not in its prompt_wo_ctx
    data = write_jsonl(tmp_path / "mixed.jsonl", [RECORDS[0], "{not json", no_subj, "", RECORDS[2], subj_elsewhere])
    out = tmp_path / "mixed.nc"
    summary = execute(config(tiny_model_dir, data, out, components="hidden"))

    assert all(isinstance(p, RecordError) for p in summary.skipped)
    assert [(p.path, p.line, p.field) for p in summary.skipped] == [
        (str(data), 2, "<json>"), (str(data), 3, "subj"), (str(data), 6, "subj"),
    ]
    assert all(str(p).startswith(f"{data}:{p.line}: field '{p.field}'") for p in summary.skipped)
    assert summary.examples == 2
    ds = open_cube(out)
    assert list(ds.example.values) == ["r1/fact", "r3/fact"]


def test_no_good_record_is_a_config_error(tmp_path, tiny_model_dir):
    no_subj = {k: v for k, v in RECORDS[0].items() if k != "subj"}
    data = write_jsonl(tmp_path / "bad.jsonl", ["{not json", no_subj])
    out = tmp_path / "bad.nc"
    with pytest.raises(DataError, match="no record"):
        execute(config(tiny_model_dir, data, out))
    assert not out.exists() and not partial_dir(out).exists()


def test_partial_dir_without_run_json_is_cleared(tmp_path, tiny_model_dir, data_file):
    """A run killed before its run.json existed left nothing usable: a stale example file
    there must not be taken for one of this run's."""
    cfg = config(tiny_model_dir, data_file, tmp_path / "run.nc")
    pdir = partial_dir(cfg.out)
    pdir.mkdir()
    (pdir / "000000.npz").write_bytes(b"stale")
    execute(cfg)
    assert not pdir.exists()
    assert open_cube(cfg.out).sizes["example"] == len(RECORDS)


def test_skipped_records_are_reported_before_tracing(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "mixed.jsonl", [RECORDS[0], "{broken", RECORDS[1]])
    events = []

    class Recorder(Progress):
        def skipped(self, problems):
            events.append(("skipped", [(p.line, p.field) for p in problems]))

        def cells(self, n):
            events.append("cells")

    execute(config(tiny_model_dir, data, tmp_path / "run.nc"), progress=Recorder())
    assert events[0] == ("skipped", [(2, "<json>")])
    assert "cells" in events[1:]


def test_resume_uses_the_stored_batch_budget(tmp_path, tiny_model_dir, data_file, monkeypatch):
    """Auto batch sizes follow the memory free when a run starts; a resumed run must make
    the same batches, so it takes the budget stored with the run, not today's."""
    import nnct.exec.engine as engine

    cfg = config(tiny_model_dir, data_file, tmp_path / "run.nc", batch_rows=None)
    pdir = interrupted(cfg)
    meta = json.loads((pdir / "run.json").read_text())
    assert meta["batch_budget"] > 0
    meta["batch_budget"] = 12345
    (pdir / "run.json").write_text(json.dumps(meta))
    seen, original = [], engine.auto_batch_rows
    monkeypatch.setattr(engine, "auto_batch_rows", lambda a, n, s, budget: seen.append(budget) or original(a, n, s, budget))
    execute(replace(cfg, resume=True))
    assert seen and set(seen) == {12345}
