"""Greedy decoding, one token after another: on the local model with the key/value cache,
or on a server in one nnsight session (one trace per token over the whole sequence: the
cache stays out of the request, and a request's traces cost what its tokens cost).

Plain argmax, without the model's generation config: a config's repetition penalty or
sampling flags would change what "the model reproduces" means. Rows of a batch have
prompts of one length, so no padding enters the computation.
"""

from __future__ import annotations

import torch

from .. import compat
from ..errors import ConfigError


def greedy(adapter, prompts: list[list[int]], n: int, backend=None) -> list[list[int]]:
    """The n argmax tokens after each prompt (all of one length), as lists of ids; through
    `backend` (an nnsight backend to a server) when given."""
    if not prompts or n <= 0:
        return [[] for _ in prompts]
    if len({len(p) for p in prompts}) != 1:
        raise ConfigError("greedy decoding takes prompts of one length per batch")
    if backend is not None:
        return _greedy_in_session(adapter.parts, prompts, n, backend)
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


def _greedy_in_session(parts, prompts: list[list[int]], n: int, backend) -> list[list[int]]:
    import nnsight

    out = None
    with parts.nn.session(backend=backend):
        x = torch.tensor(prompts, dtype=torch.long, device=parts.embed.weight.device)  # the server's device
        made = []  # a loop, not a comprehension: nnsight runs the body with its own locals
        for _ in range(n):
            with parts.nn.trace(x):
                step = parts.nn.output.logits[:, -1].float().argmax(-1, keepdim=True).save()
            made.append(step)
            x = torch.cat([x, step], 1)
        out = nnsight.save(torch.cat(made, 1).cpu().tolist())
    return out
