"""MEMIT and AlphaEdit on the tiny llama: a batch of three facts written over layers 1-2 moves
each fact's hidden state at layer 2 (read by a plain forward hook, no nnsight) onto its target
z and makes the new object the answer; only the range's down projections change; AlphaEdit's
update leaves keys of the preserved subspace alone."""

import torch

from conftest import make_adapter
from nnct.exec import memit, rome
from reference import captured

LAYERS = [1, 2]
FACTS = [memit.Fact([[1, 5, 6, 7, 8]], [4], [9], [5, 6, 20, 21], 1),
         memit.Fact([[1, 30, 31, 32]], [3], [40], [30, 31, 20, 21], 1),
         memit.Fact([[1, 50, 51, 52, 53, 54]], [5], [60], [50, 51, 20, 21], 1)]
# a random model's hidden states are small: the clamp is relaxed, as in test_rome
HP = memit.Hparams(value=rome.Hparams(steps=40, clamp=1000.0, weight_decay=0.0), mom2_update_weight=1e-6)


def _hidden(adapter, ids, at, layer):
    """[d_model] float64: the residual output of `layer` at position `at`, by a plain hook."""
    return captured(adapter.hf, adapter.layer_modules()[layer], ids)[at]


def _cov(parts):
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randint(0, 100, (16,), generator=g).tolist() for _ in range(20)]
    return rome.second_moments(parts, chunks, LAYERS)[0]


def test_memit_moves_the_hidden_states_onto_their_targets():
    torch.set_num_threads(1)
    adapter = make_adapter("llama")
    parts = adapter.parts
    zs, logs = zip(*(memit.target(parts, f, LAYERS[-1], HP.value) for f in FACTS))
    assert all(log["p_target"][-1] > 0.5 for log in logs)
    zs = torch.stack(zs, 1)
    before = {k: v.clone() for k, v in adapter.hf.state_dict().items()}
    made = memit.batch_edit(adapter, FACTS, LAYERS, memit.memit_solver(_cov(parts), HP), zs)
    assert [layer for layer, _, _ in made] == LAYERS and made[0][1].shape == (parts.d_model, 3)
    with rome.edited_weights(adapter, made), torch.no_grad():
        changed = {k for k, v in adapter.hf.state_dict().items() if not torch.equal(v, before[k])}
        for i, f in enumerate(FACTS):
            # lambda ~ 0 and the keys read at the bare prompt only: the last layer writes what is left exactly
            torch.testing.assert_close(_hidden(adapter, f.prompts[0], f.lookups[0], LAYERS[-1]), zs[:, i], rtol=1e-4,
                                       atol=1e-4)
            assert int(adapter.hf(torch.tensor([f.prompts[0]])).logits[0, -1].argmax()) == f.target[0]
    down = adapter.layout.mlp_down
    assert changed == {f"{adapter.layout.layers}.{layer}.{down}.weight" for layer in LAYERS}
    assert all(torch.equal(v, before[k]) for k, v in adapter.hf.state_dict().items())  # and they came back


def test_alphaedit_spares_the_preserved_subspace():
    """An AlphaEdit batch: every key in the span of C's large-eigenvalue eigenvectors gives the
    same down-projection output after as before; the edit still moves the facts."""
    torch.set_num_threads(1)
    adapter = make_adapter("llama")
    parts = adapter.parts
    covs = _cov(parts)
    hp = memit.Hparams(value=HP.value, nullspace_threshold=float(torch.linalg.eigvalsh(covs[1]).median()), l2=1e-3)
    zs = torch.stack([memit.target(parts, f, LAYERS[-1], hp.value)[0] for f in FACTS], 1)
    preserved = {}
    made = memit.batch_edit(adapter, FACTS, LAYERS, memit.alphaedit_solver(covs, preserved, hp), zs)
    for layer, left, right in made:
        values, vectors = torch.linalg.eigh(covs[layer])
        kept = vectors[:, values >= hp.nullspace_threshold]
        assert kept.shape[1] > 0 and (left @ right.T @ kept).abs().max() < 1e-8 * left.abs().max()
    unedited = [_hidden(adapter, f.prompts[0], f.lookups[0], LAYERS[-1]) for f in FACTS]
    with rome.edited_weights(adapter, made):
        after = [_hidden(adapter, f.prompts[0], f.lookups[0], LAYERS[-1]) for f in FACTS]
    for i in range(len(FACTS)):
        assert (after[i] - zs[:, i]).norm() < (unedited[i] - zs[:, i]).norm()
    memit.preserve(adapter, FACTS, LAYERS, made, preserved)
    assert set(preserved) == set(LAYERS) and preserved[1].shape == (parts.d_ff, parts.d_ff)


def test_a_facts_key_weighs_its_bare_prompt_as_much_as_all_its_prefixed_ones():
    """MEMIT's compute_ks: the mean over each kind of context template first, so the key is
    (k(bare) + mean of k(prefixed)) / 2; keys read by a plain pre-hook on the down projection."""
    adapter = make_adapter("llama")
    fact = memit.Fact([[1, 5, 6, 7], [3, 4, 1, 5, 6, 7], [9, 1, 5, 6, 7]], [2, 4, 3], [9], [5, 6, 20], 1)
    down = adapter.layer_modules()[1].get_submodule(adapter.layout.mlp_down)
    k = [captured(adapter.hf, down, ids, pre=True)[at] for ids, at in zip(fact.prompts, fact.lookups)]
    got = memit.fact_keys(adapter.parts, [fact, FACTS[0]], 1)
    torch.testing.assert_close(got[:, 0], (k[0] + (k[1] + k[2]) / 2) / 2, rtol=1e-6, atol=1e-7)
    assert got.shape == (adapter.parts.d_ff, 2)


def test_lambda_by_model_then_family():
    assert memit.hparams_for("llama", "smollm2-135m").mom2_update_weight == 5000  # chosen on its development facts
    assert memit.hparams_for("llama", "other").mom2_update_weight == 15000  # AlphaEdit's Llama3-8B
    assert memit.hparams_for("gpt2").mom2_update_weight == 20000  # GPT-2 XL's
