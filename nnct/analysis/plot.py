"""Figures from cubes and summaries, in the layouts researchers know from ROME.

- `example_figure`: one example, one panel per component; rows are the prompt's tokens (their
  text, a leading space shown as `␣` so that word starts stay visible, corrupted ones
  marked with `*`), columns the layers, colour the indirect effect on
  the target answer, in the metric asked for. Each site's colours and name are its entry's
  in `interventions.components` (ROME's: purple hidden, green MLP, red attention).
- `average_figure`: the summary's AIE, rows are segments, columns layers, one panel per component.
- `lines_figure`: AIE by layer for chosen segments, with their 95% confidence bands.
- `comparison_figure`: an AtP cube's average heatmap beside an exact cube's, per component.
- `severed_figure`: ROME's severed-path figure: AIE by layer at the corrupted span's last
  token of the hidden state restored alone, with the later MLPs severed and with the later
  attention severed, with 95% bands.
- `heads_figure`: per-head AIE, layers bottom to top and heads left to right, one panel per
  segment of interest (and one for heads restored at all positions), the strongest heads
  outlined and listed.
- `circuit_figure`: a circuit file's circuit as a graph (layers bottom to top, heads and MLPs
  as nodes, edge width by score), written as PNG, PDF and SVG (`save_circuit`).

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
from ..results.cube import TITLES, metric_effects
from ..results.files import atomic
from .summary import FOCUS

LINE_SEGMENTS = FOCUS  # the AIE lines drawn by default
SEVERED = ("hidden", "hidden-sever-mlp", "hidden-sever-attn")  # the lines of the severed-path figure
SPAN_LAST = ("subject_last", "changed_last", "object_last")  # the corrupted span's last token, by experiment
LABELLED = 3  # heads labelled per panel


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
    p_corrupt = float(one.get("p_corrupt", one.p_clean).sel(answer="target").values[0])  # an ablation: none
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


def comparison_figure(atp_summary, exact_summary, metric: str = "prob"):
    """AtP's average heatmap beside the exact one, per component (rows), on one colour scale
    per component: where the screen agrees with exact patching and where it does not."""
    from matplotlib.figure import Figure

    comps = [str(c) for c in exact_summary.component.values if c in set(atp_summary.component.values)]
    segs = [str(g) for g in exact_summary.segment.values if g in set(atp_summary.segment.values)]
    if not comps or not segs:
        raise ConfigError("the AtP and exact summaries share no component and segment to compare")
    fig = Figure(figsize=(8.4, (0.32 * len(segs) + 1.2) * len(comps) + 0.8), layout="constrained")
    axes = fig.subplots(len(comps), 2, squeeze=False)
    for row, comp in zip(axes, comps):
        grids = [s.sel(metric=metric, component=comp, segment=segs).aie.values for s in (exact_summary, atp_summary)]
        vmin, vmax = _scale(np.concatenate([g.ravel() for g in grids]))
        for ax, grid, name in zip(row, grids, ("exact", "AtP")):
            im = ax.imshow(grid, aspect="auto", cmap=COMPONENTS[comp].cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_yticks(range(len(segs)), segs, fontsize=7)
            ax.set_title(f"{COMPONENTS[comp].title}: {name}", fontsize=8)
        fig.colorbar(im, ax=row.tolist(), label="A" + _label(metric), shrink=0.8)
    fig.suptitle(f"{_caption(exact_summary, metric)}\nAtP estimates beside exact patching", fontsize=9)
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


def severed_figure(summary, metric: str = "prob", segment: str | None = None):
    """AIE by layer at `segment` (default: the corrupted span's last token) of the hidden
    state alone and with the later MLP or attention outputs severed, with 95% bands."""
    from matplotlib.figure import Figure

    s = summary.sel(metric=metric)
    comps = [c for c in SEVERED if c in set(summary.component.values)]
    segment = segment or next((g for g in SPAN_LAST if g in set(summary.segment.values)), None)
    if segment is None or len(comps) < 2:
        raise ConfigError("the severed-path figure needs hidden and a hidden-sever-* component, at the span's last token")
    colours = {"hidden": "#6a3d9a", "hidden-sever-mlp": "#33a02c", "hidden-sever-attn": "#e31a1c"}
    layers = summary.layer.values
    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.subplots()
    for comp in comps:
        c = s.sel(component=comp, segment=segment)
        ax.plot(layers, c.aie.values, color=colours[comp], label=COMPONENTS[comp].title)
        ax.fill_between(layers, c.aie_low.values, c.aie_high.values, color=colours[comp], alpha=0.2, linewidth=0)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer of the restored hidden state")
    ax.set_ylabel("A" + _label(metric))
    ax.set_title(f"at {segment} (n={int(s.n.sel(segment=segment))})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.suptitle(_caption(summary, metric) + "; bands: 95% CI", fontsize=9)
    return fig


def heads_figure(summary, metric: str = "prob", segments: list[str] | None = None):
    """Per-head AIE (layers bottom to top, heads left to right): one panel per segment, and
    one for heads restored at every position; the strongest `LABELLED` heads of each panel
    are outlined and listed with their AIE."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    s = summary.sel(metric=metric)
    panels = []
    if "aie_head" in summary:
        present = list(summary.segment.values)
        chosen = segments or [g for g in LINE_SEGMENTS if g in present] or present
        unknown = [g for g in chosen if g not in present]
        if unknown:
            raise ConfigError(f"no segment {', '.join(unknown)} in these examples; they have {', '.join(present)}")
        panels += [(f"{g} (n={int(s.n.sel(segment=g))})", s.aie_head.sel(segment=g).values) for g in chosen]
    if "aie_head_all_pos" in summary:
        panels.append(("all positions from the span on", s.aie_head_all_pos.values))
    if not panels:
        raise ConfigError("this summary has no heads: trace the head or head_all_pos component")
    n_layers, n_heads = panels[0][1].shape
    fig = Figure(figsize=(0.35 * n_heads * len(panels) + 1.6 * len(panels), 0.16 * n_layers + 1.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, grid) in zip(axes, panels):
        vmin, vmax = _scale(grid)
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap=COMPONENTS["head"].cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        # the strongest heads: outlined, and listed in a corner (labels in the cells would overlap)
        flat = np.where(np.isnan(grid), -np.inf, grid).ravel()
        listed = []
        for i in np.argsort(-flat)[:LABELLED]:
            if flat[i] > 0:
                layer, head = np.unravel_index(i, grid.shape)
                ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=0.8))
                listed.append(f"L{layer}H{head} {flat[i]:.2g}")
        if listed:
            ax.text(0.02, 0.98, "\n".join(listed), transform=ax.transAxes, fontsize=6, va="top", ha="left",
                    bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
        ax.set_xticks(range(n_heads))
        ax.set_xlabel("head")
        window = int(summary.attrs.get("window", 10))
        ax.set_ylabel("layer" + (f" (centre of {window})" if window > 1 else ""))
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, label="A" + _label(metric), shrink=0.8)
    fig.suptitle(_caption(summary, metric) + ", restoring one attention head", fontsize=9)
    return fig


def _caption(summary, metric: str) -> str:
    a = summary.attrs
    ate = float(summary.ate.sel(metric=metric))
    method = a.get("method", "exact")
    estimated = f", {TITLES[method]} estimates" if method != "exact" else ""
    return (f"{a.get('model', '')} {a.get('experiment', '')}: {a['examples']} examples{estimated}\n(variant {a['variant']},"
            f" filter {a['filter']}), ATE {ate:.3f}")


def save(fig, base: Path) -> list[Path]:
    """`fig` as base.png and base.pdf, each written atomically; the paths."""
    out = []
    for ext in ("png", "pdf"):
        path = base.with_name(base.name + "." + ext)
        with atomic(path) as tmp:
            fig.savefig(tmp, dpi=150)
        out.append(path)
    return out


def draw(ds, summary, outdir: str | Path, examples: int = 6, segments: list[str] | None = None, metric: str = "prob") -> list[Path]:
    """Write into `outdir`, each as PNG and PDF, what the cube holds: for components of whole
    sites the example heatmaps (the first `examples` of `ds`; none when `ds` is None), the average heatmap and the AIE
    lines, and the severed-path figure when severed components are in; for heads, the heads
    figure. Returns the paths written."""
    outdir = Path(outdir)
    paths = []
    if "aie" in summary:
        if ds is not None:  # None: a summary file alone, whose examples are not at hand
            chosen = ds.isel(example=slice(0, examples))
            scale = scales(chosen, metric)
            for ex in chosen.example.values:
                paths += save(example_figure(ds, str(ex), metric, scale), outdir / "examples" / str(ex).replace("/", "_"))
        paths += save(average_figure(summary, metric), outdir / "average")
        lines = segments or [g for g in LINE_SEGMENTS if g in set(summary.segment.values)]
        paths += save(lines_figure(summary, lines, metric), outdir / "aie_lines")
        if ("hidden" in summary.component.values and set(SEVERED[1:]) & set(summary.component.values)
                and set(SPAN_LAST) & set(summary.segment.values)):
            paths += save(severed_figure(summary, metric), outdir / "severed")
    if "aie_head" in summary or "aie_head_all_pos" in summary:
        paths += save(heads_figure(summary, metric, segments), outdir / "heads")
    return paths


KIND_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#9467bd", "mlp": "#ff7f0e", "logits": "#444444"}


def circuit_figure(ds, n_edges: int | None = None):
    """A circuit file's circuit of n edges (its top n, pruned: `results.circuit.circuit`; n the
    minimal circuit's unless given) as a graph: layers bottom to top (the embedding below,
    the logits above), heads left to right with each layer's MLP beside them. An edge goes
    from its source to the head (a key or value goes to its group's heads' middle) or MLP it
    feeds. Its width follows |score|, its colour the destination's input (query, key,
    value, MLP, logits), and its style the score's sign (dashed: negative)."""
    from matplotlib.figure import Figure

    from ..results import circuit as circuit_file

    n = int(n_edges or circuit_file.minimal_selected(ds.attrs))
    if n < 1:
        raise ConfigError("the circuit file found no faithful circuit: give --edges N")
    score = ds.score.values
    keep = circuit_file.circuit(circuit_file.graph_of(ds), score, n)
    H, L, K = int(ds.attrs["n_heads"]), int(ds.attrs["n_layers"]), int(ds.attrs["n_kv_heads"])

    def place(kind, layer, head):
        if kind in ("emb", "logits"):  # centred between two head columns, so that no head's edges seem theirs
            return H / 2, -1.0 if kind == "emb" else float(L)
        if kind == "mlp":
            return H + 0.5, layer + 0.45
        if kind in ("k", "v"):  # a key/value head: the middle of the query heads that share it
            group = H // K
            return head * group + (group - 1) / 2 + (0.15 if kind == "v" else -0.15), float(layer)
        return float(head), float(layer)

    src = [place(k, la, h) for k, la, h in zip(ds.source_kind.values, ds.source_layer.values, ds.source_head.values)]
    dst = [place(k, la, h) for k, la, h in zip(ds.destination_kind.values, ds.destination_layer.values,
                                                ds.destination_head.values)]
    kinds = ds.destination_kind.values
    us, vs = np.nonzero(keep)
    biggest = float(np.abs(score[us, vs]).max()) if len(us) else 1.0
    fig = Figure(figsize=(max(6.0, 0.55 * (H + 2)), max(6.0, 0.32 * (L + 2))))
    ax = fig.add_subplot()
    order = np.argsort(np.abs(score[us, vs]))  # the strongest edges drawn last, on top
    for u, v in zip(us[order], vs[order]):
        (x0, y0), (x1, y1), s = src[u], dst[v], float(score[u, v])
        ax.plot([x0, x1], [y0 + 0.12, y1 - 0.12], color=KIND_COLOURS[str(kinds[v])], alpha=0.75,
                linewidth=0.4 + 3.6 * abs(s) / biggest, linestyle="-" if s >= 0 else "--", zorder=1)
    used_src, used_dst = set(us.tolist()), set(vs.tolist())
    for i, (x, y) in enumerate(src):
        on = i in used_src or any(np.allclose(src[i], dst[j]) for j in used_dst)
        ax.scatter([x], [y], s=30 if on else 6, color="black" if on else "#cccccc", zorder=2)
    for j in used_dst:
        if kinds[j] in ("mlp", "logits"):
            ax.scatter([dst[j][0]], [dst[j][1]], s=30, color="black", zorder=2)
    ax.set_yticks(range(-1, L + 1), ["emb", *[str(la) for la in range(L)], "logits"], fontsize=7)
    ax.set_xticks([*range(H), H + 0.5], [*[f"h{h}" for h in range(H)], "MLP"], fontsize=7)
    ax.set_ylabel("layer")
    for kind, colour in KIND_COLOURS.items():
        ax.plot([], [], color=colour, label={"q": "query", "k": "key", "v": "value"}.get(kind, kind))
    ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    ax.set_title(f"{ds.attrs.get('model', '')}: the top {n} of {int(ds.attrs.get('total_edges', 0))} edges"
                 f" (EAP-IG, {ds.attrs.get('n_pairs', '?')} pairs)\n{int(keep.sum())} after pruning"
                 f" ({n - int(keep.sum())} pruned: on no path from the embedding to the logits)", fontsize=9)
    fig.tight_layout()
    return fig


def save_circuit(fig, base: Path) -> list[Path]:
    """A circuit figure as base.png, base.pdf and base.svg."""
    out = save(fig, base)
    path = base.with_name(base.name + ".svg")
    with atomic(path) as tmp:
        fig.savefig(tmp, format="svg")
    return out + [path]
