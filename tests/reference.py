"""A slow, independent reference for activation patching: plain PyTorch forward hooks, one
row per forward pass, no nnsight, no batching, no caches. It follows docs/method.md's wording
directly (noise on a span, or a counterfactual prompt; restore or reverse-patch one cell:
a whole site, one head's slice of the attention output projection's input, one head at every
position from the cell's on, or the hidden state with the MLP or attention outputs at its
token frozen in every later layer; p and logits of the answers, teacher-forced for answers
of several tokens) and shares nothing with nnct's engine but the model and its module paths."""

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


def _answer(a):
    return (a,) if isinstance(a, int) else tuple(a)


SITES = ("hidden", "mlp", "attn", "head")


class Reference:
    def __init__(self, adapter):
        self.hf = adapter.hf
        self.layout = adapter.layout
        self.n_layers = adapter.n_layers
        config = adapter.hf.config  # heads from the config, their width from the projection's input
        self.n_heads = getattr(config, "num_attention_heads", None) or config.n_head

    def _module(self, layer: int, site: str):
        block = self.hf.get_submodule(self.layout.layers)[layer]
        if site == "head":
            return block.get_submodule(self.layout.attn_out)
        return {"hidden": block, "mlp": getattr(block, self.layout.mlp), "attn": getattr(block, self.layout.attn)}[site]

    def logits(self, ids, span=None, noise=None, replace=False, writes=(), capture=False):
        """One row. writes: [(layer, site, token, value)]; a head's write is (layer, ("head",
        h), token, value [d_head]) into the attention output projection's input. Returns
        (logits [token, vocab] in float64, states {(layer, site): [token, d]})."""
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
            for site in SITES:
                mine = [(t, v, c[1] if isinstance(c, tuple) else None) for (l, c, t, v) in writes
                        if l == layer and (c[0] if isinstance(c, tuple) else c) == site]

                def change(value, mine=mine, key=(layer, site)):
                    if mine:
                        value = value.clone()
                        for t, v, h in mine:
                            if h is None:
                                value[0, t] = v
                            else:
                                d = value.shape[-1] // self.n_heads
                                value[0, t, h * d:(h + 1) * d] = v
                    if capture:
                        states[key] = value[0].clone()
                    return value

                module = self._module(layer, site)
                if site == "head":
                    hooks.append(module.register_forward_pre_hook(
                        lambda mod, args, change=change: (change(args[0]), *args[1:])))
                else:
                    hooks.append(module.register_forward_hook(
                        lambda mod, inp, out, change=change: _with_first(out, change(_first(out)))))
        try:
            with torch.no_grad():
                logits = self.hf(torch.tensor([list(ids)])).logits[0]
        finally:
            for h in hooks:
                h.remove()
        return logits.double(), states

    def measure(self, ids, answers, **run):
        """(p[target, alt], logit[target, alt]) after `ids`: p of every token of an answer,
        each given the prompt and the answer's earlier tokens; logits of the first tokens."""
        target, alt = _answer(answers[0]), _answer(answers[1])
        logits, _ = self.logits(ids, **run)
        last = logits[len(ids) - 1]
        p = []
        for answer in (target, alt):
            extended, _ = self.logits(list(ids) + list(answer[:-1]), **run)
            logp = sum(torch.log_softmax(extended[len(ids) - 1 + i].float(), -1)[tok].double() for i, tok in enumerate(answer))
            p.append(torch.exp(logp) if len(answer) > 1 else torch.softmax(last.float(), -1)[answer[0]].double())
        return torch.stack(p), last[[target[0], alt[0]]].float().double()

    def run(self, ids, answers, span=None, noise=None, replace=False, writes=(), capture=False):
        """p[target, alt] of first tokens (and states): the old one-call form."""
        logits, states = self.logits(ids, span, noise, replace, writes, capture)
        return torch.softmax(logits[-1].float(), -1).double()[[_answer(a)[0] for a in answers]], states

    def cell(self, ids, span, noise, answers, token, layer, component, window, replace=False, reverse=False, head=None):
        """docs/method.md's p_restored (or p_patched when reverse) of one cell, mean over samples."""
        return self._cell(ids, answers, token, layer, component, window, reverse,
                          [dict(span=span, noise=noise[s], replace=replace) for s in range(noise.shape[0])], head)[0]

    def pair_cell(self, clean_ids, corrupt_ids, answers, token, layer, component, window, reverse=False, head=None):
        """(p, logit) of one cell of a prompt pair: the corrupted prompt with the clean value
        written back (or, reverse, the clean prompt with the corrupted value)."""
        return self._cell(clean_ids, answers, token, layer, component, window, reverse, [dict(ids=corrupt_ids)], head)

    def _writes(self, ids, token, layer, component, window, head, source, base):
        """The cell's writes: the source run's values, and a severed path's base-run values.
        component: hidden, mlp, attn, head, head_all_pos, hidden-sever-mlp, hidden-sever-attn."""
        if component.startswith("hidden-sever-"):
            severed = component.removeprefix("hidden-sever-")
            return [(layer, "hidden", token, source[(layer, "hidden")][token])] + [
                (l, severed, token, base[(l, severed)][token]) for l in range(layer + 1, self.n_layers)]
        layers = [layer] if component == "hidden" else _window(layer, window, self.n_layers)
        if component in ("head", "head_all_pos"):
            d = source[(layer, "head")].shape[-1] // self.n_heads
            cols = slice(head * d, (head + 1) * d)
            positions = range(token, len(ids)) if component == "head_all_pos" else [token]
            return [(l, ("head", head), t, source[(l, "head")][t, cols]) for l in layers for t in positions]
        return [(l, component, token, source[(l, component)][token]) for l in layers]

    def _cell(self, ids, answers, token, layer, component, window, reverse, corruptions, head=None):
        p_total, l_total = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        for c in corruptions:
            corrupt_ids = c.pop("ids", ids)
            _, clean = self.logits(ids, capture=True)
            _, corrupt = self.logits(corrupt_ids, capture=True, **c)
            (source, states), base_ids, base = ((corrupt, clean), ids, {}) if reverse else ((clean, corrupt), corrupt_ids, c)
            writes = self._writes(ids, token, layer, component, window, head, source, states)
            p, logit = self.measure(base_ids, answers, writes=writes, **base)
            p_total += p
            l_total += logit
        return p_total / len(corruptions), l_total / len(corruptions)

    def clean_and_corrupt(self, ids, span, noise, answers, replace=False):
        p_clean, _ = self.measure(ids, answers)
        p_corrupt = sum(self.measure(ids, answers, span=span, noise=noise[s], replace=replace)[0]
                        for s in range(noise.shape[0])) / noise.shape[0]
        return p_clean, p_corrupt


def captured(model, module, ids, pre: bool = False) -> torch.Tensor:
    """[token, dim] float64 of the first row: `module`'s output (or, `pre`, its first input)
    in one plain forward of `model` over `ids`, read by a hook."""
    got = []
    if pre:
        handle = module.register_forward_pre_hook(lambda m, args: got.append(args[0][0].detach().double()))
    else:
        handle = module.register_forward_hook(lambda m, args, out: got.append(_first(out)[0].detach().double()))
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        handle.remove()
    return got[0]
