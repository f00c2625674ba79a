"""Readouts and operations against plain PyTorch: the hook reference (`reference.py`) gives
the logits of a clean, corrupted, restored or ablated run, and the readouts are computed
from them here by their textbook formulas (float64), sharing nothing with nnct's code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_adapter
from examples import CORRUPT_IDS, IDS, pair, prepared
from reference import Reference
from nnct.errors import ConfigError
from nnct.exec.engine import Engine, Settings
from nnct.interventions import readouts
from nnct.interventions.components import whole

EXTRA = readouts.extra(readouts.parse("logprob,rank,kl,prob_any"))
ATOL = 2e-5  # readouts in float32 of logits that differ by a few ulps between batch layouts


def by_hand(logits, answers, spellings, reference_logits):
    """{readout: value} of one row's last-position logits [vocab], from their definitions."""
    x = logits.double()
    logp = torch.log_softmax(x, -1)
    ref = torch.log_softmax(reference_logits.double(), -1)
    first = [a[0] for a in answers]
    order = torch.argsort(x, descending=True).tolist()
    return {
        "logprob": logp[first].numpy(),
        "rank": np.array([order.index(t) for t in first], dtype=float),
        "kl": float((ref.exp() * (ref - logp)).sum()),
        "prob_any": np.array([float(logp[list(s)].exp().sum()) for s in spellings]),
    }


def _spellings(answers):
    return ((answers[0][0], 3, 5), (answers[1][0], 7))


def _engine(adapter, **settings):
    return Engine(adapter, Settings(window=3, readouts=EXTRA, **settings))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_readouts_of_a_pair_match_plain_pytorch(family):
    """Clean, corrupted and restored cells: every readout equals its formula on the hook
    reference's logits; KL of the clean run is 0."""
    adapter = make_adapter(family)
    ex = pair(adapter)
    spellings = _spellings(ex.answers)
    got = _engine(adapter, components=("hidden", "mlp")).trace(IDS, ex.corrupt, ex.answers, spellings)
    ref = Reference(adapter)
    clean_logits, clean_states = ref.logits(IDS, capture=True)
    corrupt_logits, _ = ref.logits(CORRUPT_IDS)
    last = len(IDS) - 1
    for kind, logits in (("clean", clean_logits), ("corrupt", corrupt_logits)):
        want = by_hand(logits[last], ex.answers, spellings, clean_logits[last])
        for name, value in want.items():
            np.testing.assert_allclose(got.runs[f"{name}_{kind}"], value, atol=ATOL, err_msg=f"{name}_{kind}")
    assert abs(float(got.runs["kl_clean"])) < 1e-6
    assert float(got.runs["kl_corrupt"]) > 1e-3, "the substitution must move the distribution for the test to mean anything"
    for token, layer in ((3, 1), (2, 0), (last, 3)):
        value = clean_states[(layer, "hidden")][token]
        logits, _ = ref.logits(CORRUPT_IDS, writes=[(layer, "hidden", token, value)])
        want = by_hand(logits[last], ex.answers, spellings, clean_logits[last])
        at = (token, layer, whole(("hidden", "mlp")).index("hidden"))
        for name, value in want.items():
            np.testing.assert_allclose(got.restored[f"{name}_restored"][at], value, atol=ATOL, err_msg=f"{name} {at}")


def test_restoring_the_last_hidden_state_gives_the_clean_readouts():
    """The last layer's hidden state at the last token is all the logits see: restoring it
    reproduces every clean readout, under noise (means over samples) as for a pair."""
    adapter = make_adapter("llama")
    for ex in (prepared(adapter, samples=2), pair(adapter)):
        got = _engine(adapter, components=("hidden",)).trace(IDS, ex.corrupt, ex.answers, _spellings(ex.answers))
        at = (len(IDS) - 1, adapter.n_layers - 1, 0)
        for r in EXTRA:
            np.testing.assert_allclose(got.restored[f"{r.name}_restored"][at], got.runs[f"{r.name}_clean"], atol=ATOL)
        np.testing.assert_allclose(got.p_restored[at], got.p_clean, atol=1e-6)


def test_a_callable_readout_runs_in_the_trace():
    """A Python callable is one more readout: here the logit difference, which must equal the
    stored logits' difference in every cell."""
    adapter = make_adapter("llama")
    ex = pair(adapter)
    t, a = ex.answers[0][0], ex.answers[1][0]
    custom = readouts.parse([("diff", lambda logits: logits[:, t] - logits[:, a])])
    got = Engine(adapter, Settings(("hidden",), window=3, readouts=custom)).trace(IDS, ex.corrupt, ex.answers)
    logits = got.restored["logit_restored"]
    np.testing.assert_allclose(got.restored["diff_restored"], logits[..., 0] - logits[..., 1], atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_zero_ablation_matches_plain_pytorch(family):
    """Each cell's ablated run equals the hook reference with zeros written there (a whole
    site in the window's layers, or one head's slice)."""
    adapter = make_adapter(family)
    ex = pair(adapter)
    comps = ("hidden", "mlp", "head")
    got = Engine(adapter, Settings(comps, window=3, operation="zero", batch_rows=7)).trace(IDS, ex.corrupt, ex.answers)
    ref = Reference(adapter)
    clean, states = ref.logits(IDS, capture=True)
    n, last = adapter.n_layers, len(IDS) - 1
    np.testing.assert_allclose(got.p_clean, torch.softmax(clean[last].float(), -1)[[a[0] for a in ex.answers]], atol=1e-6)
    d_head = states[(0, "head")].shape[-1] // ref.n_heads
    for token, layer, component, head in ((2, 1, "hidden", None), (4, 0, "mlp", None), (last, 3, "mlp", None), (3, 2, "head", 1)):
        layers = [layer] if component == "hidden" else [l for l in range(layer - 1, layer + 2) if 0 <= l < n]
        zero = torch.zeros(d_head if head is not None else states[(layer, component)].shape[-1])
        site = ("head", head) if head is not None else component
        logits, _ = ref.logits(IDS, writes=[(l, site, token, zero) for l in layers])
        want = torch.softmax(logits[last].float(), -1)[[a[0] for a in ex.answers]].double().numpy()
        cell = (token, layer, head) if head is not None else (token, layer, whole(comps).index(component))
        variable = "p_restored_head" if head is not None else "p_restored"
        np.testing.assert_allclose(got.restored[variable][cell], want, atol=2e-6, err_msg=f"{family} {cell} {component}")


def test_mean_ablation_over_the_prompt_itself_changes_nothing():
    adapter = make_adapter("llama")
    ex = pair(adapter)
    got = Engine(adapter, Settings(("hidden", "mlp", "attn", "head"), window=3, operation="mean", reference=(IDS,))).trace(
        IDS, ex.corrupt, ex.answers)
    for name in ("p_restored", "p_restored_head"):
        values = got.restored[name]
        np.testing.assert_allclose(values, np.broadcast_to(got.p_clean, values.shape), atol=1e-6, err_msg=name)


def test_mean_ablation_writes_the_reference_mean():
    """References of the prompt's length: each position's mean; of other lengths: the mean
    over all their positions. Both against the hook reference."""
    adapter = make_adapter("llama")
    ex = pair(adapter)
    ref = Reference(adapter)
    last = len(IDS) - 1
    other = (0, 5, 6, 7, 12, 13, 14, 15, 16)
    for reference, by_position in (((CORRUPT_IDS, other), True), ((CORRUPT_IDS, other[:5]), False)):
        engine = Engine(adapter, Settings(("hidden",), window=3, operation="mean", reference=reference))
        assert engine.means_by_position(len(IDS)) == by_position
        got = engine.trace(IDS, ex.corrupt, ex.answers)
        assert int(got.runs["mean_by_position"]) == by_position  # the cube says which mean the cells took
        states = [ref.logits(r, capture=True)[1] for r in reference]
        for token, layer in ((2, 1), (last, 0)):
            if by_position:
                mean = sum(s[(layer, "hidden")][token].double() for s in states) / len(states)
            else:
                mean = torch.cat([s[(layer, "hidden")].double() for s in states]).mean(0)
            logits, _ = ref.logits(IDS, writes=[(layer, "hidden", token, mean.float())])
            want = torch.softmax(logits[last].float(), -1)[[a[0] for a in ex.answers]].double().numpy()
            np.testing.assert_allclose(got.p_restored[token, layer, 0], want, atol=2e-6)


def test_attribution_differentiates_the_readout():
    """d log p = dp / p at the base run: AtP's estimate of log p is its estimate of p divided
    by the base run's p (one corrupted row), an identity independent of how either is made;
    a callable returning the target's logit gives AtP's logit estimate."""
    adapter = make_adapter("llama")
    ex = pair(adapter)
    t = ex.answers[0][0]
    extra = readouts.parse(["logprob", ("lt", lambda logits: logits[:, t])])
    got = Engine(adapter, Settings(("hidden", "mlp"), window=3, estimate="atp", readouts=extra)).trace(
        IDS, ex.corrupt, ex.answers)
    ratio = got.restored["ie_atp"] / got.p_corrupt
    np.testing.assert_allclose(got.restored["ie_atp_logprob"], ratio, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.restored["ie_atp_lt"], got.restored["ie_atp_logit"][..., 0], rtol=1e-5, atol=1e-6)


def test_readouts_that_cannot_run_are_refused():
    with pytest.raises(ConfigError, match="unknown readout"):
        readouts.parse("prob,klx")
    with pytest.raises(ConfigError, match="cannot run on a server"):
        readouts.check_remote(readouts.parse([lambda logits: logits[:, 0]]))
    with pytest.raises(ConfigError, match="no gradient"):
        readouts.check_gradient(readouts.parse("rank"))
    adapter = make_adapter("llama")
    ex = pair(adapter)
    with pytest.raises(ConfigError, match="no gradient"):
        Engine(adapter, Settings(("hidden",), estimate="atp", readouts=readouts.parse("rank"))).trace(IDS, ex.corrupt, ex.answers)



def test_one_engine_keeps_each_prompt_lengths_means_apart():
    """The reference means made once per engine: a prompt of the references' length takes
    the per-position means, a shorter one the all-position means, as fresh engines give."""
    adapter = make_adapter("llama")
    ex = pair(adapter)
    settings = Settings(("hidden",), window=3, operation="mean", reference=(CORRUPT_IDS,))
    shared = Engine(adapter, settings)
    for ids in (IDS, IDS[:6], IDS):
        got = shared.trace(ids, ex.corrupt, ex.answers)
        fresh = Engine(adapter, settings).trace(ids, ex.corrupt, ex.answers)
        np.testing.assert_array_equal(got.p_restored, fresh.p_restored)
