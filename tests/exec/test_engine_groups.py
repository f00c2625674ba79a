"""Many examples per forward (`Engine.trace_group`): each example of a group of 1, 2 or 3
has the measures of its own `trace`, one example at a time, and those of the slow hook
reference; noise (several samples) and prompt pairs, restoring and reverse patching, every
component, answers of several tokens, ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_adapter
from examples import IDS, SPAN, TOL, top_two
from reference import Reference
from nnct.errors import ConfigError
from nnct.exec.engine import Engine, Settings
from nnct.interventions.components import whole
from nnct.interventions.plan import count
from nnct.interventions.corruption import clean_input, noise_input, prompt_input

ALL = ("hidden", "mlp", "attn", "head", "head_all_pos", "hidden-sever-mlp", "hidden-sever-attn")
# Other clean prompts of IDS's length, the same span; their counterfactuals change positions 2-3.
CLEAN = [IDS, (0, 8, 25, 26, 10, 11, 8, 27, 9), (0, 12, 33, 34, 10, 22, 8, 24, 9)]
CORRUPT = [(0, 8, 29, 30, 10, 11, 8, 23, 9), (0, 8, 27, 28, 10, 11, 8, 27, 9), (0, 12, 31, 32, 10, 22, 8, 24, 9)]
# A group's examples give the same cells the same arithmetic in other rows: a few float32 ulps.
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def jobs(adapter, kind: str, n: int, answers=None):
    """n examples of one group key, each with its own prompt, corrupted input and answers."""
    std = float(adapter.embedding_matrix().detach().std())
    out = []
    for k in range(n):
        ids = CLEAN[k]
        if kind == "noise":
            noise = torch.randn(3, len(SPAN), adapter.d_model, generator=torch.Generator().manual_seed(k)) * 3 * std
            corrupt = noise_input(ids, SPAN, noise)
        else:
            corrupt = prompt_input(CORRUPT[k]) if kind == "pair" else clean_input(ids)
        out.append((ids, corrupt, answers[k] if answers else top_two(adapter, ids), ((), ())))
    return out


def assert_equal_measures(got, want, what=""):
    for name in ("p_clean", "p_corrupt", "logit_clean", "logit_corrupt"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), **CLOSE, err_msg=f"{what} {name}")
    assert got.clean_top1 == want.clean_top1
    assert got.restored.keys() == want.restored.keys() and got.runs.keys() == want.runs.keys()
    for name, value in got.restored.items():
        tol = CLOSE if name.startswith("p_") else {"rtol": 1e-5, "atol": 5e-5}
        np.testing.assert_allclose(value, want.restored[name], **tol, err_msg=f"{what} {name}")
    for name, value in got.runs.items():
        np.testing.assert_array_equal(value, want.runs[name])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("kind", ["noise", "pair"])
@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_a_group_equals_each_example_alone(family, kind, reverse):
    adapter = make_adapter(family)
    engine = Engine(adapter, Settings(ALL, window=3, reverse=reverse, batch_rows=24))
    group = jobs(adapter, kind, 3)
    alone = [engine.trace(*job) for job in group]
    for n in (1, 2, 3):
        counted = []
        got = engine.trace_group(group[:n], on_batch=counted.append)
        assert len(got) == n
        for k in range(n):
            assert_equal_measures(got[k], alone[k], f"{family} {kind} group of {n}, example {k}")
        assert sum(counted) == n * count(ALL, len(IDS), adapter.n_layers, adapter.n_heads)  # every example's cells


@pytest.mark.parametrize("kind", ["noise", "pair"])
@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_a_group_matches_the_reference(kind, reverse):
    """The last example of a group of three, against plain PyTorch hooks one row at a time."""
    adapter = make_adapter("llama")
    group = jobs(adapter, kind, 3)
    got = Engine(adapter, Settings(ALL, window=3, reverse=reverse, batch_rows=24)).trace_group(group)[2]
    ids, corrupt, answers, _ = group[2]
    ref = Reference(adapter)
    runs = ([dict(span=SPAN, noise=corrupt.values[s]) for s in range(3)] if kind == "noise"
            else [dict(ids=CORRUPT[2])])
    sites = whole(ALL)
    wanted = [((t, l, sites.index(c)), (t, l, c, None), "restored") for t, l in [(2, 1), (3, 0), (8, 3)]
              for c in ("hidden", "mlp", "attn", "hidden-sever-mlp")]
    wanted += [((5, 2, 1), (5, 2, "head", 1), "restored_head"), ((1, 3), (2, 1, "head_all_pos", 3), "restored_head_all_pos")]
    for at, (t, l, c, h), variable in wanted:
        p, logit = ref._cell(ids, answers, t, l, c, 3, reverse, [dict(r) for r in runs], head=h)
        np.testing.assert_allclose(got.restored["p_" + variable][at], p.numpy(), atol=TOL, err_msg=f"{c} {at}")
        np.testing.assert_allclose(got.restored["logit_" + variable][at], logit.numpy(), atol=5e-5, err_msg=f"{c} {at}")


def test_a_group_reads_each_examples_answers_of_several_tokens():
    """Teacher-forced answers of the same lengths but other tokens: two passes, each example
    reading its own."""
    adapter = make_adapter("llama")
    answers = [((12, 40), (13, 41, 42)), ((23, 9), (27, 40, 41)), ((40, 41), (12, 13, 14))]
    group = jobs(adapter, "pair", 3, answers)
    engine = Engine(adapter, Settings(("hidden", "mlp", "attn"), window=3, batch_rows=12))
    for got, job in zip(engine.trace_group(group), group):
        assert_equal_measures(got, engine.trace(*job))


@pytest.mark.parametrize("operation", ["zero", "mean"])
def test_a_group_ablates_as_each_example_alone(operation):
    adapter = make_adapter("gpt2")
    reference = (CLEAN[1], (0, 8, 20, 9, 24))  # of the prompts' length and not: means by position and overall
    engine = Engine(adapter, Settings(("hidden", "mlp", "attn", "head"), window=3, batch_rows=16, operation=operation,
                                      reference=reference[:1] if operation == "mean" else ()))
    group = jobs(adapter, "ablate", 3)
    for got, job in zip(engine.trace_group(group), group):
        assert_equal_measures(got, engine.trace(*job))


def test_examples_of_other_keys_do_not_group():
    adapter = make_adapter("llama")
    engine = Engine(adapter, Settings(("hidden",), window=3))
    one, other = jobs(adapter, "pair", 1)[0], (IDS[:7], prompt_input(CORRUPT[0][:7]), top_two(adapter, IDS[:7]), ((), ()))
    assert engine.group_key(*one[:3]) != engine.group_key(*other[:3])
    with pytest.raises(ConfigError, match="group_key"):
        engine.trace_group([one, other])
    # an estimate groups too, never with exact patching's examples
    estimating = Engine(adapter, Settings(("hidden",), window=3, estimate="atp"))
    assert estimating.group_key(*one[:3]) is not None and estimating.group_key(*one[:3]) != engine.group_key(*one[:3])


def test_the_group_size_keeps_one_cell_of_each_within_a_forward():
    adapter = make_adapter("llama")
    key = Engine(adapter, Settings()).group_key(*jobs(adapter, "noise", 1)[0][:3])
    assert Engine(adapter, Settings(batch_rows=8)).group_size(key) == 2  # 3 samples each
    assert Engine(adapter, Settings(batch_rows=2)).group_size(key) == 1
    # on a CPU, one cell of each (3 rows x 9 positions) within CPU_TOKEN_ROWS
    assert Engine(adapter, Settings()).group_size(key) == 2048 // 27
