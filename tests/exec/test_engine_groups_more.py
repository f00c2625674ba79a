"""Many examples per forward, beyond exact patching of the answers: extra readouts (each
example reads its own answers, spellings and clean reference) with copying and with
ablation, and attribution patching (AtP, AtP*, with the exact screen) give each example of
a group of 3 the measures of its own `trace`; and a run of prompts of several lengths
writes, with readouts and with an estimate, the cube of one example at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SMALL, make_adapter, write_jsonl
from examples import MIXED_PAIRS
from test_engine_groups import CLEAN, CLOSE, jobs
from nnct.exec.engine import Engine, Settings
from nnct.interventions import readouts

EXACT = readouts.extra(readouts.parse("logprob,rank,kl,prob_any"))
GRADIENT = readouts.extra(readouts.parse("logprob,kl,prob_any"))  # rank has no gradient
ATP = ("hidden", "mlp", "attn", "head", "head_all_pos")


def spelled(group):
    """Each example's own spellings, of other lengths (padding), one with none at all."""
    out = []
    for k, (ids, corrupt, answers, _) in enumerate(group):
        t, a = answers[0][0], answers[1][0]
        spellings = [((t, 3, 5), (a, 7)), ((), (a, 4, 6, 9)), ((t,), ())][k]
        out.append((ids, corrupt, answers, spellings))
    return out


def assert_equal_measures(got, want, what=""):
    """`test_engine_groups`' check, the runs' readouts too within float32 rounding (the
    corrupted runs' rows sit in a forward of other rows)."""
    for name in ("p_clean", "p_corrupt", "logit_clean", "logit_corrupt"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), **CLOSE, err_msg=f"{what} {name}")
    assert got.clean_top1 == want.clean_top1
    assert got.restored.keys() == want.restored.keys() and got.runs.keys() == want.runs.keys()
    for kind, values in (("restored", got.restored), ("runs", got.runs)):
        for name, value in values.items():
            tol = CLOSE if name.startswith("p_") else {"rtol": 1e-5, "atol": 5e-5}
            np.testing.assert_allclose(value, getattr(want, kind)[name], **tol, err_msg=f"{what} {kind} {name}")


def assert_group_is_each_alone(engine, group):
    alone = [engine.trace(*job) for job in group]
    got = engine.trace_group(group)
    assert len(got) == len(group)
    for k, (g, want) in enumerate(zip(got, alone)):
        assert_equal_measures(g, want, f"example {k}")
    return got


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["noise", "pair"])
@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_readouts_of_a_group_are_each_examples_own(family, kind, reverse):
    adapter = make_adapter(family)
    engine = Engine(adapter, Settings(("hidden", "mlp", "attn", "head"), window=3, reverse=reverse, batch_rows=24,
                                      readouts=EXACT))
    group = spelled(jobs(adapter, kind, 3))
    assert len({engine.group_key(*job[:3]) for job in group}) == 1
    got = assert_group_is_each_alone(engine, group)
    # the readouts differ between the examples: each read its own answers and reference
    assert not all((got[0].restored["kl_restored"] == m.restored["kl_restored"]).all() for m in got[1:])
    assert all(abs(float(m.runs["kl_clean"])) < 1e-5 for m in got)  # each clean run against its own


def test_readouts_of_a_group_with_answers_of_several_tokens():
    adapter = make_adapter("llama")
    answers = [((12, 40), (13, 41, 42)), ((23, 9), (27, 40, 41)), ((40, 41), (12, 13, 14))]
    engine = Engine(adapter, Settings(("hidden", "mlp"), window=3, batch_rows=12, readouts=EXACT))
    assert_group_is_each_alone(engine, spelled(jobs(adapter, "pair", 3, answers)))


@pytest.mark.parametrize("operation", ["zero", "mean"])
def test_readouts_of_a_group_that_ablates(operation):
    adapter = make_adapter("gpt2")
    engine = Engine(adapter, Settings(("hidden", "mlp", "attn", "head"), window=3, batch_rows=16, operation=operation,
                                      reference=(CLEAN[1],) if operation == "mean" else (), readouts=EXACT))
    assert_group_is_each_alone(engine, spelled(jobs(adapter, "ablate", 3)))


@pytest.mark.parametrize("estimate", ["atp", "atp*"])
@pytest.mark.parametrize("kind", ["noise", "pair"])
@pytest.mark.parametrize("reverse", [False, True], ids=["restore", "reverse"])
def test_attribution_patching_of_a_group_is_each_examples_own(estimate, kind, reverse):
    """The estimates, the runs' values and the screen's exact cells (its top 2 and 1 drawn
    per component, each example its own) of each example of a group of 3."""
    adapter = make_adapter("llama")
    engine = Engine(adapter, Settings(ATP, window=3, reverse=reverse, batch_rows=24, estimate=estimate, verify=2,
                                      verify_sample=1, readouts=GRADIENT))
    group = spelled(jobs(adapter, kind, 3))
    assert len({engine.group_key(*job[:3]) for job in group}) == 1
    got = assert_group_is_each_alone(engine, group)
    for m in got:
        assert "ie_atp_kl" in m.restored and "p_restored" in m.restored
        assert int((~torch.isnan(torch.as_tensor(m.restored["p_restored"][..., 0]))).sum()) == 3 * 3  # hidden, mlp, attn


def test_attribution_patching_groups_without_readouts_and_counts_stacked_rows():
    adapter = make_adapter("gpt2")
    engine = Engine(adapter, Settings(("hidden", "mlp"), window=3, batch_rows=24, estimate="atp"))
    group = jobs(adapter, "noise", 3)
    assert_group_is_each_alone(engine, group)
    key = engine.group_key(*group[0][:3])
    assert key != Engine(adapter, Settings(("hidden", "mlp"), window=3)).group_key(*group[0][:3])
    assert engine.group_size(key) == 2  # 24 rows: 3 samples x 4 numbers each
    with_kl = Engine(adapter, Settings(("hidden",), batch_rows=24, estimate="atp", readouts=GRADIENT[1:2]))
    assert with_kl.group_size(key) == 1  # 3 x 5


@pytest.mark.parametrize("settings", [dict(readout="logprob,rank,kl,prob_any"),
                                      dict(estimate="atp*", readout="kl,prob_any", verify_top=2, verify_sample=1)],
                         ids=["readouts", "atp*"])
def test_a_run_of_several_lengths_writes_the_cube_of_one_at_a_time(tiny_model_dir, tmp_path, monkeypatch, settings):
    from nnct.methods.run import RunConfig, execute

    data = write_jsonl(tmp_path / "pairs.jsonl", MIXED_PAIRS[:5])
    sizes, real = [], Engine.trace_group

    def spy(self, group, on_batch=None):
        sizes.append(len(group))
        return real(self, group, on_batch)

    def run(out):
        cfg = RunConfig(data=str(data), out=str(out), method="patch", model=str(tiny_model_dir),
                        **{**SMALL, "batch_rows": 32, **settings})
        return execute(cfg).cube

    monkeypatch.setattr(Engine, "trace_group", spy)
    grouped = run(tmp_path / "grouped.nc")
    assert sizes == [2, 1, 2]
    monkeypatch.setattr(Engine, "group_size", lambda self, key: 1)
    alone = run(tmp_path / "alone.nc")
    assert sizes == [2, 1, 2] + [1] * 5
    for name, value in alone.data_vars.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(grouped[name].values, value.values, rtol=1e-5,
                                       atol=1e-6 if name.startswith("p_") else 5e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(grouped[name].values, value.values, err_msg=name)
