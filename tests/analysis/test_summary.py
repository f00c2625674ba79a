"""`nnct.analysis.summary` against numbers computed a second way: loops over the hand-made examples
of `cubes.py`, a t quantile from a printed table, and invariants of the filters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cubes import LAYOUTS, make_cube, records
from nnct.results.cube import open_cube, write
from nnct.errors import ConfigError
from nnct.analysis.summary import segment_effects, strongest_heads, summarize, table, to_frame

# Student t 0.975 quantiles from a printed table, by degrees of freedom.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}
F32 = np.float32


def by_hand(recs, segment, layer, comp, metric="prob", reverse=False, of="restored"):
    """Per example: the mean over the segment's tokens of the IE; then mean and t interval."""
    values = []
    for r in recs:
        toks = [k for k, s in enumerate(r.segment) if s == segment]
        if not toks:
            continue
        ie = []
        kind = "logit" if metric == "logit_diff" else "p"
        clean, corrupt = (r.values[f"{kind}_{run}"].astype(F32).astype(np.float64) for run in ("clean", "corrupt"))
        for k in toks:
            restored = r.values[f"{kind}_{of}"][k, layer, comp].astype(np.float64)
            if metric in ("prob", "recovery"):
                m = lambda p: p[0]  # noqa: E731
            elif metric == "logit_diff":
                m = lambda v: v[0] - v[1]  # noqa: E731
            else:
                m = lambda p: math.log(p[0]) - math.log(p[1])  # noqa: E731
            ie.append(m(clean) - m(restored) if reverse else m(restored) - m(corrupt))
        if metric == "recovery":
            te = clean[0] - corrupt[0]
            if abs(te) < 1e-3:
                continue
            ie = [v / te for v in ie]
        values.append(sum(ie) / len(ie))
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


CASES = [("subject_last", 2, 1), ("subject_middle", 0, 0), ("subsequent_further", 3, 1), ("last", 1, 0), ("prefix", 2, 0)]


@pytest.mark.parametrize("metric", ["prob", "log_ratio", "logit_diff", "recovery"])
@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_aie_and_ci_match_a_hand_computation(metric, reverse):
    recs = records()
    s = summarize(make_cube(reverse=reverse)).sel(metric=metric)
    comps = ["hidden", "mlp"]
    for segment, layer, comp in CASES:
        mean, low, high, n = by_hand(recs, segment, layer, comp, metric, reverse)
        cell = s.sel(segment=segment, layer=layer, component=comps[comp])
        assert int(s.n.sel(segment=segment)) == n
        assert float(cell.aie) == pytest.approx(mean, abs=1e-6)
        if n >= 2:  # the table's quantiles have 3 digits
            assert float(cell.aie_low) == pytest.approx(low, rel=2e-3, abs=1e-4)
            assert float(cell.aie_high) == pytest.approx(high, rel=2e-3, abs=1e-4)
        else:
            assert math.isnan(float(cell.aie_low))


def test_ate_and_means():
    recs = records()
    s = summarize(make_cube())
    te = [float(F32(r.values["p_clean"][0])) - float(F32(r.values["p_corrupt"][0])) for r in recs]
    n = len(te)
    mean = sum(te) / n
    half = T975[n - 1] * math.sqrt(sum((v - mean) ** 2 for v in te) / (n - 1)) / math.sqrt(n)
    assert float(s.ate.sel(metric="prob")) == pytest.approx(mean, abs=1e-6)
    assert float(s.ate_high.sel(metric="prob")) == pytest.approx(mean + half, rel=2e-3)
    assert float(s.p_clean) == pytest.approx(np.mean([F32(r.values["p_clean"][0]) for r in recs]), abs=1e-6)
    assert float(s.share_target_first) == pytest.approx(4 / 5)


def test_best_layer_is_the_argmax_of_the_aie():
    recs = records(n_layers=6)
    s = summarize(make_cube(n_layers=6)).sel(metric="prob")
    for segment in ("subject_last", "last", "subsequent_first"):
        for c, comp in enumerate(["hidden", "mlp"]):
            row = [by_hand(recs, segment, layer, c)[0] for layer in range(6)]
            assert int(s.best_layer.sel(segment=segment, component=comp)) == int(np.argmax(row))
            assert float(s.best_aie.sel(segment=segment, component=comp)) == pytest.approx(max(row), abs=1e-6)


def test_segments_keep_prompt_order_and_skip_absent_ones():
    s = summarize(make_cube())
    assert list(s.segment.values) == ["prefix", "subject_first", "subject_middle", "subject_last", "subsequent_first",
                                      "subsequent_further", "last"]


def test_filter_known_and_variants():
    recs = records()
    known = summarize(make_cube(), filter="known")
    assert known.attrs["examples"] == 4 and float(known.share_target_first) == 1.0
    kept = [r for r, (_, _, k) in zip(recs, LAYOUTS) if k]
    assert float(known.aie.sel(metric="prob", segment="last", layer=3, component="mlp")) == pytest.approx(
        by_hand(kept, "last", 3, 1)[0], abs=1e-6)
    cf = summarize(make_cube(), variant="cf")
    assert cf.attrs["examples"] == 2
    assert float(cf.aie.sel(metric="prob", segment="subject_last", layer=0, component="hidden")) == pytest.approx(
        by_hand([r for r in recs if r.variant == "cf1"], "subject_last", 0, 0)[0], abs=1e-6)
    assert summarize(make_cube(), variant="fact").attrs["examples"] == 3


def test_target_and_alt_wins_split_the_examples():
    recs = records()
    wins = summarize(make_cube(), filter="target-wins").attrs["examples"]
    losses = summarize(make_cube(), filter="alt-wins").attrs["examples"]
    assert wins == sum(F32(r.values["p_clean"][0]) > F32(r.values["p_clean"][1]) for r in recs)
    assert wins + losses == len(recs)


def test_empty_selection_and_unknown_filter_are_config_errors():
    with pytest.raises(ConfigError, match="no example"):
        summarize(make_cube(), variant="cf7")
    with pytest.raises(ConfigError, match="unknown filter"):
        summarize(make_cube(), filter="famous")


def test_lazy_chunked_cube_gives_the_same_summary(tmp_path):
    path = tmp_path / "c.nc"
    write(make_cube(), path)
    eager = summarize(open_cube(path))
    lazy = summarize(open_cube(path, chunks={"example": 2}))
    np.testing.assert_allclose(lazy.aie.values, eager.aie.values, atol=1e-12)
    segs = list(eager.segment.values)
    one, _ = segment_effects(open_cube(path), ("prob",), segs, chunk=1)
    whole, _ = segment_effects(open_cube(path), ("prob",), segs, chunk=256)
    np.testing.assert_array_equal(one, whole)


def test_table_numbers():
    recs = records()
    s = summarize(make_cube())
    lines = table(s, bands=2).splitlines()
    row = next(x for x in lines[lines.index("mlp: AIE by segment and layer band; peak with 95% CI"):] if x.startswith("subject_last"))
    values = row.split()
    by_layer = [by_hand(recs, "subject_last", layer, 1)[0] for layer in range(4)]
    best = int(np.argmax(by_layer))
    mean, low, high, n = by_hand(recs, "subject_last", best, 1)
    assert int(values[1]) == n and int(values[2]) == len(recs) - n  # used, left out
    assert float(values[3]) == pytest.approx(np.mean(by_layer[:2]), abs=6e-4)  # band L0-1, printed to 3 decimals
    assert float(values[4]) == pytest.approx(np.mean(by_layer[2:]), abs=6e-4)
    assert float(values[5]) == pytest.approx(mean, abs=6e-4)
    ci_low, ci_high = row[row.index("[") + 1:row.index("]")].split(",")
    assert float(ci_low) == pytest.approx(low, abs=2e-3) and float(ci_high) == pytest.approx(high, abs=2e-3)
    assert int(values[-1]) == best


def test_table_and_frame():
    s = summarize(make_cube())
    text = table(s)
    assert "subject_last" in text and "95% CI" in text and "hidden" in text and "mlp" in text
    df = to_frame(s)
    assert len(df) == 5 * 7 * 4 * 2  # every metric of a cube with logits
    n = df[df.metric == "prob"].groupby("segment").n.first().to_dict()
    assert n == {str(k): int(v) for k, v in s.n.sel(metric="prob").to_series().items()}
    assert set(df.columns) >= {"metric", "segment", "layer", "component", "aie", "aie_low", "aie_high", "n"}


def test_summarize_cli_writes_netcdf_and_csv(tmp_path):
    from click.testing import CliRunner

    from nnct.cli import main

    cube = tmp_path / "c.nc"
    write(make_cube(), cube)
    out, csv = tmp_path / "s.nc", tmp_path / "s.csv"
    result = CliRunner().invoke(main, ["summarize", str(cube), "--filter", "known", "--out", str(out), "--csv", str(csv)])
    assert result.exit_code == 0, result.output
    assert "4 of 5 examples" in result.output and "filter known" in result.output
    s = open_cube(out)
    assert s.attrs["filter"] == "known" and s.aie.dims == ("metric", "segment", "layer", "component")
    assert csv.read_text().splitlines()[0] == "metric,segment,layer,component,aie,aie_low,aie_high,n,n_records,n_left_out"
    bad = CliRunner().invoke(main, ["summarize", str(cube), "--variant", "cf9"])
    assert bad.exit_code == 2 and "no example is left" in bad.output


HEADS = ("hidden", "head", "head_all_pos")


@pytest.mark.parametrize("metric", ["prob", "logit_diff"])
def test_heads_aie_match_a_hand_computation(metric):
    """Per-token heads average like components (over a segment's tokens, then examples);
    heads at all positions average over examples."""
    recs = records(components=HEADS)
    s = summarize(make_cube(components=HEADS)).sel(metric=metric)
    assert s.aie_head.dims == ("segment", "layer", "head")
    for segment, layer, head in [("subject_last", 2, 1), ("last", 1, 2), ("subsequent_further", 3, 0)]:
        mean, low, high, n = by_hand(recs, segment, layer, head, metric, of="restored_head")
        cell = s.sel(segment=segment, layer=layer, head=head)
        assert float(cell.aie_head) == pytest.approx(mean, abs=1e-6)
        assert float(cell.aie_head_low) == pytest.approx(low, rel=2e-3, abs=1e-4)
    kind = "logit" if metric == "logit_diff" else "p"
    m = (lambda v: v[0] - v[1]) if metric == "logit_diff" else (lambda p: p[0])
    for layer, head in [(0, 0), (3, 2)]:
        values = [m(r.values[f"{kind}_restored_head_all_pos"][layer, head].astype(np.float64))
                  - m(r.values[f"{kind}_corrupt"].astype(F32).astype(np.float64)) for r in recs]
        assert float(s.aie_head_all_pos.sel(layer=layer, head=head)) == pytest.approx(np.mean(values), abs=1e-6)
    # components of whole sites are summarised as before beside the heads
    assert list(s.component.values) == ["hidden"]


def test_strongest_heads_are_the_largest_with_their_intervals():
    s = summarize(make_cube(components=HEADS))
    top = strongest_heads(s, "prob", k=2, segments=["last"])
    grid = s.aie_head.sel(metric="prob", segment="last").values
    order = np.argsort(-grid.ravel())[:2]
    assert [(h["layer"], h["head"]) for h in top[:2]] == [tuple(int(x) for x in np.unravel_index(i, grid.shape)) for i in order]
    assert top[0]["low"] <= top[0]["aie"] <= top[0]["high"]
    assert [h["segment"] for h in top] == ["last", "last", "all positions", "all positions"]
    assert "strongest heads" in table(s)


def test_a_record_counted_twice_does_not_narrow_its_interval():
    """Each record's example repeated as a second variant (same record_id): the intervals are
    over records, so they equal those of the cube with each record once (over examples they
    would shrink by about sqrt(2)), and n counts the examples, n_records the records."""
    from dataclasses import replace as copy
    from nnct.results.cube import assemble
    from cubes import ATTRS, N_HEADS

    recs = records()
    twice = [r for rec in recs for r in (rec, copy(rec, example=rec.example + "-again", variant="cf1"))]
    once = summarize(make_cube())
    doubled = summarize(assemble(twice, 4, ("hidden", "mlp"), ATTRS, N_HEADS))
    for name in ("aie", "aie_low", "aie_high", "ate", "ate_low", "ate_high"):
        np.testing.assert_allclose(doubled[name].values, once[name].values, rtol=1e-9, atol=1e-12, err_msg=name)
    assert (doubled.n.values == 2 * once.n.values).all() and (doubled.n_records.values == once.n.values).all()
    assert doubled.attrs["records"] == len(recs)


def test_the_bootstrap_covers_the_mean_at_its_nominal_rate():
    """2,000 seeded samples of 50 records from a known distribution (normal, mean 1, sd 2): the
    percentile bootstrap's 95% interval covers 1 in 95% +- 2% of them. (On a skewed one, an
    exponential, it covers 92%: the percentile bootstrap's known undercoverage at n = 50.)"""
    from nnct.analysis import summary as lib

    rng = np.random.default_rng(1)
    draws = rng.normal(1.0, 2.0, size=(2000, 50))
    lib_resamples, lib.RESAMPLES = lib.RESAMPLES, 2000  # the rate, not the resolution, is under test
    try:
        _, low, high, _ = lib.mean_ci(draws.T, axis=0, ci="bootstrap", seed=7)
    finally:
        lib.RESAMPLES = lib_resamples
    covered = float(np.mean((low <= 1.0) & (1.0 <= high)))
    assert 0.93 <= covered <= 0.97, covered


def test_left_out_examples_are_counted():
    """A recovery is undefined where the total effect is below 0.001: those examples leave the
    mean and are counted in n_left_out, n + n_left_out being the examples selected."""
    ds = make_cube()
    ds["p_corrupt"].loc[{"example": ds.example.values[0]}] = ds.p_clean.sel(example=ds.example.values[0])
    s = summarize(ds, metrics=("prob", "recovery"))
    total = ds.sizes["example"]
    assert (s.n + s.n_left_out == total).all()
    seg = "last"
    assert int(s.n_left_out.sel(metric="recovery", segment=seg)) == int(s.n_left_out.sel(metric="prob", segment=seg)) + 1


def test_paired_differences_pair_by_record():
    """b - a by record, by hand: records in another order in b, one record only in a (left
    out), and a record with two examples in b (averaged first). Pairing removes what the two
    share: the paired interval is far narrower than the intervals of the two means."""
    from nnct.analysis.summary import mean_ci, paired_difference

    rng = np.random.default_rng(0)
    base = rng.normal(0, 5, size=8)  # a large per-record level both share
    a = base + rng.normal(0, 0.1, size=8)
    rec_a = [f"r{i}" for i in range(8)]
    order = [3, 1, 0, 2, 5, 4, 6, 6]  # r7 absent from b; r6 twice
    b = base[order] + 1.0 + rng.normal(0, 0.1, size=8)
    rec_b = [f"r{i}" for i in order]
    mean, low, high, n = paired_difference(a, b, rec_a, rec_b)
    diffs = [(b[6] + b[7]) / 2 - a[6] if i == 6 else b[order.index(i)] - a[i] for i in range(7)]
    sd = np.std(diffs, ddof=1)
    assert float(mean) == pytest.approx(np.mean(diffs)) and int(n) == 7
    assert float(high) - float(low) == pytest.approx(2 * 2.447 * sd / np.sqrt(7), rel=1e-3)  # t(0.975, 6) = 2.447
    _, low_a, high_a, _ = mean_ci(a)
    assert (float(high) - float(low)) * 10 < float(high_a) - float(low_a)
    with pytest.raises(ConfigError, match="share no record"):
        paired_difference(a, b, rec_a, [f"x{i}" for i in order])
