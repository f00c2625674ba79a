"""`exec.steer` against plain PyTorch: forward hooks on the decoder layers' torch modules
(`model.model.layers[l]`, `model.transformer.h[l]`) read the residual stream and add alpha
* v to it, one forward per row, without nnsight or nnct's sites."""

from __future__ import annotations

import pytest
import torch

from conftest import make_adapter
from nnct.exec import steer
from nnct.interventions.readouts import READOUTS

IDS = [0, 8, 25, 26, 10, 11, 8]  # <s> the Eiffel Tower is in the
ANSWERS = (23, 27)  # Paris, Rome
PAIRS = [([0, 23, 10, 57], [0, 27, 10, 58, 9]), ([0, 8, 59, 21], [0, 8, 60, 21]), ([0, 64, 15], [0, 65, 15])]
PROB = (READOUTS["prob"],)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def adapter(request):
    return make_adapter(request.param)


def _layers(adapter):
    hf = adapter.hf
    return hf.model.layers if hasattr(hf, "model") else hf.transformer.h


def _tensor(out):
    return out[0] if isinstance(out, tuple) else out


def reference_states(adapter, ids) -> torch.Tensor:
    """[layer, d]: each decoder layer's output at the last token, from forward hooks."""
    seen = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, _tensor(out)[0, -1].clone()))
               for i, m in enumerate(_layers(adapter))]
    try:
        with torch.no_grad():
            adapter.hf(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack([seen[i] for i in range(len(seen))])


class Adding:
    """A forward hook adding alpha * v to layer `layer`'s output from position `start` on."""

    def __init__(self, adapter, layer, alpha, v, start=0):
        self.handle = _layers(adapter)[layer].register_forward_hook(self.hook) if layer >= 0 else None
        self.alpha, self.v, self.start = alpha, v[layer], start

    def hook(self, mod, inp, out):
        _tensor(out)[:, self.start:] += self.alpha * self.v

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()


def reference_logits(adapter, ids, layer, alpha, v, start=0) -> torch.Tensor:
    with Adding(adapter, layer, alpha, v, start), torch.no_grad():
        return adapter.hf(torch.tensor([ids])).logits[0, -1].float()


def test_vectors_are_the_mean_difference_of_hidden_states(adapter):
    got = steer.vectors(adapter.parts, PAIRS)
    want = sum(reference_states(adapter, p) - reference_states(adapter, n) for p, n in PAIRS) / len(PAIRS)
    assert got.shape == (adapter.n_layers, adapter.d_model)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("from_last", [False, True])
def test_batched_sweep_equals_one_forward_per_row(adapter, from_last):
    v = torch.randn(adapter.n_layers, adapter.d_model, generator=torch.Generator().manual_seed(1))
    layers = [0, 0, 0, 1, 2, 3, 3]
    alphas = [-1.5, 0.0, 2.0, 1.0, -0.5, 3.0, 0.0]
    chosen = (READOUTS["prob"], READOUTS["logprob"], READOUTS["kl"])
    # 3 rows a forward: batches that span layers
    [(clean, rows)] = steer.sweep(adapter.parts, [(IDS, ANSWERS)], layers, alphas, v, chosen, 3, from_last)
    start = len(IDS) - 1 if from_last else 0
    base = reference_logits(adapter, IDS, -1, 0.0, v)
    torch.testing.assert_close(clean[:2], base.softmax(-1)[list(ANSWERS)], rtol=1e-4, atol=1e-7)
    for r, (layer, alpha) in enumerate(zip(layers, alphas)):
        logits = reference_logits(adapter, IDS, layer, alpha, v, start)
        logp = logits.log_softmax(-1)
        kl = (base.log_softmax(-1).exp() * (base.log_softmax(-1) - logp)).sum()
        want = torch.cat([logp.exp()[list(ANSWERS)], logp[list(ANSWERS)], kl[None]])
        torch.testing.assert_close(rows[r], want, rtol=1e-4, atol=2e-6)


def test_alpha_zero_is_no_intervention(adapter):
    v = torch.randn(adapter.n_layers, adapter.d_model) * 10
    layers = list(range(adapter.n_layers))
    [(clean, rows)] = steer.sweep(adapter.parts, [(IDS, ANSWERS)], layers, [0.0] * len(layers), v, PROB, 64)
    for row in rows:
        torch.testing.assert_close(row, clean, rtol=0, atol=1e-6)


def test_from_last_changes_only_positions_from_the_last_prompt_token(adapter):
    """Layer 1's output, read by a plain hook on the last layer: positions before the last
    prompt token as unsteered, the last one moved."""
    v = torch.randn(adapter.n_layers, adapter.d_model, generator=torch.Generator().manual_seed(2))
    seen = []
    handle = _layers(adapter)[-1].register_forward_hook(lambda mod, inp, out: seen.append(_tensor(out).clone()))
    try:
        with torch.no_grad():
            adapter.hf(torch.tensor([IDS]))
        with torch.no_grad(), adapter.nn.trace(torch.tensor([IDS] * 2)):
            steer.steer(adapter.parts, [1, steer.UNSTEERED], [4.0, 0.0], v, len(IDS) - 1)
    finally:
        handle.remove()
    clean, steered = seen
    torch.testing.assert_close(steered[0, :-1], clean[0, :-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(steered[1], clean[0], rtol=0, atol=1e-6)  # the unsteered row
    assert (steered[0, -1] - clean[0, -1]).abs().max() > 1e-2


@pytest.mark.parametrize("from_last", [False, True])
def test_continuations_equal_plain_greedy_with_a_hook(adapter, from_last):
    v = torch.randn(adapter.n_layers, adapter.d_model, generator=torch.Generator().manual_seed(3))
    layers, alphas, n = [1, 2, 2], [3.0, -3.0, 1.0], 4
    start = len(IDS) - 1 if from_last else 0
    [got] = steer.continuations(adapter.parts, [IDS], layers, alphas, v, n, 2, from_last)
    for r, (layer, alpha) in enumerate(zip([steer.UNSTEERED, *layers], [0.0, *alphas])):
        x = list(IDS)
        with Adding(adapter, layer, alpha, v, start), torch.no_grad():
            for _ in range(n):
                x.append(int(adapter.hf(torch.tensor([x])).logits[0, -1].argmax()))
        assert got[r].tolist() == x[len(IDS):]
