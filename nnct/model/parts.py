"""One standard naming of the parts nnct patches, over many architectures.

Causal tracing touches eight parts of a decoder: the token embeddings (noise goes on their
output), the decoder layers (the residual stream after layer l is a layer's output), each
layer's attention, its output projection (whose input holds the heads' outputs side by
side, before the projection mixes them), its MLP and the MLP's down projection (whose input
is the MLP's hidden activation, the key a ROME edit writes against), the final norm and the
unembedding. Their module paths differ
per family; `LAYOUTS` maps each family once, and `Adapter.check` resolves every path when
the model loads, so a renamed module fails there with the missing path named, not deep
inside a trace. Some modules return tuples (attention everywhere, GPT-J's decoder layer);
`first` takes the tensor that is the part's output, and `Parts.layer_tuple` says what a
skipped layer must return in its place: found by one forward of one token when the model has
its weights (transformers changes this between releases: GPT-J's blocks returned tuples
before 5.24); a model without weights is taken to return the tensor, as every family does in
current transformers. Which value of a part an intervention reads or
writes is `sites`' business; this module only finds the modules.

`Parts` is the model as an engine sees it: envoys and sizes, no weights, no tokenizer, so
that an engine can travel into a remote nnsight session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import compat
from ..errors import UnsupportedModel

REMOTE = "remote"  # the device of a model loaded without weights: the server's


@dataclass(frozen=True)
class Layout:
    embed: str
    layers: str
    attn: str  # inside a layer
    mlp: str  # inside a layer
    attn_out: str  # the attention's output projection, inside a layer; its input is [.., head * d_head]
    mlp_down: str  # the MLP's down (output) projection, inside a layer: input [.., d_ff], output the MLP's
    norm: str
    unembed: str


LLAMA = Layout("model.embed_tokens", "model.layers", "self_attn", "mlp", "self_attn.o_proj", "mlp.down_proj", "model.norm",
               "lm_head")
GPT2 = Layout("transformer.wte", "transformer.h", "attn", "mlp", "attn.c_proj", "mlp.c_proj", "transformer.ln_f", "lm_head")
GPTJ = Layout("transformer.wte", "transformer.h", "attn", "mlp", "attn.out_proj", "mlp.fc_out", "transformer.ln_f", "lm_head")
NEOX = Layout("gpt_neox.embed_in", "gpt_neox.layers", "attention", "mlp", "attention.dense", "mlp.dense_4h_to_h",
              "gpt_neox.final_layer_norm", "lm_head")

LAYOUTS: dict[str, Layout] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "gemma": LLAMA,
    "gemma2": LLAMA,
    "gemma3_text": LLAMA,
    "gpt2": GPT2,
    "gptj": GPTJ,
    "gpt_neox": NEOX,
}


def first(output: Any) -> Any:
    """The tensor a module outputs (attention modules return (output, weights))."""
    return output[0] if isinstance(output, tuple) else output


def _config(config, *names):
    """The first of `names` the config sets (families name the same size differently)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def resolve(root: Any, path: str) -> Any:
    """The module (or envoy) at a dotted `path` under `root`."""
    node = root
    for name in path.split("."):
        node = getattr(node, name)
    return node


def _missing(module, layout: Layout, n_layers: int) -> list[str]:
    missing = []
    for path in (layout.embed, layout.layers, layout.norm, layout.unembed):
        try:
            module.get_submodule(path)
        except AttributeError:
            missing.append(path)
    if layout.layers not in missing:
        layers = module.get_submodule(layout.layers)
        if len(layers) != n_layers:
            missing.append(f"{layout.layers} ({len(layers)} layers, config says {n_layers})")
        for part in (layout.attn, layout.mlp, layout.attn_out, layout.mlp_down):
            try:
                layers[0].get_submodule(part)
            except AttributeError:
                missing.append(f"{layout.layers}.0.{part}")
    return missing


@dataclass(frozen=True)
class Parts:
    """The model as the engine sees it: the nnsight envoys of the parts it patches, their
    layout and the sizes it plans with, and nothing that holds weights, so that an engine
    can be sent whole into a remote nnsight session (only envoys travel by reference)."""

    nn: Any
    embed: Any
    layers: tuple  # envoys of the decoder layers
    layout: Layout
    n_layers: int
    d_model: int
    d_kv: int
    d_ff: int
    n_heads: int  # query heads (grouped-query attention shares key/value heads among them)
    d_head: int
    vocab: int
    device: str
    torch_dtype: Any
    layer_tuple: bool  # a decoder layer returns (hidden, ...) rather than hidden


class Adapter:
    """A loaded model behind nnct's standard parts, wrapped for nnsight tracing."""

    def __init__(self, hf_model, tokenizer, name: str, revision: str = "", device: str = "cpu", nn=None):
        """`nn`: the nnsight model over `hf_model` when it is built already (without weights,
        for a remote run, or by the user); otherwise `hf_model` is wrapped here."""
        from nnsight import TransformersModel

        config = hf_model.config
        self.model_type = config.model_type
        n_layers, d_model = _config(config, "num_hidden_layers", "n_layer"), _config(config, "hidden_size", "n_embd")
        if n_layers is None or d_model is None:
            raise UnsupportedModel(f"model type '{self.model_type}': its config names no layer count or hidden size")
        self.n_layers, self.d_model = int(n_layers), int(d_model)
        heads = int(_config(config, "num_attention_heads", "n_head") or 1)
        head_dim = int(_config(config, "head_dim") or self.d_model // heads)
        self.n_heads, self.d_head = heads, head_dim
        self.d_q = heads * head_dim
        self.d_kv = int(_config(config, "num_key_value_heads") or heads) * head_dim
        self.d_ff = int(_config(config, "intermediate_size", "n_inner") or 4 * self.d_model)
        self.vocab = int(_config(config, "vocab_size") or 0)
        self.layout = self.check(hf_model, self.model_type, self.n_layers)
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.revision = revision
        self.device = device
        self.torch_dtype = next(hf_model.parameters()).dtype
        self.dtype = str(self.torch_dtype).removeprefix("torch.")
        self.nn = nn if nn is not None else TransformersModel(hf_model, tokenizer=tokenizer)
        compat.check(self.nn, hf_model)
        self.parts = Parts(
            self.nn, resolve(self.nn, self.layout.embed), tuple(resolve(self.nn, self.layout.layers)), self.layout,
            self.n_layers, self.d_model, self.d_kv, self.d_ff, self.n_heads, self.d_head, self.vocab, self.device, self.torch_dtype,
            self._layer_tuple(hf_model),
        )

    @staticmethod
    def check(module, model_type: str, n_layers: int) -> Layout:
        """The layout whose every part resolves, or UnsupportedModel naming what is missing."""
        candidates = [LAYOUTS[model_type]] if model_type in LAYOUTS else list(dict.fromkeys(LAYOUTS.values()))
        gaps = {}
        for layout in candidates:
            missing = _missing(module, layout, n_layers)
            if not missing:
                return layout
            gaps[layout] = missing
        # the layout whose layer stack is there fits best, then the one missing least
        best = min(gaps.items(), key=lambda kv: (kv[0].layers in kv[1], len(kv[1])))[1]
        known = ", ".join(sorted(LAYOUTS))
        raise UnsupportedModel(
            f"model type '{model_type}' ({type(module).__name__}) lacks the parts nnct patches: "
            f"missing {', '.join(best)}; supported families: {known}"
        )

    def _layer_tuple(self, hf_model) -> bool:
        """Whether a decoder layer returns a tuple, seen in one forward of one token (a model
        on the meta device, without weights, is taken to return the tensor)."""
        weight = next(hf_model.parameters())
        if weight.is_meta:
            return False
        import torch

        seen = []
        hook = self.layer_modules()[0].register_forward_hook(lambda mod, inp, out: seen.append(isinstance(out, tuple)))
        try:
            with torch.no_grad():
                hf_model(torch.zeros(1, 1, dtype=torch.long, device=weight.device))
        finally:
            hook.remove()
        return seen[0]

    def layer_modules(self) -> list:
        """The decoder layers as torch modules (for plain-PyTorch code such as the bench's loop)."""
        return list(self.hf.get_submodule(self.layout.layers))

    def embedding_matrix(self):
        return self.hf.get_submodule(self.layout.embed).weight
