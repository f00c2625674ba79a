"""What to run: the cells of an example, how they pack into forward passes, what each
forward writes where. Pure data, no model: the engine executes a plan, a remote backend
can ship one.

A cell (token t, layer l, component c) occupies `samples` consecutive rows of a forward
pass, one per noise sample (or, reverse patching, one per corrupted sample whose value is
written into a clean row). Restoring `hidden` writes the residual stream after layer l at
t; restoring `mlp` or `attn` writes that sublayer's output at t in every layer of the
window around l (METHOD.md). A batch is a list of cells; its patches are grouped by
(layer, component) so that the engine makes one indexed write per module it touches, in
the order the model runs them.
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


def batches(all_cells: list[Cell], samples: int, batch_rows: int) -> list[list[Cell]]:
    """Consecutive groups of cells of at most `batch_rows` rows (at least one cell)."""
    per = max(1, batch_rows // samples)
    return [all_cells[i : i + per] for i in range(0, len(all_cells), per)]


@dataclass(frozen=True)
class Patch:
    """Rows `rows` at positions `tokens` get the source value of (sample, token)."""

    rows: list[int]
    tokens: list[int]
    samples: list[int]


def patches(batch: list[Cell], samples: int, window: int, n_layers: int) -> dict[tuple[int, str], Patch]:
    """(layer, component) -> the writes of this batch there."""
    acc: dict[tuple[int, str], tuple[list[int], list[int], list[int]]] = {}
    for j, cell in enumerate(batch):
        layers = [cell.layer] if cell.component == "hidden" else window_layers(cell.layer, window, n_layers)
        for layer in layers:
            rows, tokens, samps = acc.setdefault((layer, cell.component), ([], [], []))
            for s in range(samples):
                rows.append(j * samples + s)
                tokens.append(cell.token)
                samps.append(s)
    return {key: Patch(*value) for key, value in acc.items()}
