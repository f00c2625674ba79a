"""Operations: what a cell does to the site it writes (docs/method.md, "Operations").

An intervention is a site (`model.sites`: where) and an operation (what is written there),
as pyvene has it. Every operation makes the values written at a cell's elements from the
values a run has at hand, `Values`:
- `copy`: the source run's value (restoring a corrupted run, or patching a clean one);
- `freeze`: the base run's own value (a severed path keeps the site as the base run has it);
- `zero`: zeros (zero ablation);
- `mean`: the site's mean over a reference set of prompts (mean ablation, IOI);
- `add`: the site's own value plus alpha * v (steering, CAA and ActAdd): its values are
  added to the site's value rather than written over it.

The engine gathers `Values` for the elements of a batch (the source's and base's values at
the cell's rows, layers and positions, the reference mean, the vector) and calls the entry;
what it writes is the entry's result. Adding an operation is one `Operation` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError


@dataclass
class Values:
    """What an operation may use, each [n, d] for the n elements it writes (None where the run
    has none): the source run's and the base run's values there, the reference mean, and a
    vector with its scale."""

    source: object = None
    base: object = None
    mean: object = None
    vector: object = None
    alpha: float = 1.0
    like: object = None  # any of the above: the shape, dtype and device of the result


def _copy(v: Values):
    return v.source


def _freeze(v: Values):
    return v.base


def _zero(v: Values):
    import torch

    return torch.zeros_like(v.like)


def _mean(v: Values):
    return v.mean


def _add(v: Values):
    return v.alpha * v.vector


@dataclass(frozen=True)
class Operation:
    name: str
    make: Callable  # (Values) -> the values written (or added) [n, d]
    needs: str | None  # the field of `Values` it reads (None: only the shape)
    adds: bool = False  # added to the site's own value, not written over it


OPERATIONS: dict[str, Operation] = {
    o.name: o
    for o in (
        Operation("copy", _copy, "source"),
        Operation("freeze", _freeze, "base"),
        Operation("zero", _zero, None),
        Operation("mean", _mean, "mean"),
        Operation("add", _add, "vector", adds=True),
    )
}

# The operations that remove a cell's information (`nnct ablate`).
ABLATIONS = ("zero", "mean")


def operation(name: str) -> Operation:
    if name not in OPERATIONS:
        raise ConfigError(f"unknown operation {name!r}; known: {', '.join(OPERATIONS)}")
    return OPERATIONS[name]
