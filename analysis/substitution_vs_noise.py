"""Subject substitution against Gaussian noise on the same facts, side by side.

    python analysis/substitution_vs_noise.py runs/subst/noise.nc runs/subst/substitute.nc -o analysis/results/substitution

The mlxterp ROME tutorial reports that substituting the subject ("The Louvre Museum" for
"The Eiffel Tower") shows ROME's middle-layer peak where Gaussian noise shows only early
layers. This compares the two cubes of one data set (experiment subject-noctx): per-layer
AIE of hidden, mlp and attn at the last subject token and at the last token, with 95%
intervals, in probability and as a fraction of each example's total effect (recovery); the
averages over early, middle and late layer thirds; where each peaks; substitution minus
noise per third, paired by record (each fact's two traces); and MLP against attention.
Intervals are over records (Student t over record means). It writes a table (`table.txt`) and a figure per metric (`figure_prob.png`,
`figure_recovery.png`, and PDFs).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from nnct.analysis.strongest import strongest
from nnct.analysis.summary import paired_difference, segment_effects, summarize
from nnct.results.cube import open_cube

SEGMENTS = ("subject_last", "last")
METRICS = ("prob", "recovery")


def thirds(n_layers: int) -> list[tuple[str, np.ndarray]]:
    parts = np.array_split(np.arange(n_layers), 3)
    return [(f"{name} L{p[0]}-{p[-1]}", p) for name, p in zip(("early", "middle", "late"), parts)]


def table(summaries: dict, cubes: dict) -> str:
    first = next(iter(summaries.values()))
    lines = []
    for name, s in summaries.items():
        a = s.attrs
        te = float(s.ate.sel(metric="prob"))
        left = ", ".join(f"{m} {int(s.n_left_out.sel(metric=m, segment=list(SEGMENTS)).max())}" for m in METRICS)
        lines.append(f"{name}: {a['examples']} examples of {a['records']} records, p_clean {float(s.p_clean):.3f},"
                     f" p_corrupt {float(s.p_corrupt):.3f}, ATE {te:.3f} [{float(s.ate_low.sel(metric='prob')):.3f},"
                     f" {float(s.ate_high.sel(metric='prob')):.3f}]; examples left out at these segments (metric undefined): {left}")
    for metric in METRICS:
        lines.append(f"\nAIE ({metric}) by layer third; peak with its 95% CI and layer; held out: the peak layer chosen on a"
                     " random half of the records, estimated on the other half (both ways)")
        head = f"{'segment':14s}{'component':11s}{'corruption':12s}" + "".join(f"{t:>18s}" for t, _ in thirds(first.sizes["layer"]))
        lines.append(head + f"{'peak':>9s}{'95% CI':>19s}{'layer':>7s}{'held out':>10s}")
        for seg in SEGMENTS:
            for comp in first.component.values:
                for name, s in summaries.items():
                    c = s.sel(metric=metric, segment=seg, component=comp)
                    best = int(c.best_layer)
                    peak = c.sel(layer=best)
                    bands = "".join(f"{float(np.nanmean(c.aie.values[idx])):18.3f}" for _, idx in thirds(s.sizes["layer"]))
                    held = strongest(cubes[name], 1, metric, segments=[seg], components=[str(comp)]).held_out.values
                    lines.append(f"{seg:14s}{str(comp):11s}{name:12s}{bands}{float(peak.aie):9.3f}"
                                 f"   [{float(peak.aie_low):6.3f}, {float(peak.aie_high):6.3f}]{best:7d}"
                                 f"{float(held[0, 0]) if held.size else float('nan'):10.3f}")
    lines += paired(cubes, [str(c) for c in first.component.values])
    lines.append("\nMLP against attention (AIE summed over layers, recovery), at each segment")
    for seg in SEGMENTS:
        for name, s in summaries.items():
            c = s.sel(metric="recovery", segment=seg)
            mlp, attn = (float(c.aie.sel(component=k).sum()) for k in ("mlp", "attn"))
            lines.append(f"  {seg:14s}{name:12s} mlp {mlp:7.3f}  attn {attn:7.3f}  mlp/attn {mlp / attn if attn else float('nan'):6.2f}")
    return "\n".join(lines)


def paired(cubes: dict, components: list[str]) -> list[str]:
    """Substitute - noise per layer third, paired by record: each example's IE averaged over
    the third's layers, then each record's difference, its mean and t interval over records."""
    per = {name: segment_effects(ds, METRICS, list(SEGMENTS))[0] for name, ds in cubes.items()}  # [metric, example, segment, layer, comp]
    records = {name: ds.record_id.values for name, ds in cubes.items()}
    parts = thirds(next(iter(cubes.values())).sizes["layer"])
    lines = []
    for m, metric in enumerate(METRICS):
        lines.append(f"\nsubstitute - noise ({metric}), paired by record: mean over the third's layers, 95% CI over records")
        lines.append(f"{'segment':14s}{'component':11s}" + "".join(f"{t:>30s}" for t, _ in parts) + f"{'records':>9s}")
        for k, seg in enumerate(SEGMENTS):
            for c, comp in enumerate(components):
                row, used = "", 0
                for _, idx in parts:
                    noise, sub = (per[name][m, :, k][:, idx, c].mean(axis=1) for name in ("noise", "substitute"))
                    mean, low, high, n = paired_difference(noise, sub, records["noise"], records["substitute"])
                    row += f"{float(mean):12.3f} [{float(low):6.3f}, {float(high):6.3f}]"
                    used = max(used, int(n))
                lines.append(f"{seg:14s}{comp:11s}{row}{used:9d}")
    return lines


def figure(summaries: dict, metric: str):
    from matplotlib.figure import Figure

    first = next(iter(summaries.values()))
    comps = [str(c) for c in first.component.values]
    fig = Figure(figsize=(4.2 * len(comps), 3.4 * len(SEGMENTS)), layout="constrained")
    axes = fig.subplots(len(SEGMENTS), len(comps), squeeze=False, sharey="row")
    layers = first.layer.values
    for i, seg in enumerate(SEGMENTS):
        for j, comp in enumerate(comps):
            ax = axes[i][j]
            for name, s in summaries.items():
                c = s.sel(metric=metric, segment=seg, component=comp)
                (line,) = ax.plot(layers, c.aie.values, label=f"{name} (n={int(s.n.sel(metric=metric, segment=seg))})")
                ax.fill_between(layers, c.aie_low.values, c.aie_high.values, color=line.get_color(), alpha=0.2, linewidth=0)
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.set_title(f"{comp} at {seg}")
            ax.set_xlabel("layer" if comp == "hidden" else f"layer (centre of {first.attrs.get('window', 10)} restored)")
        axes[i][0].set_ylabel(f"AIE ({metric})")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{first.attrs.get('model', '')}, subject-noctx: subject substitution vs Gaussian noise (95% CI bands)",
                 fontsize=10)
    return fig


@click.command()
@click.argument("noise", type=click.Path(exists=True, dir_okay=False))
@click.argument("substitute", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
def main(noise, substitute, out):
    cubes = {"noise": open_cube(noise), "substitute": open_cube(substitute)}
    shared = sorted(set(cubes["noise"].example.values) & set(cubes["substitute"].example.values))
    cubes = {name: ds.sel(example=shared) for name, ds in cubes.items()}
    summaries = {name: summarize(ds, metrics=METRICS) for name, ds in cubes.items()}
    text = table(summaries, cubes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.txt").write_text(text + "\n")
    for metric in METRICS:
        fig = figure(summaries, metric)
        for ext in ("png", "pdf"):
            fig.savefig(out / f"figure_{metric}.{ext}", dpi=150)
    click.echo(text)


if __name__ == "__main__":
    main()
