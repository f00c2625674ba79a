"""`nnct attribute` end to end on the tiny llama: records (noise) and prompt pairs into a cube of
AtP estimates, which at tiny noise are the exact trace's effects (first order), and which
the summaries and figures read as they read an exact cube."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import invoke, write_jsonl
from nnct.analysis.summary import summarize
from nnct.errors import ConfigError
from nnct.results.cube import effects, metric_effects, open_cube

# First order holds for one noise sample (averaged over samples, zero-mean noise cancels the
# first-order change and leaves the second) and one written layer (a window's later writes cut
# the paths through which an earlier write acts, which the sum of gradients does not see).
TINY = ["--experiment", "subject-noctx", "--samples", "1", "--window", "1", "--noise-level", "s0.01", "--max-examples", "2",
        "--components", "hidden,attn,head", "-q"]


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
    # --compare: near-perfect agreement here, and the table and JSON say so
    done = invoke("attribute", "--model", tiny_model_dir, "--data", data_file, "--out", tmp_path / "again.nc", *TINY,
                  "--compare", exact)
    assert done.exit_code == 0, done.output
    found = json.loads((tmp_path / "again.agreement.json").read_text())
    hidden = found["components"]["hidden"]
    assert hidden["cells"] > 0 and hidden["pearson"] > 0.99 and hidden["recall_10"] >= 0.8
    assert set(found["components"]) == {"hidden", "attn", "head"} and "recall@10" in done.output
    drawn = invoke("plot", atp, "-o", tmp_path / "figs", "--examples", "1", "--compare", exact)
    assert drawn.exit_code == 0, drawn.output
    assert (tmp_path / "figs" / "compare.png").is_file() and (tmp_path / "figs" / "heads.png").is_file()


def test_agreement_by_hand():
    """Pearson, Spearman, recall and misses on a cube pair whose numbers are chosen: AtP = exact
    except two cells swapped in rank."""
    import xarray as xr

    from nnct.analysis.agreement import compare

    exact_ie = np.arange(1, 13, dtype=np.float64).reshape(1, 3, 4, 1)  # [example, token, layer, component]
    atp_ie = exact_ie.copy()
    atp_ie[0, 2, 3, 0], atp_ie[0, 0, 0, 0] = 1.0, 12.0  # the largest exact cell ranked last, and the smallest first

    def cube(ie, method):
        p = np.stack([ie, ie], axis=-1)
        base = {"p_clean": (("example", "answer"), [[1.0, 0.0]]), "p_corrupt": (("example", "answer"), [[0.0, 0.0]]),
                "logit_clean": (("example", "answer"), [[0.0, 0.0]]), "logit_corrupt": (("example", "answer"), [[0.0, 0.0]])}
        name = "ie_atp" if method == "atp" else "p_restored"
        coords = {"example": ["e"], "component": ["hidden"], "answer": ["target", "alt"]}
        ids = (("example", "token"), [[5, 6, 7]])
        return xr.Dataset({**base, "token_id": ids, name: (("example", "token", "layer", "component", "answer"), p)},
                          coords=coords, attrs={"method": method})

    found = compare(cube(atp_ie, "atp"), cube(exact_ie, "exact"))["components"]["hidden"]
    x, y = atp_ie.ravel(), exact_ie.ravel()
    assert found["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731 (no ties here)
    assert found["spearman"] == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1])
    # exact top 10 by |IE|: 12..3; AtP's top 10: 12 (the moved 1), 11..4 and the 3 at (0, 2): 9 shared
    assert found["recall_10"] == pytest.approx(0.9) and found["cells"] == 12
    assert found["misses"] == [{"example": "e", "cell": {"token": 2, "layer": 3}, "exact": 12.0, "atp": 1.0}]
    # a noise level summed in another order is the same setting; another number of samples is not
    a, e = cube(atp_ie, "atp"), cube(exact_ie, "exact")
    a.attrs.update(noise_level=0.3574596331605318, samples=10)
    e.attrs.update(noise_level=0.3574596331605273, samples=10)
    assert compare(a, e)["examples"] == 1
    e.attrs["samples"] = 5
    with pytest.raises(ConfigError, match="samples 10 vs 5"):
        compare(a, e)


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


def test_verify_top_patches_the_screens_top_cells_exactly(tmp_path, tiny_model_dir, data_file):
    """--verify-top 3 --verify-sample 2: per example and component, the 3 cells of largest
    |estimate| and 2 more hold the exact trace's values (a full trace run apart), the rest NaN."""
    args = ["--experiment", "subject-noctx", "--samples", "2", "--window", "3", "--max-examples", "2",
            "--components", "hidden,mlp,head", "--model", tiny_model_dir, "--data", data_file, "-q"]
    screened, exact = tmp_path / "screened.nc", tmp_path / "exact.nc"
    done = invoke("attribute", *args, "--graddrop", "--verify-top", 3, "--verify-sample", 2, "--out", screened)
    assert done.exit_code == 0, done.output
    assert "misses/example" in done.output
    assert invoke("trace", *args, "--out", exact).exit_code == 0
    s, e = open_cube(screened), open_cube(exact)
    assert (s.attrs["method"], s.attrs["verify_top"], s.attrs["verify_sample"]) == ("atp*", 3, 2)

    def per_group(ds, name):
        """[example, group, cell] of the target: a group is a component, or all heads."""
        v = ds[name].isel(answer=0)
        v = v.transpose("example", "component", ...) if "component" in v.dims else v.expand_dims("group", 1)
        return v.values.reshape(v.shape[0], v.shape[1], -1)

    for est_name, name in (("ie_atp", "p_restored"), ("ie_atp_head", "p_restored_head")):
        got, want, est = per_group(s, name), per_group(e, name), per_group(s, est_name)
        verified = np.isfinite(got)
        assert (verified.sum(-1) == 5).all(), name
        np.testing.assert_allclose(got[verified], want[verified], rtol=1e-5, atol=1e-7)
        top = np.argsort(-np.abs(np.nan_to_num(est)), axis=-1, kind="stable")[..., :3]
        assert np.take_along_axis(verified, top, -1).all(), name


def test_verified_misses_by_hand():
    """The screen's misses estimated from its random sample, on numbers chosen by hand: 12
    cells ranked 0..11 by the estimate, the top 2 and cells 5, 8, 10 patched exactly."""
    import xarray as xr

    from nnct.analysis.agreement import verified

    est = np.arange(12, 0, -1, dtype=np.float64)  # cell i ranks i-th
    exact = np.full(12, np.nan)
    exact[[0, 1, 5, 8, 10]] = [0.5, 0.4, 0.6, 0.45, 0.05]

    def cells(v):
        v = v.reshape(1, 4, 3, 1)
        return (("example", "token", "layer", "component", "answer"), np.stack([v, v], axis=-1))

    pair = (("example", "answer"), [[1.0, 0.0]])
    ds = xr.Dataset({"p_clean": pair, "p_corrupt": (("example", "answer"), [[0.0, 0.0]]), "ie_atp": cells(est),
                     "p_restored": cells(exact)},
                    coords={"example": ["e"], "component": ["hidden"], "answer": ["target", "alt"]},
                    attrs={"method": "atp", "verify_top": 2, "verify_sample": 3})
    found = verified(ds, top=2)["hidden"]
    assert verified(ds)["hidden"]["bar_rank"] == 2  # at most K: the screened cells set the bar
    # the screened cells' 2nd strongest exact effect is 0.4; of the 3 sampled cells two (0.6,
    # 0.45) beat it, so two in three of the 10 unscreened cells are expected to: 20/3 misses
    assert (found["screened"], found["sampled"], found["sampled_above"]) == (2, 3, 2)
    assert found["misses_per_example"] == pytest.approx(20 / 3)
