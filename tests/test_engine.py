"""The engine against the slow hook reference, cell by cell, on every supported family,
and against invariants that hold whatever the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FAMILIES, make_adapter
from reference import Reference
from nnct.engine import Engine, Prepared, Settings
from nnct.plan import COMPONENTS

IDS = (0, 8, 25, 26, 10, 11, 8, 23, 9)  # <s> the Eiffel Tower is in the Paris of
SPAN = (2, 3)
TOL = 2e-6


def prepared(adapter, samples=3, scale=3.0, seed=0):
    """Noise of `scale` x the embeddings' std; the answers are the clean top two tokens."""
    g = torch.Generator().manual_seed(seed)
    std = float(adapter.embedding_matrix().detach().std())
    noise = torch.randn(samples, len(SPAN), adapter.d_model, generator=g) * scale * std
    with torch.no_grad():
        top = adapter.hf(torch.tensor([IDS])).logits[0, -1].topk(2).indices
    return Prepared(IDS, SPAN, tuple(int(i) for i in top), noise)


# Cells chosen to hit the window's clipping at both ends, the span, the tokens after it,
# and the last token; with 4 layers and window 3 the window is [l-1, l+1] clipped.
CELLS = [(3, 0, "mlp"), (3, 3, "attn"), (2, 1, "hidden"), (4, 2, "mlp"), (8, 3, "hidden"), (5, 1, "attn"), (8, 0, "attn")]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_engine_matches_reference(family, reverse):
    adapter = make_adapter(family)
    prep = prepared(adapter)
    settings = Settings(components=COMPONENTS, samples=3, window=3, reverse=reverse, batch_rows=12)
    result = Engine(adapter, settings).trace(prep)
    ref = Reference(adapter)
    p_clean, p_corrupt = ref.clean_and_corrupt(IDS, SPAN, prep.noise, prep.answers)
    np.testing.assert_allclose(result.p_clean, p_clean.numpy(), atol=TOL)
    np.testing.assert_allclose(result.p_corrupt, p_corrupt.numpy(), atol=TOL)
    assert result.clean_top1 == prep.answers[0]  # the clean top token, from a plain forward
    assert abs(float(p_clean[0] - p_corrupt[0])) > 1e-3, "the noise must move the probability for this test to mean anything"
    for token, layer, component in CELLS:
        expected = ref.cell(IDS, SPAN, prep.noise, prep.answers, token, layer, component, window=3, reverse=reverse)
        got = result.p_restored[token, layer, COMPONENTS.index(component)]
        np.testing.assert_allclose(got, expected.numpy(), atol=TOL, err_msg=f"{family} cell {(token, layer, component)}")


@pytest.mark.parametrize("replace", [False, True], ids=["add", "replace"])
def test_replace_mode_matches_reference(replace):
    adapter = make_adapter("gpt2")
    prep = prepared(adapter)
    result = Engine(adapter, Settings(samples=3, window=2, replace=replace)).trace(prep)
    ref = Reference(adapter)
    _, p_corrupt = ref.clean_and_corrupt(IDS, SPAN, prep.noise, prep.answers, replace=replace)
    np.testing.assert_allclose(result.p_corrupt, p_corrupt.numpy(), atol=TOL)
    for token, layer, component in [(3, 2, "mlp"), (6, 1, "hidden")]:
        expected = ref.cell(IDS, SPAN, prep.noise, prep.answers, token, layer, component, window=2, replace=replace)
        np.testing.assert_allclose(result.p_restored[token, layer, COMPONENTS.index(component)], expected.numpy(), atol=TOL)


@pytest.mark.parametrize("batch_rows", [1, 3, 7, 1000])
def test_batching_does_not_change_numbers(batch_rows):
    adapter = make_adapter("qwen2")
    prep = prepared(adapter)
    base = Engine(adapter, Settings(samples=3, window=3, batch_rows=3)).trace(prep)
    other = Engine(adapter, Settings(samples=3, window=3, batch_rows=batch_rows)).trace(prep)
    np.testing.assert_allclose(other.p_restored, base.p_restored, atol=TOL)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gptj"])
def test_invariants_forward(family):
    adapter = make_adapter(family)
    result = Engine(adapter, Settings(samples=4, window=3)).trace(prepared(adapter, samples=4))
    last, hidden = len(IDS) - 1, COMPONENTS.index("hidden")
    # The last token's residual stream after the last layer decides the answer alone.
    np.testing.assert_allclose(result.p_restored[last, -1, hidden], result.p_clean, atol=TOL)
    # Positions before the span see no noise (causal attention): restoring them is a no-op.
    for t in range(SPAN[0]):
        np.testing.assert_allclose(result.p_restored[t], np.broadcast_to(result.p_corrupt, result.p_restored[t].shape), atol=TOL)
    assert not np.isnan(result.p_restored).any()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_invariants_reverse(family):
    adapter = make_adapter(family)
    result = Engine(adapter, Settings(samples=4, window=3, reverse=True)).trace(prepared(adapter, samples=4))
    last, hidden = len(IDS) - 1, COMPONENTS.index("hidden")
    # Writing each sample's corrupted final state into the clean run gives its corrupted output.
    np.testing.assert_allclose(result.p_restored[last, -1, hidden], result.p_corrupt, atol=TOL)
    # Corrupted states before the span equal the clean ones: writing them changes nothing.
    for t in range(SPAN[0]):
        np.testing.assert_allclose(result.p_restored[t], np.broadcast_to(result.p_clean, result.p_restored[t].shape), atol=TOL)


def test_zero_noise_restores_nothing_to_do():
    adapter = make_adapter("mistral")
    result = Engine(adapter, Settings(samples=2, window=3)).trace(prepared(adapter, samples=2, scale=0.0))
    np.testing.assert_allclose(result.p_corrupt, result.p_clean, atol=TOL)
    np.testing.assert_allclose(result.p_restored, np.broadcast_to(result.p_clean, result.p_restored.shape), atol=TOL)


def test_components_subset_keeps_order():
    adapter = make_adapter("llama")
    prep = prepared(adapter)
    full = Engine(adapter, Settings(samples=3, window=3)).trace(prep)
    only = Engine(adapter, Settings(components=("attn",), samples=3, window=3)).trace(prep)
    assert only.p_restored.shape == (len(IDS), adapter.n_layers, 1, 2)
    np.testing.assert_allclose(only.p_restored[:, :, 0], full.p_restored[:, :, COMPONENTS.index("attn")], atol=TOL)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "mistral"])
def test_sliding_window_shorter_than_the_prompt(family):
    """Batches that start after position 0 read the base run's cache: it must hold every
    position even where the model's own cache would keep only a sliding window."""
    adapter = make_adapter(family, sliding_window=4)
    prep = prepared(adapter)
    result = Engine(adapter, Settings(samples=3, window=3, batch_rows=6)).trace(prep)
    ref = Reference(adapter)
    for token, layer, component in [(6, 1, "hidden"), (4, 2, "mlp"), (7, 0, "attn"), (3, 3, "hidden")]:
        expected = ref.cell(IDS, SPAN, prep.noise, prep.answers, token, layer, component, window=3)
        np.testing.assert_allclose(result.p_restored[token, layer, COMPONENTS.index(component)], expected.numpy(), atol=TOL,
                                   err_msg=f"{family} cell {(token, layer, component)}")
