"""Steering (CAA, ActAdd) as nnsight traces, here or in one session on a server.

- `vectors`: one forward per text of each contrast pair, reading the residual stream (site
  `hidden`, a decoder layer's output) of every layer at the text's own last token; the mean
  over pairs of positive - negative, [layer, d_model] float32 on the host.
- `sweep`: per prompt, the unsteered forward, then the rows (layer, alpha) in batches of at
  most `batch` rows, one forward each over the prompt repeated once per row. Row r adds
  alpha_r * v[l_r] (the `add` operation of `interventions.operations`) to the residual stream
  after layer l_r, at every position or from the prompt's last token on (`from_last`); the
  other layers of that row are untouched. Only the readouts' values leave the trace.
- `continuations`: greedy decoding of the same rows side by side, after an unsteered row;
  generated tokens are always steered. Here with the key/value cache (the first step
  steers from `start`, each later step its one new token); on a server one trace per token
  over the whole sequence, steered from `start` (the cache stays out of the request). Both
  compute the same thing.

Rows are data: `layers[r]` (UNSTEERED: no addition) and `alphas[r]`. Everything here runs
inside requests too, where nnsight compiles it again from its source: module-level
functions only, no lambdas, no context-manager generators, no zero-argument super().
"""

from __future__ import annotations

import torch

from .. import compat
from ..interventions import readouts as readouts_lib
from ..interventions.operations import OPERATIONS, Values
from ..model.sites import SITES

HIDDEN = SITES["hidden"]
UNSTEERED = -1  # a row's layer when it adds nothing


def last_states(parts, ids: list[int], device) -> torch.Tensor:
    """[layer, d_model] float32: the residual stream after every layer at the last token of `ids`."""
    got = []
    with torch.no_grad(), parts.nn.trace(torch.tensor([ids], dtype=torch.long, device=device)):
        for layer in range(parts.n_layers):
            got.append(HIDDEN.read(parts, layer)[0, -1].float())
        states = torch.stack(got).cpu().save()
    return states


def _mean_difference(parts, pairs: list, device) -> torch.Tensor:
    total = None
    for positive, negative in pairs:
        diff = last_states(parts, positive, device) - last_states(parts, negative, device)
        total = diff if total is None else total + diff
    return total / len(pairs)


def vectors(parts, pairs: list, backend=None) -> torch.Tensor:
    """[layer, d_model] float32: the mean over `pairs` ((positive ids, negative ids) each) of
    the residual streams' difference at each text's last token; through `backend` when given."""
    if backend is None:
        return _mean_difference(parts, pairs, parts.device)
    import nnsight

    out = None
    with parts.nn.session(backend=backend):
        out = nnsight.save(_mean_difference(parts, pairs, parts.embed.weight.device))
    return out


def steer(parts, layers: list[int], alphas: list[float], vectors: torch.Tensor, start: int) -> None:
    """Inside a trace of len(layers) rows: row r adds alphas[r] * vectors[layers[r]] to the
    residual stream after layer layers[r], at positions start and after (layers in forward
    order, each read once)."""
    add = OPERATIONS["add"]
    for layer in sorted(set(layers) - {UNSTEERED}):
        rows = []
        scale = []
        for r in range(len(layers)):
            if layers[r] == layer:
                rows.append(r)
                scale.append(alphas[r])
        h = HIDDEN.read(parts, layer)
        span = h.shape[1] - start
        row_at = torch.tensor(rows, dtype=torch.long, device=h.device).repeat_interleave(span)
        token_at = torch.arange(start, h.shape[1], device=h.device).repeat(len(rows))
        alpha = torch.tensor(scale, dtype=h.dtype, device=h.device).repeat_interleave(span)[:, None]
        vector = vectors[layer].to(device=h.device, dtype=h.dtype)[None, :].expand(len(row_at), -1)
        HIDDEN.write(h, row_at, token_at, add.make(Values(vector=vector, alpha=alpha)), add=True)


def _rows(parts, x, layers, alphas, vectors, chosen, given, start: int, keep_reference: bool):
    """One forward of len(layers) steered rows of the prompt `x` [1, token]: the readouts
    [row, columns] (on the host) and, if asked, row 0's log-probabilities (where they were made)."""
    reference = None
    with torch.no_grad(), parts.nn.trace(x.expand(len(layers), -1), logits_to_keep=1):
        steer(parts, layers, alphas, vectors, start)
        logits = parts.nn.output.logits[:, -1].float()
        values = readouts_lib.compute(chosen, logits, given).cpu().save()
        if keep_reference:
            reference = logits[0].log_softmax(-1).save()
    return values, reference


def _prompt_sweep(parts, ids, answers, layers, alphas, vectors, chosen, batch: int, start: int, device):
    x = torch.tensor([ids], dtype=torch.long, device=device)
    clean, reference = _rows(parts, x, [UNSTEERED], [0.0], vectors, chosen, readouts_lib.Given(answers), start, True)
    given = readouts_lib.Given(answers, reference=reference)
    got = []
    for i in range(0, len(layers), batch):
        values, _ = _rows(parts, x, layers[i:i + batch], alphas[i:i + batch], vectors, chosen, given, start, False)
        got.append(values)
    return clean[0], torch.cat(got)


def _sweep(parts, prompts, layers, alphas, vectors, chosen, batch: int, from_last: bool, device) -> list:
    out = []
    for ids, answers in prompts:
        start = len(ids) - 1 if from_last else 0
        out.append(_prompt_sweep(parts, ids, answers, layers, alphas, vectors, chosen, batch, start, device))
    return out


def sweep(parts, prompts: list, layers: list[int], alphas: list[float], vectors: torch.Tensor, chosen: tuple,
          batch: int, from_last: bool = False, backend=None) -> list:
    """Per prompt ((ids, (target, alt)) each): (the unsteered readouts [columns], the steered
    rows' [row, columns]), rows (layers[r], alphas[r]) batched `batch` to a forward; through
    `backend` in one session when given. `chosen`: the readouts (`interventions.readouts`)."""
    if backend is None:
        return _sweep(parts, prompts, layers, alphas, vectors, chosen, batch, from_last, parts.device)
    import nnsight

    out = None
    with parts.nn.session(backend=backend):
        out = nnsight.save(_sweep(parts, prompts, layers, alphas, vectors, chosen, batch, from_last,
                                  parts.embed.weight.device))
    return out


def decode(parts, ids: list[int], layers, alphas, vectors, n: int, start: int, device, cached: bool = True) -> torch.Tensor:
    """[row, n]: the greedy tokens after `ids` of each steered row (one forward per token)."""
    x = torch.tensor([ids], dtype=torch.long, device=device).expand(len(layers), -1)
    cache, made = None, []
    if cached:
        from transformers import DynamicCache

        cache = DynamicCache()
    for step in range(n):
        kwargs = {"logits_to_keep": 1}
        if cached:
            kwargs["use_cache"] = True
            kwargs[compat.TRACE_CACHE_KEYWORD] = cache
        with torch.no_grad(), compat.old_cache_keyword(), parts.nn.trace(x, **kwargs):
            steer(parts, layers, alphas, vectors, 0 if cached and step > 0 else start)
            token = parts.nn.output.logits[:, -1].float().argmax(-1, keepdim=True).save()
        made.append(token)
        x = token if cached else torch.cat([x, token], 1)
    return torch.cat(made, 1).cpu()


def _continuations(parts, prompts, layers, alphas, vectors, n: int, batch: int, from_last: bool, device, cached: bool) -> list:
    rows_layers = [UNSTEERED] + list(layers)
    rows_alphas = [0.0] + list(alphas)
    out = []
    for ids in prompts:
        start = len(ids) - 1 if from_last else 0
        got = []
        for i in range(0, len(rows_layers), batch):
            got.append(decode(parts, ids, rows_layers[i:i + batch], rows_alphas[i:i + batch], vectors, n, start, device,
                              cached))
        out.append(torch.cat(got))
    return out


def continuations(parts, prompts: list, layers: list[int], alphas: list[float], vectors: torch.Tensor, n: int,
                  batch: int, from_last: bool = False, backend=None, cached: bool | None = None) -> list:
    """Per prompt (its ids): [1 + row, n] greedy tokens, row 0 unsteered, then the rows
    (layers[r], alphas[r]), batched `batch` to a forward; through `backend` in one session
    when given (without the cache: `cached` None means here only)."""
    if backend is None:
        return _continuations(parts, prompts, layers, alphas, vectors, n, batch, from_last, parts.device,
                              True if cached is None else cached)
    import nnsight

    out = None
    with parts.nn.session(backend=backend):
        out = nnsight.save(_continuations(parts, prompts, layers, alphas, vectors, n, batch, from_last,
                                          parts.embed.weight.device, False))
    return out
