"""Execution: a plan's forward passes as nnsight interventions, locally.

An example costs two full forwards, then one forward per batch of the schedule (`plan`):
- the clean run (1 row) and the corrupted run (S rows, noise on the span's input
  embeddings). One of them is the **base** of the restored runs: the corrupted run when
  restoring, the clean run when reverse patching. The other is the **source** of the values
  written into cells. The base run keeps its residual stream after every layer and its
  key/value cache; the source run keeps the states of the components being traced.
- each batch runs its cells' rows (S per cell; row j*S + s is cell j's sample s) only from
  position `start` on, over the base run's cache cropped to `start` positions, and only
  from layer `first_layer` on: every earlier decoder layer is skipped (nnsight's `skip`),
  its output being the base run's residual stream (with the hidden cells' values written
  in, for those restored just before `first_layer`). From there, layer by layer in the order
  the model runs them, one indexed assignment per (layer, component) writes the source
  values, and only the answers' probabilities at the last position leave the trace.
Cells before the first corrupted token need no forward: their value is the base run's.

Everything inside a trace is an nnsight intervention on the model's own modules. `request`
runs several examples' traces in one nnsight session sent through a backend (NDIF, or
nnsight's local simulation): the base run's cache and states stay with the model between
them, and only the probabilities come back. The engine holds only the model's envoys and
sizes (`models.Parts`), so that it can travel into the session; where the model sits and
in which dtype it runs are read there, from the server's own weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .models import REMOTE, Adapter, Parts, first
from .plan import FORWARD_ORDER, Batch, cells, patches, schedule


@dataclass(frozen=True)
class Settings:
    components: tuple[str, ...] = ("hidden", "mlp", "attn")
    samples: int = 10
    window: int = 10
    replace: bool = False
    reverse: bool = False
    batch_rows: int | None = None  # None: `auto_batch_rows` for each example
    batch_budget: int = 1 << 30  # bytes of working memory a batch may take, for auto


@dataclass(frozen=True)
class Prepared:
    """An example as the model sees it."""

    ids: tuple[int, ...]
    span: tuple[int, ...]  # corrupted token positions, ascending
    answers: tuple[int, int]  # target, alt token ids
    noise: torch.Tensor  # [sample, span token, d_model], float32, CPU


@dataclass
class Result:
    p_clean: np.ndarray  # [answer]
    p_corrupt: np.ndarray  # [answer]
    p_restored: np.ndarray  # [token, layer, component, answer]
    clean_top1: int  # the clean prompt's most probable next token (ROME's "known" filter)


def memory_budget(device: str) -> int:
    """Bytes a batch may take: a quarter of the memory free now on the device, at most
    1 GiB on a CPU and 16 GiB on a GPU; 4 GiB on a remote server, whose free memory cannot
    be read from here. A run fixes it once (see `run`), so that a resumed run makes the
    same batches."""
    if device == REMOTE:
        return 4 << 30
    if device == "cuda":
        import torch

        return min(16 << 30, torch.cuda.mem_get_info()[0] // 4)
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        free = 4 << 30
    return min(1 << 30, free // 4)


# On a CPU, a batch of about this many rows x positions already runs near the machine's
# matmul rate; more rows only make a batch start earlier than its later cells need
# (measured on the embedded model at 25 tokens: 60-90 rows beat 290 by 1.9x).
CPU_TOKEN_ROWS = 2048


def auto_batch_rows(adapter: Adapter | Parts, n_tokens: int, samples: int, budget: int = 1 << 30) -> int:
    """The most rows per forward that `budget` bytes of working memory allow (the copied
    key/value cache and its extension, the activations, the attention scores and the
    float32 softmax over the vocabulary, per row), in whole cells, at least one."""
    a = adapter
    elt = a.torch_dtype.itemsize
    per_row = elt * n_tokens * (4 * a.n_layers * a.d_kv + 6 * a.d_model + 3 * a.d_ff + a.n_heads * n_tokens) + 8 * a.vocab
    rows = max(samples, min(4096, budget // per_row))
    return rows - rows % samples


@dataclass
class Run:
    """What a full forward leaves for the batches."""

    probs: torch.Tensor  # [row, answer], float64, CPU
    states: dict[str, torch.Tensor]  # component -> [row, layer, token, d_model]
    cache: object = None  # the model's key/value cache of every position
    top1: torch.Tensor | None = None  # [row], the most probable next token


@dataclass
class Reply:
    """What one request brought back: its examples' results and where the server ran them."""

    results: list[Result]
    device: str
    dtype: str


class Engine:
    def __init__(self, model: Adapter | Parts, settings: Settings):
        # envoys and sizes only: the engine can travel to a remote session
        self.parts = model.parts if isinstance(model, Adapter) else model
        self.settings = settings

    def _module(self, component: str, layer: int):
        a = self.parts
        return {"hidden": a.layers, "mlp": a.mlp, "attn": a.attn}[component][layer]

    def _forward(self, ids, rows, answers, *, noise=None, writes=None, save=(), keep_cache=False,
                 start=0, first_layer=0, cache=None, skip_value=None, top1=False) -> Run:
        """One nnsight trace over `rows` copies of ids[start:].

        noise: (positions relative to start, values [row, position, d_model]) added to (or,
        `replace`, written over) the input embeddings; writes: (layer, component) ->
        (rows, positions relative to start, values); layers before `first_layer` are
        skipped and output `skip_value`; `cache` holds the first `start` positions.
        """
        a, writes = self.parts, writes or {}
        x = torch.tensor(ids[start:], device=a.device)[None].expand(rows, -1)
        saved: dict[str, list] = {c: [] for c in save}
        kwargs = {"logits_to_keep": 1, "use_cache": keep_cache or cache is not None}
        if keep_cache:
            from transformers import DynamicCache

            # A plain cache keeps every position: the one a model builds for itself may keep
            # only a sliding window on some layers (Gemma 2/3, Mistral), not what we crop.
            cache = DynamicCache()
        if cache is not None:
            kwargs["past_key_values"] = cache
        kept = None  # only values saved in the trace come out of it
        with torch.no_grad(), a.nn.trace(x, **kwargs):
            if noise is not None:
                positions, values = noise
                emb = a.embed.output
                emb[:, positions] = values if self.settings.replace else emb[:, positions] + values
            for layer in range(first_layer):
                a.layers[layer].skip((skip_value,) if a.layer_tuple else skip_value)
            for layer in range(first_layer, a.n_layers):
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
            output = a.nn.output
            probs = output.logits[:, -1].float().softmax(-1)[:, list(answers)].save()
            if top1:
                top = output.logits[:, -1].argmax(-1).save()
            if keep_cache:
                kept = output.past_key_values.save()
        states = {c: torch.stack(v, dim=1) for c, v in saved.items()}
        return Run(probs.double().cpu(), states, kept, top.cpu() if top1 else None)

    def _batch_inputs(self, batch: Batch, prep: Prepared, noise, base: Run, source: Run) -> dict:
        """The keyword arguments of `_forward` for one batch of the schedule."""
        a, s = self.parts, self.settings
        S, rows, start, first_layer = s.samples, len(batch.cells) * s.samples, batch.start, batch.first_layer
        sample = torch.arange(rows, device=a.device) % S  # row j*S + s is cell j's sample s
        zeros = torch.zeros(rows, dtype=torch.long, device=a.device)
        base_row, source_row = (zeros, sample) if s.reverse else (sample, zeros)

        writes = {}
        for (layer, component), p in patches(batch.cells, S, s.window, a.n_layers).items():
            rows_at, tokens = torch.tensor(p.rows, device=a.device), torch.tensor(p.tokens, device=a.device)
            writes[(layer, component)] = (rows_at, tokens - start, source.states[component][source_row[rows_at], layer, tokens])
        # Hidden writes just before the first layer run go into the skipped stream instead.
        into_skip = writes.pop((first_layer - 1, "hidden"), None)
        kwargs = {"writes": writes, "start": start, "first_layer": first_layer}

        noisy = [k for k, t in enumerate(prep.span) if t >= start]
        if not s.reverse and first_layer == 0 and noisy:
            kwargs["noise"] = ([prep.span[k] - start for k in noisy], noise[sample][:, noisy])
        if first_layer > 0:
            stream = base.states["hidden"][base_row, first_layer - 1, start:]  # indexing copies: ours to write
            if into_skip is not None:
                stream[into_skip[0], into_skip[1]] = into_skip[2]
            kwargs["skip_value"] = stream
        if start > 0:
            kwargs["cache"] = self._cropped_cache(base.cache, base_row, start, first_layer)
        return kwargs

    @staticmethod
    def _cropped_cache(cache, base_row, start: int, first_layer: int):
        """The base run's keys and values of the first `start` positions, one row per batch row.
        Skipped layers never read theirs, but the first layer's length tells the model where
        the new positions are: a broadcast view keeps it without a copy."""
        from transformers import DynamicCache

        rows, out = len(base_row), DynamicCache()
        for layer, kv in enumerate(cache.layers):
            assert kv.keys.shape[-2] >= start, "the base run's cache lacks positions"
            if layer < first_layer:
                keys, values = (t[:1, :, :start].expand(rows, -1, -1, -1) for t in (kv.keys, kv.values))
            else:
                keys, values = (t[base_row, :, :start] for t in (kv.keys, kv.values))
            out.update(keys, values, layer)
        return out

    def clean(self, ids, answers: tuple[int, int]) -> tuple[np.ndarray, int]:
        """P(answers) and the most probable token after the untouched prompt: one forward."""
        run = self._forward(ids, 1, answers, top1=True)
        return run.probs[0].numpy(), int(run.top1[0])

    def trace(self, prep: Prepared, on_batch: Callable[[int], None] | None = None) -> Result:
        """The example's probabilities, computed here."""
        return self._trace(prep, on_batch)

    def request(self, preps: list[Prepared], backend) -> Reply | None:
        """The examples' probabilities from one nnsight session sent through `backend` (None
        when the backend does not wait for the result: `decode` what it collects later).
        The session reads the model's device and dtype from the weights it finds there."""
        import nnsight

        out = None  # a backend that does not wait leaves the session's names unset
        with self.parts.nn.session(backend=backend):
            weight = self.parts.embed.weight
            there = Engine(dataclasses.replace(self.parts, device=str(weight.device), torch_dtype=weight.dtype), self.settings)
            results = []  # a loop, not a comprehension: nnsight runs the body with its own locals
            for prep in preps:
                results.append(dataclasses.asdict(there._trace(prep)))
            out = nnsight.save({"results": results, "device": str(weight.device), "dtype": str(weight.dtype)})
        return None if out is None else self.decode({"out": out})

    @staticmethod
    def decode(saves: dict) -> Reply:
        """A request's saved values (by name, as a backend collects them) as a Reply."""
        out = saves["out"]
        return Reply([Result(**r) for r in out["results"]], out["device"], out["dtype"].removeprefix("torch."))

    def _trace(self, prep: Prepared, on_batch: Callable[[int], None] | None = None) -> Result:
        a, s = self.parts, self.settings
        n_tokens, S = len(prep.ids), s.samples
        noise = prep.noise.to(a.device, a.torch_dtype)
        span = list(prep.span)
        base_save, source_save = ("hidden",), s.components
        clean = self._forward(prep.ids, 1, prep.answers, save=base_save if s.reverse else source_save, keep_cache=s.reverse,
                              top1=True)
        corrupt = self._forward(prep.ids, S, prep.answers, noise=(span, noise),
                                save=source_save if s.reverse else base_save, keep_cache=not s.reverse)
        base, source = (clean, corrupt) if s.reverse else (corrupt, clean)
        p_base = base.probs.mean(dim=0).numpy()

        p_restored = np.full((n_tokens, a.n_layers, len(s.components), 2), np.nan)
        comp_index = {c: i for i, c in enumerate(s.components)}
        rows = s.batch_rows or auto_batch_rows(a, n_tokens, S, s.batch_budget)
        token_rows = CPU_TOKEN_ROWS if s.batch_rows is None and a.device == "cpu" else None
        plan = schedule(cells(n_tokens, a.n_layers, s.components), S, rows, s.window, a.n_layers, min(span),
                        n_tokens, token_rows)
        for cell in plan.unchanged:
            p_restored[cell.token, cell.layer, comp_index[cell.component]] = p_base
        if on_batch and plan.unchanged:
            on_batch(len(plan.unchanged))
        for batch in plan.batches:
            run = self._forward(prep.ids, len(batch.cells) * S, prep.answers, **self._batch_inputs(batch, prep, noise, base, source))
            means = run.probs.view(len(batch.cells), S, 2).mean(dim=1).numpy()
            for cell, mean in zip(batch.cells, means):
                p_restored[cell.token, cell.layer, comp_index[cell.component]] = mean
            if on_batch:
                on_batch(len(batch.cells))
        return Result(clean.probs[0].numpy(), corrupt.probs.mean(dim=0).numpy(), p_restored.astype(np.float32),
                      int(clean.top1[0]))
