"""Sites: each entry finds its module in every supported family (through nnsight's envoys
and through torch alike), and the entries' forward order is the order a decoder layer runs."""

import pytest

from conftest import FAMILIES, make_adapter
from nnct.model import SITES, components
from nnct.model.sites import in_forward_order


@pytest.mark.parametrize("family", FAMILIES)
def test_every_site_resolves_in_every_family(family):
    adapter = make_adapter(family)
    for site in SITES.values():
        for envoy, module in zip(adapter.parts.layers, adapter.layer_modules()):
            assert site.module(envoy, adapter.layout)._module is site.module(module, adapter.layout)


def test_sites_are_read_in_forward_order():
    """A decoder layer runs attention, then the MLP, then outputs the residual stream."""
    assert [s.name for s in in_forward_order(["hidden", "attn", "mlp"])] == ["attn", "mlp", "hidden"]
    assert [s.name for s in SITES.values() if s.residual] == ["hidden"]
    assert {s.name for s in SITES.values() if s.windowed} == {"mlp", "attn"}


def test_components_name_sites_in_the_cube_order():
    assert components("attn,hidden") == ("hidden", "attn")
    with pytest.raises(Exception, match="unknown component"):
        components("head")
