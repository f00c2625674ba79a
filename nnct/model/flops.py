"""What a forward pass computes: the FLOPs of its matrix multiplications, from the model's
sizes. `nnct bench` counts what each engine computes with it, and the cost model
(`exec.costs`) turns a pass's FLOPs into seconds."""

from __future__ import annotations

from dataclasses import dataclass

from .parts import Adapter


@dataclass(frozen=True)
class Shape:
    d: int
    d_q: int
    d_kv: int
    d_ff: int
    mlp_mats: int  # 3 for gated MLPs (Llama family), 2 otherwise
    vocab: int
    n_layers: int

    @classmethod
    def of(cls, a: Adapter) -> "Shape":
        gated = hasattr(a.hf.get_submodule(a.layout.layers)[0].get_submodule(a.layout.mlp), "gate_proj")
        return cls(a.d_model, a.d_q, a.d_kv, a.d_ff, 3 if gated else 2, a.vocab, a.n_layers)

    def forward(self, rows: int, n_tokens: int, start: int = 0, first: int = 0, logits_at: int = 1) -> float:
        """FLOPs of `rows` rows over positions [start, n_tokens) and layers [first, L):
        projections, MLP, attention scores and sums over the keys attended, and the
        unembedding at `logits_at` positions."""
        per_pos = 2 * self.d * (2 * self.d_q + 2 * self.d_kv) + 2 * self.mlp_mats * self.d * self.d_ff
        positions = n_tokens - start
        keys = sum(p + 1 for p in range(start, n_tokens))  # causal attention reads p+1 keys at p
        layer = positions * per_pos + 4 * self.d_q * keys
        return float(rows) * ((self.n_layers - first) * layer + logits_at * 2 * self.d * self.vocab)
