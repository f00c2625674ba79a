"""The bench's plain loops and the engine against the independent hook reference, the FLOP
model against hand counts, and the table's ratios. (The engine is the bench's subject, so
it is checked against `reference.py`, never against the bench's own plain loop.)"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FAMILIES, make_adapter
from reference import Reference
from examples import CORRUPT_IDS, IDS, SPAN, TOL, pair, prepared
from nnct.interventions.plan import Cell
from nnct.methods.bench import Shape, engine_flops, floor_flops, plain_loop, table
from nnct.interventions.components import ORDER as COMPONENTS

CELLS = [Cell(3, 1, "hidden"), Cell(4, 2, "mlp"), Cell(2, 0, "attn"), Cell(8, 3, "mlp"), Cell(5, 0, "hidden")]
# an all-positions cell starts at the first corrupted token (SPAN[0], where the pair differs too)
FINER = [Cell(5, 1, "head", 2), Cell(SPAN[0], 2, "head_all_pos", 1), Cell(3, 0, "hidden-sever-mlp"),
         Cell(4, 1, "hidden-sever-attn")]


# window 3: tests/exec/test_engine.py, every family; noise written over the span (replace) on
# one family of each layout, since the embedding write is the same code for all
@pytest.mark.parametrize("family, replace", [(f, False) for f in FAMILIES] + [(f, True) for f in ("llama", "gpt2", "gptj",
                                                                                                 "gpt_neox")],
                         ids=lambda v: {False: "add", True: "replace"}.get(v, v) if isinstance(v, bool) else v)
@pytest.mark.parametrize("window", [1, 10])
def test_engine_matches_reference_at_every_window(family, window, replace):
    adapter = make_adapter(family)
    ex = prepared(adapter, replace=replace)
    got = ex.trace(adapter, window=window, batch_rows=9)
    ref = Reference(adapter)
    for c in CELLS:
        expected = ref.cell(IDS, SPAN, ex.noise, ex.answers, c.token, c.layer, c.component, window=window, replace=replace)
        np.testing.assert_allclose(got.p_restored[c.token, c.layer, COMPONENTS.index(c.component)], expected.numpy(), atol=TOL,
                                   err_msg=f"{family} {c}")


@pytest.mark.parametrize("family", ["llama", "gptj"])
def test_plain_loops_match_reference(family):
    """ROME's loop (noise, S+1 rows) and TransformerLens' (a pair, the clean run cached), with
    heads, a head at all positions and severed paths among the cells."""
    adapter = make_adapter(family)
    ref = Reference(adapter)
    ex = prepared(adapter)
    answers = (ex.answers[0][0], ex.answers[1][0])
    plain = plain_loop(adapter, IDS, ex.corrupt, answers, CELLS + FINER, window=3)
    for c in CELLS + FINER:
        expected = ref.cell(IDS, SPAN, ex.noise, ex.answers, c.token, c.layer, c.component, window=3, head=c.head)
        np.testing.assert_allclose(plain[c], expected.numpy(), atol=TOL, err_msg=str(c))
    ex = pair(adapter)
    plain = plain_loop(adapter, IDS, ex.corrupt, answers, CELLS + FINER, window=3, cached_clean=True)
    for c in CELLS + FINER:
        expected, _ = ref.pair_cell(IDS, CORRUPT_IDS, ex.answers, c.token, c.layer, c.component, window=3, head=c.head)
        np.testing.assert_allclose(plain[c], expected.numpy(), atol=TOL, err_msg=str(c))


def test_flop_model_by_hand():
    # d=4, q=4, kv=2, ff=8, gated, vocab 10, 2 layers
    s = Shape(d=4, d_q=4, d_kv=2, d_ff=8, mlp_mats=3, vocab=10, n_layers=2)
    per_pos = 2 * 4 * (4 + 2 + 2 + 4) + 3 * 2 * 4 * 8  # q, k, v, o projections + 3 MLP matrices = 96 + 192
    # 3 tokens, positions 0..2 read 1, 2, 3 keys: scores + sums = 4 * d_q * keys
    one_layer = 3 * per_pos + 4 * 4 * (1 + 2 + 3)
    assert s.forward(1, 3) == 2 * one_layer + 2 * 4 * 10
    assert s.forward(5, 3, logits_at=3) == 5 * (2 * one_layer + 3 * 2 * 4 * 10)
    # from position 2 and layer 1: one layer, one position reading 3 keys
    assert s.forward(1, 3, start=2, first=1) == per_pos + 4 * 4 * 3 + 2 * 4 * 10
    # floor: the two base runs, plus a hidden cell at layer 0 (runs layer 1 only) from token 2;
    # a cell before the first corrupted token costs nothing
    assert floor_flops(s, 3, 2, [Cell(2, 0, "hidden"), Cell(0, 1, "mlp")], 2, 1) == s.forward(3, 3) + s.forward(2, 3, start=2, first=1)


# mean ablation's reference: two prompts of other lengths than IDS, so the mean is over all their positions
REFERENCE = ((0, 29, 30, 10, 11, 8, 23), (0, 8, 25, 26, 10, 9))


@pytest.mark.parametrize("op", ["zero", "mean"])
def test_ablation_plain_loop_matches_reference(op):
    """The ablation bench's plain loop: the clean prompt with zeros, or the site's mean over
    the reference prompts' positions, written at the cell (windows, a head)."""
    import torch

    from nnct.interventions.corruption import clean_input

    adapter = make_adapter("llama")
    ref = Reference(adapter)
    answers = tuple(a[0] for a in prepared(adapter).answers)
    todo = CELLS + [Cell(5, 1, "head", 2)]
    plain = plain_loop(adapter, IDS, clean_input(IDS), answers, todo, window=3, cached_clean=True, op=op, reference=REFERENCE)
    states = [ref.logits(ids, capture=True)[1] for ids in REFERENCE]
    mean = {key: torch.cat([s[key] for s in states]).mean(dim=0) for key in states[0]}
    d = adapter.d_model // ref.n_heads
    for c in todo:
        site = "head" if c.head is not None else c.component
        layers = [c.layer] if c.component == "hidden" else range(max(0, c.layer - 1), min(adapter.n_layers, c.layer + 2))
        cols = slice(None) if c.head is None else slice(c.head * d, (c.head + 1) * d)
        writes = [(l, site if c.head is None else (site, c.head), c.token,
                   mean[(l, site)][cols] if op == "mean" else torch.zeros_like(mean[(l, site)][cols])) for l in layers]
        logits, _ = ref.logits(IDS, writes=writes)
        expected = torch.softmax(logits[-1].float(), -1)[list(answers)].double()
        np.testing.assert_allclose(plain[c], expected.numpy(), atol=TOL, err_msg=f"{op} {c}")


@pytest.mark.parametrize("op", ["zero", "mean"])
def test_ablation_bench_on_the_tiny_model(data_file, op):
    """`nnct bench --op zero|mean`: the plain loop and nnct's engine agree on the sampled
    cells, every cell is run (S=1, none unchanged), and nnct's work is at least the floor."""
    from nnct.methods.bench import run

    adapter = make_adapter("llama")
    r = run(adapter, str(data_file), n_tokens=8, components=("hidden", "mlp", "attn"), window=3, plain_cells=12, op=op,
            reference=2)
    assert r["max_abs_diff"] <= TOL and r["plain_cells_timed"] == 12
    assert r["samples"] == 1 and r["cells"] == r["tokens"] * adapter.n_layers * 3
    assert r["floor_gflop"] <= r["nnct"]["gflop"] < r["plain_loop"]["gflop"]
    assert r["corruption"].startswith(f"{op} ablation") and "exact-ablation floor" in table(r)


def test_ablation_floor_by_hand():
    """An ablation's floor: the clean run once (no corrupted run), and every cell (token 0
    too: none is unchanged) one row from its token and first changed layer; one cell per
    batch, the engine's plan computes exactly the floor."""
    s = Shape(d=4, d_q=4, d_kv=2, d_ff=8, mlp_mats=3, vocab=10, n_layers=3)
    hidden = [Cell(1, 1, "hidden")]  # its output is layer 1's: layers 2.. run, from position 1
    assert floor_flops(s, 4, 1, hidden, 3, 0, ablating=True) == s.forward(1, 4) + s.forward(1, 4, start=1, first=2)
    # an mlp cell at layer 2, window 3, writes layers 1..2: layer 1 is its first; a cell at token 0 runs too
    todo = hidden + [Cell(0, 2, "mlp"), Cell(3, 0, "hidden")]
    want = s.forward(1, 4) + s.forward(1, 4, start=1, first=2) + s.forward(1, 4, start=0, first=1) + s.forward(1, 4, 3, 1)
    assert floor_flops(s, 4, 1, todo, 3, 0, ablating=True) == want
    # the same cells traced under noise (S=2, span from token 1) cost the corrupted run and skip token 0
    assert floor_flops(s, 4, 2, todo, 3, 1) == s.forward(3, 4) + 2 * (want - s.forward(1, 4) - s.forward(1, 4, start=0, first=1))
    assert engine_flops(s, 4, 1, todo, 3, 0, rows=1, ablating=True) == want


def test_table_reports_the_ratio():
    m = {"seconds": 1.0, "cells_per_s": 1.0, "gflop": 1.0, "gflops": 1.0, "peak_mib": 1.0}
    r = {"model": "m", "tokens": 25, "span": [3, 5], "components": "hidden", "samples": 10, "window": 10, "cells": 750,
         "plain_cells_timed": 30, "batch_rows": 100, "device": "cpu", "dtype": "float32", "threads": 2, "matmul_gflops": 50.0,
         "corruption": "prompt", "plain": "TransformerLens",
         "plain_loop": {**m, "seconds": 60.0, "gflop": 90.0}, "nnct": m, "floor_gflop": 0.5, "speedup": 60.0, "max_abs_diff": 1e-7}
    text = table(r)
    assert "speedup 60.0x" in text and "2.00x the floor" in text and "180.0x" in text and "TransformerLens" in text


def test_atp_bench_on_the_tiny_model(data_file):
    """`nnct bench --method atp*`: both timed, the agreement of every component present and
    bounded, and a table that says so."""
    from conftest import make_adapter
    from nnct.methods.bench import atp_table, run_atp

    adapter = make_adapter("llama")
    r = run_atp(adapter, str(data_file), n_tokens=8, components=("hidden", "mlp", "head"), samples=2, window=3,
                estimate="atp*")
    assert r["exact_seconds"] > 0 and r["atp_seconds"] > 0 and r["speedup"] == r["exact_seconds"] / r["atp_seconds"]
    assert set(r["agreement"]) == {"hidden", "mlp", "head"}
    for a in r["agreement"].values():
        assert a["cells"] > 0 and -1 <= a["pearson"] <= 1 and 0 <= a["recall_10"] <= 1
    assert "speedup" in atp_table(r) and "recall@10" in atp_table(r) and "AtP*" in atp_table(r)


def test_bench_reports_the_cost_model_and_many_examples(data_file):
    """`nnct bench --examples 3`: the cost model's numbers and the example's passes, and three
    noise draws of one key in fewer passes than one at a time (a group shares each forward's
    rows, so it may need more batches than one example, never as many as three)."""
    from nnct.methods.bench import run

    adapter = make_adapter("llama")
    r = run(adapter, str(data_file), n_tokens=8, components=("hidden", "mlp"), samples=2, window=3, plain_cells=4,
            examples=3)
    c, m = r["cost"], r["many"]
    assert c["pass_s"] >= 0 and c["gflops"] > 0 and c["passes"] > 2
    assert c["predicted_s"] == pytest.approx(c["passes"] * c["pass_s"] + r["nnct"]["gflop"] / c["gflops"])
    assert m["group_size"] >= 3 and m["one_passes"] == c["passes"] <= m["passes"] < 3 * c["passes"]
    assert m["max_abs_diff"] <= TOL and m["kind"] == "noise draws"
    text = table(r)
    assert "cost model" in text and "3 examples" in text
