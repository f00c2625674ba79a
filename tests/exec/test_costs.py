"""The cost model: measured numbers that make sense, kept once per model and device, and a
plan that uses them computing the same cells (checked against the independent reference)."""

import json

import numpy as np
import pytest

from conftest import make_adapter
from examples import IDS, SPAN, TOL, prepared
from reference import Reference
from nnct.exec import costs
from nnct.exec.engine import Engine, Settings
from nnct.interventions.components import ORDER as COMPONENTS
from nnct.model.flops import Shape
from nnct.model.loading import load


def test_seconds_adds_passes_and_arithmetic():
    c = costs.Cost(pass_s=0.02, gflops=50.0)
    assert c.seconds(10, 0) == pytest.approx(0.2)
    assert c.seconds(0, 100e9) == pytest.approx(2.0)
    assert c.seconds(3, 5e9) == pytest.approx(0.06 + 0.1)


def test_pass_positions_cost_one_pass():
    adapter = make_adapter("llama")
    c = costs.Cost(pass_s=0.01, gflops=2.0)
    got = costs.pass_positions(adapter, c)
    shape = Shape.of(adapter)
    assert len(got) == adapter.n_layers + 1 and got[-1] == float("inf")
    for layer, positions in enumerate(got[:-1]):  # that many rows x positions from the layer on take one pass's time
        assert positions * shape.forward(1, 1, first=layer, logits_at=0) == pytest.approx(0.01 * 2e9)
    assert list(got[:-1]) == sorted(got[:-1])  # fewer layers run: more positions for the same time


def test_measured_once_per_model_and_device(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NNCT_CACHE", str(tmp_path))
    adapter = load(str(tiny_model_dir))
    first = costs.cost(adapter)
    assert first.pass_s > 0 and first.gflops > 0
    kept = list((tmp_path / "costs").rglob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == {"pass_s": first.pass_s, "gflops": first.gflops}

    def measured_again(_):
        raise AssertionError("measured again")
    monkeypatch.setattr(costs, "measure", measured_again)
    assert costs.cost(load(str(tiny_model_dir))) == first


def test_a_plan_with_cheap_arithmetic_computes_the_same_cells():
    """Unlimited slack (passes dear, arithmetic free) makes fewer, larger batches that
    recompute positions; every cell still equals the reference."""
    adapter = make_adapter("llama")
    ex = prepared(adapter)
    slack = (float("inf"),) * (adapter.n_layers + 1)
    fewer = Engine(adapter, Settings(window=3, batch_rows=12, pass_positions=slack))
    plain = Engine(adapter, Settings(window=3, batch_rows=12))
    got = fewer.trace(ex.ids, ex.corrupt, ex.answers)
    base = plain.trace(ex.ids, ex.corrupt, ex.answers)
    assert fewer.forwards < plain.forwards
    ref = Reference(adapter)
    for t in (SPAN[0], len(IDS) - 1):  # the first corrupted token and the last: the earliest and latest batches
        for layer in range(adapter.n_layers):
            for component in ("hidden", "mlp"):
                expected = ref.cell(IDS, SPAN, ex.noise, ex.answers, t, layer, component, window=3)
                np.testing.assert_allclose(got.p_restored[t, layer, COMPONENTS.index(component)], expected.numpy(), atol=TOL,
                                           err_msg=f"{t} {layer} {component}")
    np.testing.assert_allclose(got.p_restored, base.p_restored, atol=TOL)
