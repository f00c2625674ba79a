"""What to run: the cells of an example, how they pack into forward passes, what each
forward writes where. Pure data, no model: the engine executes a plan, a remote backend
can ship one.

A cell (token t, layer l, component c) occupies `samples` consecutive rows of a forward
pass, one per noise sample (or, reverse patching, one per corrupted sample whose value is
written into a clean row). Restoring `hidden` writes the residual stream after layer l at
t; restoring `mlp` or `attn` writes that sublayer's output at t in every layer of the
window around l (METHOD.md). A batch's patches are grouped by (layer, component) so that
the engine makes one indexed write per module it touches, in the order the model runs them.

What an exact trace must compute is much less than a full forward per cell, and the plan
says what can be left out (the engine supplies it from the base run, the corrupted run,
or for reverse patching the clean one, computed once per example):
- a write at position t cannot change any position before t (causal attention), so a
  batch runs only positions from its smallest t on, the earlier ones coming from the base
  run's key/value cache;
- nothing changes before the first layer whose output a cell changes, so a batch runs only
  from there on, the layers before it skipped: their output is the base run's residual
  stream (for a hidden cell at layer l, that stream after layer l with the clean value
  written at t, so layer l itself need not run either);
- positions before the first corrupted token are the same in the clean and corrupted
  runs, so writing them is a no-op: those cells take the base run's probabilities and
  need no forward at all.
Cells are grouped by their first layer and sorted by token, so each batch wastes little.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

COMPONENTS = ("hidden", "mlp", "attn")
# The order a decoder layer produces them in; nnsight must read modules in forward order.
FORWARD_ORDER = ("attn", "mlp", "hidden")


@dataclass(frozen=True)
class Cell:
    token: int
    layer: int
    component: str


def components(spec: str | list[str]) -> tuple[str, ...]:
    names = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else list(spec)
    bad = [c for c in names if c not in COMPONENTS]
    if bad or not names:
        raise ConfigError(f"unknown component(s) {bad}: use a comma list of {', '.join(COMPONENTS)}")
    return tuple(c for c in COMPONENTS if c in names)


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """METHOD.md's window: range(max(0, l - w//2), min(L, l - (-w//2)))."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def cells(n_tokens: int, n_layers: int, comps: tuple[str, ...]) -> list[Cell]:
    return [Cell(t, l, c) for c in comps for t in range(n_tokens) for l in range(n_layers)]


def first_layer(cell: Cell, window: int, n_layers: int) -> int:
    """The first layer that must run for a cell: the one after a hidden write (whose own
    output is the write), the window's first for mlp and attn (their sublayer runs there)."""
    return cell.layer + 1 if cell.component == "hidden" else window_layers(cell.layer, window, n_layers).start


@dataclass(frozen=True)
class Batch:
    cells: list[Cell]
    start: int  # first position run; earlier ones come from the base run's cache
    first_layer: int  # first layer run; earlier ones are skipped


@dataclass(frozen=True)
class Schedule:
    batches: list[Batch]
    unchanged: list[Cell]  # before the first corrupted token: the base run's result, exactly


def schedule(all_cells: list[Cell], samples: int, batch_rows: int, window: int, n_layers: int, first_corrupted: int,
             n_tokens: int = 0, token_rows: int | None = None) -> Schedule:
    """Batches of at most `batch_rows` rows (at least one cell) sharing a first layer, each
    of cells adjacent in token order, so that running a batch from its smallest token wastes
    little. With `token_rows`, a batch also holds at most that many rows x positions run
    (n_tokens - start): batches that start late, and so run few positions, take more cells.
    (Tiles spanning two or three first layers were measured too: slower.)"""
    most = max(1, batch_rows // samples)
    unchanged = [c for c in all_cells if c.token < first_corrupted]
    groups: dict[int, list[Cell]] = {}
    for c in all_cells:
        if c.token >= first_corrupted:
            groups.setdefault(first_layer(c, window, n_layers), []).append(c)
    out = []
    for layer, group in sorted(groups.items()):
        group.sort(key=lambda c: (c.token, c.layer, c.component))
        i = 0
        while i < len(group):
            start = group[i].token
            per = most if token_rows is None else max(1, min(most, token_rows // (samples * (n_tokens - start))))
            out.append(Batch(group[i : i + per], start=start, first_layer=layer))
            i += per
    return Schedule(out, unchanged)


@dataclass(frozen=True)
class Patch:
    """Rows `rows` get the source value at positions `tokens` (row j*S + s: cell j, sample s)."""

    rows: list[int]
    tokens: list[int]


def patches(batch: list[Cell], samples: int, window: int, n_layers: int) -> dict[tuple[int, str], Patch]:
    """(layer, component) -> the writes of these cells there (absolute positions)."""
    acc: dict[tuple[int, str], tuple[list[int], list[int]]] = {}
    for j, cell in enumerate(batch):
        layers = [cell.layer] if cell.component == "hidden" else window_layers(cell.layer, window, n_layers)
        for layer in layers:
            rows, tokens = acc.setdefault((layer, cell.component), ([], []))
            rows.extend(range(j * samples, (j + 1) * samples))
            tokens.extend([cell.token] * samples)
    return {key: Patch(*value) for key, value in acc.items()}
