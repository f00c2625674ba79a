"""Parts: every supported family resolves its standard parts; others fail clearly, naming
what is missing."""

import pytest
import torch

from conftest import FAMILIES, make_adapter, make_hf_model, make_tokenizer
from nnct.errors import UnsupportedModel
from nnct.model import Adapter


@pytest.mark.parametrize("family", FAMILIES)
def test_supported_families_resolve(family):
    adapter = make_adapter(family)
    assert adapter.n_layers == 4 and adapter.d_model == 32
    assert len(adapter.parts.layers) == len(adapter.layer_modules()) == 4
    assert adapter.embedding_matrix().shape[1] == 32


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
