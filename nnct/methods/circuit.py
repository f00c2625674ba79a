"""Circuits (`nnct circuit find|verify`): edge scores over prompt pairs, the smallest
faithful circuit, and its check against random circuits of its size.

**Pairs** are `nnct patch`'s prompt pairs, one clean and one corrupt prompt of equal token
length. Their answers are spelled as ROME spells them, or given exactly (`target_token`,
`alt_token`, as `nnct memorization pairs` writes them). M is a readout of the last
position's logits (`--readout`; the logit difference target - alt by default; the target's
value for a readout of both answers; `kl` to the clean run's distribution). A pair whose prompts differ in length, or whose target
and alt are the same token, is reported and skipped. `--max-pairs` takes the file's first
pairs before the unusable ones are dropped, so fewer may be used.

**find.**
- Each pair gets one forward pass and one backward pass over 1 + m rows (`exec.edges`).
  The EAP and EAP-IG scores are averaged over the pairs.
- The circuit of n edges is the n edges of largest |EAP-IG score| (`results.circuit.top_edges`),
  less those that lie on no path from the embedding to the logits within them (EAP-IG's
  prune, `model.graph.Graph.prune`). Its size is counted after pruning; n is "selected".
- Its faithfulness is F = (mean M(circuit) - mean M(corrupt)) / (mean M(clean) - mean M(corrupt)),
  means over the pairs. M(circuit) is the clean prompt with every other edge patched exactly
  to its corrupted value. Pruning leaves F as it is: an edge from a node the embedding does
  not reach carries the corrupted value anyway, and an edge into a destination that does not
  reach the logits changes no logit.
- The minimal circuit is the smallest n with F >= target, found by binary search over n as
  memorization_circuits does (F need not grow with n, so this is the smallest size the search
  visits).
- MIB's CPR and CMD (`results.circuit.mib_scores`): F of the circuits of int(f * all edges)
  edges selected, for f in `results.circuit.MIB_FRACTIONS`, and the areas under it and
  between it and 1. Every point is evaluated, also the whole graph (F = 1 up to rounding) and
  a grid point of 0 edges (the empty circuit, F = 0). MIB ranks CPR's edges by signed score
  and CMD's by |score|; nnct ranks both by |score|, so one curve gives both.

**verify** evaluates a circuit file's circuit on some pairs: its top N edges (`--edges N`, a
count before pruning; by default the file's minimal circuit), pruned. Beside it: random
circuits, F over a grid of edge counts, and MIB's CPR and CMD over MIB's grid.
- A random circuit draws as many edges as the circuit has after pruning, uniformly from all
  edges, and is pruned in turn (its F does not change; its size after pruning is reported).
  Their mean F and 2.5th-97.5th percentile interval are reported.
- A circuit file written before pruning has no `minimal_edges_selected`: its
  `minimal_edges` is taken as the count selected.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError, RecordError
from ..exec import edges
from ..inputs import spans
from ..inputs.pairs import example, load_pairs
from ..interventions import readouts
from ..model.graph import graph_of
from ..results import circuit as circuit_file
from ..results import files
from . import pipeline
from .pipeline import Execution


@dataclass(frozen=True)
class TokenPair:
    id: str
    clean: list[int]
    corrupt: list[int]
    target: int
    alt: int


def token_pairs(adapter, pairs, max_pairs: int | None = None) -> tuple[list[TokenPair], list[RecordError]]:
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
        out.append(TokenPair(pair.id, clean, corrupt, target, alt))
    return out, problems


class Evaluator:
    """Faithfulness of circuits on tokenized pairs, each evaluation through `execute`
    (`pipeline.Session.execute`). Here, the pairs' two runs are made once (`scored` hands
    them over as `nodes`, or `made` makes them); on a server each evaluation is one request
    that makes them again."""

    def __init__(self, g, access, pairs: list[TokenPair], metrics: np.ndarray, execute, nodes=None, readout=edges.DEFAULT):
        self.g, self.access, self.execute, self.readout = g, access, execute, readout
        self.pairs, self.nodes = [_tuple(p) for p in pairs], nodes
        self.m_clean, self.m_corrupt = float(metrics[:, 0].mean()), float(metrics[:, 1].mean())
        if abs(self.m_clean - self.m_corrupt) < 1e-6:
            raise ConfigError(f"the pairs' mean {readout.name} is equal on clean and corrupt prompts:"
                              " faithfulness is undefined")

    @classmethod
    def made(cls, g, access, pairs: list[TokenPair], session: pipeline.Session, readout=edges.DEFAULT) -> "Evaluator":
        """An Evaluator whose pairs' runs are made now (their metrics; their nodes, here)."""
        if session.channel is not None:
            metrics = session.execute(lambda b: edges.metrics(access, g, [_tuple(p) for p in pairs], b, readout))
            return cls(g, access, pairs, np.asarray(metrics), session.execute, readout=readout)
        nodes = [edges.node_values(access, g, *_tuple(p), readout) for p in pairs]
        return cls(g, access, pairs, np.array([n.metric.numpy() for n in nodes]), session.execute, nodes, readout)

    def faithfulness(self, keep: np.ndarray) -> float:
        dropped = torch.as_tensor(self.g.edges & ~keep, device="cpu")  # moved where it is used, here or on a server
        m = self.execute(lambda b: edges.patched(self.access, self.g, self.pairs, dropped, self.nodes, b, self.readout))
        return float((np.mean(m) - self.m_corrupt) / (self.m_clean - self.m_corrupt))


def _tuple(p: TokenPair) -> tuple:
    return (p.clean, p.corrupt, p.target, p.alt)


def circuit_readout(cfg):
    """The one readout a circuit is scored and evaluated with (ConfigError for several, for
    one without a gradient, or for a callable on a server)."""
    chosen = readouts.parse(cfg.readout)
    if len(chosen) != 1:
        raise ConfigError(f"--readout {cfg.readout}: a circuit is scored with one readout")
    readouts.check_gradient(chosen)
    if cfg.remote is not None:  # nnsight's simulation sends the code as a server would get it
        readouts.check_remote(chosen)
    return chosen[0]


@dataclass(frozen=True, kw_only=True)
class FindConfig(Execution):
    pairs: str  # prompt pairs (JSONL)
    out: str | None = None  # the circuit file to write
    ig_steps: int = 5
    target: float = 0.85  # the faithfulness the minimal circuit reaches
    max_pairs: int | None = None
    readout: object = "logit_diff"  # M: a readout's name (`interventions.readouts`), or in Python a callable


@dataclass(frozen=True, kw_only=True)
class VerifyConfig(Execution):
    circuit: str  # a circuit file
    pairs: str
    json_out: str | None = None
    model: str | None = None  # None: the circuit file's model
    edges: int | None = None  # the circuit's top-n count (before pruning); None: the file's minimal one
    random: int = 20  # random circuits of the circuit's size after pruning
    seed: int = 0
    max_pairs: int | None = None
    readout: object = None  # None: the circuit file's


@dataclass
class Found:
    dataset: object
    skipped: list[RecordError] = field(default_factory=list)


def find(cfg: FindConfig, adapter=None, say=lambda text: None, on_retry=None) -> Found:
    """Score every edge over the pairs and search the minimal circuit (module docstring), here
    or on a server; the circuit file is written to `cfg.out` when given."""
    if cfg.ig_steps < 1:
        raise ConfigError("--ig-steps takes at least 1 step")
    if cfg.out is not None and Path(cfg.out).suffix != ".nc":
        raise ConfigError(f"--out {cfg.out}: the circuit file is NetCDF, name it *.nc")
    readout = circuit_readout(cfg)
    return pipeline.run(cfg, lambda session: _find(cfg, session, say, readout), outputs=(cfg.out,), adapter=adapter,
                        on_retry=on_retry)


def _find(cfg: FindConfig, session: pipeline.Session, say, readout) -> Found:
    tokenized, skipped = token_pairs(session.adapter, cfg.pairs, cfg.max_pairs)
    if not tokenized:
        raise DataError(f"{cfg.pairs}: no usable pair")
    g, access = graph_of(session.adapter)
    say(f"scoring {len(tokenized)} pairs ({g.edges.sum()} edges, {cfg.ig_steps} IG steps)")
    pairs = [_tuple(p) for p in tokenized]
    results = session.execute(lambda b: edges.scored(access, g, pairs, cfg.ig_steps, b, readout))
    score = np.mean([r[1].numpy() for r in results], axis=0)
    score_eap = np.mean([r[0].numpy() for r in results], axis=0)
    metrics = np.array([np.asarray(r[2]) for r in results])
    nodes = [r[3] for r in results] if session.channel is None else None  # a server keeps none
    evaluator = Evaluator(g, access, tokenized, metrics, session.execute, nodes, readout)
    sizes = Sizes(evaluator, np.where(g.edges, score, np.nan))
    search, best = _search(sizes, cfg.target, say)
    mib = _mib(sizes, say)
    cpr, cmd = circuit_file.mib_scores(circuit_file.MIB_FRACTIONS, [f for _, _, f in mib])
    pruned, f = sizes(best) if best else (0, float("nan"))
    attrs = {**session.provenance(pipeline.settings_of(cfg, "out", "readout")), "ig_steps": cfg.ig_steps, "pairs": str(cfg.pairs),
             "n_pairs": len(tokenized), "m_clean": evaluator.m_clean, "m_corrupt": evaluator.m_corrupt,
             "metric": readout.name, "total_edges": sizes.total, "target": cfg.target, "minimal_edges_selected": best,
             "minimal_edges": pruned, "faithfulness": f, "cpr": cpr, "cmd": cmd}
    found = Found(circuit_file.to_dataset(g, score, score_eap, search, mib, attrs), skipped)
    if cfg.out:
        circuit_file.write(found.dataset, cfg.out)
    return found


class Sizes:
    """The circuits of one score by their top-n count n: each made (`results.circuit.circuit`:
    top n, then pruned) and evaluated once; a call gives (edges after pruning, F)."""

    def __init__(self, evaluator: Evaluator, score: np.ndarray):
        self.ev, self.score, self.done = evaluator, score, {}
        self.total = int(evaluator.g.edges.sum())

    def __call__(self, n: int) -> tuple[int, float]:
        if n not in self.done:
            keep = circuit_file.circuit(self.ev.g, self.score, n)
            self.done[n] = (int(keep.sum()), self.ev.faithfulness(keep))
        return self.done[n]


def _search(sizes: Sizes, target: float, say) -> tuple[list[tuple[int, int, float]], int]:
    """The binary search over n for the smallest top-n circuit with F >= target: every
    (n, edges after pruning, F) it visits, and that n (0: none reached it)."""
    search, best, lo, hi = [], 0, 1, sizes.total
    while lo <= hi:
        n = (lo + hi) // 2
        pruned, f = sizes(n)
        search.append((n, pruned, f))
        say(f"{n} edges ({pruned} after pruning): faithfulness {f:.3f}")
        if f >= target:
            best, hi = n, n - 1
        else:
            lo = n + 1
    return search, best


def _mib(sizes: Sizes, say) -> list[tuple[int, int, float]]:
    """(n, edges after pruning, F) at each of MIB's sizes (`results.circuit.MIB_FRACTIONS`)."""
    out = []
    for fraction, n in zip(circuit_file.MIB_FRACTIONS, circuit_file.mib_counts(sizes.total)):
        pruned, f = sizes(n)
        out.append((n, pruned, f))
        say(f"MIB {100 * fraction:g}%: {n} edges ({pruned} after pruning): faithfulness {f:.3f}")
    return out


def curve_counts(total: int, n: int, points: int = 12) -> list[int]:
    """Edge counts from 1 to `total`, evenly spaced in log, with n among them."""
    return sorted({int(round(x)) for x in np.geomspace(1, total, points)} | {n})


def verify(cfg: VerifyConfig, adapter=None, say=lambda text: None, on_retry=None) -> dict:
    """A circuit file's circuit at N edges on some pairs, beside random circuits of N edges and
    over a grid of sizes (module docstring); the model is the file's unless `cfg.model` says
    otherwise. Written to `cfg.json_out` when given."""
    if not circuit_file.is_circuit_file(cfg.circuit):
        raise DataError(f"{cfg.circuit}: not a circuit file (nnct circuit find writes one)")
    ds = circuit_file.read(cfg.circuit)
    cfg = replace(cfg, readout=cfg.readout or ds.attrs.get("metric", "logit_diff"))
    readout = circuit_readout(cfg)
    return pipeline.run(cfg, lambda session: _verify(cfg, ds, session, say, readout), outputs=(cfg.json_out,),
                        adapter=adapter, on_retry=on_retry, stored=(ds.attrs.get("model"), cfg.circuit))


def _verify(cfg: VerifyConfig, ds, session: pipeline.Session, say, readout) -> dict:
    g, access = graph_of(session.adapter)
    if (ds.attrs.get("n_layers"), ds.attrs.get("n_heads"), ds.attrs.get("n_kv_heads")) != (g.n_layers, g.n_heads, g.n_kv):
        raise ConfigError("the circuit file's graph is not this model's (layers, heads or key/value heads differ)")
    score = ds.score.values
    total = int(g.edges.sum())
    n = int(cfg.edges if cfg.edges is not None else circuit_file.minimal_selected(ds.attrs))
    if not 1 <= n <= total:
        raise ConfigError(f"--edges {n}: a circuit selects 1 to {total} edges (the file found no faithful size: give --edges)")
    tokenized, skipped = token_pairs(session.adapter, cfg.pairs, cfg.max_pairs)
    if not tokenized:
        raise DataError(f"{cfg.pairs}: no usable pair")
    sizes = Sizes(Evaluator.made(g, access, tokenized, session, readout), score)
    ev = sizes.ev
    curve = [{"edges_selected": k, "edges": sizes(k)[0], "faithfulness": sizes(k)[1]} for k in curve_counts(total, n)]
    pruned, f = sizes(n)
    randoms, random_pruned = _random_circuits(ev, pruned, cfg.random, cfg.seed)
    mib = _mib(sizes, lambda text: None)
    cpr, cmd = circuit_file.mib_scores(circuit_file.MIB_FRACTIONS, [x for _, _, x in mib])
    say(f"{n} edges selected, {pruned} after pruning: faithfulness {f:.3f}; {cfg.random} random circuits: mean"
        f" {np.mean(randoms) if randoms else float('nan'):.3f}; MIB CPR {cpr:.3f}, CMD {cmd:.3f}")
    result = {**session.provenance(pipeline.settings_of(cfg, "json_out", "readout")), "metric": readout.name,
            "pairs": str(cfg.pairs), "n_pairs": len(tokenized),
            "skipped": [str(p) for p in skipped], "edges": pruned, "edges_selected": n, "total_edges": total, "faithfulness": f,
            "m_clean": ev.m_clean, "m_corrupt": ev.m_corrupt, "random_circuits": cfg.random, "random_seed": cfg.seed,
            "random_faithfulness_mean": float(np.mean(randoms)) if randoms else None,
            "random_faithfulness_ci": [float(np.percentile(randoms, 2.5)), float(np.percentile(randoms, 97.5))] if randoms else None,
            "random_faithfulness": randoms, "random_edges_pruned": random_pruned, "curve": curve, "cpr": cpr, "cmd": cmd,
            "mib_curve": [{"fraction": x, "edges_selected": k, "edges": p, "faithfulness": y}
                          for x, (k, p, y) in zip(circuit_file.MIB_FRACTIONS, mib)]}
    if cfg.json_out:
        files.write_json(cfg.json_out, result)
    return result


def _random_circuits(ev: Evaluator, n: int, count: int, seed: int) -> tuple[list[float], list[int]]:
    """F of `count` circuits of n edges drawn uniformly from every edge of the graph, each
    pruned, and their sizes after pruning."""
    rng = np.random.default_rng(seed)
    existing = np.flatnonzero(ev.g.edges.ravel())
    out, sizes = [], []
    for _ in range(count):
        keep = np.zeros(ev.g.edges.size, dtype=bool)
        keep[rng.choice(existing, size=n, replace=False)] = True
        keep = ev.g.prune(keep.reshape(ev.g.edges.shape))
        out.append(ev.faithfulness(keep))
        sizes.append(int(keep.sum()))
    return out, sizes
