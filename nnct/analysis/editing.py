"""Pooled metrics of an edits file: the mean of each edit's metric over the edits, with a 95%
interval, and the retention of other facts the edited model knew.

Beside them, `energy` measures how much an update moves a layer's output on given keys (or on
a second moment's), and how much of the keys lies in a subspace (AlphaEdit's null space): the
algebra `analysis/edit_disturbance.py` explains the scaling study with.

An edit's efficacy is 0 or 1, so its pooled share takes Wilson's score interval (a t interval
of a column of ones has width 0, and says nothing about 20 edits against 1,000). The other
metrics are shares of several prompts (paraphrase, specificity) or continuous (magnitude,
fluency): a Student t interval over edits. Retention is one share over the retained facts
(attrs `retention_known` and `retention_kept`), with Wilson's interval.
"""

from __future__ import annotations

import math

import numpy as np

from .summary import mean_ci

METRICS = ("efficacy", "efficacy_magnitude", "paraphrase", "specificity", "fluency")
BINARY = ("efficacy",)
Z = 1.959963984540054  # the normal's 97.5% quantile


def wilson(kept: int, n: int) -> tuple[float, float, float]:
    """(share, low, high): `kept` of `n` with Wilson's 95% score interval (NaN when n is 0)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    share = kept / n
    centre = (share + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(share * (1 - share) / n + Z * Z / (4 * n * n))
    return share, centre - half, centre + half


def pooled(edits, attrs: dict) -> dict[str, tuple[float, float, float, int]]:
    """{metric: (mean, low, high, n)} over `edits` (each metric's NaN left out), and
    `retention` when the attrs hold it."""
    out = {}
    for name in METRICS:
        values = np.array([e.metrics.get(name, np.nan) for e in edits], dtype=float)
        values = values[np.isfinite(values)]
        if name in BINARY:
            out[name] = (*wilson(int(values.sum()), len(values)), len(values))
        else:
            mean, low, high, n = mean_ci(values) if len(values) else (np.nan, np.nan, np.nan, 0)
            out[name] = (float(mean), float(low), float(high), int(n))
    if "retention_known" in attrs:
        known = int(attrs["retention_known"])
        out["retention"] = (*wilson(int(attrs["retention_kept"]), known), known)
    return out


def energy(matrix: np.ndarray, keys: np.ndarray | None = None, second_moment: np.ndarray | None = None) -> float:
    """The mean squared norm of matrix @ k ([d_out, d_ff] @ [d_ff]): over the columns of
    `keys` [d_ff, n], or over keys whose second moment E[k k^T] is `second_moment`, where it
    is trace(M C M^T). With a weight and its update, sqrt(energy(update) / energy(weight))
    is the update's output change relative to the layer's; with a projection P, energy(P) /
    energy(identity) is the share of the keys' energy inside P's subspace."""
    if keys is not None:
        return float(np.square(matrix @ keys).sum() / keys.shape[1])
    return float(np.einsum("ij,jk,ik->", matrix, second_moment, matrix))


def table(edits, attrs: dict) -> str:
    """The edits' pooled metrics, one line each, with their intervals."""
    method = attrs.get("method", "rome")
    where = (f"at layer {attrs['layer']}" + (" one after another" if int(attrs.get("sequential", 0)) else "")
             if method == "rome" else f"by {method} at layers {attrs['layers']} in {attrs['batches']} batch(es)")
    lines = [f"{len(edits)} edits {where} (C: {attrs['covariance']})", f"  {'':20s}{'mean':>8s}  95% interval     n"]
    for name, (mean, low, high, n) in pooled(edits, attrs).items():
        lines.append(f"  {name:20s}{mean:8.3f}  [{low:6.3f}, {high:6.3f}] {n:5d}")
    return "\n".join(lines)
