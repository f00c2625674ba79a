"""Sites: each entry finds its module in every supported family (through nnsight's envoys
and through torch alike), and the entries' forward order is the order a decoder layer runs."""

import pytest

from conftest import FAMILIES, make_adapter
from nnct.model import SITES
from nnct.model.sites import in_forward_order


@pytest.mark.parametrize("family", FAMILIES)
def test_every_site_resolves_in_every_family(family):
    adapter = make_adapter(family)
    for site in SITES.values():
        for envoy, module in zip(adapter.parts.layers, adapter.layer_modules()):
            assert site.module(envoy, adapter.layout)._module is site.module(module, adapter.layout)


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_are_read_in_the_order_the_model_runs_them(family):
    """nnsight reads modules in forward order: the entries' `order` must be the order in
    which each family's decoder layer reaches their values (parallel-residual GPT-J and NeoX
    too): a module's output when it finishes, its input when it starts."""
    import torch

    adapter = make_adapter(family)
    finished = []
    layer = adapter.layer_modules()[1]
    hooks = []
    for site in SITES.values():
        module = site.module(layer, adapter.layout)
        register = module.register_forward_pre_hook if site.value == "input" else module.register_forward_hook
        hooks.append(register(lambda *a, name=site.name: finished.append(name)))
    try:
        with torch.no_grad():
            adapter.hf(torch.tensor([[0, 8, 25, 26]]))
    finally:
        for h in hooks:
            h.remove()
    assert [s.name for s in in_forward_order(SITES)] == finished


def test_only_the_residual_stream_is_written_at_one_layer():
    assert [s.name for s in SITES.values() if s.residual] == ["hidden"]
    assert {s.name for s in SITES.values() if s.windowed} == {"mlp", "attn", "head", "down"}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_down_site_is_the_mlp_key(family):
    """The down projection's input, read through nnsight, is [row, token, d_ff], and the
    projection of it (the module's own weights, applied here by hand: x W^T + b, or x W + b
    for GPT-2's Conv1D) is the MLP's output: the key/value pair a ROME edit rewrites."""
    import torch

    adapter = make_adapter(family)
    parts = adapter.parts
    with torch.no_grad(), parts.nn.trace(torch.tensor([[0, 8, 25, 26]])):
        key = SITES["down"].read(parts, 1).save()
        value = SITES["mlp"].read(parts, 1).save()
    down = adapter.layer_modules()[1].get_submodule(adapter.layout.mlp_down)
    assert key.shape == (1, 4, parts.d_ff)
    w = down.weight if down.weight.shape[0] == value.shape[-1] else down.weight.T  # Conv1D stores [in, out]
    by_hand = key @ w.T + (down.bias if down.bias is not None else 0)
    torch.testing.assert_close(by_hand, value, rtol=1e-5, atol=1e-6)
