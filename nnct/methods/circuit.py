"""Circuits (`nnct circuit find|verify`): edge scores over prompt pairs, the smallest
faithful circuit, and its check against random circuits of its size.

**Pairs** are `nnct patch`'s prompt pairs, one clean and one corrupt prompt of equal token
length. Their answers are spelled as ROME spells them, or given exactly (`target_token`,
`alt_token`, as `nnct memorization pairs` writes them). M is the logit difference
target - alt at the last position. A pair whose prompts differ in length, or whose target
and alt are the same token, is reported and skipped. `--max-pairs` takes the file's first
pairs before the unusable ones are dropped, so fewer may be used.

**find.**
- Each pair gets one forward pass and one backward pass over 1 + m rows (`exec.edges`).
  The EAP and EAP-IG scores are averaged over the pairs.
- The circuit of n edges is the n edges of largest |EAP-IG score| (`results.circuit.top_edges`).
- Its faithfulness is F = (mean M(circuit) - mean M(corrupt)) / (mean M(clean) - mean M(corrupt)),
  means over the pairs. M(circuit) is the clean prompt with every other edge patched exactly
  to its corrupted value.
- The minimal circuit is the smallest n with F >= target, found by binary search over n as
  memorization_circuits does (F need not grow with n, so this is the smallest size the search
  visits).

**verify** evaluates a circuit file's circuit at N edges on some pairs, beside circuits of N
edges drawn uniformly from all edges (their mean F and the 2.5th-97.5th percentile interval),
and F over a grid of edge counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError, DataError, RecordError
from ..exec import edges, remote as remote_lib
from ..inputs import spans
from ..inputs.pairs import example, load_pairs
from ..model.graph import graph_of
from ..results import circuit as circuit_file


@dataclass(frozen=True)
class Prepared:
    id: str
    clean: list[int]
    corrupt: list[int]
    target: int
    alt: int


def prepare(adapter, pairs, max_pairs: int | None = None) -> tuple[list[Prepared], list[RecordError]]:
    """The pairs as token ids, and the problems of those that cannot be used."""
    loaded = load_pairs(pairs)
    problems, out = list(loaded.problems), []
    for pair in loaded.items[:max_pairs]:
        clean = list(spans.tokenize(adapter.tokenizer, pair.clean).ids)
        corrupt = list(spans.tokenize(adapter.tokenizer, pair.corrupt).ids)
        try:
            if len(clean) != len(corrupt):
                raise RecordError(loaded.path, pair.line, "corrupt", f"{len(corrupt)} tokens, the clean prompt {len(clean)}:"
                                  " edges are patched position by position")
            (target,), (alt,) = spans.answer_tokens(adapter.tokenizer, example(pair), loaded.path, pair.line,
                                                    fields=("target", "alt"))
        except RecordError as exc:
            problems.append(exc)
            continue
        out.append(Prepared(pair.id, clean, corrupt, target, alt))
    return out, problems


class Evaluator:
    """Faithfulness of circuits on prepared pairs. Here, the pairs' two runs are made once
    (`scored` hands them over, or `made` makes them); on a server each evaluation is one
    session that makes them again (`backend`: a function giving a fresh nnsight backend)."""

    def __init__(self, g, acc, pairs: list[Prepared], metrics: np.ndarray, nodes=None, backend=None):
        self.g, self.acc = g, acc
        self.pairs, self.nodes, self.backend = [_tuple(p) for p in pairs], nodes, backend
        self.m_clean, self.m_corrupt = float(metrics[:, 0].mean()), float(metrics[:, 1].mean())
        if abs(self.m_clean - self.m_corrupt) < 1e-6:
            raise ConfigError("the pairs' mean logit differences are equal on clean and corrupt prompts:"
                              " faithfulness is undefined")

    @classmethod
    def made(cls, g, acc, pairs: list[Prepared]) -> "Evaluator":
        """An Evaluator here, the pairs' runs made now."""
        nodes = [edges.node_values(acc, g, *_tuple(p)) for p in pairs]
        return cls(g, acc, pairs, np.array([n.metric.numpy() for n in nodes]), nodes)

    def faithfulness(self, keep: np.ndarray) -> float:
        dropped = torch.as_tensor(self.g.edges & ~keep)
        m = np.mean(edges.patched(self.acc, self.g, self.pairs, dropped, self.nodes,
                                  None if self.backend is None else self.backend()))
        return float((m - self.m_corrupt) / (self.m_clean - self.m_corrupt))


def _tuple(p: Prepared) -> tuple:
    return (p.clean, p.corrupt, p.target, p.alt)


def backend_maker(adapter, target):
    """None (here), or a function giving a fresh nnsight backend for `target` ("local":
    nnsight's simulation of a request; or an `exec.remote.Server`)."""
    if target is None:
        return None
    return lambda: remote_lib.backend(target, adapter)


@dataclass
class Found:
    dataset: object
    skipped: list[RecordError] = field(default_factory=list)


def find(adapter, pairs, ig_steps: int = 5, target: float = 0.85, max_pairs: int | None = None, remote=None,
         say=lambda text: None) -> Found:
    """`remote`: None (here), "local" (nnsight's simulation of a request) or an `exec.remote.Server`."""
    if ig_steps < 1:
        raise ConfigError("--ig-steps takes at least 1 step")
    prepared, skipped = prepare(adapter, pairs, max_pairs)
    if not prepared:
        raise DataError(f"{pairs}: no usable pair")
    g, acc = graph_of(adapter)
    backend = backend_maker(adapter, remote)
    say(f"scoring {len(prepared)} pairs ({g.edges.sum()} edges, {ig_steps} IG steps)")
    results = edges.scored(acc, g, [_tuple(p) for p in prepared], ig_steps, None if backend is None else backend())
    score = np.mean([r[1].numpy() for r in results], axis=0)
    score_eap = np.mean([r[0].numpy() for r in results], axis=0)
    metrics = np.array([np.asarray(r[2]) for r in results])
    evaluator = Evaluator(g, acc, prepared, metrics, [r[3] for r in results] if backend is None else None, backend)
    score_nan = np.where(g.edges, score, np.nan)
    search, best, lo, hi = [], 0, 1, int(g.edges.sum())
    while lo <= hi:
        n = (lo + hi) // 2
        f = evaluator.faithfulness(circuit_file.top_edges(score_nan, n))
        search.append((n, f))
        say(f"{n} edges: faithfulness {f:.3f}")
        if f >= target:
            best, hi = n, n - 1
        else:
            lo = n + 1
    faith = dict(search).get(best, float("nan"))
    attrs = {"model": adapter.name, "model_revision": adapter.revision, "ig_steps": ig_steps, "pairs": str(pairs),
             "n_pairs": len(prepared), "m_clean": evaluator.m_clean, "m_corrupt": evaluator.m_corrupt,
             "metric": "logit_diff", "total_edges": int(g.edges.sum()), "target": target, "minimal_edges": best,
             "faithfulness": faith, "backend": remote_lib.kind(None if remote is None else getattr(remote, "host", remote)),
             "nnct_version": __version__}
    return Found(circuit_file.to_dataset(g, score, score_eap, search, attrs), skipped)


def curve_counts(total: int, n: int, points: int = 12) -> list[int]:
    """Edge counts from 1 to `total`, evenly spaced in log, with n among them."""
    return sorted({int(round(x)) for x in np.geomspace(1, total, points)} | {n})


def verify(adapter, ds, pairs, n_edges: int | None = None, random: int = 20, seed: int = 0, max_pairs: int | None = None,
           say=lambda text: None) -> dict:
    g, acc = graph_of(adapter)
    if (ds.attrs.get("n_layers"), ds.attrs.get("n_heads"), ds.attrs.get("n_kv_heads")) != (g.n_layers, g.n_heads, g.n_kv):
        raise ConfigError("the circuit file's graph is not this model's (layers, heads or key/value heads differ)")
    score = ds.score.values
    total = int(g.edges.sum())
    n = int(n_edges if n_edges is not None else ds.attrs.get("minimal_edges", 0))
    if not 1 <= n <= total:
        raise ConfigError(f"--edges {n}: a circuit has 1 to {total} edges (the file found no faithful size: give --edges)")
    prepared, skipped = prepare(adapter, pairs, max_pairs)
    if not prepared:
        raise DataError(f"{pairs}: no usable pair")
    ev = Evaluator.made(g, acc, prepared)
    curve = [{"edges": k, "faithfulness": ev.faithfulness(circuit_file.top_edges(score, k))} for k in curve_counts(total, n)]
    f = next(c["faithfulness"] for c in curve if c["edges"] == n)
    rng = np.random.default_rng(seed)
    existing = np.flatnonzero(g.edges.ravel())
    randoms = []
    for _ in range(random):
        keep = np.zeros(g.edges.size, dtype=bool)
        keep[rng.choice(existing, size=n, replace=False)] = True
        randoms.append(ev.faithfulness(keep.reshape(g.edges.shape)))
    say(f"{n} edges: faithfulness {f:.3f}; {random} random circuits: mean {np.mean(randoms) if randoms else float('nan'):.3f}")
    return {"model": adapter.name, "pairs": str(pairs), "n_pairs": len(prepared), "skipped": [str(p) for p in skipped],
            "edges": n, "total_edges": total, "faithfulness": f, "m_clean": ev.m_clean, "m_corrupt": ev.m_corrupt,
            "random_circuits": random, "random_seed": seed,
            "random_faithfulness_mean": float(np.mean(randoms)) if randoms else None,
            "random_faithfulness_ci": [float(np.percentile(randoms, 2.5)), float(np.percentile(randoms, 97.5))] if randoms else None,
            "random_faithfulness": randoms, "curve": curve}
