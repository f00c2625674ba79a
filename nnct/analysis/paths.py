"""Reading a path-patching file (`results.paths`): the strongest senders, and the figure.

- `strongest`: the senders (heads and MLPs) whose path to the receivers changes the target's
  probability most (either sign), averaged over the pairs, with a 95% t interval over pairs
  and the mean change in the logit difference target - alt; beside each, its held-out value
  (`analysis.strongest`: the senders ranked on a random half of the pairs, each rank's sender
  estimated on the other half, both ways), since the largest of 300 senders' means
  overstates its sender. Each pair is its own unit of sampling.
- `figure`: the mean effect per sender as a layer x head heatmap with the MLPs as an extra
  column, one panel for p(target) and one for the logit difference. The effect is the
  path-patched run minus the run it patches (the clean run when noising, so a sender whose
  path carries the answer is negative; the corrupt run when denoising, positive). Colours
  diverge around 0; senders with no path to the receivers (after all of them) are grey.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..results.paths import effect
from .plot import save
from .strongest import rank_cells, split

LISTED = 4  # senders outlined and listed per panel


def _effects(ds) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{metric: (per head [example, layer, head], per MLP [example, layer])}: p(target) and
    the logit difference."""
    heads_p, mlps_p = effect(ds, "p")
    heads_l, mlps_l = effect(ds, "logit")
    diff = lambda x: (x.sel(answer="target") - x.sel(answer="alt")).values  # noqa: E731
    return {"p(target)": (heads_p.sel(answer="target").values, mlps_p.sel(answer="target").values),
            "logit diff": (diff(heads_l), diff(mlps_l))}


def strongest(ds, n: int = 10, seed: int = 0) -> list[dict]:
    """The n senders of largest |mean effect on p(target)|: name, mean, 95% CI, logit-diff
    mean, and the held-out value and interval of that rank (halves of the pairs by `seed`)
    with the senders the halves chose."""
    eff = _effects(ds)
    (hp, mp), (hl, ml) = eff["p(target)"], eff["logit diff"]
    L, H = hp.shape[1:]
    names = [f"L{layer}H{h}" for layer in range(L) for h in range(H)] + [f"MLP{layer}" for layer in range(L)]
    p = np.concatenate([hp.reshape(hp.shape[0], -1), mp], axis=1)
    logit = np.concatenate([hl.reshape(hl.shape[0], -1), ml], axis=1)
    r = rank_cells(p, n, split(list(ds.example.values), seed), direction=0)
    return [{"sender": names[i], "effect": float(r["aie"][k]), "ci": (float(r["aie_low"][k]), float(r["aie_high"][k])),
             "logit_diff": float(logit[:, i].mean()), "held_out": float(r["held_out"][k]),
             "held_out_ci": (float(r["held_out_low"][k]), float(r["held_out_high"][k])),
             "halves": sorted({names[r["first"][k]], names[r["second"][k]]})} for k, i in enumerate(r["best"])]


def table(ds, n: int = 10) -> str:
    """`strongest` as text, under a line on the runs."""
    a = ds.attrs
    p_clean, p_corrupt = (float(ds[f"p_{k}"].sel(answer="target").mean()) for k in ("clean", "corrupt"))
    lines = [f"{a.get('direction', '')} path patching to {a.get('receivers', '')}: {ds.sizes['example']} pairs,"
             f" p(target) clean {p_clean:.3f}, corrupt {p_corrupt:.3f}; effect = path - {a.get('base', 'clean')}",
             f"{'sender':>8} {'effect p(target)':>17} {'95% CI':>20} {'logit diff':>11} {'held out':>9} {'95% CI':>20}"
             "  senders the halves chose"]
    for s in strongest(ds, n):
        lines.append(f"{s['sender']:>8} {s['effect']:17.4f}   [{s['ci'][0]:7.4f}, {s['ci'][1]:7.4f}] {s['logit_diff']:11.3f}"
                     f" {s['held_out']:9.4f}   [{s['held_out_ci'][0]:7.4f}, {s['held_out_ci'][1]:7.4f}]  {' | '.join(s['halves'])}")
    return "\n".join(lines)


def figure(ds):
    """The mean effect per sender (module docstring): layers bottom to top, heads left to
    right, the MLPs in a column of their own at the right."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    panels = _effects(ds)
    L, H = next(iter(panels.values()))[0].shape[1:]
    fig = Figure(figsize=(2 * (0.32 * (H + 2) + 1.6), 0.17 * L + 1.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, (heads, mlps)) in zip(axes, panels.items()):
        grid = np.full((L, H + 2), np.nan)  # heads, a blank column, the MLPs
        with warnings.catch_warnings():  # a sender with no path is NaN in every pair
            warnings.simplefilter("ignore", RuntimeWarning)
            grid[:, :H], grid[:, H + 1] = np.nanmean(heads, 0), np.nanmean(mlps, 0)
        bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        cmap = _cmap()
        shown = np.ma.masked_invalid(grid)
        im = ax.imshow(shown, aspect="auto", origin="lower", cmap=cmap, vmin=-bound or -1, vmax=bound or 1,
                       interpolation="nearest")
        ax.add_patch(Rectangle((H - 0.5, -0.5), 1, L, facecolor="white", edgecolor="none"))
        _mark(ax, grid, H)
        ax.set_xticks(list(range(H)) + [H + 1], [str(h) for h in range(H)] + ["MLP"], fontsize=7)
        ax.set_xlabel("sender head")
        ax.set_ylabel("sender layer")
        ax.set_title(f"effect on {name}", fontsize=8)
        fig.colorbar(im, ax=ax, label=f"{name}: path - {ds.attrs.get('base', 'clean')}", shrink=0.8)
    a = ds.attrs
    fig.suptitle(f"{a.get('model', '')}: {a.get('direction', '')} path patching to {a.get('receivers', '')},"
                 f" {ds.sizes['example']} pairs (grey: no path)", fontsize=9)
    return fig


def _cmap():
    import matplotlib

    return matplotlib.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")


def _mark(ax, grid: np.ndarray, n_heads: int) -> None:
    """Outline and list the `LISTED` cells of largest |mean effect|."""
    from matplotlib.patches import Rectangle

    flat = np.nan_to_num(np.abs(grid), nan=-1.0).ravel()
    listed = []
    for i in np.argsort(-flat, kind="stable")[:LISTED]:
        if flat[i] <= 0:
            break
        layer, col = np.unravel_index(i, grid.shape)
        ax.add_patch(Rectangle((col - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=0.8))
        name = f"MLP{layer}" if col > n_heads else f"L{layer}H{col}"
        listed.append(f"{name} {grid[layer, col]:+.2g}")
    if listed:
        ax.text(0.02, 0.98, "\n".join(listed), transform=ax.transAxes, fontsize=6, va="top", ha="left",
                bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})


def draw(ds, outdir: str | Path) -> list[Path]:
    """The figure as OUTDIR/paths.png and .pdf."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    return save(figure(ds), out / "paths")
