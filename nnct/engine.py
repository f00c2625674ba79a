"""Execution: a plan's forward passes as nnsight interventions, locally.

Every forward pass is one `_forward`: the prompt repeated over `rows`, optional noise on
the span's input embeddings, then, layer by layer in the order the model runs them, the
writes the plan asks for (one indexed assignment per (layer, component)), and the
probabilities of the two answers at the last position. Only the answer probabilities
leave the trace, except in the clean (and, for reverse patching, corrupted) run, whose
states are the values later written back.

An example costs one clean forward (1 row), one corrupted forward (S rows) and the
restored forwards, each of at most `batch_rows` rows (several cells per forward). The
source of every write is a state saved from one of the first two runs: the clean run for
restoring (METHOD.md's forward direction), the corrupted run of the same sample for
reverse patching, whose rows are then clean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .models import Adapter, first
from .plan import FORWARD_ORDER, Cell, batches, cells, patches


@dataclass(frozen=True)
class Settings:
    components: tuple[str, ...] = ("hidden", "mlp", "attn")
    samples: int = 10
    window: int = 10
    replace: bool = False
    reverse: bool = False
    batch_rows: int = 128


@dataclass(frozen=True)
class Prepared:
    """An example as the model sees it."""

    ids: tuple[int, ...]
    span: tuple[int, ...]  # corrupted token positions
    answers: tuple[int, int]  # target, alt token ids
    noise: torch.Tensor  # [sample, span token, d_model], float32, CPU


@dataclass
class Result:
    p_clean: np.ndarray  # [answer]
    p_corrupt: np.ndarray  # [answer]
    p_restored: np.ndarray  # [token, layer, component, answer]


States = dict[str, torch.Tensor]  # component -> [row, layer, token, d_model]


class Engine:
    def __init__(self, adapter: Adapter, settings: Settings):
        self.adapter = adapter
        self.settings = settings

    def _module(self, component: str, layer: int):
        a = self.adapter
        return {"hidden": a.layers, "mlp": a.mlp, "attn": a.attn}[component][layer]

    def _forward(self, ids, rows, answers, span=None, noise=None, writes=None, save=()):
        """One forward of `rows` copies of `ids` -> (probs [row, answer], states)."""
        a, writes = self.adapter, writes or {}
        replace = self.settings.replace
        x = torch.tensor(ids, device=a.device)[None].expand(rows, -1)
        saved: dict[str, list] = {c: [] for c in save}
        with torch.no_grad(), a.nn.trace(x, logits_to_keep=1):
            if noise is not None:
                emb = a.embed.output
                emb[:, span] = noise if replace else emb[:, span] + noise
            for layer in range(a.n_layers):
                for component in FORWARD_ORDER:
                    write = writes.get((layer, component))
                    if write is None and component not in saved:
                        continue
                    out = first(self._module(component, layer).output)
                    if write is not None:
                        out[write[0], write[1]] = write[2]
                    if component in saved:
                        saved[component].append(out.save())
            # The model's own logits, not the unembedding's output: Gemma 2/3 soft-cap after it.
            probs = a.nn.output.logits[:, -1].float().softmax(-1)[:, list(answers)].save()
        states = {c: torch.stack(v, dim=1) for c, v in saved.items()}
        return probs.double().cpu(), states

    def _writes(self, batch: list[Cell], source: States, reverse: bool):
        a, s = self.adapter, self.settings
        out = {}
        for (layer, component), p in patches(batch, s.samples, s.window, a.n_layers).items():
            src_rows = torch.tensor(p.samples) if reverse else torch.zeros(len(p.rows), dtype=torch.long)
            tokens = torch.tensor(p.tokens)
            values = source[component][src_rows, layer, tokens]
            out[(layer, component)] = (torch.tensor(p.rows, device=a.device), tokens.to(a.device), values)
        return out

    def trace(self, prep: Prepared, on_batch: Callable[[int], None] | None = None) -> Result:
        a, s = self.adapter, self.settings
        n_tokens, S = len(prep.ids), s.samples
        span = torch.tensor(prep.span, device=a.device)
        dtype = next(a.hf.parameters()).dtype
        noise = prep.noise.to(a.device, dtype)
        needed = s.components
        p_clean, clean = self._forward(prep.ids, 1, prep.answers, save=() if s.reverse else needed)
        p_corr, corrupt = self._forward(prep.ids, S, prep.answers, span, noise, save=needed if s.reverse else ())
        source = corrupt if s.reverse else clean

        p_restored = np.full((n_tokens, a.n_layers, len(s.components), 2), np.nan)
        comp_index = {c: i for i, c in enumerate(s.components)}
        for batch in batches(cells(n_tokens, a.n_layers, s.components), S, s.batch_rows):
            rows = len(batch) * S
            batch_noise = None if s.reverse else noise.repeat(len(batch), 1, 1)
            probs, _ = self._forward(prep.ids, rows, prep.answers, span, batch_noise, self._writes(batch, source, s.reverse))
            means = probs.view(len(batch), S, 2).mean(dim=1).numpy()
            for cell, mean in zip(batch, means):
                p_restored[cell.token, cell.layer, comp_index[cell.component]] = mean
            if on_batch:
                on_batch(len(batch))
        return Result(p_clean[0].numpy(), p_corr.mean(dim=0).numpy(), p_restored.astype(np.float32))
