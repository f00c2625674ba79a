"""ROME's severed-path figure and the attention heads that carry a fact, on one model.

    python analysis/heads_and_severing.py --severed runs/heads/severed.nc \
        --heads runs/heads/heads-subject.nc --heads runs/heads/heads-object.nc -o analysis/results/heads

ROME (Fig. 3) restores the hidden state at the last subject token while the later MLPs (or
attention) at that token keep their corrupted values: on GPT-2 XL severing the MLPs removes
most of the early layers' effect, severing attention little, which is its evidence that the
mid-layer MLPs at the subject do the recall. This prints, from a cube with `hidden`,
`hidden-sever-mlp` and `hidden-sever-attn`, the AIE at the last subject token by layer third
for the three, and the effect that severing removes (hidden minus severed, paired over
records, with 95% intervals); and, from cubes with `head` and `head_all_pos`, the heads of
largest AIE at the segments of interest and at all positions (the fact and the
counterfactual variants apart, where a cube has both), each in-sample and held out (chosen
on a random half of the records, estimated on the other: `nnct.analysis.strongest`). It writes `table.txt`, the severed-path
figure and one heads figure per heads cube and variant (PNG and PDF).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from nnct.analysis.plot import SEVERED, heads_figure, save, severed_figure
from nnct.analysis.strongest import strongest
from nnct.analysis.summary import FOCUS, mean_ci, segment_effects, summarize
from nnct.results.cube import open_cube
from nnct.results.files import atomic

SEGMENT = "subject_last"  # ROME's severed paths are at the last subject token


def thirds(n_layers: int) -> list[tuple[str, np.ndarray]]:
    parts = np.array_split(np.arange(n_layers), 3)
    return [(f"{name} L{p[0]}-{p[-1]}", p) for name, p in zip(("early", "middle", "late"), parts)]


def severed_table(ds, summary, metric: str) -> list[str]:
    s = summary.sel(metric=metric)
    a = s.attrs
    lines = [f"severed paths ({a['experiment']}, S={a['samples']}, {a['examples']} examples): AIE ({metric}) at {SEGMENT}"
             f" by layer third; peak with its 95% CI; held out: the peak layer chosen on a random half of the records,"
             f" estimated on the other half (both ways)",
             f"ATE {float(s.ate):.3f} [{float(s.ate_low):.3f}, {float(s.ate_high):.3f}], p_clean {float(s.p_clean):.3f},"
             f" p_corrupt {float(s.p_corrupt):.3f}"]
    parts = thirds(s.sizes["layer"])
    lines.append(f"{'':34s}" + "".join(f"{t:>16s}" for t, _ in parts) + f"{'peak':>8s}{'95% CI':>18s}{'layer':>6s}{'held out':>10s}")
    for comp in SEVERED:
        c = s.sel(segment=SEGMENT, component=comp)
        best = int(c.best_layer)
        peak = c.sel(layer=best)
        bands = "".join(f"{float(np.nanmean(c.aie.values[idx])):16.3f}" for _, idx in parts)
        held = float(strongest(ds, 1, metric, segments=[SEGMENT], components=[comp]).held_out[0, 0])
        lines.append(f"{comp:34s}{bands}{float(peak.aie):8.3f}  [{float(peak.aie_low):6.3f}, {float(peak.aie_high):6.3f}]{best:6d}"
                     f"{held:10.3f}")
    # What severing removes, per example then averaged: hidden - severed, mean over a third's layers.
    segments = [str(g) for g in s.segment.values]
    per_example, _ = segment_effects(ds, (metric,), segments)  # [1, example, segment, layer, component]
    at = per_example[0, :, segments.index(SEGMENT)]  # [example, layer, component]
    comps = [str(c) for c in ds.component.values]
    lines.append("\nremoved by severing (hidden - severed, paired by record; mean over the third's layers, 95% CI over records)")
    for comp in SEVERED[1:]:
        gap = at[:, :, comps.index("hidden")] - at[:, :, comps.index(comp)]
        row = ""
        for _, idx in parts:
            mean, low, high, n = mean_ci(gap[:, idx].mean(axis=1), records=ds.record_id.values)
            share = float(np.nanmean(at[:, idx, comps.index("hidden")]))
            row += f"   {float(mean):6.3f} [{float(low):6.3f}, {float(high):6.3f}] ({float(mean) / share:4.0%})"
        lines.append(f"{comp:20s}{row}")
    lines.append("   (per third: the gap, its interval, and the gap as a share of hidden's AIE there)")
    return lines


def heads_table(name: str, ds, s, variant: str | None, metric: str, k: int = 5) -> list[str]:
    """The k strongest heads per segment of interest and at all positions: in-sample, and held
    out (chosen on one half of the records, estimated on the other, both ways)."""
    a = s.attrs
    lines = [f"\nheads of {name} ({a['experiment']}, {a['examples']} examples, window {a['window']}): ATE"
             f" {float(s.ate.sel(metric=metric)):.3f}, p_clean {float(s.p_clean):.3f}, p_corrupt {float(s.p_corrupt):.3f};"
             f" the {k} largest AIE ({metric}) per segment: in-sample with its 95% CI, then held out (halves of the"
             f" records, seed 0) with its CI and the heads the two halves chose"]
    present = [str(g) for g in s.segment.values]
    found = {seg: strongest(ds, k, metric, variant, segments=[seg]) for seg in FOCUS if seg in present}
    rows = [(seg, f.sel(kind="heads")) for seg, f in found.items()]
    rows.append(("all positions", next(iter(found.values())).sel(kind="heads_all_positions")))
    for seg, f in rows:
        for r in f["rank"].values:
            h = f.sel(rank=r)
            if not str(h.cell.values):  # fewer heads with an effect than k
                break
            halves = sorted({str(h.first_half.values).split(" ")[-1], str(h.second_half.values).split(" ")[-1]})
            lines.append(f"  {seg:16s}{str(h.cell.values).split(' ')[-1]:8s}{float(h.aie):7.3f} [{float(h.aie_low):6.3f},"
                         f" {float(h.aie_high):6.3f}]   held out {float(h.held_out):6.3f} [{float(h.held_out_low):6.3f},"
                         f" {float(h.held_out_high):6.3f}]  ({' | '.join(halves)})")
    return lines


@click.command()
@click.option("--severed", "severed_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--heads", "heads_paths", type=click.Path(exists=True, dir_okay=False), multiple=True)
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True)
@click.option("--metric", default="prob", show_default=True)
def main(severed_path, heads_paths, out, metric):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = open_cube(severed_path)
    summary = summarize(ds, metrics=(metric,))
    lines = severed_table(ds, summary, metric)
    save(severed_figure(summary, metric, SEGMENT), out / "severed")
    for path in heads_paths:
        ds = open_cube(path)
        variants = sorted({"cf" if str(v).startswith("cf") else str(v) for v in ds.variant.values}, reverse=True)
        for variant in variants:  # a fact and its counterfactual passage have other targets: apart
            name = Path(path).stem + ("" if len(variants) == 1 else f"-{variant}")
            s = summarize(ds, variant=variant if len(variants) > 1 else None, metrics=(metric, "recovery"))
            lines += heads_table(name, ds, s, variant if len(variants) > 1 else None, metric)
            save(heads_figure(s, metric), out / name)
    text = "\n".join(lines) + "\n"
    with atomic(out / "table.txt") as tmp:
        Path(tmp).write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
