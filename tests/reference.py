"""A slow, independent reference for causal tracing: plain PyTorch forward hooks, one
sample per forward pass, no nnsight, no batching. It follows METHOD.md's wording directly
and shares nothing with nnct's engine but the model and its module paths."""

from __future__ import annotations

import math

import torch


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, value):
    return (value, *out[1:]) if isinstance(out, tuple) else value


def _window(layer: int, window: int, n_layers: int) -> list[int]:
    lo = max(0, layer - math.floor(window / 2))
    hi = min(n_layers, layer + math.ceil(window / 2))
    return list(range(lo, hi))


class Reference:
    def __init__(self, adapter):
        self.hf = adapter.hf
        self.layout = adapter.layout
        self.n_layers = adapter.n_layers

    def _module(self, layer: int, component: str):
        block = self.hf.get_submodule(self.layout.layers)[layer]
        return {"hidden": block, "mlp": getattr(block, self.layout.mlp), "attn": getattr(block, self.layout.attn)}[component]

    def run(self, ids, answers, span=None, noise=None, replace=False, writes=(), capture=False):
        """One row. writes: [(layer, component, token, value)]. Returns (probs[2], states)."""
        hooks, states = [], {}
        embed = self.hf.get_submodule(self.layout.embed)
        if noise is not None:
            def add_noise(mod, inp, out):
                out = out.clone()
                for k, t in enumerate(span):
                    out[0, t] = noise[k] if replace else out[0, t] + noise[k]
                return out
            hooks.append(embed.register_forward_hook(add_noise))
        for layer in range(self.n_layers):
            for component in ("hidden", "mlp", "attn"):
                mine = [(t, v) for (l, c, t, v) in writes if l == layer and c == component]

                def hook(mod, inp, out, mine=mine, key=(layer, component)):
                    value = _first(out)
                    if mine:
                        value = value.clone()
                        for t, v in mine:
                            value[0, t] = v
                    if capture:
                        states[key] = value[0].clone()
                    return _with_first(out, value) if mine else None
                hooks.append(self._module(layer, component).register_forward_hook(hook))
        try:
            with torch.no_grad():
                logits = self.hf(torch.tensor([ids])).logits[0, -1]
        finally:
            for h in hooks:
                h.remove()
        return torch.softmax(logits.double(), -1)[list(answers)], states

    def cell(self, ids, span, noise, answers, token, layer, component, window, replace=False, reverse=False):
        """METHOD.md's p_restored (or p_patched when reverse) of one cell, mean over samples."""
        layers = [layer] if component == "hidden" else _window(layer, window, self.n_layers)
        _, clean = self.run(ids, answers, capture=True)
        total = torch.zeros(2, dtype=torch.float64)
        for s in range(noise.shape[0]):
            if reverse:
                _, corrupt = self.run(ids, answers, span, noise[s], replace, capture=True)
                writes = [(l, component, token, corrupt[(l, component)][token]) for l in layers]
                p, _ = self.run(ids, answers, writes=writes)
            else:
                writes = [(l, component, token, clean[(l, component)][token]) for l in layers]
                p, _ = self.run(ids, answers, span, noise[s], replace, writes=writes)
            total += p
        return total / noise.shape[0]

    def clean_and_corrupt(self, ids, span, noise, answers, replace=False):
        p_clean, _ = self.run(ids, answers)
        p_corrupt = sum(self.run(ids, answers, span, noise[s], replace)[0] for s in range(noise.shape[0])) / noise.shape[0]
        return p_clean, p_corrupt
