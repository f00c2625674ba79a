"""The strongest cells of a cube, with estimates that are not chosen on the data they report.

Picking the largest of many noisy means and reporting that mean overstates its cell's effect
(the winner's curse): among 270 heads of no effect at all, the largest mean over 30 facts is
well above 0. `strongest` reports, per kind of restored variable the cube holds (cells:
segment x layer x component; heads: segment x layer x head; heads restored at all positions:
layer x head), the K strongest cells beside a held-out estimate of each (docs/method.md,
"Summaries"):

- The records (the unit of sampling, an example's `record_id`) are split at random (seeded)
  into two halves. On each half the K cells of largest AIE (mean of record means) are chosen
  by rank; each rank's cell is then estimated on the *other* half. The held-out value of rank
  i is the mean, over every record, of that record's effect at the rank-i cell that the half
  it does not belong to chose: the two directions averaged, each record counted once. Its 95%
  interval is Student t over those record values, conditional on the two choices.
- The in-sample value of rank i is the rank-i cell chosen on all records and estimated on
  them, with the summary's interval (what `summarize` and the strongest-heads list report).
- "Strongest" is the direction a method's effects run. Restoring moves a metric from the
  corrupted run's value toward the clean run's: the direction of the mean total effect (up
  for p, down for KL or rank). Ablating moves it away from the clean run's: the direction of
  the mean effect over every cell (down for p, up for KL). Only cells with an in-sample effect
  in that direction are listed, so a list can be shorter than K.
- The held-out value estimates the effect of the cell a half-sized study would pick, so it is
  unbiased for that cell and tends to lie below the in-sample one; where the halves pick
  different cells at a rank, both are named.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ConfigError
from ..interventions.operations import ABLATIONS
from ..results.cube import holds
from .summary import all_positions, mean_ci, record_means, segment_effects, segments_of, select

# (the restored variable, its kind's name, the axis after layer)
KINDS = (("restored", "cells", "component"), ("restored_head", "heads", "head"),
         ("restored_head_all_pos", "heads_all_positions", "head"))


def strongest(ds, k: int = 5, metric: str = "prob", variant: str | None = None, filter: str | None = None,
              seed: int = 0, segments: list[str] | None = None, components: list[str] | None = None):
    """A Dataset over (kind, rank) of the `k` strongest cells of `ds` by `metric` (module
    docstring): `cell`, `aie` with `aie_low`/`aie_high` (in-sample), `held_out` with
    `held_out_low`/`held_out_high`, and the cells each half chose (`first_half`,
    `second_half`); the records are split by `seed`, cells are taken from `segments`
    (default: every segment) and, given `components`, from those components alone (heads
    left out: a peak of one curve is `segments=[s], components=[c]`)."""
    import xarray as xr

    if k < 1:
        raise ConfigError(f"--strongest {k}: list at least one cell")
    chosen = select(ds, variant, filter)
    records = (chosen.record_id.values if "record_id" in chosen else chosen.example.values).astype(str)
    if len(set(records)) < 4:
        raise ConfigError(f"held-out estimates need at least 4 records (2 per half); this selection has {len(set(records))}")
    segments = segments or segments_of(chosen)
    halves = split(list(dict.fromkeys(records)), seed)
    kinds, rows, direction = [], [], None
    if components:
        chosen = chosen.sel(component=list(components))
    for of, kind, x in KINDS if not components else KINDS[:1]:
        if holds(chosen, of):
            per, te, labels = _cells(chosen, metric, of, x, segments)
            if direction is None:  # one direction for every kind: the first kind's
                direction = _direction(te, per, chosen.attrs.get("operation") in ABLATIONS)
            kinds.append(kind)
            rows.append(_labelled(rank_cells(record_means(per, records), k, halves, direction), labels, k))
    if not kinds:
        raise ConfigError("the cube holds no restored or ablated cells")
    data = {name: (("kind", "rank"), np.stack([r[name] for r in rows])) for name in rows[0]}
    attrs = {"metric": metric, "k": k, "seed": seed, "records": len(halves[0]) + len(halves[1]),
             "first_half_records": len(halves[0]), "direction": "largest" if direction > 0 else "most negative",
             "variant": variant or "all", "filter": filter or "none"}
    return xr.Dataset(data, coords={"kind": kinds, "rank": np.arange(1, k + 1)}, attrs=attrs)


def split(records: list, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the distinct `records`: a seeded random half (R // 2) and the rest."""
    order = np.random.default_rng(seed).permutation(len(records))
    return np.sort(order[:len(records) // 2]), np.sort(order[len(records) // 2:])


def _direction(te: np.ndarray, per: np.ndarray, ablation: bool) -> float:
    """+1 or -1: the sign of the mean total effect (restoration), or of the mean effect over
    every cell (ablation, whose total effect is 0); +1 where that is 0 or undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(per if ablation else te)
    return -1.0 if mean < 0 else 1.0


def _cells(ds, metric: str, of: str, x: str, segments: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(IE [example, cell], TE [example], the cells' labels) of one restored variable, cells
    flattened."""
    layers = [int(v) for v in ds.layer.values]
    units = ([str(c) for c in ds.component.values] if x == "component" else [f"H{h}" for h in range(ds.sizes["head"])])
    sep = " " if x == "component" else ""
    if of == "restored_head_all_pos":
        per, te = (v[0] for v in all_positions(ds, (metric,)))  # [example, layer, head], [example]
        labels = [f"L{layer}{sep}{u}" for layer in layers for u in units]
    else:
        per, te = (v[0] for v in segment_effects(ds, (metric,), segments, of=of))  # [example, segment, layer, X]
        labels = [f"{s} L{layer}{sep}{u}" for s in segments for layer in layers for u in units]
    return per.reshape(per.shape[0], -1), te, labels


def _strength(means: np.ndarray, direction: float) -> np.ndarray:
    """How strong each mean is: along `direction` (+1 or -1), or its size (0); NaN weakest."""
    return np.nan_to_num(np.abs(means) if direction == 0 else direction * means, nan=-np.inf)


def _top(means: np.ndarray, k: int, direction: float) -> np.ndarray:
    """The k cells of strongest mean (`_strength`), strongest first."""
    return np.argsort(-_strength(means, direction), kind="stable")[:k]


def rank_cells(per: np.ndarray, k: int, halves, direction: float = 1.0) -> dict:
    """The k strongest cells of `per` [record, cell] (record means), by rank: `best` (chosen on
    all records) with its in-sample `aie`, `aie_low`, `aie_high`; `first` and `second`, the
    cells each half chose; `held_out` with `held_out_low`, `held_out_high` (module
    docstring), strongest along `direction` (+1, -1, or 0: by size, either sign). `halves`:
    two disjoint index arrays covering the records (`split`)."""
    mean, low, high, _ = mean_ci(per, axis=0)
    k = min(k, int(np.sum(_strength(mean, direction) > 0)))  # a cell of no effect is no cell to report
    best = _top(mean, k, direction)
    first, second = halves
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a cell no record of a half has
        pick_first = _top(np.nanmean(per[first], axis=0), k, direction)
        pick_second = _top(np.nanmean(per[second], axis=0), k, direction)
    held = np.empty((per.shape[0], k))
    held[second] = per[second][:, pick_first]  # chosen on the first half, estimated on the second
    held[first] = per[first][:, pick_second]
    h_mean, h_low, h_high, _ = mean_ci(held, axis=0)
    return {"best": best, "aie": mean[best], "aie_low": low[best], "aie_high": high[best], "first": pick_first,
            "second": pick_second, "held_out": h_mean, "held_out_low": h_low, "held_out_high": h_high}


def _labelled(ranked: dict, labels: list[str], k: int) -> dict:
    """`rank_cells`' result with cells named, padded to k ranks (fewer cells: empty ranks)."""
    pad = k - len(ranked["best"])
    out = {}
    for name, values in ranked.items():
        if name in ("best", "first", "second"):
            out["cell" if name == "best" else name + "_half"] = np.array([labels[i] for i in values] + [""] * pad, dtype=str)
        else:
            out[name] = np.concatenate([values, np.full(pad, np.nan)])
    return out


def into_summary(found, summary):
    """`summary` with the strongest cells added (`strongest_<name>` over (strongest_kind,
    rank); attrs `strongest_<attr>`), so that one summary file holds both."""
    renamed = found.rename({"kind": "strongest_kind", **{name: f"strongest_{name}" for name in found.data_vars}})
    merged = summary.merge(renamed)
    merged.attrs = {**summary.attrs, **{f"strongest_{k}": v for k, v in found.attrs.items()}}
    return merged


def table(found) -> str:
    """The strongest cells as plain text, in-sample beside held-out, per kind."""
    a = found.attrs
    lines = [f"strongest {a['k']} cells by {a['metric']} ({a['direction']} AIE), per kind: in-sample (chosen and estimated"
             f" on all {a['records']} records) and held out (chosen on one half, {a['first_half_records']} records split"
             f" with seed {a['seed']}, estimated on the other, both ways; 95% t intervals over records)"]
    for kind in found.kind.values:
        f = found.sel(kind=kind)
        lines.append(f"\n{kind}")
        lines.append(f"{'rank':>4s}  {'cell (all records)':28s}{'in-sample':>10s}{'95% CI':>19s}{'held out':>10s}{'95% CI':>19s}"
                     "   chosen by the halves")
        for r in f["rank"].values:
            row = f.sel(rank=r)
            if not str(row.cell.values):
                continue
            halves = str(row.first_half.values)
            if str(row.second_half.values) != halves:
                halves += " | " + str(row.second_half.values)
            lines.append(f"{int(r):4d}  {str(row.cell.values):28s}{float(row.aie):10.3f}   [{float(row.aie_low):6.3f},"
                         f" {float(row.aie_high):6.3f}]{float(row.held_out):10.3f}   [{float(row.held_out_low):6.3f},"
                         f" {float(row.held_out_high):6.3f}]   {halves}")
    return "\n".join(lines)
