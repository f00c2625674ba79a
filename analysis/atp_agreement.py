"""Attribution patching (AtP, AtP*) against exact patching on the same facts, and what a
`--verify-top` screen must patch exactly to recover the exact top-10 cells.

    python analysis/atp_agreement.py --case noise EXACT.nc AtP.nc --case noise EXACT.nc AtPstar.nc ... -o DIR

Each case is an exact cube and an estimate's cube (`nnct attribute`, with or without
--graddrop) of the same examples and settings. Per case, metric (p(target), ROME's, and the
logit difference target - alt) and component (hidden, mlp, attn) it reports:

- the pooled agreement of `nnct.analysis.agreement.compare` (Pearson, Spearman, recall of
  the exact top-10/top-50 cells of all examples pooled among the estimate's);
- per example, the share of the example's exact top-10 cells (by |IE|) found among the
  estimate's top K, for K = 10 ... 200, beside K as a share of the example's cells that a
  trace would patch (tokens from the corrupted span on): the exact compute a screen of K
  cells per component spends, against the full trace's, counting a cell as one unit;
- where the estimate fails: the mean exact IE and the mean estimate at the last subject
  token and the last token, per layer third;
- and, with --screened, the misses `--verify-top` estimated from its random sample, against
  the misses the exact cube shows.

It writes `table.txt` and `agreement.json` into DIR.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from nnct.analysis import agreement
from nnct.analysis.summary import summarize
from nnct.results.cube import metric_effects, open_cube

KS = (10, 20, 30, 50, 100, 200)
TOP = 10
METRICS = ("prob", "logit_diff")  # the screen's ranking, in p (ROME's) and in the logit difference
SEGMENTS = ("subject_last", "last")


def per_example(exact, estimate, component: str, metric: str) -> dict:
    """Per example: recall of its exact top-10 among the estimate's top K (each K), and its
    number of cells from the span on."""
    x = metric_effects(estimate, metric)[0].sel(component=component).values
    y = metric_effects(exact, metric)[0].sel(component=component).values
    recalls, cells, needed = {k: [] for k in KS}, [], []
    for i in range(x.shape[0]):
        start, n = int(exact.span_start[i]), int(exact.n_tokens[i])
        xi, yi = x[i, start:n].ravel(), y[i, start:n].ravel()
        keep = np.isfinite(xi) & np.isfinite(yi)
        xi, yi = xi[keep], yi[keep]
        best = np.argsort(-np.abs(yi), kind="stable")[:TOP]
        rank = np.empty(len(xi), dtype=int)  # each cell's place in the estimate's order
        rank[np.argsort(-np.abs(xi), kind="stable")] = np.arange(len(xi))
        for k in KS:
            recalls[k].append(float(np.mean(rank[best] < k)))
        cells.append(len(xi))
        needed.append(int(rank[best].max()) + 1)  # the K whose top K first holds all of the exact top-10
    return {"recall_of_top10": {k: float(np.mean(v)) for k, v in recalls.items()},
            "cells_per_example": float(np.mean(cells)), "k_for_all_top10": needed}


def bands(exact, estimate, metric: str) -> dict:
    """Mean exact IE and mean estimate per segment, component and layer third."""
    se, sa = summarize(exact, metrics=(metric,)), summarize(estimate, metrics=(metric,))
    thirds = np.array_split(np.arange(exact.sizes["layer"]), 3)
    out = {}
    for seg in SEGMENTS:
        for comp in exact.component.values:
            e = se.aie.sel(metric=metric, segment=seg, component=comp).values
            a = sa.aie.sel(metric=metric, segment=seg, component=comp).values
            out[f"{seg}/{comp}"] = [(f"L{t[0]}-{t[-1]}", float(np.nanmean(e[t])), float(np.nanmean(a[t]))) for t in thirds]
    return out


def true_misses(exact, screened) -> dict:
    """Per component, the mean number of cells per example outside the screen's top K whose
    exact |IE| beats the min(`TOP`, K)-th strongest exact one among the screened cells (what
    `agreement.verified` estimates from the random sample), counted on the full exact cube."""
    k = int(screened.attrs["verify_top"])
    out = {}
    for comp in exact.component.values:
        x = screened.ie_atp.sel(component=comp, answer="target").values
        v = metric_effects(screened, "prob", exact=True)[0].sel(component=comp).values
        y = metric_effects(exact, "prob")[0].sel(component=comp).values
        counts = []
        for i in range(x.shape[0]):
            yi = y[i].ravel()
            known, top, bar = agreement.screen(x[i].ravel(), v[i].ravel(), k, TOP)
            counts.append(int((known & np.isfinite(yi) & ~top & (np.abs(yi) > bar)).sum()))
        out[str(comp)] = float(np.mean(counts))
    return out


def table(results: dict) -> str:
    lines = []
    for label, r in results.items():
        pooled = r["pooled"]
        lines.append(f"\n== {label}: {r['estimate']} against exact, {pooled['examples']} examples, metric {pooled['metric']} ==")
        lines.append(f"{'component':11s}{'pearson':>9s}{'spearman':>10s}{'recall@10':>11s}{'recall@50':>11s}"
                     f"{'per-example recall@10':>23s}{'cells/example':>15s}")
        for comp, c in pooled["components"].items():
            e = r["per_example"][comp]
            lines.append(f"{comp:11s}{c['pearson']:9.3f}{c['spearman']:10.3f}{c['recall_10']:11.2f}{c['recall_50']:11.2f}"
                         f"{e['recall_of_top10'][10]:23.2f}{e['cells_per_example']:15.0f}")
        lines.append("share of each example's exact top-10 among the estimate's top K per component (K as a share of"
                     " the example's cells)")
        lines.append(f"{'component':11s}" + "".join(f"{'K=' + str(k):>14s}" for k in KS) + f"{'K for all 10 (median, max)':>30s}")
        for comp, e in r["per_example"].items():
            row = "".join(f"{e['recall_of_top10'][k]:7.2f} ({min(1.0, k / e['cells_per_example']):4.0%})" for k in KS)
            need = e["k_for_all_top10"]
            lines.append(f"{comp:11s}{row}{int(np.median(need)):>21d}, {max(need):d}")
        lines.append("mean exact AIE | mean estimate, per layer third")
        for key, values in r["bands"].items():
            lines.append(f"  {key:22s}" + "".join(f"{name:>9s} {e:+.3f} | {a:+.3f}" for name, e, a in values))
        for comp, c in pooled["components"].items():
            for m in c["misses"][:3]:
                cell = ", ".join(f"{k}={v}" for k, v in m["cell"].items())
                lines.append(f"  largest miss {comp} {m['example']} ({cell}): exact {m['exact']:+.4f}, estimate {m['atp']:+.4f}")
        if "screen" in r:
            s = r["screen"]
            lines.append(f"--verify-top {s['verify_top']} --verify-sample {s['verify_sample']}: misses per example (unscreened"
                         f" cells beyond the screened cells' {TOP}th strongest exact effect) estimated from the sample |"
                         " counted on the exact cube")
            for comp, est in s["estimated"].items():
                lines.append(f"  {comp:11s}{est['misses_per_example']:8.2f} | {s['true'][comp]:6.2f}"
                             f"   ({est['sampled_above']} of {est['sampled']} sampled cells above)")
    return "\n".join(lines).lstrip("\n")


@click.command()
@click.option("--case", "cases", type=(str, click.Path(exists=True), click.Path(exists=True)), multiple=True, required=True,
              help="LABEL EXACT.nc ESTIMATE.nc")
@click.option("--screened", type=(str, click.Path(exists=True)), multiple=True,
              help="LABEL SCREENED.nc: a --verify-top cube of case LABEL's examples")
@click.option("-o", "out", type=click.Path(file_okay=False), required=True)
def main(cases, screened, out):
    results = {}
    screens = dict(screened)
    for label, exact_path, estimate_path in cases:
        exact, estimate = open_cube(exact_path), open_cube(estimate_path)
        for metric in METRICS:
            key = f"{label} {estimate.attrs['method']} {metric}"
            r = {"estimate": estimate.attrs["method"], "exact": exact_path, "estimate_cube": estimate_path,
                 "pooled": agreement.compare(estimate, exact, metric),
                 "per_example": {str(c): per_example(exact, estimate, str(c), metric) for c in exact.component.values},
                 "bands": bands(exact, estimate, metric)}
            if metric == "prob" and label in screens and estimate.attrs["method"] == open_cube(screens[label]).attrs["method"]:
                s = open_cube(screens[label])
                r["screen"] = {"verify_top": int(s.attrs["verify_top"]), "verify_sample": int(s.attrs["verify_sample"]),
                               "estimated": agreement.verified(s), "true": true_misses(exact, s)}
            results[key] = r
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "agreement.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (Path(out) / "table.txt").write_text(text + "\n")
    click.echo(text)


if __name__ == "__main__":
    main()
