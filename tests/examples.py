"""Hand-made examples on the tiny models, shared by the engine, bench and remote tests: one
prompt, its noised span, a counterfactual prompt that differs there, and the clean top two
tokens as answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nnct.exec.engine import Engine, Settings
from nnct.interventions.corruption import RunInput, noise_input, prompt_input

IDS = (0, 8, 25, 26, 10, 11, 8, 23, 9)  # <s> the Eiffel Tower is in the Paris of
SPAN = (2, 3)
# The same prompt with "Eiffel Tower" -> "Vinson Massif": positions 2 and 3 differ.
CORRUPT_IDS = (0, 8, 29, 30, 10, 11, 8, 23, 9)
TOL = 2e-6
# Cells computed with the same arithmetic in other rows or batches: a matmul may sum in
# another order per batch layout, so a probability may move by a few float32 ulps per layer
# (2.4e-7 seen on some CPUs); 64 ulps of 1.0 still tells a severed cell from an unsevered one.
FLOAT32_ROUNDING = {"rtol": 0.0, "atol": 64 * float(np.finfo(np.float32).eps)}


@dataclass
class Example:
    ids: tuple
    corrupt: RunInput
    answers: tuple
    noise: torch.Tensor | None = None

    def trace(self, adapter, **settings):
        return Engine(adapter, Settings(**settings)).trace(self.ids, self.corrupt, self.answers)


def top_two(adapter, ids=IDS):
    with torch.no_grad():
        top = adapter.hf(torch.tensor([ids])).logits[0, -1].topk(2).indices
    return (int(top[0]),), (int(top[1]),)


def prepared(adapter, samples=3, scale=3.0, seed=0, replace=False) -> Example:
    """Noise of `scale` x the embeddings' std; the answers are the clean top two tokens."""
    g = torch.Generator().manual_seed(seed)
    std = float(adapter.embedding_matrix().detach().std())
    noise = torch.randn(samples, len(SPAN), adapter.d_model, generator=g) * scale * std
    return Example(IDS, noise_input(IDS, SPAN, noise, replace), top_two(adapter), noise)


def pair(adapter, corrupt_ids=CORRUPT_IDS) -> Example:
    return Example(IDS, prompt_input(corrupt_ids), top_two(adapter))


# Prompt pairs of a run in words of the tiny vocabulary: p3 is shorter than the others, so a
# run of them groups p1-p2, runs p3 alone, and groups the rest.
MIXED_PAIRS = [
    {"id": "p1", "clean": "the Eiffel Tower is in the city of", "corrupt": "the Vinson Massif is in the city of",
     "target": "Paris", "alt": "Rome"},
    {"id": "p2", "clean": "the Beats Music is in the city of", "corrupt": "the Vinson Massif is in the city of",
     "target": "Rome", "alt": "Paris"},
    {"id": "p3", "clean": "Beats Music is owned by", "corrupt": "Beats Music was owned by", "target": "Apple", "alt": "Amazon"},
    {"id": "p4", "clean": "the Eiffel Tower is in the capital of", "corrupt": "the Apple Music is in the capital of",
     "target": "France", "alt": "Italy"},
    {"id": "p5", "clean": "the Vinson Massif is in the continent of", "corrupt": "the Eiffel Tower is in the continent of",
     "target": "Antarctica", "alt": "Europe"},
    {"id": "p6", "clean": "the Apple Music is in the city of", "corrupt": "the Beats Music is in the city of",
     "target": "Paris", "alt": "Asia"},
]

