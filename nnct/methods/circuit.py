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
    edges: int | None = None  # the circuit's size; None: the file's minimal one
    random: int = 20  # random circuits of that size
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
    search, best = _search(evaluator, np.where(g.edges, score, np.nan), cfg.target, say)
    attrs = {**session.provenance(pipeline.settings_of(cfg, "out", "readout")), "ig_steps": cfg.ig_steps, "pairs": str(cfg.pairs),
             "n_pairs": len(tokenized), "m_clean": evaluator.m_clean, "m_corrupt": evaluator.m_corrupt,
             "metric": readout.name, "total_edges": int(g.edges.sum()), "target": cfg.target, "minimal_edges": best,
             "faithfulness": dict(search).get(best, float("nan"))}
    found = Found(circuit_file.to_dataset(g, score, score_eap, search, attrs), skipped)
    if cfg.out:
        circuit_file.write(found.dataset, cfg.out)
    return found


def _search(evaluator: Evaluator, score: np.ndarray, target: float, say) -> tuple[list[tuple[int, float]], int]:
    """The binary search over n for the smallest top-n circuit with F >= target: every
    (n, F) it visits, and that n (0: none reached it)."""
    search, best, lo, hi = [], 0, 1, int(evaluator.g.edges.sum())
    while lo <= hi:
        n = (lo + hi) // 2
        f = evaluator.faithfulness(circuit_file.top_edges(score, n))
        search.append((n, f))
        say(f"{n} edges: faithfulness {f:.3f}")
        if f >= target:
            best, hi = n, n - 1
        else:
            lo = n + 1
    return search, best


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
    n = int(cfg.edges if cfg.edges is not None else ds.attrs.get("minimal_edges", 0))
    if not 1 <= n <= total:
        raise ConfigError(f"--edges {n}: a circuit has 1 to {total} edges (the file found no faithful size: give --edges)")
    tokenized, skipped = token_pairs(session.adapter, cfg.pairs, cfg.max_pairs)
    if not tokenized:
        raise DataError(f"{cfg.pairs}: no usable pair")
    ev = Evaluator.made(g, access, tokenized, session, readout)
    curve = [{"edges": k, "faithfulness": ev.faithfulness(circuit_file.top_edges(score, k))} for k in curve_counts(total, n)]
    f = next(c["faithfulness"] for c in curve if c["edges"] == n)
    randoms = _random_circuits(ev, n, cfg.random, cfg.seed)
    say(f"{n} edges: faithfulness {f:.3f}; {cfg.random} random circuits: mean"
        f" {np.mean(randoms) if randoms else float('nan'):.3f}")
    result = {**session.provenance(pipeline.settings_of(cfg, "json_out", "readout")), "metric": readout.name,
            "pairs": str(cfg.pairs), "n_pairs": len(tokenized),
            "skipped": [str(p) for p in skipped], "edges": n, "total_edges": total, "faithfulness": f,
            "m_clean": ev.m_clean, "m_corrupt": ev.m_corrupt, "random_circuits": cfg.random, "random_seed": cfg.seed,
            "random_faithfulness_mean": float(np.mean(randoms)) if randoms else None,
            "random_faithfulness_ci": [float(np.percentile(randoms, 2.5)), float(np.percentile(randoms, 97.5))] if randoms else None,
            "random_faithfulness": randoms, "curve": curve}
    if cfg.json_out:
        files.write_json(cfg.json_out, result)
    return result


def _random_circuits(ev: Evaluator, n: int, count: int, seed: int) -> list[float]:
    """F of `count` circuits of n edges drawn uniformly from every edge of the graph."""
    rng = np.random.default_rng(seed)
    existing = np.flatnonzero(ev.g.edges.ravel())
    out = []
    for _ in range(count):
        keep = np.zeros(ev.g.edges.size, dtype=bool)
        keep[rng.choice(existing, size=n, replace=False)] = True
        out.append(ev.faithfulness(keep.reshape(ev.g.edges.shape)))
    return out
