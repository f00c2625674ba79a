"""Plain-text descriptions of a cube, for `nnct info` and the end of `nnct trace`."""

from __future__ import annotations

import numpy as np

from ..results.cube import cells_of, effects, holds


def describe(ds, max_examples: int = 10) -> str:
    """Attrs, dims, ATE and, per example, where its strongest indirect effect is (per
    component, and for heads; an ablation's: its most harmful cell)."""
    ablation = cells_of(ds) != "restored"
    corrupt = ds.p_clean if ablation else ds.p_corrupt  # an ablation has no corrupted run
    te = ds.p_clean - corrupt
    sign = -1.0 if ablation else 1.0
    lines = ["attrs:"]
    lines += [f"  {k} = {v}" for k, v in ds.attrs.items()]
    lines.append("dims: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items()))
    lines.append(
        f"examples: {ds.sizes['example']}  ATE(target) = {float(te.sel(answer='target').mean()):.4f}"
        f"  mean p_clean = {float(ds.p_clean.sel(answer='target').mean()):.4f}"
        f"  mean p_corrupt = {float(corrupt.sel(answer='target').mean()):.4f}"
    )
    lines.append("per example (target answer): p_clean, p_corrupt, strongest IE per component at (token, layer[, head])")
    # (label, restored variable, selection): the grids searched per example
    grids = [(str(c), "restored", {"component": c}) for c in ds.component.values] if holds(ds, "restored") else []
    grids += [(name, of, {}) for name, of in (("head", "restored_head"), ("head_all_pos", "restored_head_all_pos"))
              if holds(ds, of)]
    targets = {of: effects(ds, of)[0].sel(answer="target") for of in {g[1] for g in grids}}
    for i, ex in enumerate(ds.example.values[:max_examples]):
        parts = []
        for label, of, pick in grids:
            cells = targets[of].isel(example=i).sel(pick)
            grid = cells.values
            if np.all(np.isnan(grid)):
                continue
            at = dict(zip(cells.dims, np.unravel_index(np.nanargmax(sign * grid), grid.shape)))
            where = f"L{at['layer']}" + (f"H{at['head']}" if "head" in at else "")
            if "token" in at:
                where = f"{str(ds.token_str.values[i, at['token']])!r}[{ds.segment.values[i, at['token']]}] " + where
            parts.append(f"{label} {grid[tuple(at.values())]:+.3f} at {where}")
        p = ds.p_clean.isel(example=i).sel(answer="target"), corrupt.isel(example=i).sel(answer="target")
        lines.append(f"  {ex} ({str(ds.target_str.values[i])!r}): {float(p[0]):.3f} -> {float(p[1]):.3f}; " + "; ".join(parts))
    if ds.sizes["example"] > max_examples:
        lines.append(f"  ... {ds.sizes['example'] - max_examples} more")
    return "\n".join(lines)
