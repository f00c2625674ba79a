"""How far attribution patching's estimates agree with exact patching, on the same cells.

`compare` takes an AtP cube and an exact cube of the same examples (matched by example id)
and, per component (the components of whole sites one by one, and the heads' variables),
pools the indirect effects of the target answer in one metric over every cell of every
shared example (padding and cells either cube lacks left out) and reports: Pearson and
Spearman correlation, the recall of the exact top-k cells (by |IE|) among AtP's top-k for
k = 10 and 50, and the exact top cells AtP ranks outside its top-k (the largest misses),
with both values. A perfect screen has correlations of 1 and recalls of 1.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..results.cube import TITLES, cell_names, holds, metric_effects

TOP = (10, 50)
MISSES = 5  # largest misses listed per component
# what must be equal for two cubes to hold the same cells
SAME = ("model", "experiment", "corruption", "reverse_patching", "window", "samples", "noise_level", "seed")


def _same(a, b) -> bool:
    """Equal settings; a number computed over the data set (the noise level) to rounding."""
    if isinstance(a, (float, np.floating)) and isinstance(b, (float, np.floating)):
        return bool(np.isclose(a, b, rtol=1e-9, atol=0.0))
    return str(a) == str(b)


def _groups(ds):
    """(label, restored variable, selection) of every group of cells the cube holds."""
    out = [(str(c), "restored", {"component": str(c)}) for c in ds.component.values] if holds(ds, "restored") else []
    return out + [(name, of, {}) for name, of in (("head", "restored_head"), ("head_all_pos", "restored_head_all_pos"))
                  if holds(ds, of)]


def _rank(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's correlation."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def scores(estimate: np.ndarray, exact: np.ndarray) -> dict:
    """Pearson, Spearman and recall of the exact top-k (by |value|) among the estimate's top-k
    of two flat arrays of finite values, cell for cell."""
    x, y = np.asarray(estimate, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    out = {"cells": int(len(x)), "pearson": _pearson(x, y), "spearman": _pearson(_rank(x), _rank(y))}
    by_exact, by_atp = np.argsort(-np.abs(y), kind="stable"), np.argsort(-np.abs(x), kind="stable")
    for k in TOP:
        kk = min(k, len(x))
        out[f"recall_{k}"] = float(len(set(by_exact[:kk]) & set(by_atp[:kk])) / kk) if kk else float("nan")
    return out


def compare(atp, exact, metric: str = "prob") -> dict:
    """The agreement of `atp` (an AtP cube) with `exact` (see the module's docstring):
    {"metric", "examples", "components": {label: {"cells", "pearson", "spearman",
    "recall_10", "recall_50", "misses": [{"example", "cell", "exact", "atp"}]}}}."""
    if atp.attrs.get("method") not in ("atp", "atp*"):
        raise ConfigError("the first cube is no attribution-patching cube (attr method atp or atp*)")
    if exact.attrs.get("method", "exact") != "exact":
        raise ConfigError("the cube to compare with must be an exact trace")
    differ = [k for k in SAME if not _same(atp.attrs.get(k), exact.attrs.get(k))]
    if differ:
        raise ConfigError("the cubes were made with other settings: " + ", ".join(
            f"{k} {atp.attrs.get(k)} vs {exact.attrs.get(k)}" for k in differ))
    shared = [e for e in atp.example.values if e in set(exact.example.values)]
    if not shared:
        raise ConfigError("the two cubes share no example")
    a, e = atp.sel(example=shared), exact.sel(example=shared)
    n = min(a.sizes["token"], e.sizes["token"])  # padding beyond the longest shared prompt
    a, e = a.isel(token=slice(0, n)), e.isel(token=slice(0, n))
    if not (a.token_id.values == e.token_id.values).all():
        raise ConfigError("the cubes tokenised the shared examples differently")
    out = {"estimate": atp.attrs["method"], "metric": metric, "examples": len(shared), "components": {}}
    exact_groups = {label for label, _, _ in _groups(e)}
    for label, of, pick in _groups(a):
        if label not in exact_groups:
            continue
        est = metric_effects(a, metric, of)[0].sel(pick)
        ref = metric_effects(e, metric, of)[0].sel(pick)
        x, y = est.values.ravel(), ref.values.ravel()
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep].astype(np.float64), y[keep].astype(np.float64)
        where = np.argwhere(keep.reshape(est.shape))
        entry = scores(x, y)
        by_exact, by_atp = np.argsort(-np.abs(y), kind="stable"), np.argsort(-np.abs(x), kind="stable")
        screened = set(by_atp[:min(TOP[0], len(x))])
        misses = [i for i in by_exact[:min(TOP[0], len(x))] if i not in screened][:MISSES]
        dims = [d for d in est.dims]
        entry["misses"] = [{"example": str(shared[where[i][0]]),
                            "cell": {d: int(where[i][k]) for k, d in enumerate(dims) if d != "example"},
                            "exact": float(y[i]), "atp": float(x[i])} for i in misses]
        out["components"][label] = entry
    return out


def table(agreement: dict) -> str:
    """The agreement as a plain-text table, with the largest misses."""
    lines = [f"{TITLES[agreement.get('estimate', 'atp')]} against exact patching ({agreement['metric']}, {agreement['examples']} examples)",
             f"{'component':20s}{'cells':>8s}{'pearson':>9s}{'spearman':>10s}{'recall@10':>11s}{'recall@50':>11s}"]
    for label, c in agreement["components"].items():
        lines.append(f"{label:20s}{c['cells']:8d}{c['pearson']:9.3f}{c['spearman']:10.3f}{c['recall_10']:11.2f}"
                     f"{c['recall_50']:11.2f}")
    for label, c in agreement["components"].items():
        for m in c["misses"]:
            cell = ", ".join(f"{k}={v}" for k, v in m["cell"].items())
            lines.append(f"  missed {label} {m['example']} ({cell}): exact {m['exact']:+.4f}, AtP {m['atp']:+.4f}")
    return "\n".join(lines)


def screen(estimates: np.ndarray, exact: np.ndarray, k: int, top: int = TOP[0]):
    """One example's screen, flat over its cells: (known: cells with an estimate, those from
    the first corrupted token on; screened: the K of largest |estimate| among them, as
    `--verify-top` picks them; bar: the min(top, K)-th strongest |exact| among the screened
    cells that `exact` holds, None when it holds none)."""
    known = np.isfinite(estimates) & (estimates != 0)  # cells before the first corrupted token are exactly 0
    screened = np.zeros(len(estimates), dtype=bool)
    screened[np.argsort(-np.abs(np.where(known, estimates, 0)), kind="stable")[:k]] = True
    screened &= known
    strongest = np.sort(np.abs(exact[screened & np.isfinite(exact)]))[::-1]
    return known, screened, strongest[min(top, len(strongest)) - 1] if len(strongest) else None


def verified(ds, top: int = TOP[0]) -> dict:
    """What the exact cells of a screened cube (`nnct attribute --verify-top K`) say of its
    screen, per component, in p(target): per example, the screen's K top cells (by |ie_atp|,
    as the screen ranked them) and a random sample of the rest were patched exactly; the
    bar is the min(top, K)-th strongest exact |IE| among the screened cells, and the sample's
    share of cells above it, times the unscreened cells, estimates how many cells the screen
    missed that beat the bar (NaN without a sample):
    {label: {"examples", "screened", "sampled", "sampled_above", "bar_rank", "misses_per_example"}}."""
    k, n = int(ds.attrs.get("verify_top", 0)), int(ds.attrs.get("verify_sample", 0))
    if ds.attrs.get("method") not in ("atp", "atp*") or not k:
        raise ConfigError("the cube holds no exactly verified top cells (made by nnct attribute --verify-top K)")
    out = {}
    for label, of, pick in _groups(ds):
        est = ds[cell_names(of, ds.attrs["method"])[0]].sel(pick).sel(answer="target")
        ref = metric_effects(ds, "prob", of, exact=True)[0].sel(pick)
        screened = sampled = above = 0
        misses = []
        for x, y in zip(est.values.reshape(est.shape[0], -1), ref.values.reshape(ref.shape[0], -1)):
            known, in_top, bar = screen(x, y, k, top)
            if bar is None:
                continue
            done = np.isfinite(y)
            sample = done & ~in_top
            n_above = int((np.abs(y[sample]) > bar).sum())
            screened, sampled, above = screened + int((in_top & done).sum()), sampled + int(sample.sum()), above + n_above
            if sample.sum():
                misses.append(n_above / sample.sum() * int((known & ~in_top).sum()))
        out[label] = {"examples": int(est.shape[0]), "screened": screened, "sampled": sampled, "sampled_above": above,
                      "bar_rank": min(top, k), "misses_per_example": float(np.mean(misses)) if misses and n else float("nan")}
    return out


def verified_table(found: dict) -> str:
    """`verified` as a plain-text table."""
    rank = next(iter(found.values()))["bar_rank"] if found else TOP[0]
    lines = [f"exactly verified cells; misses: unscreened cells whose exact effect beats the screen's {rank}th strongest,"
             " estimated from the random sample",
             f"{'component':20s}{'screened':>10s}{'sampled':>9s}{'above':>7s}{'misses/example':>17s}"]
    for label, c in found.items():
        lines.append(f"{label:20s}{c['screened']:10d}{c['sampled']:9d}{c['sampled_above']:7d}{c['misses_per_example']:17.2f}")
    return "\n".join(lines)
