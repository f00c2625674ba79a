"""`nnct ablate` and `--readout` end to end on the tiny model: the cube's variables, its
values against the hook reference, and the analysis reading readouts and ablations by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import RECORDS, invoke, write_jsonl
from nnct.errors import ConfigError
from nnct.model.loading import load
from nnct.results.cube import metric_effects, open_cube
from nnct.analysis.summary import summarize
from reference import Reference


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, tiny_model_dir, data_file):
    out = tmp_path_factory.mktemp("ablate") / "zero.nc"
    result = invoke("ablate", "--model", tiny_model_dir, "--data", data_file, "--experiment", "subject-noctx",
                    "--window", "3", "--components", "hidden,mlp", "--readout", "kl,rank", "--max-examples", "2",
                    "--out", out)
    assert result.exit_code == 0, result.output
    return open_cube(out)


def test_ablation_cube_holds_ablated_beside_clean(ablated):
    assert {"p_ablated", "logit_ablated", "kl_ablated", "rank_ablated", "p_clean", "kl_clean"} <= set(ablated.data_vars)
    assert not any(name.endswith("_corrupt") or "restored" in name for name in ablated.data_vars)
    assert ablated.attrs["operation"] == "zero" and ablated.attrs["readouts"] == "kl,rank"
    assert ablated.kl_ablated.dims == ("example", "token", "layer", "component")  # KL has no answer axis
    np.testing.assert_allclose(ablated.kl_clean, 0.0, atol=1e-6)


def test_ablation_values_match_the_hook_reference(ablated, tiny_model_dir):
    """p_ablated of a hidden cell: the clean prompt with zeros written at (token, layer)."""
    adapter = load(str(tiny_model_dir))
    ref = Reference(adapter)
    ex = ablated.isel(example=0)
    n = int(ex.n_tokens)
    ids = [int(i) for i in ex.token_id.values[:n]]
    answers = [int(a) for a in ex.answer_id.values]
    for token, layer in ((1, 0), (n - 1, 2)):
        logits, _ = ref.logits(ids, writes=[(layer, "hidden", token, torch.zeros(adapter.d_model))])
        want = torch.softmax(logits[-1].float(), -1)[answers].double().numpy()
        got = ex.p_ablated.sel(token=token, layer=layer, component="hidden").values
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_ablation_effects_are_ablated_minus_clean(ablated):
    ie, te = metric_effects(ablated, "prob")
    want = (ablated.p_ablated - ablated.p_clean).sel(answer="target")
    np.testing.assert_allclose(ie.values, want.transpose(*ie.dims).values, atol=1e-7)
    np.testing.assert_allclose(te.values, 0.0)
    ie, _ = metric_effects(ablated, "kl")
    np.testing.assert_allclose(ie.values, (ablated.kl_ablated - ablated.kl_clean).transpose(*ie.dims).values, atol=1e-7)
    s = summarize(ablated, metrics=("prob", "kl", "rank"))
    assert set(s.metric.values) == {"prob", "kl", "rank"}


def test_ablate_summarize_and_plot_by_readout(tmp_path, ablated):
    path = tmp_path / "a.nc"
    ablated.to_netcdf(path)
    result = invoke("summarize", path, "--metric", "kl")
    assert result.exit_code == 0, result.output
    assert "metric kl" in result.output
    result = invoke("plot", path, "--metric", "kl", "-o", tmp_path / "fig")
    assert result.exit_code == 0, result.output
    result = invoke("summarize", path, "--metric", "klx")
    assert result.exit_code == 2 and "klx" in result.output


def test_mean_ablation_needs_its_reference(tmp_path, tiny_model_dir, data_file):
    reference = write_jsonl(tmp_path / "ref.jsonl", [{"prompt": r["prompt_wo_ctx"]} for r in RECORDS] + [{"id": "bad"}])
    out = tmp_path / "mean.nc"
    result = invoke("ablate", "--model", tiny_model_dir, "--data", data_file, "--experiment", "subject-noctx", "--op",
                    "mean", "--window", "3", "--components", "mlp", "--max-examples", "1", "--out", out)
    assert result.exit_code == 2 and "--reference" in result.output
    result = invoke("ablate", "--model", tiny_model_dir, "--data", data_file, "--experiment", "subject-noctx", "--op",
                    "mean", "--reference", reference, "--window", "3", "--components", "mlp", "--max-examples", "1",
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert "ref.jsonl:4: field 'prompt'" in result.output  # the bad reference line, reported and skipped
    ds = open_cube(out)
    assert ds.attrs["operation"] == "mean" and ds.attrs["reference"].endswith("ref.jsonl")
    # the references' lengths differ from one another: every example took the all-position mean
    assert ds.mean_by_position.dims == ("example",) and (ds.mean_by_position == 0).all()


def test_trace_with_readouts_and_remote_refusal(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "t.nc"
    result = invoke("trace", "--model", tiny_model_dir, "--data", data_file, "--experiment", "subject-noctx", "--samples",
                    "2", "--window", "3", "--components", "hidden", "--readout", "logprob,prob_any", "--max-examples", "1",
                    "--out", out)
    assert result.exit_code == 0, result.output
    ds = open_cube(out)
    assert {"logprob_clean", "logprob_corrupt", "logprob_restored", "prob_any_restored"} <= set(ds.data_vars)
    # log of a mean over samples is not the mean of logs; the clean run has one row
    np.testing.assert_allclose(np.exp(ds.logprob_clean), ds.p_clean, rtol=1e-5)
    assert (ds.prob_any_clean >= ds.p_clean - 1e-7).all()  # the answer's own spelling is among them
    result = invoke("trace", "--model", tiny_model_dir, "--data", data_file, "--readout", "nope", "--out", tmp_path / "x.nc")
    assert result.exit_code == 2 and "unknown readout" in result.output


def test_api_ablate_with_a_callable_readout_and_its_refusal_remotely(tiny_model_dir, data_file):
    import nnct

    ds = nnct.ablate(str(tiny_model_dir), str(data_file), experiment="subject-noctx", window=3, components="hidden",
                     max_examples=1, readout=[("top", lambda logits: logits.max(-1).values)])
    assert ds.attrs["readouts"] == "top" and "top_ablated" in ds
    assert (ds.top_ablated.isnull() | (ds.top_ablated >= ds.logit_ablated.max("answer") - 1e-4)).all()
    with pytest.raises(ConfigError, match="cannot run on a server"):
        nnct.trace(str(tiny_model_dir), str(data_file), remote="local", readout=[lambda logits: logits[:, 0]])


def test_attribution_cube_reads_its_readout_estimates(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "atp.nc"
    result = invoke("attribute", "--model", tiny_model_dir, "--data", data_file, "--experiment", "subject-noctx",
                    "--samples", "2", "--window", "3", "--components", "hidden", "--readout", "kl", "--max-examples", "1",
                    "--out", out)
    assert result.exit_code == 0, result.output
    ds = open_cube(out)
    ie, te = metric_effects(ds, "kl")
    np.testing.assert_allclose(ie.values, ds.ie_atp_kl.transpose(*ie.dims).values, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(te.values, (ds.kl_clean - ds.kl_corrupt).values, rtol=1e-6)
    result = invoke("attribute", "--model", tiny_model_dir, "--data", data_file, "--readout", "rank", "--out", tmp_path / "r.nc")
    assert result.exit_code == 2 and "no gradient" in result.output
