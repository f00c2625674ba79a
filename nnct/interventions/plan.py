"""What to run: the cells of an example, how they pack into forward passes, what each
forward writes where. Pure data, no model: the engine executes a plan, a remote session
can carry one.

A cell (token t, layer l, component c, and a head for a component of heads; see
`components`) occupies `samples` consecutive rows of a forward pass, one per corrupted row
(a noise sample; a counterfactual prompt has one), or, reverse patching, one per corrupted
row whose value is written into a clean row. Restoring a cell writes its site's source value
at t in layer l, or, for a windowed site (mlp, attn, head), in every layer of the window
around l (docs/method.md); an all-positions cell writes every prompt position from t (the
first corrupted one) on (not an answer's tokens appended for teacher forcing); a severing cell also writes the base run's own value
of the severed site at t in every layer after l (freezing it). A batch's writes are grouped
by (layer, site) so that the engine makes one indexed write per module it touches, in the
order the model runs them.

What an exact trace must compute is much less than a full forward per cell, and the plan
says what can be left out (the engine supplies it from the base run, the corrupted run,
or for reverse patching the clean one, computed once per example):
- a write at position t cannot change any position before t (causal attention), so a
  batch runs only positions from its smallest t on, the earlier ones coming from the base
  run's key/value cache;
- nothing changes before the first layer whose output a cell changes, so a batch runs only
  from there on, the layers before it skipped: their output is the base run's residual
  stream (for a residual-stream cell at layer l, that stream after layer l with the clean
  value written at t, so layer l itself need not run either);
- positions before the first changed token (the first noised one, or the first where two
  prompts differ) are the same in the clean and corrupted runs, so writing them is a
  no-op: those cells take the base run's values and need no forward at all.
Cells are grouped by their first layer and sorted by token, so each batch wastes little.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.sites import SITES
from .components import COMPONENTS, whole


@dataclass(frozen=True)
class Cell:
    token: int  # an all-positions cell: the first position it writes
    layer: int
    component: str  # a component's name
    head: int | None = None  # a component of heads: which head


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """docs/method.md's window: range(max(0, l - w//2), min(L, l - (-w//2)))."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def written_layers(cell: Cell, window: int, n_layers: int) -> range:
    """The layers a cell writes its site in: its own, or the window's."""
    return window_layers(cell.layer, window, n_layers) if COMPONENTS[cell.component].windowed else range(cell.layer, cell.layer + 1)


def cells(n_tokens: int, n_layers: int, comps: tuple[str, ...], n_heads: int = 0, first_changed: int = 0) -> list[Cell]:
    """Every cell of an example: (t, l) per component, per head for one of heads; an
    all-positions component has one cell per (l, head), starting at `first_changed` (at the
    last position when nothing changed: writing equal values there is exact)."""
    out = []
    for name in comps:
        c = COMPONENTS[name]
        tokens = (min(first_changed, n_tokens - 1),) if c.all_positions else range(n_tokens)
        heads = range(n_heads) if c.heads else (None,)
        out += [Cell(t, l, name, h) for t in tokens for l in range(n_layers) for h in heads]
    return out


def count(comps: tuple[str, ...], n_tokens: int, n_layers: int, n_heads: int) -> int:
    """len(cells(...)), without making them."""
    return sum((1 if COMPONENTS[c].all_positions else n_tokens) * n_layers * (n_heads if COMPONENTS[c].heads else 1)
               for c in comps)


def slot(cell: Cell, comps: tuple[str, ...]) -> tuple[str, tuple[int, ...]]:
    """(cube variable suffix, index of the cell in that variable's cells: `components.grid`)."""
    c = COMPONENTS[cell.component]
    if not c.heads:
        return c.variable, (cell.token, cell.layer, whole(comps).index(cell.component))
    return c.variable, ((cell.layer, cell.head) if c.all_positions else (cell.token, cell.layer, cell.head))


def screened(estimates: dict, all_cells: list[Cell], comps: tuple[str, ...], top: int, sample: int, rng,
             first_changed: int = 0) -> list[Cell]:
    """The cells a screen sends to exact patching: per component, the `top` cells with the
    largest |estimate| and `sample` more drawn uniformly (`rng`: numpy's) from the rest, the
    estimate's misses to be measured on. `estimates`: cube variable -> the target's estimates
    over `components.grid`. Cells before `first_changed` are left out: exactly 0 already."""
    def size(cell: Cell) -> float:
        variable, at = slot(cell, comps)
        return abs(float(estimates[variable][at]))

    groups: dict[str, list[Cell]] = {}
    for cell in all_cells:
        if cell.token >= first_changed:
            groups.setdefault(cell.component, []).append(cell)
    out = []
    for group in groups.values():
        sizes = [size(c) for c in group]
        order = sorted(range(len(group)), key=lambda i: -sizes[i])
        rest = order[top:]
        drawn = rng.choice(len(rest), size=min(sample, len(rest)), replace=False) if rest and sample else []
        out += [group[i] for i in order[:top]] + [group[rest[j]] for j in sorted(drawn)]
    return out


def first_layer(cell: Cell, window: int, n_layers: int) -> int:
    """The first layer that must run for a cell: the one after a residual-stream write (the
    layer's output is the write), else the first layer whose site it writes."""
    start = written_layers(cell, window, n_layers).start
    return start + 1 if SITES[COMPONENTS[cell.component].site].residual else start


@dataclass(frozen=True)
class Batch:
    cells: list[Cell]
    start: int  # first position run; earlier ones come from the base run's cache
    first_layer: int  # first layer run; earlier ones are skipped


@dataclass(frozen=True)
class Schedule:
    batches: list[Batch]
    unchanged: list[Cell]  # before the first changed token: the base run's result, exactly


# A batch runs all its rows from its first cell's token: a row of a later cell recomputes
# positions it did not need. A batch stops growing before that waste passes this share of
# what its cells need (measured on the embedded model, 26 tokens: with one corrupted row,
# unbounded batches computed 1.75x the exact floor; 0.15 keeps every case near 1.1x), or,
# where a pass costs more than that waste would (the cost model, `exec.costs`), before it
# passes what one more pass would cost.
MAX_WASTE = 0.15
def schedule(all_cells: list[Cell], samples: int, batch_rows: int, window: int, n_layers: int, first_changed: int,
             n_tokens: int, token_rows: int | None = None, max_waste: float = MAX_WASTE,
             pass_positions: tuple[float, ...] | None = None) -> Schedule:
    """Batches of at most `batch_rows` rows (at least one cell) sharing a first layer, each
    of cells adjacent in token order, so that running a batch from its smallest token wastes
    little: a batch grows while the positions it runs (rows x (n_tokens - start)) exceed
    those its cells need by at most `max_waste` of them, or, with `pass_positions` (per first
    layer: the rows x positions whose arithmetic takes as long as one pass's own cost), by at
    most that many, whichever is more; and, with `token_rows`, while they stay within that
    many rows x positions (batches that start late, and so run few positions, take more
    cells). (Tiles spanning two or three first layers were measured too: slower.)"""
    most = max(1, batch_rows // samples)
    unchanged = [c for c in all_cells if c.token < first_changed]
    groups: dict[int, list[Cell]] = {}
    for c in all_cells:
        if c.token >= first_changed:
            groups.setdefault(first_layer(c, window, n_layers), []).append(c)
    out = []
    for layer, group in sorted(groups.items()):
        group.sort(key=lambda c: (c.token, c.layer, c.component, -1 if c.head is None else c.head))
        slack = 0.0 if pass_positions is None else pass_positions[layer]
        i = 0
        while i < len(group):
            start, needed, n = group[i].token, 0, 0
            while i + n < len(group) and n < most:
                run = (n + 1) * samples * (n_tokens - start)
                need = needed + samples * (n_tokens - group[i + n].token)
                if n and (run > max((1 + max_waste) * need, need + slack) or (token_rows is not None and run > token_rows)):
                    break
                needed, n = need, n + 1
            out.append(Batch(group[i : i + n], start=start, first_layer=layer))
            i += n
    return Schedule(out, unchanged)


@dataclass(frozen=True)
class Patch:
    """Element i sets row `rows[i]` (row j*S + s: cell j, sample s) at position `tokens[i]`,
    to the source run's value, or, where `frozen[i]`, to the base run's own (a severed
    path); only head `heads[i]`'s slice for a site of heads."""

    rows: list[int]
    tokens: list[int]
    frozen: list[bool]
    heads: list[int] | None = None


def patches(batch: list[Cell], samples: int, window: int, n_layers: int, n_positions: int) -> dict[tuple[int, str], Patch]:
    """(layer, site) -> the writes of these cells there (absolute positions; `n_positions`:
    the prompt's length, where an all-positions cell stops)."""
    by_site: dict[tuple[int, str], dict[str, list]] = {}

    def add(layer, site, rows, positions, head, frozen):
        at = by_site.setdefault((layer, site), {"rows": [], "tokens": [], "frozen": [], "heads": []})
        for row in rows:
            at["rows"] += [row] * len(positions)
            at["tokens"] += list(positions)
        n = len(rows) * len(positions)
        at["frozen"] += [frozen] * n
        at["heads"] += [head] * n

    for j, cell in enumerate(batch):
        c = COMPONENTS[cell.component]
        rows = range(j * samples, (j + 1) * samples)
        positions = range(cell.token, n_positions) if c.all_positions else (cell.token,)
        for layer in written_layers(cell, window, n_layers):
            add(layer, c.site, rows, positions, cell.head, False)
        if c.sever:
            for layer in range(cell.layer + 1, n_layers):
                add(layer, c.sever, rows, positions, None, True)
    return {(layer, site): Patch(at["rows"], at["tokens"], at["frozen"], at["heads"] if SITES[site].heads else None)
            for (layer, site), at in by_site.items()}
