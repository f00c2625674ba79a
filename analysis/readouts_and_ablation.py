"""Which cells matter, by readout and by intervention, on the same 30 known facts.

    python analysis/readouts_and_ablation.py runs/readouts -o analysis/results/readouts

Reads three cubes of experiment subject-noctx (`runs/readouts/run.sh` makes them): `noise.nc`
(ROME's noise restoration, S=3, with readouts kl, logprob and rank), `zero.nc` and `mean.nc`
(zero ablation, and mean ablation over 30 other facts' prompts, the same readouts). It
compares, per (segment, layer, component), the average effect of a cell:

1. **KL against prob as the tracing readout**: restoration's AIE in p(target) against its
   AIE in -KL(clean || run) (restoring a cell lowers KL, so -KL makes "matters" positive),
   both as fractions of their total effect so that they share a scale; their rank
   correlation over cells, each readout's top cells, and the cells where they disagree most
   (the largest difference of ranks among the cells either puts in its top 20).
2. **Mean against zero ablation against noise restoration**: the importance of a cell as
   each intervention sees it (restoration: the AIE in p; ablation: p(clean) - p(ablated), so
   that harm is positive), their rank correlations, each one's top cells, and the layer
   where each peaks per component at the last subject token and at the last token.

Writes `table.txt` and `figure.png`/`.pdf` (segment x layer heatmaps per component and
readout or intervention).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from nnct.analysis.summary import summarize
from nnct.results.cube import open_cube

SEGMENTS = ("subject_first", "subject_middle", "subject_last", "subsequent_first", "subsequent_further", "last")


def _grid(summary, metric: str, sign: float = 1.0):
    """AIE [segment, layer, component] of one metric, on the study's segments."""
    s = summary.aie.sel(metric=metric)
    keep = [x for x in SEGMENTS if x in s.segment.values]
    return sign * s.sel(segment=keep)


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def spearman(a, b) -> float:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(_ranks(a[ok]), _ranks(b[ok]))[0, 1])


def _cells(grid) -> list[str]:
    return [f"{s}/L{l}/{c}" for s in grid.segment.values for l in grid.layer.values for c in grid.component.values]


def top(grid, k: int = 8) -> list[tuple[str, float]]:
    values = grid.transpose("segment", "layer", "component").values.ravel()
    names = _cells(grid.transpose("segment", "layer", "component"))
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf))[:k]
    return [(names[i], float(values[i])) for i in order]


def disagreements(a, b, k: int = 20, n: int = 8) -> list[tuple[str, int, int]]:
    """Cells in either's top k, with the largest difference of ranks: (cell, rank in a, rank in b)."""
    va = a.transpose("segment", "layer", "component").values.ravel()
    vb = b.transpose("segment", "layer", "component").values.ravel()
    ra, rb = _ranks(np.nan_to_num(va, nan=-np.inf)), _ranks(np.nan_to_num(vb, nan=-np.inf))
    names = _cells(a.transpose("segment", "layer", "component"))
    either = [i for i in range(len(va)) if ra[i] < k or rb[i] < k]
    either.sort(key=lambda i: -abs(ra[i] - rb[i]))
    return [(names[i], int(ra[i]), int(rb[i])) for i in either[:n]]


def peaks(grid) -> list[str]:
    out = []
    for seg in ("subject_last", "last"):
        if seg not in grid.segment.values:
            continue
        for c in grid.component.values:
            line = grid.sel(segment=seg, component=c)
            at = int(line.layer.values[int(np.nanargmax(line.values))])
            out.append(f"{seg}/{c}: L{at} ({float(line.max()):+.3f})")
    return out


def _lines(title: str, grids: dict) -> list[str]:
    lines = [f"## {title}", ""]
    names = list(grids)
    lines.append("rank correlation (Spearman) of the cells' average effects:")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            lines.append(f"  {a} vs {b}: {spearman(grids[a].values, grids[b].values):+.3f}")
    for name, g in grids.items():
        lines.append(f"top cells, {name}: " + ", ".join(f"{c} {v:+.3f}" for c, v in top(g)))
        lines.append(f"peaks, {name}: " + "; ".join(peaks(g)))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            lines.append(f"largest disagreements {a} / {b} (cell: rank in each, among either's top 20): "
                         + ", ".join(f"{c} {x}/{y}" for c, x, y in disagreements(grids[a], grids[b])))
    return lines + [""]


def figure(panels: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    comps = list(next(iter(panels.values())).component.values)
    fig, axes = plt.subplots(len(names), len(comps), figsize=(3.6 * len(comps), 1.9 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        g = panels[name]
        scale = float(np.nanmax(np.abs(g.values))) or 1.0
        for j, c in enumerate(comps):
            ax = axes[i, j]
            im = ax.imshow(g.sel(component=c).values, aspect="auto", cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_yticks(range(g.sizes["segment"]), g.segment.values, fontsize=6)
            ax.set_title(f"{name}: {c}", fontsize=7)
            ax.tick_params(axis="x", labelsize=6)
            fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
        axes[i, 0].set_ylabel("segment", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("layer", fontsize=7)
    fig.tight_layout()
    for suffix in (".png", ".pdf"):
        fig.savefig(path.with_suffix(suffix), dpi=130)
    plt.close(fig)


@click.command()
@click.argument("runs", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "out", required=True, type=click.Path(file_okay=False))
def main(runs, out):
    runs, out = Path(runs), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    noise, zero, mean = (open_cube(runs / f"{n}.nc") for n in ("noise", "zero", "mean"))
    s_noise = summarize(noise, metrics=("prob", "recovery", "kl", "logprob", "rank"))
    s_zero = summarize(zero, metrics=("prob", "kl"))
    s_mean = summarize(mean, metrics=("prob", "kl"))
    te = s_noise.ate
    # as fractions of the total effect, so that p and KL share a scale
    readout = {"prob (recovery of p)": _grid(s_noise, "prob") / float(te.sel(metric="prob")),
               "-KL (share of KL removed)": _grid(s_noise, "kl") / float(te.sel(metric="kl"))}
    ablation = {"noise restoration (IE in p)": _grid(s_noise, "prob"),
                "zero ablation (p clean - p ablated)": _grid(s_zero, "prob", -1.0),
                "mean ablation (p clean - p ablated)": _grid(s_mean, "prob", -1.0)}
    head = [f"30 known facts (subject-noctx), SmolLM2-135M-Instruct; noise: S={noise.attrs['samples']},"
            f" level {noise.attrs['noise_level']:.4f}; p clean {float(s_noise.p_clean):.3f}, p corrupt"
            f" {float(s_noise.p_corrupt):.3f}; TE in p {float(te.sel(metric='prob')):.3f}, TE in KL"
            f" {float(te.sel(metric='kl')):+.3f} nats (KL clean 0, corrupted"
            f" {float(noise.kl_corrupt.mean()):.3f}); mean ablation over {mean.attrs['reference']}", ""]
    kl_zero = float((zero.kl_ablated.max(["token", "layer"])).mean())
    tail = [f"mean over facts of the largest KL a single zero-ablated cell causes: {kl_zero:.2f} nats"
            f" (mean ablation: {float(mean.kl_ablated.max(['token', 'layer']).mean()):.2f})"]
    text = "\n".join(head + _lines("1. KL against prob (noise restoration)", readout)
                     + _lines("2. mean against zero ablation against noise restoration", ablation) + tail)
    (out / "table.txt").write_text(text + "\n")
    print(text)
    figure({**readout, **ablation}, out / "figure")


if __name__ == "__main__":
    main()
