"""Metrics: what a forward pass reports about the two answers, and the numbers made from it.

Every forward pass reports, per row, the target's and the alt's probability (a softmax in
float32 over the model's own final logits, after any soft-capping) and their logits. An
answer is a tuple of token ids: its first token only (ROME's choice, the default), or all
tokens of `" " + answer` (`answer="full"`), whose probability is then teacher-forced: the
product of each token's probability given the prompt and the answer's earlier tokens; its
logit stays the first token's, since a logit difference is a first-token notion. The cube
keeps both, averaged over noise samples, so that every metric below is derived from one
trace:

- `prob`: p(target), ROME's metric;
- `logit_diff`: logit(target) - logit(alt) (TransformerLens, IOI);
- `log_ratio`: log(p_target / p_alt);
- `recovery` and `recovery_logit_diff`: the indirect effect of `prob` (or `logit_diff`) as a
  fraction of the total effect, (m_restored - m_corrupt) / (m_clean - m_corrupt) (the
  tutorials report it in per cent; nnct keeps fractions). Undefined (NaN, left out of
  averages) where the total effect is below `MIN_TOTAL` in the base metric's units.

An extra readout a cube stores (`readouts`: `kl`, `rank`, ...) is a metric too, by its name
(`stored`): its IE and TE are differences of the stored values, as `prob`'s.

Adding a metric is one `Metric` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from . import readouts

ANSWER_PROB = ("first", "full")
# |total effect| below which a normalised metric is undefined (the ratio would be noise)
MIN_TOTAL = 1e-3


@dataclass(frozen=True)
class Metric:
    name: str
    # value(p_target, p_alt, logit_target, logit_alt) -> the metric (numpy or xarray)
    value: Callable | None
    label: str  # axis label of its effects
    uses_logits: bool = False
    normalises: str | None = None  # the base metric of a recovery: IE / TE of that metric


def _log_ratio(pt, pa, lt, la):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(pt) - np.log(pa)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("prob", lambda pt, pa, lt, la: pt, "IE (p restored - p corrupted)"),
        Metric("log_ratio", _log_ratio, "IE in log(p target / p alt)"),
        Metric("logit_diff", lambda pt, pa, lt, la: lt - la, "IE in logit(target) - logit(alt)", uses_logits=True),
        Metric("recovery", None, "recovery of p (fraction of the total effect)", normalises="prob"),
        Metric("recovery_logit_diff", None, "recovery of the logit difference (fraction)", uses_logits=True,
               normalises="logit_diff"),
    )
}


def stored(name: str) -> Metric:
    """The metric of an extra readout a cube stores (a callable's too, by its name)."""
    entry = readouts.READOUTS.get(name)
    return Metric(name, None, entry.label if entry else f"IE in {name}")


def metric(name: str) -> Metric:
    if name in METRICS:
        return METRICS[name]
    if name in readouts.READOUTS and readouts.READOUTS[name].stored:
        return stored(name)
    known = [*METRICS, *(r for r, entry in readouts.READOUTS.items() if entry.stored)]
    raise ConfigError(f"unknown metric {name!r}; known: {', '.join(known)}")


def effects(m: Metric | str, clean, corrupt, restored, reverse: bool):
    """(IE, TE) of metric `m` (or its name) from its base values in the three runs (any array
    type that broadcasts: the cube's DataArrays, numpy). Forward: IE = restored - corrupt;
    reverse patching: IE = clean - patched. TE = clean - corrupt in both; a recovery is
    IE / TE, and its own TE is 1."""
    m = metric(m) if isinstance(m, str) else m
    te = clean - corrupt
    ie = clean - restored if reverse else restored - corrupt
    if m.normalises is None:
        return ie, te
    defined = abs(te) >= MIN_TOTAL
    total = te.where(defined) if hasattr(te, "where") else np.where(defined, te, np.nan)
    return ie / total, total / total


def base(name: str) -> Metric:
    """The metric whose values a metric is made of (itself, or the one a recovery normalises)."""
    m = metric(name)
    return METRICS[m.normalises] if m.normalises else m
