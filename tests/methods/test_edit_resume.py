"""`nnct edit` killed midway completes with --resume, as if it had never stopped: sequential
ROME (each edit on the model the earlier ones left) and sequential AlphaEdit (whose later
batches keep the earlier batches' keys, rebuilt on resume) give the same factors and
metrics as one uninterrupted run, and recompute only the units that were not finished."""

import numpy as np
import pytest

from conftest import invoke
import nnct.methods.edit as edit_lib
from nnct.results import edits


pytestmark = pytest.mark.usefixtures("own_cache")


def counting(monkeypatch, name, stop_at=None):
    """Count the calls of edit_lib.`name`; the call numbered `stop_at` is a Ctrl-C instead."""
    real, calls = getattr(edit_lib, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(edit_lib, name, wrapped)
    return calls


def assert_same_run(a, b):
    (made_a, attrs_a), (made_b, attrs_b) = edits.read(a), edits.read(b)
    assert [e.record_id for e in made_a] == [e.record_id for e in made_b]
    for x, y in zip(made_a, made_b):
        assert x.metrics.keys() == y.metrics.keys()
        for k in x.metrics:
            np.testing.assert_allclose(y.metrics[k], x.metrics[k], rtol=1e-9, atol=1e-12, err_msg=k)
        if x.left is not None:
            np.testing.assert_allclose(y.left, x.left, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(y.right, x.right, rtol=1e-9, atol=1e-12)
    fa, fb = edits.read_factors(a), edits.read_factors(b)
    assert [(f.batch, f.layer) for f in fa] == [(f.batch, f.layer) for f in fb]
    for x, y in zip(fa, fb):
        np.testing.assert_allclose(y.left, x.left, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(y.right, x.right, rtol=1e-9, atol=1e-12)
    for k in ("retention_known", "retention_kept"):
        assert attrs_a.get(k) == attrs_b.get(k)


CASES = {
    "rome": (["--layer", 1, "--no-covariance", "--sequential"], "edit_record"),
    "alphaedit": (["--method", "alphaedit", "--layers", "1-2", "--corpus-tokens", 300, "--batch-size", 1,
                   "--sequential"], "_targets"),
}


@pytest.mark.parametrize("method", list(CASES))
def test_an_interrupted_sequential_run_resumes_to_the_uninterrupted_one(tmp_path, tiny_model_dir, data_file,
                                                                       monkeypatch, method):
    options, unit = CASES[method]
    common = ["edit", "--model", tiny_model_dir, "--data", data_file, *options, "-q"]
    whole = invoke(*common, "--out", tmp_path / "whole.nc")
    assert whole.exit_code == 0, whole.output

    out, real = tmp_path / "cut.nc", getattr(edit_lib, unit)
    calls = counting(monkeypatch, unit, stop_at=3)  # the third record's unit: two are finished
    cut = invoke(*common, "--out", out)
    assert cut.exit_code == 130, cut.output
    assert f"{out}.partial" in cut.stderr and "--resume" in cut.stderr
    assert not out.exists() and len(list((tmp_path / "cut.nc.partial").glob("0*.nc"))) == 2

    again = invoke(*common, "--out", out)  # without --resume: the unfinished run is in the way
    assert again.exit_code == 2 and "--resume" in again.stderr
    other = invoke(*common, "--out", out, "--resume", "--seed", 1)
    assert other.exit_code == 2 and "seed" in other.stderr

    monkeypatch.setattr(edit_lib, unit, real)
    calls = counting(monkeypatch, unit)
    resumed = invoke(*common, "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert len(calls) == 1  # only the unfinished third
    assert not (tmp_path / "cut.nc.partial").exists()
    assert_same_run(tmp_path / "whole.nc", out)


def test_a_batch_stopped_while_finding_its_targets_keeps_those_found(tmp_path, tiny_model_dir, data_file,
                                                                      monkeypatch):
    """One batch is one unit: what a run stopped inside it keeps is the targets already found
    (in the nnct cache, as each is found); run again, it finds only the others."""
    import nnct.exec.memit as memit
    import nnct.exec.rome as rome

    monkeypatch.setattr(memit, "TARGET_BATCH", 1)
    common = ["edit", "--model", tiny_model_dir, "--data", data_file, "--method", "memit", "--layers", "1-2",
              "--corpus-tokens", 300, "-q"]
    real, calls, stop = rome.values, [], [3]

    def values(*args, **kwargs):
        calls.append(1)
        if len(calls) in stop:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rome, "values", values)
    out = tmp_path / "cut.nc"
    assert invoke(*common, "--out", out).exit_code == 130
    calls.clear()
    stop.clear()
    resumed = invoke(*common, "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert len(calls) == 1  # the third fact's target alone
    monkeypatch.setenv("NNCT_CACHE", str(tmp_path / "fresh"))  # nothing cached: every target found again
    whole = invoke(*common, "--out", tmp_path / "whole.nc")
    assert whole.exit_code == 0 and len(calls) == 4
    assert_same_run(tmp_path / "whole.nc", out)


def test_a_sequential_run_of_fewer_records_completes_from_a_longer_runs_units(tmp_path, tiny_model_dir, data_file,
                                                                              monkeypatch):
    """Sequential ROME over the first 2 records, resumed from the units of an interrupted run
    over all 3 (a copy of its partial directory), computes no edit and equals its own
    uninterrupted run; a run over all 3 from the 2-record run's units computes only the third.
    One MEMIT batch of all records is not the batch of fewer: refused."""
    import shutil

    common = ["edit", "--model", tiny_model_dir, "--data", data_file, "--layer", 1, "--no-covariance",
              "--sequential", "-q"]
    two = invoke(*common, "--max-examples", 2, "--out", tmp_path / "two.nc")
    assert two.exit_code == 0, two.output

    real = edit_lib.edit_record
    counting(monkeypatch, "edit_record", stop_at=3)
    assert invoke(*common, "--out", tmp_path / "three.nc").exit_code == 130
    shutil.copytree(tmp_path / "three.nc.partial", tmp_path / "short.nc.partial")
    monkeypatch.setattr(edit_lib, "edit_record", real)
    calls = counting(monkeypatch, "edit_record")
    short = invoke(*common, "--max-examples", 2, "--out", tmp_path / "short.nc", "--resume")
    assert short.exit_code == 0, short.output
    assert len(calls) == 0
    assert_same_run(tmp_path / "two.nc", tmp_path / "short.nc")

    counting(monkeypatch, "edit_record", stop_at=2)  # the 2-record run stopped after its first edit
    assert invoke(*common, "--max-examples", 2, "--out", tmp_path / "long.nc").exit_code == 130
    monkeypatch.setattr(edit_lib, "edit_record", real)
    calls = counting(monkeypatch, "edit_record")
    longer = invoke(*common, "--out", tmp_path / "long.nc", "--resume")
    assert longer.exit_code == 0, longer.output
    assert len(calls) == 2  # the second and third records
    whole = invoke(*common, "--out", tmp_path / "whole.nc")
    assert whole.exit_code == 0, whole.output
    assert_same_run(tmp_path / "whole.nc", tmp_path / "long.nc")

    batch = ["edit", "--model", tiny_model_dir, "--data", data_file, "--method", "memit", "--layers", "1-2",
             "--no-covariance", "-q"]
    monkeypatch.setattr(edit_lib, "edit_record", real)
    counting(monkeypatch, "_evaluate_together", stop_at=1)  # its one batch kept, then stopped
    assert invoke(*batch, "--out", tmp_path / "all.nc").exit_code == 130
    (tmp_path / "all.nc.partial").rename(tmp_path / "fewer.nc.partial")
    refused = invoke(*batch, "--max-examples", 2, "--out", tmp_path / "fewer.nc", "--resume")
    assert refused.exit_code == 2 and "stored unit 0" in refused.stderr


def test_a_layer_traced_over_the_records_keeps_their_number_in_the_settings(tmp_path, tiny_model_dir, data_file,
                                                                            monkeypatch):
    """Without --layer the layer is traced over the first --max-examples records, so a run of
    another number would edit with another run's layer: refused."""
    common = ["edit", "--model", tiny_model_dir, "--data", data_file, "--no-covariance", "--sequential", "-q"]
    counting(monkeypatch, "edit_record", stop_at=2)
    out = tmp_path / "traced.nc"
    assert invoke(*common, "--out", out).exit_code == 130
    refused = invoke(*common, "--max-examples", 1, "--out", out, "--resume")
    assert refused.exit_code == 2 and "max_examples" in refused.stderr
