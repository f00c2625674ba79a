"""`nnct.analysis.strongest` against what is known by construction: seeded simulations with a
planted effect (whose true value is known) or none, and a hand-made cube whose held-out
numbers are computed here with plain numpy."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from cubes import ATTRS, N_HEADS, records
from nnct.analysis.strongest import rank_cells, strongest
from nnct.errors import ConfigError
from nnct.results.cube import assemble

RECORDS, CELLS, SIMULATIONS = 40, 200, 1000


def simulate(effect: float, seed: int):
    """SIMULATIONS studies of RECORDS records x CELLS cells of unit noise, cell 0 with a true
    `effect`: per study, the rank-1 in-sample and held-out values and the true effects of the
    cells chosen (on all records, and by each half)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(CELLS)
    truth[0] = effect
    halves = (np.arange(RECORDS // 2), np.arange(RECORDS // 2, RECORDS))  # records are exchangeable here
    out = {"in_sample": [], "held_out": [], "true_best": [], "true_picked": []}
    for _ in range(SIMULATIONS):
        r = rank_cells(truth + rng.normal(size=(RECORDS, CELLS)), 1, halves)
        out["in_sample"].append(r["aie"][0])
        out["held_out"].append(r["held_out"][0])
        out["true_best"].append(truth[r["best"][0]])
        out["true_picked"].append((truth[r["first"][0]] + truth[r["second"][0]]) / 2)  # equal halves
    return {k: np.array(v) for k, v in out.items()}


def test_the_in_sample_maximum_of_pure_noise_is_biased_upward_and_the_held_out_one_is_not():
    """No cell has an effect: the largest of 200 means over 40 records sits near +2.7 standard
    errors (0.43), while the held-out value of the chosen cell averages 0."""
    sim = simulate(0.0, seed=3)
    se = sim["held_out"].std(ddof=1) / np.sqrt(SIMULATIONS)
    assert sim["in_sample"].mean() > 0.3
    assert abs(sim["held_out"].mean()) < 3 * se


def test_the_held_out_estimate_of_a_planted_effect_is_unbiased():
    """One true cell (0.8, about 3.6 half-sample standard errors) among 199 of none: a half
    picks it 79% of the time. The held-out value averages the true effect of the cells the
    halves chose (0.630 against 0.630); the in-sample value overstates the true effect of its
    choice (0.804 against 0.786)."""
    sim = simulate(0.8, seed=4)
    assert 0.5 < sim["true_picked"].mean() / 0.8 < 0.99  # how often a half picks it: the selection does err
    gap = sim["held_out"] - sim["true_picked"]
    assert abs(gap.mean()) < 3 * gap.std(ddof=1) / np.sqrt(SIMULATIONS)
    over = sim["in_sample"] - sim["true_best"]  # about 0.017, 3.4 standard errors here
    assert over.mean() > 2.5 * over.std(ddof=1) / np.sqrt(SIMULATIONS)


def test_halves_that_agree_give_the_full_sample_value():
    """When both halves choose the in-sample cell, each record is estimated at that cell, so the
    held-out value is the in-sample mean."""
    rng = np.random.default_rng(0)
    per = rng.normal(size=(10, 6))
    per[:, 2] += 5.0
    r = rank_cells(per, 1, (np.arange(5), np.arange(5, 10)))
    assert r["best"][0] == r["first"][0] == r["second"][0] == 2
    assert r["held_out"][0] == pytest.approx(per[:, 2].mean()) == r["aie"][0]


def hand_cells(rows, layers=4, comps=("hidden", "mlp")):
    """{label: IE per record} by loops: the mean over a segment's tokens of p_restored -
    p_corrupt of the target (NaN where the record lacks the segment)."""
    segments = list(dict.fromkeys(s for r in rows for s in r.segment))
    out = {}
    for seg in segments:
        for layer in range(layers):
            for c, comp in enumerate(comps):
                values = []
                for r in rows:
                    corrupt = float(np.float32(r.values["p_corrupt"][0]))
                    ies = [float(r.values["p_restored"][k, layer, c, 0]) - corrupt for k, s in enumerate(r.segment) if s == seg]
                    values.append(sum(ies) / len(ies) if ies else np.nan)
                out[f"{seg} L{layer} {comp}"] = np.array(values)
    return out


def test_a_cube_s_strongest_cells_by_hand():
    """Five hand-made records, one per record id, the mlp at layer 2 raised by 0.3 in p(target)
    at every token: the in-sample ranks, the halves' choices and the held-out values equal a
    plain loop over the records (the halves: the seeded permutation's first 2 records)."""
    rows = []
    for r in records():
        values = dict(r.values)
        values["p_restored"] = values["p_restored"].copy()
        values["p_restored"][:, 2, 1, 0] += 0.3
        rows.append(replace(r, values=values))
    cells = strongest(assemble(rows, 4, ("hidden", "mlp"), ATTRS, N_HEADS), k=3, seed=1).sel(kind="cells")
    ie = hand_cells(rows)
    labels = list(ie)
    table_ = np.stack([ie[name] for name in labels], axis=1)  # [record, cell]
    order = np.random.default_rng(1).permutation(5)
    first, second = np.sort(order[:2]), np.sort(order[2:])

    def rank(rows_):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a segment no record of the half has
            means = np.nanmean(table_[rows_], axis=0)
        return [labels[i] for i in np.argsort(-np.nan_to_num(means, nan=-np.inf))[:3]]

    best, by_first, by_second = rank(np.arange(5)), rank(first), rank(second)
    assert list(cells.cell.values) == best
    assert best[0].endswith("L2 mlp")
    assert list(cells.first_half.values) == by_first and list(cells.second_half.values) == by_second
    for i in range(3):
        assert float(cells.aie.values[i]) == pytest.approx(np.nanmean(ie[best[i]]), abs=1e-6)
        held = np.empty(5)
        held[second] = ie[by_first[i]][second]
        held[first] = ie[by_second[i]][first]
        assert float(cells.held_out.values[i]) == pytest.approx(np.nanmean(held), abs=1e-6)


def test_records_counted_twice_do_not_change_the_held_out_numbers():
    recs = records()
    twice = [r for rec in recs for r in (rec, replace(rec, example=rec.example + "-again", variant="cf1"))]
    once = strongest(assemble(recs, 4, ("hidden", "mlp"), ATTRS, N_HEADS), k=3)
    doubled = strongest(assemble(twice, 4, ("hidden", "mlp"), ATTRS, N_HEADS), k=3)
    for name in ("aie", "aie_low", "aie_high", "held_out", "held_out_low", "held_out_high"):
        np.testing.assert_allclose(doubled[name].values, once[name].values, rtol=1e-9, err_msg=name)
    assert (doubled.cell.values == once.cell.values).all()


def test_too_few_records_is_a_config_error():
    with pytest.raises(ConfigError, match="at least 4 records"):
        strongest(assemble(records()[:3], 4, ("hidden", "mlp"), ATTRS, N_HEADS))


def test_summarize_strongest_prints_and_stores_them(tmp_path):
    """`nnct summarize --strongest K` prints the list and writes it into the summary file,
    the same numbers as the library's; too few records is a message, not a traceback."""
    from click.testing import CliRunner

    from nnct.cli import main
    from nnct.results.cube import open_cube, write

    ds = assemble(records(), 4, ("hidden", "mlp"), ATTRS, N_HEADS)
    cube, out = tmp_path / "c.nc", tmp_path / "s.nc"
    write(ds, cube)
    result = CliRunner().invoke(main, ["summarize", str(cube), "--strongest", "2", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "held out" in result.output and "cells" in result.output
    s = open_cube(out)
    found = strongest(ds, k=2, seed=3)
    assert list(s.strongest_cell.sel(strongest_kind="cells").values) == list(found.cell.sel(kind="cells").values)
    np.testing.assert_allclose(s.strongest_held_out.values, found.held_out.values)
    assert s.attrs["strongest_seed"] == 3 and "aie" in s
    small = tmp_path / "small.nc"
    write(assemble(records()[:3], 4, ("hidden", "mlp"), ATTRS, N_HEADS), small)
    bad = CliRunner().invoke(main, ["summarize", str(small), "--strongest", "2"])
    assert bad.exit_code == 2 and "at least 4 records" in bad.output


def test_a_metric_that_falls_toward_the_clean_run_ranks_by_its_most_negative_cells():
    """Clean and corrupted values swapped (the total effect is negative, as for KL or rank), the
    mlp at layer 2 lowered by 0.3 at every token: that cell is the strongest, listed as most
    negative; restricted to hidden, only hidden cells of the one segment asked are ranked."""
    rows = []
    for r in records():
        values = dict(r.values)
        values["p_clean"], values["p_corrupt"] = np.minimum(r.values["p_corrupt"], 0.3), np.maximum(r.values["p_clean"], 0.6)
        values["p_restored"] = values["p_restored"].copy()
        values["p_restored"][:, 2, 1, 0] -= 0.3
        rows.append(replace(r, values=values))
    ds = assemble(rows, 4, ("hidden", "mlp"), ATTRS, N_HEADS)
    found = strongest(ds, k=2)
    assert found.attrs["direction"] == "most negative"
    assert str(found.cell.sel(kind="cells").values[0]).endswith("L2 mlp")
    assert (found.aie.sel(kind="cells").values < 0).all()
    hidden = strongest(ds, k=3, segments=["last"], components=["hidden"])
    assert list(hidden.kind.values) == ["cells"]
    assert all(c.startswith("last L") and c.endswith(" hidden") for c in hidden.cell.values[0] if c)


def test_ranking_by_size_takes_either_sign():
    """direction 0 (path patching's senders): a cell of -0.5 outranks one of +0.3, and a cell
    of no effect (all 0) is not listed."""
    rng = np.random.default_rng(2)
    per = np.zeros((8, 4)) + rng.normal(0, 0.01, size=(8, 4))
    per[:, 1] -= 0.5
    per[:, 3] += 0.3
    per[:, 0] = 0.0
    r = rank_cells(per, 4, (np.arange(4), np.arange(4, 8)), direction=0)
    assert list(r["best"][:2]) == [1, 3] and 0 not in r["best"]
    assert r["held_out"][0] == pytest.approx(per[:, 1].mean())
