"""Shared-lab reliability with real processes: one writer per output (a second one exits at
once naming the first; a killed holder leaves nothing that blocks `--resume`), files that
colleagues can read under the user's umask, bad lines reported before the model loads, and a
trace killed with SIGKILL at ten random points, resumed each time, ending in the cube an
uninterrupted run writes."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
from click.testing import CliRunner

from conftest import RECORDS, config, write_jsonl
from nnct.cli import main
from nnct.errors import ModelNotFound, OutputBusy
from nnct.methods.run import Progress, execute, partial_dir
from nnct.results import files
from nnct.results.cube import open_cube

# Many examples of the tiny model, so that a run lasts seconds (its process some more).
MANY = [dict(r, id=f"{r['id']}-{k}") for k in range(6) for r in RECORDS]
ARGS = ["--experiment", "subject", "--samples", "2", "--window", "3", "--max-cf", "2", "--components", "hidden,mlp",
        "--batch-size", "4", "--quiet"]


def nnct(tmp_path: Path, *args: str, name: str = "err") -> subprocess.Popen:
    err = open(tmp_path / f"{name}.txt", "wb")
    return subprocess.Popen([sys.executable, "-m", "nnct.cli", *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)


def wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, "the process ended first"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_second_writer_exits_at_once_naming_the_first(tmp_path, tiny_model_dir):
    # the first takes its lock before its model loads: it outlives the second's check by seconds
    data, out = write_jsonl(tmp_path / "many.jsonl", MANY[:6]), tmp_path / "r.nc"
    args = ["trace", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), *ARGS]
    first = nnct(tmp_path, *args, name="first")
    try:
        lock = files.lock_path(out)
        wait_for(lambda: lock.is_file() and lock.read_text().strip(), first)
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "nnct.cli", *args, "--resume"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2
        assert f"another nnct process (pid {first.pid}) is writing {out}" in second.stderr
        assert time.monotonic() - started < 30  # at once: before any model loads
        assert first.wait(timeout=600) == 0, (tmp_path / "first.txt").read_text()
    finally:
        if first.poll() is None:
            first.kill()
    assert out.is_file() and not partial_dir(out).exists() and not lock.exists()
    assert open_cube(out).sizes["example"] == 16


def test_a_killed_holder_blocks_nothing(tmp_path, tiny_model_dir):
    data, out = write_jsonl(tmp_path / "facts.jsonl", RECORDS), tmp_path / "r.nc"
    args = ["trace", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), *ARGS]
    holder = nnct(tmp_path, *args)
    wait_for(lambda: files.lock_path(out).is_file() and (partial_dir(out) / "run.json").is_file(), holder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    assert files.lock_path(out).is_file()  # left behind by the kill, and held by nobody
    result = CliRunner().invoke(main, [*args[:-1], "--resume"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and not files.lock_path(out).exists()


def test_the_lock_in_one_process():
    path = Path("/tmp") / f"nnct-lock-{os.getpid()}.nc"
    with files.locked(path):
        assert files.lock_path(path).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputBusy, match=f"pid {os.getpid()}"):
            with files.locked(path):
                pass
    assert not files.lock_path(path).exists()
    with files.locked(path):  # free again
        pass


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_every_file_honours_the_umask(tmp_path, tiny_model_dir, data_file, umask, mode):
    class Stop(Progress):
        def example(self, example_id):
            if len(list(partial_dir(tmp_path / "stopped.nc").glob("*.npz"))) == 1:
                raise KeyboardInterrupt

    before = os.umask(umask)
    try:
        execute(config(tiny_model_dir, data_file, tmp_path / "r.nc", components="hidden"))
        with pytest.raises(KeyboardInterrupt):
            execute(config(tiny_model_dir, data_file, tmp_path / "stopped.nc", components="hidden"), progress=Stop())
        runner = CliRunner()
        for args in (["summarize", str(tmp_path / "r.nc"), "--out", str(tmp_path / "s.nc"), "--csv", str(tmp_path / "s.csv")],
                     ["plot", str(tmp_path / "r.nc"), "-o", str(tmp_path / "fig"), "--examples", "1"]):
            result = runner.invoke(main, args)
            assert result.exit_code == 0, result.output
    finally:
        os.umask(before)
    written = [tmp_path / "r.nc", tmp_path / "s.nc", tmp_path / "s.csv", *(tmp_path / "fig").rglob("*.p*"),
               *partial_dir(tmp_path / "stopped.nc").iterdir()]
    assert len(written) > 8
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_a_line_that_is_no_record_is_reported_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    data = write_jsonl(tmp_path / "facts.jsonl", [RECORDS[0], {k: v for k, v in RECORDS[1].items() if k != "subj"}])
    events = []

    class Seen(Progress):
        def skipped(self, problems):
            events.extend(str(p) for p in problems)

    with pytest.raises(ModelNotFound):
        execute(config("no-such/model", data, tmp_path / "x.nc"), progress=Seen())
    assert events == [f"{data}:2: field 'subj': missing"]


def test_ten_random_kills_each_resumed_give_the_uninterrupted_cube(tmp_path, tiny_model_dir):
    """Ten SIGKILLs at random points spread over one run: two while the process starts (and
    measures the noise level), seven while it traces (after a random number of stored
    examples, a random moment into the next), one once every example is stored (while the
    cube is assembled and written); each time the run is resumed."""
    data = write_jsonl(tmp_path / "many.jsonl", MANY[:12])  # 32 examples (3, 3 and 2 per copy of RECORDS)
    whole = tmp_path / "whole.nc"
    execute(config(tiny_model_dir, data, whole, experiment="subject", max_cf=2, components="hidden,mlp", batch_rows=4))
    out = tmp_path / "killed.nc"
    pdir = partial_dir(out)
    args = ["trace", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), *ARGS, "--resume"]
    rng = random.Random(10)
    n = 32
    stored = [0, 0, *sorted(rng.sample(range(1, n), 7)), n]  # examples on disk before each kill
    kept = []
    for k, at in enumerate(stored):
        proc = nnct(tmp_path, *args, name=f"run{k}")
        try:
            if at:
                wait_for(lambda at=at: len(list(pdir.glob("*.npz"))) >= at, proc)
                time.sleep(rng.uniform(0, 0.3))
            else:
                time.sleep(rng.uniform(0.5, 4.0))
        except AssertionError:
            assert proc.wait(timeout=60) == 0 and at == n, (tmp_path / f"run{k}.txt").read_text()  # finished first
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kept.append(len(list(pdir.glob("*.npz"))))
        proc.wait(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), (tmp_path / f"run{k}.txt").read_text()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(kept) >= 9 and len(set(kept)) >= 7, f"the kills landed at too few stages: {kept}"
    a, b = open_cube(out), open_cube(whole)
    assert a.sizes["example"] == n
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert {k: v for k, v in a.attrs.items() if k not in ("created", "data")} == \
        {k: v for k, v in b.attrs.items() if k not in ("created", "data")}
