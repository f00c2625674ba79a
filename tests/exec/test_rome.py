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


def _reference_value(adapter, rows, lookups, target, kl_rows, kl_lookups, layer, hp, site):
    """ROME's value optimisation written from docs/method.md with plain forward hooks: every
    row its own whole forward (no padding, no cache); delta added at each row's lookup token
    to the MLP's output (`mlp`) or the layer's (`hidden`); the same Adam, clamp and stop."""
    block = adapter.hf.get_submodule(adapter.layout.layers)[layer]
    module = block if site == "hidden" else getattr(block, adapter.layout.mlp)
    delta = torch.zeros(adapter.parts.d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.lr)
    v0, kl_init, losses = None, None, []

    def run(ids, at):
        got = {}

        def hook(mod, inp, out):
            h = out[0] if isinstance(out, tuple) else out
            got["base"] = h[0, at].detach().double()
            h = h.clone()
            h[0, at] = h[0, at] + delta
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = module.register_forward_hook(hook)
        try:
            logp = adapter.hf(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        finally:
            handle.remove()
        return logp, got["base"]

    for p in adapter.hf.parameters():
        p.requires_grad_(False)
    try:
        for step in range(hp.steps):
            nll, base = [], None
            for ids, at in zip(rows, lookups):
                logp, b = run(ids, at)
                base = b if base is None else base
                nll.append(-torch.stack([logp[len(ids) - len(target) + j, t] for j, t in enumerate(target)]).mean())
            kl_logp = torch.stack([run(ids, at)[0][-1] for ids, at in zip(kl_rows, kl_lookups)])
            if v0 is None:
                v0, kl_init = base, kl_logp.detach()
            kl = torch.nn.functional.kl_div(kl_logp, kl_init, log_target=True, reduction="batchmean")
            loss = torch.stack(nll).mean() + hp.kl_factor * kl + hp.weight_decay * delta.norm() / v0.float().norm() ** 2
            losses.append(loss.item())
            if loss.item() < hp.stop or step == hp.steps - 1:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                if delta.norm() > hp.clamp * v0.norm():
                    delta.mul_(float(hp.clamp * v0.norm() / delta.norm()))
    finally:
        for p in adapter.hf.parameters():
            p.requires_grad_(True)
    return v0 + delta.detach().double(), v0, losses


@pytest.mark.parametrize("family, site", [("llama", "mlp"), ("llama", "hidden"), ("gpt2", "mlp"), ("gemma2", "hidden"),
                                          ("gpt_neox", "mlp")])
def test_value_equals_whole_rows_by_hooks(family, site):
    """`value` runs each step over the rows after their lookup token only, on a cache of what
    comes before: v*, v0 and every step's loss equal a plain-hook optimisation over whole rows,
    with prefixes of several lengths (none, too), a two-token target and two KL prompts."""
    torch.manual_seed(0)
    adapter = make_adapter(family)
    prompt, target = [5, 6, 7, 8], [9, 10]
    prefixes = [[], [11, 12], [13, 14, 15, 16, 17]]
    rows = [pre + prompt + target[:-1] for pre in prefixes]
    lookups = [len(pre) + 1 for pre in prefixes]
    kl_rows, kl_lookups = [[5, 6, 20], [30, 5, 6, 20, 21]], [1, 2]
    hp = rome.Hparams(steps=6, clamp=1000.0, lr=0.1)
    v, v0, log = rome.value(adapter.parts, rows, lookups, target, kl_rows, kl_lookups, LAYER, hp, site=site)
    want_v, want_v0, losses = _reference_value(adapter, rows, lookups, target, kl_rows, kl_lookups, LAYER, hp, site)
    torch.testing.assert_close(v0, want_v0, rtol=1e-5, atol=1e-6)
    assert log["loss"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(v, want_v, rtol=1e-4, atol=1e-5)
