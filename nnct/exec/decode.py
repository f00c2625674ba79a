"""Greedy decoding on the local model, one token after another with the key/value cache.

Plain argmax, without the model's generation config: a config's repetition penalty or
sampling flags would change what "the model reproduces" means. Rows of a batch have
prompts of one length, so no padding enters the computation.
"""

from __future__ import annotations

import torch

from .. import compat
from ..errors import ConfigError


def greedy(adapter, prompts: list[list[int]], n: int) -> list[list[int]]:
    """The n argmax tokens after each prompt (all of one length), as lists of ids."""
    if not prompts or n <= 0:
        return [[] for _ in prompts]
    if len({len(p) for p in prompts}) != 1:
        raise ConfigError("greedy decoding takes prompts of one length per batch")
    x = torch.tensor(prompts, dtype=torch.long, device=adapter.device)
    name = compat.cache_keyword(adapter.hf.forward)
    out, cache = [], None
    with torch.no_grad():
        for _ in range(n):
            step = adapter.hf(input_ids=x, use_cache=True, **{name: cache})
            cache = compat.output_cache(step, name)
            x = step.logits[:, -1].float().argmax(-1, keepdim=True)
            out.append(x)
    return torch.cat(out, 1).cpu().tolist()
