"""Loading: errors name what was asked for, a local directory loads, and what a notebook
holds (a transformers model with its tokenizer, an nnsight model) is wrapped as it is."""

import pytest

from conftest import make_hf_model, make_tokenizer
from nnct.errors import ConfigError, ModelNotFound
from nnct.model import load, wrap


def test_load_errors(tmp_path):
    with pytest.raises(ModelNotFound, match="no such model directory"):
        load(str(tmp_path / "missing-dir"))
    with pytest.raises(ConfigError, match="dtype"):
        load("smollm2-135m", dtype="int8")
    with pytest.raises(ModelNotFound):
        load(str(tmp_path))  # a directory without a model in it


def test_load_local_directory(tiny_model_dir):
    adapter = load(str(tiny_model_dir), dtype="bfloat16")
    assert adapter.model_type == "llama" and adapter.dtype == "bfloat16" and adapter.revision == "local"


def test_wrap_takes_what_a_notebook_holds():
    from nnsight import TransformersModel

    hf, tok = make_hf_model("gpt2"), make_tokenizer()
    adapter = wrap(hf, tok)
    assert adapter.hf is hf and adapter.tokenizer is tok and adapter.device == "cpu"
    nn = TransformersModel(hf, tokenizer=tok)
    assert wrap(nn).nn is nn and wrap(nn).hf is hf
    assert wrap(adapter) is adapter
    with pytest.raises(ConfigError, match="tokenizer"):
        wrap(hf)


def test_wrap_dispatches_a_lazily_built_nnsight_model(tiny_model_dir):
    from nnsight import TransformersModel

    lazy = TransformersModel(str(tiny_model_dir), task="text-generation", tokenizer=make_tokenizer())
    assert lazy.dispatched is False
    adapter = wrap(lazy)
    assert lazy.dispatched and next(adapter.hf.parameters()).device.type == "cpu"
