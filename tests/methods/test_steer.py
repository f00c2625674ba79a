"""`nnct steer` and `nnct.steer` on the tiny llama: alpha 0 is the unsteered run, bad lines
are reported and skipped, the command runs end to end and reuses its vectors, a server's
request (nnsight's local simulation) gives the same numbers, and vectors of another model are
refused. The numbers themselves are checked against plain PyTorch in tests/exec/test_steer_traces.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import invoke, make_adapter, write_jsonl
from nnct.errors import ConfigError
from nnct.methods import steer as lib
from nnct.results import steering as steering_file

CONTRAST = [
    {"positive": "Paris is big", "negative": "Rome is small"},
    {"positive": "the red city", "negative": "the blue city"},
    {"positive": "one two three"},  # no negative: reported
    {"positive": "France speak French", "negative": "Italy speak English"},
]
PROMPTS = [
    {"id": "eiffel", "prompt": "the Eiffel Tower is located in", "target": "Paris", "alt": "Rome"},
    {"id": "beats", "prompt": "Beats Music is owned by", "target": "Apple", "alt": "Amazon"},
    {"id": "same", "prompt": "the city of", "target": "Paris", "alt": "Paris"},  # one token: reported
    {"id": "vinson", "prompt": "Vinson Massif is part of", "target": "Antarctica"},  # no alt: reported
]


@pytest.fixture(scope="module")
def adapter():
    return make_adapter("llama")


def test_alpha_zero_equals_the_unsteered_run_and_bad_lines_are_skipped(adapter):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = lib_api_steer(adapter, layers="0-3", alphas=[-2, 0, 2], readout="kl,logprob", new_tokens=2)
    skipped = sorted(str(w.message) for w in caught if "skipped" in str(w.message))
    assert len(skipped) == 3
    assert any("<contrast>:3: field 'negative'" in s for s in skipped)
    assert any("<prompts>:3: field 'alt'" in s for s in skipped) and any("<prompts>:4: field 'alt'" in s for s in skipped)
    assert list(ds.prompt.values) == ["eiffel", "beats"] and ds.attrs["n_pairs"] == 3
    assert ds.p_steered.dims == ("prompt", "layer", "alpha", "answer") and ds.kl_steered.dims == ("prompt", "layer", "alpha")
    zero = ds.sel(alpha=0.0)
    np.testing.assert_allclose(zero.p_steered, ds.p_clean.broadcast_like(zero.p_steered), rtol=0, atol=1e-6)
    np.testing.assert_allclose(zero.kl_steered, 0.0, atol=1e-5)
    assert (zero.continuation == ds.continuation_clean).all()
    # the unsteered probabilities are the plain model's
    for pid, text in zip(ds.prompt.values, ds.prompt_text.values):
        ids = adapter.tokenizer(str(text))["input_ids"]
        with torch.no_grad():
            p = adapter.hf(torch.tensor([ids])).logits[0, -1].softmax(-1)[ds.answer_id.sel(prompt=pid).values]
        np.testing.assert_allclose(ds.p_clean.sel(prompt=pid), p.numpy(), rtol=1e-5, atol=1e-8)
    assert np.abs(ds.p_steered.sel(alpha=2.0) - ds.p_clean).max() > 1e-6  # steering moves something


def lib_api_steer(adapter, **kw):
    import nnct

    return nnct.steer(adapter, CONTRAST, PROMPTS, **kw)


def test_the_command_runs_end_to_end_and_reuses_its_vectors(tmp_path, tiny_model_dir):
    contrast, prompts = write_jsonl(tmp_path / "c.jsonl", CONTRAST), write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    out, figure = tmp_path / "sweep.nc", tmp_path / "effect.png"
    first = invoke("steer", "--model", tiny_model_dir, "--contrast", contrast, "--prompts", prompts, "--layers", "0-3:2",
                   "--alphas=-4,0,4", "--readout", "rank", "--new-tokens", 2, "--batch-size", 3, "--out", out,
                   "--figure", figure)
    assert first.exit_code == 0, first.output
    assert f"skipped {contrast}:3: field 'negative'" in first.output and f"{prompts}:3: field 'alt'" in first.output
    vectors = tmp_path / "sweep.vectors.nc"
    assert vectors.exists() and figure.stat().st_size > 0
    ds = steering_file.read(out)
    assert list(ds.layer.values) == [0, 2] and list(ds.alpha.values) == [-4.0, 0.0, 4.0]
    assert "rank_steered" in ds and ds.continuation.shape == (2, 2, 3) and ds.attrs["readouts"] == "rank"

    again = invoke("steer", "--model", tiny_model_dir, "--vectors", vectors, "--prompts", prompts, "--layers", "0,2",
                   "--alphas=-4,0,4", "--new-tokens", 0, "--from-last", "--out", tmp_path / "last.nc")
    assert again.exit_code == 0, again.output
    last = steering_file.read(tmp_path / "last.nc")
    assert last.attrs["vectors"] == str(vectors) and last.attrs["from_last"] == 1 and "continuation" not in last
    np.testing.assert_allclose(last.vector_norm, ds.vector_norm)
    np.testing.assert_allclose(last.p_clean, ds.p_clean, rtol=1e-6)
    assert not np.allclose(last.p_steered.sel(alpha=4.0), ds.p_steered.sel(alpha=4.0))  # fewer positions steered

    both = invoke("steer", "--model", tiny_model_dir, "--vectors", vectors, "--contrast", contrast, "--prompts", prompts,
                  "--out", tmp_path / "x.nc")
    assert both.exit_code == 2 and "one of the two" in both.output


def test_a_request_gives_the_same_numbers(adapter):
    settings = dict(layers=[1, 3], alphas=[-3, 3], readout="kl", new_tokens=2, batch_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = lib_api_steer(adapter, **settings)
        there = lib_api_steer(adapter, remote="local", **settings)
    assert there.attrs["backend"] == "nnsight remote=local"
    for name in ("p_steered", "kl_steered", "p_clean"):
        np.testing.assert_allclose(there[name], here[name], rtol=1e-5, atol=1e-7)
    assert (there.continuation == here.continuation).all()


def test_vectors_of_another_model_are_refused(tmp_path, adapter):
    path = tmp_path / "v.nc"
    steering_file.write(steering_file.vectors_dataset(np.zeros((4, 16)), {"model": "other"}), path)
    with pytest.raises(ConfigError, match="width 16"):
        steering_file.read_vectors(path, adapter.d_model)
    steering_file.write(steering_file.vectors_dataset(np.zeros((4, 32)), {"model": "other", "model_revision": "abc"}), path)
    with pytest.raises(ConfigError, match="not of these weights"):
        steering_file.read_vectors(path, 32, revision="def")


def test_layers_and_alphas_parse():
    assert lib.parse_layers("0-29:3") == tuple(range(0, 30, 3))
    assert lib.parse_layers("1,4-6,4") == (1, 4, 5, 6)
    assert lib.parse_layers("all") is None and lib.parse_layers([2, 1]) == (2, 1)
    assert lib.parse_alphas("-8,0,8") == (-8.0, 0.0, 8.0)
    for bad in ("a", "1:2", "3-"):
        with pytest.raises(ConfigError):
            lib.parse_layers(bad)
    with pytest.raises(ConfigError):
        lib.parse_alphas("1,x")
