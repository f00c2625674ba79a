"""Circuits as EAP-IG and MIB count them: pruning the top-n edges to those on a path from the
embedding to the logits (`Graph.prune`), and MIB's CPR and CMD (`results.circuit.mib_scores`).

Checked against a hand-built graph's surviving edges written out by hand, EAP-IG's own
algorithm (remove nodes without incoming or outgoing edges, then edges missing an end, until
nothing changes) written here afresh, trapezoids summed by hand, and edge patching on a tiny
model, where pruning must leave M unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnct.model.graph import Graph
from nnct.results.circuit import MIB_FRACTIONS, mib_counts, mib_scores, top_edges


def mask(g: Graph, pairs) -> np.ndarray:
    nodes = {n[0]: i for i, n in enumerate(g.nodes)}
    dests = {d[0]: i for i, d in enumerate(g.dests)}
    out = np.zeros(g.edges.shape, dtype=bool)
    for u, v in pairs:
        assert g.edges[nodes[u], dests[v]], (u, v)
        out[nodes[u], dests[v]] = True
    return out


def test_prune_keeps_a_hand_built_graph_s_paths():
    """2 layers, 2 query heads sharing 1 key/value head. The key of layer 0 is kept for head
    1 alone, layer 1's head 1 is reached only through the value it shares with head 0, and
    dead ends run both ways, two edges deep."""
    g = Graph(2, 2, 1)
    kept = [
        ("emb", "a0.g0.k"),      # stays: the key feeds a0.h1 too, which reaches the logits
        ("emb", "a0.h0.q"),      # goes: a0.h0's one edge leads to a1.h0, which leads nowhere
        ("a0.h1", "logits"),     # stays
        ("a0.h0", "a1.h0.q"),    # goes: a1.h0 sends no edge
        ("a0.h1", "a1.g0.v"),    # stays: the value feeds a1.h1 too, which reaches the logits
        ("a1.h1", "logits"),     # stays: a1.h1 is reached through the value shared with a1.h0
        ("m0", "m1"),            # goes: no kept edge enters m0's input
        ("m0", "logits"),        # goes: the same
        ("m1", "logits"),        # goes: m1 is fed by m0 alone
    ]
    by_hand = mask(g, [("emb", "a0.g0.k"), ("a0.h1", "logits"), ("a0.h1", "a1.g0.v"), ("a1.h1", "logits")])
    np.testing.assert_array_equal(g.prune(mask(g, kept)), by_hand)
    np.testing.assert_array_equal(g.prune(by_hand), by_hand)
    np.testing.assert_array_equal(g.prune(g.edges), g.edges)  # every node feeds the logits directly
    assert not g.prune(np.zeros_like(g.edges)).any()
    # the query of a0.h0 (not the shared key) would make a0.h0 reached: the same survivors
    np.testing.assert_array_equal(g.prune(mask(g, kept[:1] + kept[2:])), by_hand)
    # an edge from a0.h0 into a destination that reaches the logits revives the chain into a0.h0
    revived = g.prune(mask(g, kept + [("a0.h0", "a1.g0.k")]))
    np.testing.assert_array_equal(revived, by_hand | mask(g, [("emb", "a0.h0.q"), ("a0.h0", "a1.g0.k")]))


def eap_ig_prune(g: Graph, keep: np.ndarray) -> np.ndarray:
    """EAP-IG's `Graph.prune`, as its loop reads: nodes without an outgoing edge, or without an
    incoming one (the embedding always has one), go; then edges whose node or destination is
    gone (a destination stays while a node it is an input of stays; the logits always)."""
    keep = keep.copy()
    inputs = {}  # node -> its destinations
    group = g.n_heads // g.n_kv
    for d, (_, kind, layer, head) in enumerate(g.dests):
        if kind == "q":
            inputs.setdefault(g.node(layer, head), []).append(d)
        elif kind in ("k", "v"):
            for h in range(head * group, (head + 1) * group):
                inputs.setdefault(g.node(layer, h), []).append(d)
        elif kind == "mlp":
            inputs.setdefault(g.node(layer, None), []).append(d)
    while True:
        incoming = keep.any(axis=0)
        present = np.array([keep[u].any() and (u == 0 or incoming[inputs[u]].any()) for u in range(g.n_nodes)])
        dest_present = np.zeros(g.n_dests, dtype=bool)
        dest_present[-1] = True
        for u, ds in inputs.items():
            if present[u]:
                dest_present[ds] = True
        new = keep & present[:, None] & dest_present[None, :]
        if (new == keep).all():
            return keep
        keep = new


@pytest.mark.parametrize("shape", [(3, 4, 2), (4, 3, 3), (2, 4, 1)])
def test_prune_equals_eap_ig_s_loop_on_random_circuits(shape):
    g = Graph(*shape)
    rng = np.random.default_rng(0)
    removed = 0
    for density in (0.02, 0.05, 0.1, 0.2, 0.4):
        for _ in range(10):
            keep = g.edges & (rng.random(g.edges.shape) < density)
            got = g.prune(keep)
            np.testing.assert_array_equal(got, eap_ig_prune(g, keep))
            removed += int(keep.sum() - got.sum())
    assert removed > 0


def test_mib_areas_are_the_trapezoids_by_hand():
    f = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.2, 1.0, 0.95, 1.0]
    # widths 0.001, 0.003, 0.005, 0.01, 0.03, 0.05, 0.1, 0.3, 0.5 between MIB's fractions
    cpr = (0.001 * 0.05 + 0.003 * 0.2 + 0.005 * 0.4 + 0.01 * 0.6 + 0.03 * 0.8 + 0.05 * 1.05 + 0.1 * 1.1
           + 0.3 * 0.975 + 0.5 * 0.975)
    # |1 - F|: 1, 0.9, 0.7, 0.5, 0.3, 0.1, 0.2, 0, 0.05, 0
    cmd = (0.001 * 0.95 + 0.003 * 0.8 + 0.005 * 0.6 + 0.01 * 0.4 + 0.03 * 0.2 + 0.05 * 0.15 + 0.1 * 0.1
           + 0.3 * 0.025 + 0.5 * 0.025)
    assert cpr == pytest.approx(0.97515, abs=1e-12) and cmd == pytest.approx(0.05385, abs=1e-12)
    got = mib_scores(MIB_FRACTIONS, f)
    assert got == pytest.approx((0.97515, 0.05385), abs=1e-12)
    # F <= 1 everywhere: the two areas fill the strip from 0.001 to 1
    below = mib_scores(MIB_FRACTIONS, [0.0, 0.0, 0.2, 0.2, 0.5, 0.8, 0.9, 1.0, 1.0, 1.0])
    assert sum(below) == pytest.approx(0.999, abs=1e-12)
    assert mib_scores(MIB_FRACTIONS, [1.0] * 10) == pytest.approx((0.999, 0.0), abs=1e-12)
    assert mib_scores([0.5, 1.0], [2.0, 0.0]) == pytest.approx((0.5 * 1.0, 0.5 * 1.0), abs=1e-12)


def test_mib_sizes_round_down_as_mib():
    assert mib_counts(70651) == [70, 141, 353, 706, 1413, 3532, 7065, 14130, 35325, 70651]
    assert mib_counts(343) == [0, 0, 1, 3, 6, 17, 34, 68, 171, 343]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pruning_leaves_edge_patching_unchanged(family):
    """M of the tiny model's top-n circuits (EAP-IG scores), and of random circuits, equals
    M of the same circuits pruned: an edge from a node the embedding does not reach carries
    the corrupted value anyway, an edge into a dead end reaches no logit."""
    from conftest import make_adapter
    from nnct.exec import edges
    from nnct.model.graph import graph_of

    CLEAN, CORRUPT, TARGET, ALT = [0, 8, 25, 26, 7, 12, 30], [0, 8, 41, 26, 7, 12, 30], 5, 9  # tests/exec/test_edges.py's
    torch.set_num_threads(1)
    adapter = make_adapter(family)
    g, acc = graph_of(adapter)
    nodes = edges.node_values(acc, g, CLEAN, CORRUPT, TARGET, ALT)
    _, ig = edges.edge_scores(acc, g, CLEAN, nodes, TARGET, ALT, 2)
    score = np.where(g.edges, ig.numpy(), np.nan)

    def m(keep):
        dropped = torch.as_tensor(g.edges & ~keep)
        return edges.patched_metric(acc, g, CLEAN, nodes.outputs[1], dropped, TARGET, ALT)

    rng = np.random.default_rng(0)
    circuits = [top_edges(score, n) for n in (3, 10, 30, 80, 200)]
    circuits += [g.edges & (rng.random(g.edges.shape) < p) for p in (0.05, 0.2, 0.5)]
    removed, values = 0, []
    for keep in circuits:
        pruned = g.prune(keep)
        assert not (pruned & ~keep).any()
        removed += int(keep.sum() - pruned.sum())
        values.append(m(keep))
        assert m(pruned) == pytest.approx(values[-1], abs=1e-4 * (1 + abs(values[-1])))
    assert removed > 50  # pruning took edges away
    assert max(values) - min(values) > 0.1  # and the circuits differ in M
