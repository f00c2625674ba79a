"""`nnct attribute` end to end on the tiny llama: records (noise) and prompt pairs into a cube of
AtP estimates, which at tiny noise are the exact trace's effects (first order), and which
the summaries and figures read as they read an exact cube."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from conftest import write_jsonl
from nnct.analysis.summary import summarize
from nnct.cli import main
from nnct.results.cube import effects, metric_effects, open_cube

# First order holds for one noise sample (averaged over samples, zero-mean noise cancels the
# first-order change and leaves the second) and one written layer (a window's later writes cut
# the paths through which an earlier write acts, which the sum of gradients does not see).
TINY = ["--experiment", "subject-noctx", "--samples", "1", "--window", "1", "--noise-level", "s0.01", "--max-examples", "2",
        "--components", "hidden,attn,head", "-q"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_attribute_records_at_tiny_noise_is_the_exact_trace(tmp_path, tiny_model_dir, data_file):
    atp, exact = tmp_path / "atp.nc", tmp_path / "exact.nc"
    for command, out in (("attribute", atp), ("trace", exact)):
        done = invoke(command, "--model", tiny_model_dir, "--data", data_file, "--out", out, *TINY)
        assert done.exit_code == 0, done.output
    a, e = open_cube(atp), open_cube(exact)
    assert a.attrs["method"] == "atp" and e.attrs["method"] == "exact"
    assert "p_restored" not in a and a.ie_atp.dims == ("example", "token", "layer", "component", "answer")
    assert a.ie_atp_head.dims == ("example", "token", "layer", "head", "answer") and "ie_atp_logit" in a
    np.testing.assert_allclose(a.p_clean.values, e.p_clean.values, rtol=1e-5)
    np.testing.assert_allclose(a.p_corrupt.values, e.p_corrupt.values, rtol=1e-5)
    for of in ("restored", "restored_head"):
        est, exact_ie = effects(a, of)[0].values, effects(e, of)[0].values
        scale = np.nanmax(np.abs(exact_ie))
        assert scale > 0 and np.nanmax(np.abs(est - exact_ie)) < 0.05 * scale, of
        ld_est, ld = metric_effects(a, "logit_diff", of)[0].values, metric_effects(e, "logit_diff", of)[0].values
        assert np.nanmax(np.abs(ld_est - ld)) < 0.05 * np.nanmax(np.abs(ld))
    s = summarize(a)
    assert "aie" in s and "aie_head" in s


def test_attribute_pairs_and_bad_input(tmp_path, tiny_model_dir):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"clean": "the Eiffel Tower is in the city of",
                                                    "corrupt": "the Vinson Massif is in the city of",
                                                    "target": "Paris", "alt": "Rome"}])
    out = tmp_path / "pairs.nc"
    done = invoke("attribute", "--model", tiny_model_dir, "--pairs", pairs, "--out", out, "--components", "mlp", "-q")
    assert done.exit_code == 0, done.output
    ds = open_cube(out)
    assert (ds.attrs["corruption"], ds.attrs["method"]) == ("prompt", "atp") and np.isfinite(ds.ie_atp.values).any()
    neither = invoke("attribute", "--model", tiny_model_dir, "--out", tmp_path / "x.nc")
    assert neither.exit_code == 2 and "give --data FILE.jsonl" in neither.output
    severed = invoke("attribute", "--model", tiny_model_dir, "--pairs", pairs, "--out", tmp_path / "y.nc",
                     "--components", "hidden-sever-mlp")
    assert severed.exit_code == 2 and "no estimate for hidden-sever-mlp" in severed.output
