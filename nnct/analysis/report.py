"""Plain-text descriptions of a cube, for `nnct info` and the end of `nnct trace`."""

from __future__ import annotations

import numpy as np

from ..results.cube import effects


def describe(ds, max_examples: int = 10) -> str:
    """Attrs, dims, ATE and, per example, where its strongest indirect effect is."""
    ie, te = effects(ds)
    lines = ["attrs:"]
    lines += [f"  {k} = {v}" for k, v in ds.attrs.items()]
    lines.append("dims: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items()))
    lines.append(
        f"examples: {ds.sizes['example']}  ATE(target) = {float(te.sel(answer='target').mean()):.4f}"
        f"  mean p_clean = {float(ds.p_clean.sel(answer='target').mean()):.4f}"
        f"  mean p_corrupt = {float(ds.p_corrupt.sel(answer='target').mean()):.4f}"
    )
    lines.append("per example (target answer): p_clean, p_corrupt, strongest IE per component at (token, layer)")
    target = ie.sel(answer="target")
    for i, ex in enumerate(ds.example.values[:max_examples]):
        parts = []
        for comp in ds.component.values:
            grid = target.isel(example=i).sel(component=comp).values
            if np.all(np.isnan(grid)):
                continue
            t, l = np.unravel_index(np.nanargmax(grid), grid.shape)
            tok = str(ds.token_str.values[i, t])
            parts.append(f"{comp} {grid[t, l]:+.3f} at {tok!r}[{ds.segment.values[i, t]}] L{l}")
        p = ds.p_clean.isel(example=i).sel(answer="target"), ds.p_corrupt.isel(example=i).sel(answer="target")
        lines.append(f"  {ex} ({str(ds.target_str.values[i])!r}): {float(p[0]):.3f} -> {float(p[1]):.3f}; " + "; ".join(parts))
    if ds.sizes["example"] > max_examples:
        lines.append(f"  ... {ds.sizes['example'] - max_examples} more")
    return "\n".join(lines)
