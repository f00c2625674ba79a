"""The graph of edge attribution: its nodes, their edges, and where a trace reads and writes them.

docs/method.md ("Edge attribution and circuits") defines it. **Nodes** write into the residual
stream. They are the input embedding (what enters layer 0), every attention head, and every
MLP. A head's output is its slice of the output projection's input, times that slice of the
projection's weight. **Destinations** read from the stream. They are each head's query, key
and value inputs, each MLP's input, and the logits (the final residual, before the final
norm). An edge u -> v joins a node to a later destination.

A destination's input is the residual stream *as that destination alone sees it*. For a
head's query, it is the residual before the layer's norm, passed through the norm and that
head's rows of the query projection. Patching one edge changes one head's query and nothing
else. With grouped-query attention, a key or value destination is a key/value head, shared by
its group of query heads.

The families differ in how a layer reads its queries, keys and values (`Reads`):
- Llama, Mistral and Qwen2: separate projections and an RMS norm;
- GPT-2: one fused projection (a Conv1D, [q | k | v] in columns) and a layer norm.

Families with parallel blocks (GPT-J, GPT-NeoX) or with norms after the blocks (Gemma 2 and
3) raise `UnsupportedModel`. Their blocks read one shared norm's output, or write a normed
output, so a head's write into the stream is no longer its own vector.

A trace reads and writes every tensor here, so one piece of code serves a local model and a
model on a server. `norm` and `norm_vjp` are the two norms' forward pass and vector-Jacobian
product in closed form (the families' own formulas, float32 inside as theirs are).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UnsupportedModel
from .parts import Parts, first, resolve


@dataclass(frozen=True)
class Reads:
    """How a family's layer reads its attention and MLP inputs from the residual stream."""

    ln_attn: str  # the norm before attention, inside a layer
    ln_mlp: str  # the norm before the MLP, inside a layer
    qkv: tuple[str, ...]  # the q, k, v projections inside a layer; one name: fused, [q | k | v] in columns
    conv1d: bool  # weights stored [in, out] (GPT-2's Conv1D), not [out, in]
    rms: bool  # RMS norm (no mean, no bias), else layer norm


LLAMA = Reads("input_layernorm", "post_attention_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
              conv1d=False, rms=True)
GPT2 = Reads("ln_1", "ln_2", ("attn.c_attn",), conv1d=True, rms=False)
READS = {"llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "gpt2": GPT2}


def reads_of(model_type: str) -> Reads:
    if model_type not in READS:
        raise UnsupportedModel(f"edge attribution does not support model type '{model_type}' (supported: "
                               f"{', '.join(sorted(READS))}): its blocks must read their own norm and write the residual stream")
    return READS[model_type]


@dataclass(frozen=True)
class Graph:
    """Nodes and destinations of a model, in forward order, and which edges exist.

    Nodes: `emb`, then per layer l its heads `a<l>.h<h>` and its MLP `m<l>`. Destinations: per
    layer l the queries `a<l>.h<h>.q`, then keys `a<l>.g<g>.k` and values `a<l>.g<g>.v` per
    key/value head g, then `m<l>`; last `logits`. `nodes` and `dests` list (label, kind,
    layer, head) each; `edges` [node, dest] says which edges exist."""

    n_layers: int
    n_heads: int
    n_kv: int

    def __post_init__(self):
        # made once here (no functools.cached_property: its lock cannot travel to a server)
        object.__setattr__(self, "nodes", self._nodes())
        object.__setattr__(self, "dests", self._dests())
        object.__setattr__(self, "edges", self._edges())

    @property
    def per_layer(self) -> int:
        return self.n_heads + 1

    @property
    def n_nodes(self) -> int:
        return 1 + self.n_layers * self.per_layer

    @property
    def dests_per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv + 1

    @property
    def n_dests(self) -> int:
        return self.n_layers * self.dests_per_layer + 1

    def node(self, layer: int, head: int | None) -> int:
        """A node's index: a head's, or the MLP's (head None)."""
        return 1 + layer * self.per_layer + (self.n_heads if head is None else head)

    def dest(self, layer: int, kind: str, index: int = 0) -> int:
        """A destination's index: kind q (index: head), k or v (index: key/value head), mlp."""
        base = layer * self.dests_per_layer
        return base + {"q": index, "k": self.n_heads + index, "v": self.n_heads + self.n_kv + index,
                       "mlp": self.n_heads + 2 * self.n_kv}[kind]

    def _nodes(self) -> list[tuple[str, str, int, int]]:
        """(label, kind, layer, head) per node; layer -1 for the embedding, head -1 off heads."""
        out = [("emb", "emb", -1, -1)]
        for layer in range(self.n_layers):
            out += [(f"a{layer}.h{h}", "head", layer, h) for h in range(self.n_heads)]
            out.append((f"m{layer}", "mlp", layer, -1))
        return out

    def _dests(self) -> list[tuple[str, str, int, int]]:
        """(label, kind, layer, head) per destination; head: the query head, or the key/value head."""
        out = []
        for layer in range(self.n_layers):
            out += [(f"a{layer}.h{h}.q", "q", layer, h) for h in range(self.n_heads)]
            out += [(f"a{layer}.g{g}.k", "k", layer, g) for g in range(self.n_kv)]
            out += [(f"a{layer}.g{g}.v", "v", layer, g) for g in range(self.n_kv)]
            out.append((f"m{layer}", "mlp", layer, -1))
        out.append(("logits", "logits", self.n_layers, -1))
        return out

    def upstream(self, dest: int) -> int:
        """How many nodes (the first ones, in forward order) feed destination `dest`: the
        embedding and every earlier layer's nodes; an MLP also its own layer's heads."""
        _, kind, layer, _ = self.dests[dest]
        return 1 + layer * self.per_layer + (self.n_heads if kind == "mlp" else 0)

    def _edges(self) -> np.ndarray:
        """[node, dest] bool: whether the edge exists (`edges`)."""
        out = np.zeros((self.n_nodes, self.n_dests), dtype=bool)
        for v in range(self.n_dests):
            out[:self.upstream(v), v] = True
        return out

    def feeds(self) -> np.ndarray:
        """[dest, node] bool: the node each destination is an input of. A query feeds its head,
        a key or value every head of its group, an MLP input its MLP; the logits none."""
        out = np.zeros((self.n_dests, self.n_nodes), dtype=bool)
        group = self.n_heads // self.n_kv
        for d, (_, kind, layer, head) in enumerate(self.dests):
            if kind == "q":
                out[d, self.node(layer, head)] = True
            elif kind in ("k", "v"):
                out[d, [self.node(layer, h) for h in range(head * group, (head + 1) * group)]] = True
            elif kind == "mlp":
                out[d, self.node(layer, None)] = True
        return out

    def prune(self, keep: np.ndarray) -> np.ndarray:
        """The edges of `keep` ([node, dest] bool) that lie on a path from the embedding to the
        logits through edges of `keep`; the rest are dropped (EAP-IG's `Graph.prune`).

        An edge u -> v stays when u is reached from the embedding and v reaches the logits.
        A node is reached when a kept edge from a reached node enters one of its inputs (the
        embedding is); a destination reaches the logits when a node it feeds sends a kept edge
        to a destination that does (the logits do). One sweep forward, one backward: every
        edge into a node's inputs leaves an earlier node."""
        keep = np.asarray(keep, dtype=bool) & self.edges
        feeds = self.feeds()
        reached = np.zeros(self.n_nodes, dtype=bool)
        reached[0] = True
        for u in range(1, self.n_nodes):
            reached[u] = keep[reached][:, feeds[:, u]].any()
        live = np.zeros(self.n_dests, dtype=bool)
        live[-1] = True
        for u in range(self.n_nodes - 1, -1, -1):
            if keep[u, live].any():
                live |= feeds[:, u]
        return keep & reached[:, None] & live[None, :]


def graph_of(adapter) -> tuple[Graph, "Access"]:
    """The graph of a loaded model (an `Adapter`) and its `Access`; UnsupportedModel for a
    family whose blocks do not read and write the stream as the graph needs."""
    parts = adapter.parts
    return Graph(parts.n_layers, parts.n_heads, parts.d_kv // parts.d_head), Access(parts, reads_of(adapter.model_type))


# -- the norms ---------------------------------------------------------------------------------

def norm(x, module, rms: bool):
    """The family's norm of `x` with `module`'s weights, as the families compute it: an RMS
    norm in float32, rounded to x's dtype, then times its weight; a layer norm with its
    weight and bias applied in float32 and rounded once."""
    h = x.float()
    if not rms:
        h = h - h.mean(-1, keepdim=True)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + _eps(module))
    if rms:
        return module.weight * h.to(x.dtype)
    return (h * module.weight.float() + module.bias.float()).to(x.dtype)


def norm_vjp(x, cotangent, module, rms: bool):
    """d(cotangent . norm(x)) / dx at `x`, per position, in float32: the gradient a
    destination's cotangent at the norm's output sends back to the residual stream."""
    h = x.float()
    if not rms:
        h = h - h.mean(-1, keepdim=True)
    scale = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + _eps(module))
    normed = h * scale
    z = cotangent.float() * module.weight.float()
    if not rms:
        z = z - z.mean(-1, keepdim=True)
    return scale * (z - normed * (z * normed).mean(-1, keepdim=True))


def _eps(module) -> float:
    for name in ("variance_epsilon", "eps"):  # Llama's RMS norm, torch's LayerNorm
        value = getattr(module, name, None)
        if value is not None:
            return float(value)
    return 1e-5


# -- reads and writes in a trace -----------------------------------------------------------------

class Access:
    """Where a trace meets the graph in one model (its `Parts` and `Reads`). Every method is
    called inside an nnsight trace, in forward order within a layer."""

    def __init__(self, parts: Parts, reads: Reads):
        self.parts, self.r = parts, reads
        self.n_kv = parts.d_kv // parts.d_head

    def _layer(self, layer: int):
        return self.parts.layers[layer]

    def residual_in(self, layer: int):
        """The residual stream entering `layer` [row, token, d_model]."""
        return self._layer(layer).input

    def projections(self, layer: int) -> list:
        """The q/k/v projection envoys of `layer` (one when fused)."""
        return [resolve(self._layer(layer), p) for p in self.r.qkv]

    def ln_attn(self, layer: int):
        return resolve(self._layer(layer), self.r.ln_attn)

    def ln_mlp(self, layer: int):
        return resolve(self._layer(layer), self.r.ln_mlp)

    def mlp(self, layer: int):
        return resolve(self._layer(layer), self.parts.layout.mlp)

    def attn_out(self, layer: int):
        return resolve(self._layer(layer), self.parts.layout.attn_out)

    def final_norm(self):
        return resolve(self.parts.nn, self.parts.layout.norm)

    # The weights, [out, in] whatever the family stores.
    def _w(self, module):
        return module.weight.T if self.r.conv1d else module.weight

    def qkv_weights(self, layer: int) -> tuple:
        """(W_q [H*dh, d], W_k [K*dh, d], W_v [K*dh, d]) and their biases (None if absent)."""
        mods = self.projections(layer)
        if len(mods) == 3:
            return tuple(self._w(m) for m in mods), tuple(getattr(m, "bias", None) for m in mods)
        w, b = self._w(mods[0]), getattr(mods[0], "bias", None)
        sizes = [self.parts.n_heads * self.parts.d_head, self.parts.d_kv, self.parts.d_kv]
        return tuple(w.split(sizes, 0)), tuple([None] * 3 if b is None else b.split(sizes, 0))

    def head_outputs(self, layer: int, z):
        """Each head's write into the residual stream [row, head, token, d_model] from the
        output projection's input `z` [row, token, head * d_head] (its bias is no head's)."""
        H, dh = self.parts.n_heads, self.parts.d_head
        w = self._w(self.attn_out(layer)).unflatten(1, (H, dh))  # [d, head, d_head]
        return torch.einsum("rthe,dhe->rhtd", z.unflatten(-1, (H, dh)), w.to(z.dtype))

    def qkv_outputs(self, layer: int) -> list:
        """The projections' outputs, in forward order (read or written)."""
        return [first(m.output) for m in self.projections(layer)]

    def qkv_cotangents(self, layer: int, grads: list):
        """[row, dest, token, d_model] float32: the cotangent at the attention norm's output of
        each q/k/v destination of `layer`, from the gradients at the projections' outputs."""
        (wq, wk, wv), _ = self.qkv_weights(layer)
        g = grads[0] if len(grads) == 1 else torch.cat(grads, -1)
        H, K, dh = self.parts.n_heads, self.n_kv, self.parts.d_head
        gq, gk, gv = g.split([H * dh, K * dh, K * dh], -1)
        out = [torch.einsum("rthe,hed->rhtd", gx.float().unflatten(-1, (n, dh)), w.float().unflatten(0, (n, dh)))
               for gx, w, n in ((gq, wq, H), (gk, wk, K), (gv, wv, K))]
        return torch.cat(out, 1)

    def write_qkv(self, layer: int, normed, which):
        """Set the projections' outputs of `layer` for the q/k/v destinations `which` ([dest]
        bool, the layer's q, k, v destinations in order) from each one's own normed input
        `normed` [row, dest, token, d_model]; the others keep what the model computed."""
        (wq, wk, wv), (bq, bk, bv) = self.qkv_weights(layer)
        H, K, dh = self.parts.n_heads, self.n_kv, self.parts.d_head
        outs = self.qkv_outputs(layer)
        fused = len(outs) == 1
        offset, start = 0, 0
        for w, b, n, out in ((wq, bq, H, outs[0]), (wk, bk, K, outs[0] if fused else outs[1]),
                             (wv, bv, K, outs[0] if fused else outs[2])):
            for h in range(n):
                if bool(which[start + h]):
                    rows = slice(h * dh, (h + 1) * dh)
                    y = normed[:, start + h] @ w[rows].T.to(normed.dtype)
                    cols = slice(offset + h * dh, offset + (h + 1) * dh)
                    out[..., cols] = y if b is None else y + b[rows]
            offset, start = offset + n * dh if fused else 0, start + n

