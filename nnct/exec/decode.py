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


def greedy(adapter, prompts: list[list[int]], n: int, backend=None, edits=()) -> list[list[int]]:
    """The n argmax tokens after each prompt (all of one length), as lists of ids; through
    `backend` (an nnsight backend to a server) when given, there with `edits`
    (`rome.apply_in_trace`) applied (here the caller edits the weights)."""
    if not prompts or n <= 0:
        return [[] for _ in prompts]
    if len({len(p) for p in prompts}) != 1:
        raise ConfigError("greedy decoding takes prompts of one length per batch")
    if backend is not None:
        return _greedy_in_session(adapter.parts, prompts, n, backend, edits)
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


def _greedy_in_session(parts, prompts: list[list[int]], n: int, backend, edits=()) -> list[list[int]]:
    import nnsight

    from .rome import apply_in_trace

    out = None
    with parts.nn.session(backend=backend):
        x = torch.tensor(prompts, dtype=torch.long, device=parts.embed.weight.device)  # the server's device
        made = []  # a loop, not a comprehension: nnsight runs the body with its own locals
        for _ in range(n):
            with torch.no_grad(), parts.nn.trace(x):
                apply_in_trace(parts, edits)
                step = parts.nn.output.logits[:, -1].float().argmax(-1, keepdim=True).save()
            made.append(step)
            x = torch.cat([x, step], 1)
        out = nnsight.save(torch.cat(made, 1).cpu().tolist())
    return out


def answer_logprobs(parts, rows: list[tuple[list[int], list[int]]], backend, edits=()) -> list[float]:
    """Per (prompt ids, answer ids): the mean teacher-forced log-probability of the answer's
    tokens after the prompt, with `edits` (`rome.apply_in_trace`) applied, from one session
    through `backend` (the server's model; a local one when it is local)."""
    import nnsight

    from .rome import apply_in_trace

    out = None
    with parts.nn.session(backend=backend):
        device = parts.embed.weight.device
        got = []  # a loop, not a comprehension: nnsight runs the body with its own locals
        for base, answer in rows:
            with torch.no_grad(), parts.nn.trace(torch.tensor([base + answer], device=device)):
                apply_in_trace(parts, edits)
                logp = parts.nn.output.logits[0].float().log_softmax(-1)
                at = len(base) - 1 + torch.arange(len(answer), device=device)
                got.append(logp[at, torch.tensor(answer, device=device)].mean().save())
        out = nnsight.save([float(g) for g in got])
    return out


def next_logits(parts, ids: list[list[int]], backend) -> torch.Tensor:
    """[row, vocab] float32 logits of the token after each row of `ids` (of one length), on
    the host, from one request through `backend`."""
    import nnsight

    out = None
    with parts.nn.session(backend=backend):
        x = torch.tensor(ids, dtype=torch.long, device=parts.embed.weight.device)
        with torch.no_grad(), parts.nn.trace(x):
            logits = parts.nn.output.logits[:, -1].float().cpu().save()
        out = nnsight.save(logits)
    return out
