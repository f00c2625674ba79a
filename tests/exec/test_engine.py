"""The engine against the slow hook reference, cell by cell, on every supported family, for
noise and for prompt pairs, and against invariants that hold whatever the weights."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FAMILIES, make_adapter
from examples import CORRUPT_IDS, FLOAT32_ROUNDING, IDS, SPAN, TOL, pair, prepared
from reference import Reference
from nnct.exec.engine import Engine, Settings
from nnct.interventions.components import ORDER as COMPONENTS, whole

# Cells chosen to hit the window's clipping at both ends, the span, the tokens after it,
# and the last token; with 4 layers and window 3 the window is [l-1, l+1] clipped.
CELLS = [(3, 0, "mlp"), (3, 3, "attn"), (2, 1, "hidden"), (4, 2, "mlp"), (8, 3, "hidden"), (5, 1, "attn"), (8, 0, "attn")]


def comp(component):
    return COMPONENTS.index(component)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_engine_matches_reference(family, reverse):
    adapter = make_adapter(family)
    ex = prepared(adapter)
    result = ex.trace(adapter, window=3, reverse=reverse, batch_rows=12)
    ref = Reference(adapter)
    p_clean, p_corrupt = ref.clean_and_corrupt(IDS, SPAN, ex.noise, ex.answers)
    np.testing.assert_allclose(result.p_clean, p_clean.numpy(), atol=TOL)
    np.testing.assert_allclose(result.p_corrupt, p_corrupt.numpy(), atol=TOL)
    assert result.clean_top1 == ex.answers[0][0]  # the clean top token, from a plain forward
    assert abs(float(p_clean[0] - p_corrupt[0])) > 1e-3, "the noise must move the probability for this test to mean anything"
    for token, layer, component in CELLS:
        expected = ref.cell(IDS, SPAN, ex.noise, ex.answers, token, layer, component, window=3, reverse=reverse)
        got = result.p_restored[token, layer, comp(component)]
        np.testing.assert_allclose(got, expected.numpy(), atol=TOL, err_msg=f"{family} cell {(token, layer, component)}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_prompt_pairs_match_reference(family, reverse):
    """Denoising (clean values into the corrupted prompt) and noising, p and logits, every family."""
    adapter = make_adapter(family)
    ex = pair(adapter)
    result = ex.trace(adapter, window=3, reverse=reverse, batch_rows=5)
    ref = Reference(adapter)
    p_clean, l_clean = ref.measure(IDS, ex.answers)
    p_corrupt, l_corrupt = ref.measure(CORRUPT_IDS, ex.answers)
    assert abs(float(p_clean[0] - p_corrupt[0])) > 1e-3, "the substitution must move the probability"
    for got, want in [(result.p_clean, p_clean), (result.p_corrupt, p_corrupt)]:
        np.testing.assert_allclose(got, want.numpy(), atol=TOL)
    for got, want in [(result.logit_clean, l_clean), (result.logit_corrupt, l_corrupt)]:
        np.testing.assert_allclose(got, want.numpy(), atol=5e-5)
    for token, layer, component in CELLS:
        p, logit = ref.pair_cell(IDS, CORRUPT_IDS, ex.answers, token, layer, component, window=3, reverse=reverse)
        at = (token, layer, comp(component))
        np.testing.assert_allclose(result.p_restored[at], p.numpy(), atol=TOL, err_msg=f"{family} p {at}")
        np.testing.assert_allclose(result.logit_restored[at], logit.numpy(), atol=5e-5, err_msg=f"{family} logit {at}")


def test_noise_logits_are_sample_means():
    adapter = make_adapter("gpt2")
    ex = prepared(adapter)
    result = ex.trace(adapter, window=3)
    ref = Reference(adapter)
    logits = [ref.measure(IDS, ex.answers, span=SPAN, noise=ex.noise[s])[1] for s in range(3)]
    np.testing.assert_allclose(result.logit_corrupt, (sum(logits) / 3).numpy(), atol=5e-5)
    p, logit = ref._cell(IDS, ex.answers, 5, 1, "mlp", 3, False, [dict(span=SPAN, noise=ex.noise[s]) for s in range(3)])
    np.testing.assert_allclose(result.logit_restored[5, 1, comp("mlp")], logit.numpy(), atol=5e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("lengths", [(2, 3), (1, 2), (3, 1)], ids=["both-long", "alt-long", "target-long"])
def test_teacher_forced_answers_match_reference(family, lengths):
    """Answers of several tokens: p is the product over the answer's tokens, each given the
    prompt and the earlier ones; logits are the first token's. Noise and pairs, restoring and
    reverse patching, cells before, on and after the span."""
    adapter = make_adapter(family)
    target = (12, 40, 41)[: lengths[0]]
    alt = (13, 40, 41)[: lengths[1]]  # the same tail as the target's: each pass must know its answer
    ref = Reference(adapter)
    for make in (prepared, pair):
        for reverse in (False, True):
            ex = make(adapter)
            ex.answers = (target, alt)
            result = ex.trace(adapter, window=3, reverse=reverse, batch_rows=6)
            if ex.noise is not None:
                p_clean, p_corrupt = ref.clean_and_corrupt(IDS, SPAN, ex.noise, ex.answers)
            else:
                p_clean, p_corrupt = ref.measure(IDS, ex.answers)[0], ref.measure(CORRUPT_IDS, ex.answers)[0]
            np.testing.assert_allclose(result.p_clean, p_clean.numpy(), rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(result.p_corrupt, p_corrupt.numpy(), rtol=1e-5, atol=1e-9)
            for token, layer, component in [(1, 2, "hidden"), (2, 1, "hidden"), (3, 0, "mlp"), (8, 2, "attn")]:
                if ex.noise is not None:
                    runs = [dict(span=SPAN, noise=ex.noise[s]) for s in range(ex.noise.shape[0])]
                    p, logit = ref._cell(IDS, ex.answers, token, layer, component, 3, reverse, runs)
                else:
                    p, logit = ref.pair_cell(IDS, CORRUPT_IDS, ex.answers, token, layer, component, window=3, reverse=reverse)
                at, what = (token, layer, comp(component)), f"{make.__name__} reverse={reverse} {token, layer, component}"
                np.testing.assert_allclose(result.p_restored[at], p.numpy(), rtol=1e-5, atol=1e-9, err_msg=what)
                np.testing.assert_allclose(result.logit_restored[at], logit.numpy(), atol=5e-5, err_msg=what)


def test_one_pass_per_answer_of_several_tokens():
    """One-token answers take one pass; so does one longer answer (the pass that reads its
    continuation reads both first tokens too); two longer answers take two."""
    adapter = make_adapter("llama")
    ex = prepared(adapter)
    base_runs = []  # one base run (the one whose cache the batches read) per pass
    engine = Engine(adapter, Settings(window=3))
    forward = engine._forward

    def counting(*args, **kwargs):
        base_runs.extend([1] if kwargs.get("keep_cache") else [])
        return forward(*args, **kwargs)

    engine._forward = counting
    engine.trace(ex.ids, ex.corrupt, ex.answers)
    assert len(base_runs) == 1
    engine.trace(ex.ids, ex.corrupt, ((ex.answers[0][0], 40), ex.answers[1]))
    assert len(base_runs) == 2
    engine.trace(ex.ids, ex.corrupt, ((ex.answers[0][0], 40), (ex.answers[1][0], 41)))
    assert len(base_runs) == 4


@pytest.mark.parametrize("replace", [False, True], ids=["add", "replace"])
def test_replace_mode_matches_reference(replace):
    adapter = make_adapter("gpt2")
    ex = prepared(adapter, replace=replace)
    result = ex.trace(adapter, window=2)
    ref = Reference(adapter)
    _, p_corrupt = ref.clean_and_corrupt(IDS, SPAN, ex.noise, ex.answers, replace=replace)
    np.testing.assert_allclose(result.p_corrupt, p_corrupt.numpy(), atol=TOL)
    for token, layer, component in [(3, 2, "mlp"), (6, 1, "hidden")]:
        expected = ref.cell(IDS, SPAN, ex.noise, ex.answers, token, layer, component, window=2, replace=replace)
        np.testing.assert_allclose(result.p_restored[token, layer, comp(component)], expected.numpy(), atol=TOL)


@pytest.mark.parametrize("batch_rows", [1, 3, 7, 1000])
def test_batching_does_not_change_numbers(batch_rows):
    adapter = make_adapter("qwen2")
    ex = prepared(adapter)
    base = ex.trace(adapter, window=3, batch_rows=3)
    other = ex.trace(adapter, window=3, batch_rows=batch_rows)
    np.testing.assert_allclose(other.p_restored, base.p_restored, atol=TOL)
    np.testing.assert_allclose(other.logit_restored, base.logit_restored, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gptj"])
def test_invariants_forward(family):
    adapter = make_adapter(family)
    for ex in (prepared(adapter, samples=4), pair(adapter)):
        result = ex.trace(adapter, window=3)
        last, hidden = len(IDS) - 1, comp("hidden")
        # The last token's residual stream after the last layer decides the answer alone.
        np.testing.assert_allclose(result.p_restored[last, -1, hidden], result.p_clean, atol=TOL)
        np.testing.assert_allclose(result.logit_restored[last, -1, hidden], result.logit_clean, atol=1e-4)
        # Positions before the span see no corruption (causal attention): restoring them is a no-op.
        for t in range(SPAN[0]):
            np.testing.assert_allclose(result.p_restored[t], np.broadcast_to(result.p_corrupt, result.p_restored[t].shape),
                                       atol=TOL)
        assert not np.isnan(result.p_restored).any()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_invariants_reverse(family):
    adapter = make_adapter(family)
    for ex in (prepared(adapter, samples=4), pair(adapter)):
        result = ex.trace(adapter, window=3, reverse=True)
        last, hidden = len(IDS) - 1, comp("hidden")
        # Writing each sample's corrupted final state into the clean run gives its corrupted output.
        np.testing.assert_allclose(result.p_restored[last, -1, hidden], result.p_corrupt, atol=TOL)
        # Corrupted states before the span equal the clean ones: writing them changes nothing.
        for t in range(SPAN[0]):
            np.testing.assert_allclose(result.p_restored[t], np.broadcast_to(result.p_clean, result.p_restored[t].shape), atol=TOL)


def test_identical_prompts_change_nothing():
    """A pair whose prompts are the same has no changed token: every cell is the clean run."""
    adapter = make_adapter("mistral")
    same = pair(adapter, corrupt_ids=IDS).trace(adapter, window=3)
    np.testing.assert_allclose(same.p_corrupt, same.p_clean, atol=TOL)
    np.testing.assert_allclose(same.p_restored, np.broadcast_to(same.p_clean, same.p_restored.shape), atol=TOL)


def test_zero_noise_restores_nothing_to_do():
    adapter = make_adapter("mistral")
    result = prepared(adapter, samples=2, scale=0.0).trace(adapter, window=3)
    np.testing.assert_allclose(result.p_corrupt, result.p_clean, atol=TOL)
    np.testing.assert_allclose(result.p_restored, np.broadcast_to(result.p_clean, result.p_restored.shape), atol=TOL)


def test_components_subset_keeps_order():
    adapter = make_adapter("llama")
    ex = prepared(adapter)
    full = ex.trace(adapter, window=3)
    only = ex.trace(adapter, components=("attn",), window=3)
    assert only.p_restored.shape == (len(IDS), adapter.n_layers, 1, 2)
    np.testing.assert_allclose(only.p_restored[:, :, 0], full.p_restored[:, :, comp("attn")], atol=TOL)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "mistral"])
def test_sliding_window_shorter_than_the_prompt(family):
    """Batches that start after position 0 read the base run's cache: it must hold every
    position even where the model's own cache would keep only a sliding window."""
    adapter = make_adapter(family, sliding_window=4)
    ex = prepared(adapter)
    result = ex.trace(adapter, window=3, batch_rows=6)
    ref = Reference(adapter)
    for token, layer, component in [(6, 1, "hidden"), (4, 2, "mlp"), (7, 0, "attn"), (3, 3, "hidden")]:
        expected = ref.cell(IDS, SPAN, ex.noise, ex.answers, token, layer, component, window=3)
        np.testing.assert_allclose(result.p_restored[token, layer, comp(component)], expected.numpy(), atol=TOL,
                                   err_msg=f"{family} cell {(token, layer, component)}")


# Cells of the finer components: (token, layer, head) for `head`, (layer, head) for `head_all_pos`
# (from the first corrupted token), (token, layer) for the severed hidden states; token 1 is
# before the corrupted span (a cell that needs no forward).
HEAD_CELLS = [(3, 0, 1), (8, 3, 3), (5, 1, 0), (2, 2, 2), (1, 1, 2)]
ALL_POS_CELLS = [(0, 1), (2, 3), (3, 0)]
SEVER_CELLS = [(3, 0), (4, 1), (8, 2), (2, 3), (1, 0)]
# mlp and attn too: their source writes share (layer, site) with the severed paths' frozen ones
FINER = ("mlp", "attn", "hidden-sever-mlp", "hidden-sever-attn", "head", "head_all_pos")


# every family restoring; reverse patching on one family of each layout (its writes are the same)
@pytest.mark.parametrize("family, reverse", [(f, False) for f in FAMILIES] + [(f, True) for f in ("llama", "gpt2", "gptj",
                                                                                                 "gpt_neox")],
                         ids=lambda v: {False: "restore", True: "reverse"}.get(v, v) if isinstance(v, bool) else v)
def test_heads_and_severed_paths_match_reference(family, reverse):
    """One head's slice of the output projection's input (with a window), one head at every
    position from the span on, and the hidden state with later MLP / attention outputs at its
    token frozen; noise and prompt pairs, p and logits, every family."""
    adapter = make_adapter(family)
    ref = Reference(adapter)
    for ex in (prepared(adapter, samples=2), pair(adapter)):
        result = ex.trace(adapter, components=FINER, window=3, reverse=reverse, batch_rows=6)
        runs = ([dict(span=SPAN, noise=ex.noise[s]) for s in range(2)] if ex.noise is not None
                else [dict(ids=CORRUPT_IDS)])
        first = SPAN[0] if ex.noise is not None else next(i for i, (a, b) in enumerate(zip(IDS, CORRUPT_IDS)) if a != b)
        sites = whole(FINER)
        wanted = ([((t, l, sites.index(c)), (t, l, c, None), "restored") for t, l in SEVER_CELLS
                   for c in ("hidden-sever-mlp", "hidden-sever-attn")]
                  + [((t, l, sites.index(c)), (t, l, c, None), "restored") for t, l in SEVER_CELLS[:2] for c in ("mlp", "attn")]
                  + [((t, l, h), (t, l, "head", h), "restored_head") for t, l, h in HEAD_CELLS]
                  + [((l, h), (first, l, "head_all_pos", h), "restored_head_all_pos") for l, h in ALL_POS_CELLS])
        for at, (t, l, c, h), variable in wanted:
            p, logit = ref._cell(IDS, ex.answers, t, l, c, 3, reverse, [dict(r) for r in runs], head=h)
            what = f"{family} {'noise' if ex.noise is not None else 'pair'} {c} {at}"
            np.testing.assert_allclose(result.restored["p_" + variable][at], p.numpy(), atol=TOL, err_msg=what)
            np.testing.assert_allclose(result.restored["logit_" + variable][at], logit.numpy(), atol=5e-5, err_msg=what)


def test_severing_nothing_is_the_hidden_trace():
    """At the last layer no later MLP or attention is left to freeze: the severed cells are
    the plain hidden cells exactly, in one trace and the same noise."""
    adapter = make_adapter("llama")
    ex = prepared(adapter)
    result = ex.trace(adapter, components=("hidden", "hidden-sever-mlp", "hidden-sever-attn"), window=3)
    p = result.p_restored
    # the same arithmetic in other rows and batches: equal up to float32 rounding
    np.testing.assert_allclose(p[:, -1, 1], p[:, -1, 0], **FLOAT32_ROUNDING)
    np.testing.assert_allclose(p[:, -1, 2], p[:, -1, 0], **FLOAT32_ROUNDING)
    assert not np.allclose(p[SPAN[1], 0, 1], p[SPAN[1], 0, 0]), "severing must change an early cell for this test to mean something"


def test_heads_with_a_multi_token_answer_match_reference():
    """Teacher-forced answers: a head (and a head at every prompt position from the span on)
    restored in both passes."""
    adapter = make_adapter("gpt2")
    ref = Reference(adapter)
    ex = prepared(adapter, samples=2)
    ex.answers = ((12, 40), (13,))
    result = ex.trace(adapter, components=("head", "head_all_pos"), window=1)
    runs = [dict(span=SPAN, noise=ex.noise[s]) for s in range(2)]
    for at, (t, l, c, h), variable in [((5, 2, 1), (5, 2, "head", 1), "restored_head"),
                                       ((1, 3), (SPAN[0], 1, "head_all_pos", 3), "restored_head_all_pos")]:
        p, _ = ref._cell(IDS, ex.answers, t, l, c, 1, False, [dict(r) for r in runs], head=h)
        np.testing.assert_allclose(result.restored["p_" + variable][at], p.numpy(), rtol=1e-5, atol=1e-9)


def test_the_batch_budget_ignores_what_else_runs(tmp_path):
    """The budget comes from the machine's total memory, never the memory free now: a process
    that holds most of it beside a run must not change the batches (and so the bits)."""
    from nnct.exec.engine import memory_budget

    def meminfo(available_kib: int):
        path = tmp_path / f"meminfo-{available_kib}"
        path.write_text(f"MemTotal:       {24 << 20} kB\nMemFree:        1000 kB\nMemAvailable:   {available_kib} kB\n")
        return str(path)

    idle, busy = memory_budget("cpu", meminfo(22 << 20)), memory_budget("cpu", meminfo(512 << 10))
    assert idle == busy == 1 << 30
    small = tmp_path / "small"
    small.write_text(f"MemTotal:       {2 << 20} kB\nMemAvailable:   {2 << 20} kB\n")
    assert memory_budget("cpu", str(small)) == (2 << 30) // 4
