"""ROME's measurements on the tiny llama: keys and their second moment against plain forward
pre-hooks (no nnsight), the value optimisation making an edit that rewrites the answer; and
an edit applied as an nnsight intervention against the same edit in the weights, on every
family, through the edits file."""

import pytest
import torch

from conftest import FAMILIES, make_adapter
from nnct.exec import rome
from nnct.interventions.rank_one import edited, rank_one
from nnct.results import edits
from reference import captured

LAYER = 1


def _hooked_keys(adapter, ids):
    """[token, d_ff]: the down projection's input, by a plain pre-hook."""
    return captured(adapter.hf, adapter.layer_modules()[LAYER].get_submodule(adapter.layout.mlp_down), ids, pre=True)


def test_keys_and_second_moment_against_hooks():
    adapter = make_adapter("llama")
    prompts, at = [[1, 5, 6, 7], [2, 9, 9, 4, 3]], [2, 4]
    got = rome.keys(adapter.parts, prompts, at, LAYER)
    want = torch.stack([_hooked_keys(adapter, p)[t] for p, t in zip(prompts, at)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    c, n = rome.second_moments(adapter.parts, prompts, [LAYER, 3])
    k = torch.cat([_hooked_keys(adapter, p) for p in prompts])
    assert n == 9 and set(c) == {LAYER, 3}
    torch.testing.assert_close(c[LAYER], k.T @ k / 9, rtol=1e-6, atol=1e-7)


def test_an_edit_rewrites_the_answer():
    """The value at the prompt's last token (the lookup) optimised for token 9, written by
    the rank-one update with the keys' second moment: token 9 becomes the answer. (A random
    model's MLP outputs are small, so the norm clamp is relaxed here.)"""
    adapter = make_adapter("llama")
    parts, prompt, target = adapter.parts, [1, 5, 6, 7, 8], [9]
    prefixes = [[], [11, 12], [13, 14, 15]]
    rewriting = [pre + prompt for pre in prefixes]
    lookups = [len(pre) + len(prompt) - 1 for pre in prefixes]
    hp = rome.Hparams(steps=40, clamp=1000.0, weight_decay=0.0)
    v, v0, log = rome.value(parts, rewriting, lookups, target, [[5, 6, 20, 21]], [1], LAYER, hp)
    assert log["p_target"][-1] > 0.5 > 0.01 > log["p_target"][0]
    g = torch.Generator().manual_seed(0)
    c = rome.second_moments(parts, [torch.randint(0, 100, (16,), generator=g).tolist() for _ in range(20)], [LAYER])[0][LAYER]
    k = rome.keys(parts, rewriting, lookups, LAYER).mean(0)
    down = adapter.layer_modules()[LAYER].get_submodule(adapter.layout.mlp_down)
    left, right = rank_one(down.weight, k, v, torch.linalg.solve(c, k))
    before = down.weight.data.clone()
    try:
        down.weight.data = edited(before, left, right)
        with torch.no_grad():
            answer = adapter.hf(torch.tensor([prompt])).logits[0, -1].argmax()
    finally:
        down.weight.data = before
    assert int(answer) == 9
    assert all(p.grad is None and p.requires_grad for p in adapter.hf.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_an_edit_as_intervention_equals_the_edited_weights(family, tmp_path):
    """Two edits (layers 1 and 3, random vectors) written into the weights, and the same edits
    read back from an edits file and applied inside an nnsight trace: the same logits."""
    adapter = make_adapter(family)
    parts = adapter.parts
    g = torch.Generator().manual_seed(1)
    made = [edits.Edit(f"r{i}", "s", "p", "a", "b", layer, torch.randn(parts.d_model, generator=g).double().numpy() / 10,
                       torch.randn(parts.d_ff, generator=g).double().numpy(), {"lr": 0.5}, {"efficacy": 1.0})
            for i, layer in enumerate((3, 1))]
    edits.write(made, tmp_path / "edits.nc", {"model": "tiny"})
    back, attrs = edits.read(tmp_path / "edits.nc")
    assert attrs["model"] == "tiny" and back[1].hparams == {"lr": 0.5} and back[0].metrics == {"efficacy": 1.0}
    ids = torch.tensor([[0, 8, 25, 26, 7]])
    with torch.no_grad():
        plain = adapter.hf(ids).logits
        with rome.edited_weights(adapter, [(e.layer, e.left, e.right) for e in made]):
            want = adapter.hf(ids).logits
        with parts.nn.trace(ids):
            rome.apply_in_trace(parts, [(e.layer, e.left, e.right) for e in back])
            got = parts.nn.output.logits.save()
        after = adapter.hf(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (want - plain).abs().max() > 1e-3  # the edits do something
    torch.testing.assert_close(after, plain)  # and the weights came back


def test_an_edit_runs_in_a_serialised_session():
    """The edit as an intervention inside an nnsight session sent through nnsight's local
    simulation of a request (what a server runs): the logits of the edited weights."""
    import nnsight

    from nnct.exec import remote

    adapter = make_adapter("llama")
    parts = adapter.parts
    g = torch.Generator().manual_seed(2)
    edit = [(2, torch.randn(parts.d_model, generator=g).double() / 10, torch.randn(parts.d_ff, generator=g).double())]
    ids = torch.tensor([[0, 8, 25, 26, 7]])
    got = None
    with parts.nn.session(backend=remote.backend(remote.LOCAL, adapter)):
        with parts.nn.trace(ids):
            rome.apply_in_trace(parts, edit)
            logits = parts.nn.output.logits.save()
        got = nnsight.save(logits)
    with torch.no_grad(), rome.edited_weights(adapter, edit):
        want = adapter.hf(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
