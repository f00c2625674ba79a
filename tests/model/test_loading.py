"""Loading: errors name what was asked for, a local directory loads, and what a notebook
holds (a transformers model with its tokenizer, an nnsight model) is wrapped as it is."""

import pytest

from conftest import make_hf_model, make_tokenizer
from nnct.errors import ConfigError, ModelNotFound
from nnct.model import load, wrap


def test_load_errors(tmp_path):
    with pytest.raises(ModelNotFound, match="there is no directory"):
        load(str(tmp_path / "missing-dir"))
    with pytest.raises(ConfigError, match="dtype"):
        load("smollm2-135m", dtype="int8")
    with pytest.raises(ModelNotFound):
        load(str(tmp_path))  # a directory without a model in it


def test_load_local_directory(tiny_model_dir):
    adapter = load(str(tiny_model_dir), dtype="bfloat16")
    assert adapter.model_type == "llama" and adapter.dtype == "bfloat16" and adapter.revision.startswith("sha256:")


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


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_a_name_that_is_nothing_here_fails_within_seconds(monkeypatch, tmp_path, offline):
    """Neither the embedded name, a directory nor a reachable hub id: the error names all
    three, in full, after seconds (transformers alone retries for about a minute)."""
    import time

    import huggingface_hub.constants as hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # a closed port: refused at once
    started = time.perf_counter()
    with pytest.raises(ModelNotFound) as info:
        load("models/nope")
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert "not the embedded model (smollm2-135m)" in message and f"none at {tmp_path}/models/nope" in message
    assert ("HF_HUB_OFFLINE is set" if offline else "cannot be reached") in message


def test_a_directory_that_is_no_model_gets_the_whole_message(tmp_path):
    with pytest.raises(ModelNotFound) as info:
        load(str(tmp_path))
    message = str(info.value)
    assert "a local directory, but not a model nnct can load" in message
    assert message.rstrip().endswith((".", ")")) and "\n" not in message  # whole, on one line
