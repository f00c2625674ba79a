"""Value optimisations batched (`rome.values`, `memit.targets`) on the tiny llama: facts with
prompts, lookups and targets of different lengths optimised in the same passes give each
fact's z (or v*, v0) and loss log as if it were optimised alone, also when one fact stops
early and the others go on; and they equal a plain-hook optimisation over whole rows."""

import pytest
import torch

from conftest import make_adapter
from nnct.exec import memit, rome
from test_rome import _reference_value

LAYER = 2
# a 1-, a 2- and a 3-token target; prompts of several lengths, with and without a prefix
FACTS = [memit.Fact([[1, 5, 6, 7, 8], [11, 12, 1, 5, 6, 7, 8]], [2, 4], [9], [5, 6, 20, 21], 1),
         memit.Fact([[1, 30, 31, 32], [13, 14, 15, 1, 30, 31, 32]], [3, 6], [40, 41], [30, 31, 20, 21], 1),
         memit.Fact([[1, 50, 51, 52, 53, 54]], [4], [60, 61, 62], [50, 51, 20, 21], 1)]
HP = rome.Hparams(steps=8, clamp=1000.0, lr=0.1, stop=-1.0)


@pytest.fixture(scope="module")
def adapter():
    return make_adapter("llama")


def _same(batched, alone):
    for (z, log), (want_z, want_log) in zip(batched, alone, strict=True):
        torch.testing.assert_close(z, want_z, rtol=1e-5, atol=1e-6)
        assert set(log) == set(want_log)
        for k in log:
            assert log[k] == pytest.approx(want_log[k], rel=1e-5, abs=1e-6), k


def test_facts_together_equal_each_alone(adapter):
    alone = [memit.target(adapter.parts, f, LAYER, HP) for f in FACTS]
    _same(memit.targets(adapter.parts, FACTS, LAYER, HP, batch=3), alone)
    _same(memit.targets(adapter.parts, FACTS, LAYER, HP, batch=2), alone)  # a batch of two, then one
    assert all(len(log["loss"]) == HP.steps for _, log in alone)


def test_a_fact_that_stops_early_stops_alone(adapter):
    """With this threshold the 2-token fact's loss falls below it after one step and the
    others' never do: it stops (its delta stays where that step left it) while they go on."""
    hp = rome.Hparams(steps=8, clamp=1000.0, lr=0.1, stop=7.0)
    alone = [memit.target(adapter.parts, f, LAYER, hp) for f in FACTS]
    assert [len(log["loss"]) for _, log in alone] == [8, 2, 8]
    _same(memit.targets(adapter.parts, FACTS, LAYER, hp, batch=3), alone)
    _same(memit.targets(adapter.parts, FACTS[::-1], LAYER, hp, batch=3), alone[::-1])


def test_values_equal_whole_rows_by_hooks(adapter):
    """ROME's site (the MLP's output) and MEMIT's (the residual), two facts in one batch: each
    fact's v*, v0 and losses equal a plain-hook optimisation of it alone over whole rows."""
    torch.manual_seed(0)
    got_facts = [rome.Value([p + f.target[:-1] for p in f.prompts], f.lookups, f.target, [f.kl], [f.kl_lookup])
                 for f in FACTS[1:]]
    hp = rome.Hparams(steps=5, clamp=1000.0, lr=0.1)
    for site in ("mlp", "hidden"):
        got = rome.values(adapter.parts, got_facts, LAYER, hp, site=site)
        for (v, v0, log), f in zip(got, got_facts, strict=True):
            want_v, want_v0, losses = _reference_value(adapter, f.rewriting, f.lookups, f.target, f.kl, f.kl_lookups,
                                                       LAYER, hp, site)
            torch.testing.assert_close(v0, want_v0, rtol=1e-5, atol=1e-6)
            assert log["loss"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
            torch.testing.assert_close(v, want_v, rtol=1e-4, atol=1e-5)
