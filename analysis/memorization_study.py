"""What the model memorises of the package corpus, and what its circuit looks like: a text
summary of `just memorization-study`'s files.

    python analysis/memorization_study.py analysis/results/memorization

Reads corpus-scores.jsonl and scores.jsonl (`nnct memorization score`), the pairs files, the circuit files and the
verify JSON where they exist, and prints:
- the score distribution per text;
- the best windows, with their prefix and what the model wrote;
- the pairs;
- each circuit's size after pruning (and its top-n count before), its faithfulness beside its
  random circuits, and MIB's CPR and CMD;
- which nodes the minimal circuit's strongest edges leave from and go to.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import click
import numpy as np

from nnct.results import circuit as circuit_file


def short(text: str, n: int = 70) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= n else text[:n - 1] + "…"


def score_table(path: Path) -> None:
    scores = [json.loads(line) for line in path.read_text().splitlines()]
    if not scores:
        raise click.ClickException(f"{path}: no scored window")
    by_text = defaultdict(list)
    for s in scores:
        by_text[s["text_id"]].append(s["score"])
    print(f"{path.name}: {len(scores)} windows of {scores[0]['prefix_tokens']} + {scores[0]['continuation_tokens']} tokens,"
          f" model {scores[0]['model']}")
    print(f"{'text':24} {'windows':>7} {'mean':>6} {'max':>6} {'>=0.5':>6} {'>=0.75':>6} {'=1':>4}")
    rows = sorted(by_text.items(), key=lambda kv: -np.mean(kv[1])) + [("all", [s["score"] for s in scores])]
    for text, values in rows:
        v = np.array(values)
        print(f"{text:24} {len(v):7d} {v.mean():6.3f} {v.max():6.2f} {(v >= 0.5).sum():6d} {(v >= 0.75).sum():6d}"
              f" {(v == 1).sum():4d}")
    print("the best windows (the prefix's end | the text goes on | the model wrote):")
    for s in sorted(scores, key=lambda s: -s["score"])[:8]:
        print(f"  {s['id']:28} {s['score']:.2f}  …{short(s['prefix'][-40:], 40)} | {short(s['continuation'], 50)} |"
              f" {short(s['greedy_text'], 50)}")
    print()


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def main(folder):
    folder = Path(folder)
    for name in ("corpus-scores.jsonl", "scores.jsonl"):
        if (folder / name).exists():
            score_table(folder / name)
    for pairs_path in sorted(folder.glob("pairs-*.jsonl")):  # the find-/heldout- files split these
        pairs = [json.loads(line) for line in pairs_path.read_text().splitlines()]
        print(f"\n{pairs_path.name}: {len(pairs)} pairs")
        for p in pairs[:6]:
            where = f"L={p['context_tokens']}" if "context_tokens" in p else f"vs {p.get('other')}"
            print(f"  {p['id'][:40]:40} {where:14} …{short(p['clean'][-30:], 30)!r} vs …{short(p['corrupt'][-12:], 12)!r}:"
                  f" {p['target']!r} / {p['alt']!r}")
    for path in sorted(folder.glob("circuit-*.nc")):
        ds = circuit_file.read(path)
        a = ds.attrs
        n, size = circuit_file.minimal_selected(a), int(a["minimal_edges"])
        print(f"\n{path.name}: {a['n_pairs']} pairs, M clean {a['m_clean']:.2f}, corrupt {a['m_corrupt']:.2f};"
              f" minimal circuit {size} of {a['total_edges']} edges ({100 * size / a['total_edges']:.2f}%) after pruning"
              f" the top {n}, faithfulness {a['faithfulness']:.3f}")
        if "cpr" in a:
            print(f"  MIB: CPR {a['cpr']:.3f}, CMD {a['cmd']:.3f}; F by share of edges selected (edges after pruning): "
                  + ", ".join(f"{100 * x:g}% ({k}): {f:.2f}" for x, k, f in zip(
                      ds.mib_fractions.values, ds.mib_edges.values, ds.mib_faithfulness.values)))
        verify = folder / path.name.replace("circuit-", "verify-").replace(".nc", ".json")
        if verify.exists():
            r = json.loads(verify.read_text())
            ci = r["random_faithfulness_ci"]
            rand = (f"; {r['random_circuits']} random circuits of that size: mean {r['random_faithfulness_mean']:.3f},"
                    f" 95% [{ci[0]:.3f}, {ci[1]:.3f}]") if ci else ""
            pruned = (f" (after pruning: mean {np.mean(r['random_edges_pruned']):.0f} edges)"
                      if r.get("random_edges_pruned") else "")
            print(f"  verified on {r['n_pairs']} pairs ({Path(r['pairs']).name}): {r['edges']} edges"
                  f" (top {r.get('edges_selected', r['edges'])}) F = {r['faithfulness']:.3f}{rand}{pruned}")
            if "cpr" in r:
                print(f"  MIB there: CPR {r['cpr']:.3f}, CMD {r['cmd']:.3f}")
            print("  F by size (top n: edges after pruning): " + ", ".join(
                f"{c.get('edges_selected', c['edges'])}: {c['edges']} {c['faithfulness']:.2f}" for c in r["curve"]))
        if n:
            keep = circuit_file.circuit(circuit_file.graph_of(ds), ds.score.values, n)
            for dim, axis in (("source", 1), ("destination", 0)):
                counts = keep.sum(axis=axis)
                top = np.argsort(-counts)[:8]
                print(f"  {dim}s with most circuit edges: "
                      + ", ".join(f"{ds[dim].values[i]} ({counts[i]})" for i in top if counts[i]))
            us, vs = np.nonzero(keep)
            order = np.argsort(-np.abs(ds.score.values[us, vs]))[:10]
            print("  strongest edges: " + ", ".join(f"{ds.source.values[us[i]]}->{ds.destination.values[vs[i]]}"
                                                     f" ({ds.score.values[us[i], vs[i]]:+.3f})" for i in order))


if __name__ == "__main__":
    main()
