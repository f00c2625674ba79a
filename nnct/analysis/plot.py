"""Figures from cubes and summaries, in the layouts researchers know from ROME.

- `example_figure`: one example, one panel per component; rows are the prompt's tokens (their
  text, a leading space shown as `␣` so that word starts stay visible, corrupted ones
  marked with `*`), columns the layers, colour the indirect effect on
  the target answer, in the metric asked for. Each site's colours and name are its entry's
  in `interventions.components` (ROME's: purple hidden, green MLP, red attention).
- `average_figure`: the summary's AIE, rows are segments, columns layers, one panel per component.
- `lines_figure`: AIE by layer for chosen segments, with their 95% confidence bands.

Colour scales are shared per component: every example figure drawn in one call uses the
same scale for a component (so two examples compare at a glance). As in ROME, a scale starts
at 0 (no effect, white); the rare negative effects are drawn white too. Figures are
matplotlib `Figure`s (no pyplot state); `draw` writes each as PNG and PDF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..interventions.metrics import metric as metric_entry
from ..interventions.components import COMPONENTS
from ..results.cube import metric_effects
from ..results.files import atomic

LINE_SEGMENTS = ("subject_last", "changed_last", "object_last", "relation", "last")  # the AIE lines drawn by default


def shown(token: str) -> str:
    """A token as a figure shows it: a leading space as `␣`, so that word starts stay visible
    (" Paris" is a word, "iffel" the middle of one)."""
    stripped = token.lstrip(" ")
    return "␣" * (len(token) - len(stripped)) + stripped


def _label(metric: str) -> str:
    return metric_entry(metric).label


def _xlabel(component: str, window: int) -> str:
    return f"layer (centre of {window} restored layers)" if COMPONENTS[component].windowed else "layer"


def _scale(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    hi = float(finite.max())
    return 0.0, hi if hi > 0 else 1e-6


def scales(ds, metric: str = "prob") -> dict[str, tuple[float, float]]:
    """One colour range per component over every example of `ds`."""
    ie, _ = metric_effects(ds, metric)
    return {str(c): _scale(ie.sel(component=c).values) for c in ds.component.values}


def example_figure(ds, example: str, metric: str = "prob", scale: dict | None = None):
    from matplotlib.figure import Figure

    one = ds.sel(example=[example])
    ie, _ = metric_effects(one, metric)
    n = int(one.n_tokens.values[0])
    labels = [f"{shown(str(t))}{'*' if c else ''}" for t, c in zip(one.token_str.values[0][:n], one.corrupted.values[0][:n])]
    comps = [str(c) for c in ds.component.values]
    scale = scale or scales(one, metric)
    fig = Figure(figsize=(3.6 * len(comps) + 1.0, 0.28 * n + 2.0), layout="constrained")
    axes = fig.subplots(1, len(comps), squeeze=False)[0]
    for ax, comp in zip(axes, comps):
        grid = ie.sel(component=comp).values[0, :n]
        vmin, vmax = scale[comp]
        im = ax.imshow(grid, aspect="auto", cmap=COMPONENTS[comp].cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_xlabel(_xlabel(comp, int(ds.attrs.get("window", 10))))
        ax.set_title(f"restoring {COMPONENTS[comp].title}")
        fig.colorbar(im, ax=ax, label=_label(metric), shrink=0.8)
    target = str(one.target_str.values[0])
    p_clean = float(one.p_clean.sel(answer="target").values[0])
    p_corrupt = float(one.p_corrupt.sel(answer="target").values[0])
    fig.suptitle(f"{example}: p({target!r}) clean {p_clean:.3f}, corrupted {p_corrupt:.3f}\n(* = corrupted token)", fontsize=9)
    return fig


def average_figure(summary, metric: str = "prob"):
    from matplotlib.figure import Figure

    s = summary.sel(metric=metric)
    comps = [str(c) for c in summary.component.values]
    segs = [str(x) for x in summary.segment.values]
    fig = Figure(figsize=(3.6 * len(comps) + 1.0, 0.32 * len(segs) + 2.0), layout="constrained")
    axes = fig.subplots(1, len(comps), squeeze=False)[0]
    for ax, comp in zip(axes, comps):
        grid = s.aie.sel(component=comp).values
        vmin, vmax = _scale(grid)
        im = ax.imshow(grid, aspect="auto", cmap=COMPONENTS[comp].cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(len(segs)), [f"{g} (n={int(s.n.sel(segment=g))})" for g in segs], fontsize=8)
        ax.set_xlabel(_xlabel(comp, int(summary.attrs.get("window", 10))))
        ax.set_title(f"AIE, restoring {COMPONENTS[comp].title}")
        fig.colorbar(im, ax=ax, label="A" + _label(metric), shrink=0.8)
    fig.suptitle(_caption(summary, metric), fontsize=9)
    return fig


def lines_figure(summary, segments: list[str], metric: str = "prob"):
    from matplotlib.figure import Figure

    s = summary.sel(metric=metric)
    comps = [str(c) for c in summary.component.values]
    unknown = [g for g in segments if g not in set(summary.segment.values)]
    if unknown:
        raise ConfigError(f"no segment {', '.join(unknown)} in these examples; they have {', '.join(summary.segment.values)}")
    layers = summary.layer.values
    fig = Figure(figsize=(4.2 * len(comps) + 0.5, 3.6), layout="constrained")
    axes = fig.subplots(1, len(comps), squeeze=False, sharey=True)[0]
    for ax, comp in zip(axes, comps):
        for g in segments:
            c = s.sel(component=comp, segment=g)
            (line,) = ax.plot(layers, c.aie.values, label=f"{g} (n={int(s.n.sel(segment=g))})")
            ax.fill_between(layers, c.aie_low.values, c.aie_high.values, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xlabel(_xlabel(comp, int(summary.attrs.get("window", 10))))
        ax.set_title(f"restoring {COMPONENTS[comp].title}")
    axes[0].set_ylabel("A" + _label(metric))
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(_caption(summary, metric) + "; bands: 95% CI", fontsize=9)
    return fig


def _caption(summary, metric: str) -> str:
    a = summary.attrs
    ate = float(summary.ate.sel(metric=metric))
    return (f"{a.get('model', '')} {a.get('experiment', '')}: {a['examples']} examples\n(variant {a['variant']},"
            f" filter {a['filter']}), ATE {ate:.3f}")


def _save(fig, base: Path) -> list[Path]:
    out = []
    for ext in ("png", "pdf"):
        path = base.with_name(base.name + "." + ext)
        with atomic(path) as tmp:
            fig.savefig(tmp, dpi=150)
        out.append(path)
    return out


def draw(ds, summary, outdir: str | Path, examples: int = 6, segments: list[str] | None = None, metric: str = "prob") -> list[Path]:
    """Write the example heatmaps (the first `examples` of `ds`), the average heatmap and the
    AIE lines into `outdir`, each as PNG and PDF; returns the paths written."""
    outdir = Path(outdir)
    chosen = ds.isel(example=slice(0, examples))
    scale = scales(chosen, metric)
    paths = []
    for ex in chosen.example.values:
        paths += _save(example_figure(ds, str(ex), metric, scale), outdir / "examples" / str(ex).replace("/", "_"))
    paths += _save(average_figure(summary, metric), outdir / "average")
    segments = segments or [g for g in LINE_SEGMENTS if g in set(summary.segment.values)]
    paths += _save(lines_figure(summary, segments, metric), outdir / "aie_lines")
    return paths
