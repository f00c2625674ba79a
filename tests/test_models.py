"""The model: every supported family resolves its standard parts and every site; others
fail clearly; loading from a directory, and wrapping what a notebook holds."""

import pytest
import torch

from conftest import FAMILIES, make_adapter, make_hf_model, make_tokenizer
from nnct.errors import ConfigError, ModelNotFound, UnsupportedModel
from nnct.model import Adapter, SITES, load, wrap
from nnct.model.sites import in_forward_order


@pytest.mark.parametrize("family", FAMILIES)
def test_supported_families_resolve(family):
    adapter = make_adapter(family)
    assert adapter.n_layers == 4 and adapter.d_model == 32
    assert len(adapter.parts.layers) == len(adapter.layer_modules()) == 4
    assert adapter.embedding_matrix().shape[1] == 32
    for site in SITES.values():  # each site's module, found through the envoys and through torch
        for envoy, module in zip(adapter.parts.layers, adapter.layer_modules()):
            assert site.module(envoy, adapter.layout)._module is site.module(module, adapter.layout)


def test_sites_are_read_in_forward_order():
    """A decoder layer runs attention, then the MLP, then outputs the residual stream."""
    assert [s.name for s in in_forward_order(["hidden", "attn", "mlp"])] == ["attn", "mlp", "hidden"]
    assert [s.name for s in SITES.values() if s.residual] == ["hidden"]
    assert {s.name for s in SITES.values() if s.windowed} == {"mlp", "attn"}


class Odd(torch.nn.Module):
    """A decoder with a layer stack but renamed sublayers."""

    def __init__(self):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig(num_hidden_layers=2, hidden_size=8)
        self.config.model_type = "oddformer"
        block = torch.nn.Module()
        block.mixer, block.ffn = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(10, 8)
        self.model.layers = torch.nn.ModuleList([block, block])
        self.model.norm = torch.nn.LayerNorm(8)
        self.lm_head = torch.nn.Linear(8, 10)


def test_unknown_architecture_names_what_is_missing():
    with pytest.raises(UnsupportedModel) as info:
        Adapter(Odd(), make_tokenizer(), name="odd")
    message = str(info.value)
    assert "oddformer" in message
    assert "model.layers.0.self_attn" in message and "model.layers.0.mlp" in message


def test_renamed_module_of_a_known_family_fails_at_load():
    hf = make_hf_model("llama")
    del hf.model.norm
    with pytest.raises(UnsupportedModel, match="model.norm"):
        Adapter(hf, make_tokenizer(), name="broken")


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
