"""Execution: a plan's forward passes as nnsight interventions.

An example is a clean prompt (its ids), a corrupted `RunInput` (S rows: noise samples, or
one row of a counterfactual prompt) and two answers. It costs two full forwards, then one
forward per batch of the schedule (`plan`):
- the clean run (1 row) and the corrupted run (S rows). One of them is the **base** of the
  restored runs: the corrupted run when restoring, the clean run when reverse patching. The
  other is the **source** of the values written into cells. The base run keeps its
  residual stream after every layer and its key/value cache, and the values of a site that
  a severed path freezes (`components`); the source run keeps the values of the sites being
  traced.
- each batch runs its cells' rows (S per cell; row j*S + s is cell j's sample s) only from
  position `start` on, over the base run's cache cropped to `start` positions, and only
  from layer `first_layer` on: every earlier decoder layer is skipped (nnsight's `skip`),
  its output being the base run's residual stream (with the residual-stream cells' values
  written in, for those restored just before `first_layer`). From there, layer by layer,
  each site is read in the order the model runs them and one indexed assignment per
  (layer, site) writes the source values (a head's slice only, for a site of heads; the base
  run's own values where a path is severed); only the answers' values at the last position
  (`metrics`: probabilities and logits) leave the trace.
Cells before the first changed token need no forward: their values are the base run's.

Several examples run as one group (`trace_group`) when they share a `group_key`: the same
prompt length, first changed token, noised positions, corrupted rows and answer lengths (and
the settings' estimate), so the same cells, schedule and passes. Each forward then runs
every example of the group, each in a block of rows of its own (clean runs: row e;
corrupted runs: rows e*S..e*S+S-1; a batch's: its cells' rows for example e after those for
e-1), each block reading its own example's base and source rows and answer tokens, and each
example's share of the batch's rows is the group's share of what one example would take.
The extra readouts group too: each block reads its own example's answers, spellings and
clean run's log-probabilities (`readouts.per_example`). So does attribution patching
(`estimate` "atp", "atp*"): its clean, corrupted and gradient passes stack the group's rows
(`attribution.attribute_group`), and each example's exact screen (`verify`) is then patched
on its own, its cells being its own. A forward's time is mostly its Python and nnsight cost,
not its arithmetic, when a model is small or the device is fast: a group of G examples takes
few more passes than one (`costs`: the plan weighs passes against arithmetic). One example
alone is a group of one.

The engine does not know what made the corrupted input: noise and a counterfactual prompt
are both a `RunInput`. An answer of several tokens (teacher-forced probability) is read in a
pass of its own (clean, corrupted and restored runs with the answer's earlier tokens
appended to the prompt), which also reads both answers' first tokens: one pass when at most
one answer has several tokens, two when both do.

Everything inside a trace is an nnsight intervention on the model's own modules. The
engine holds only the model's envoys and sizes (`model.Parts`), so that `exec.remote` can
run it inside an nnsight session sent to a server, where the model sits and its dtype are
read from the server's own weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from .. import compat
from ..errors import ConfigError
from ..interventions import readouts as readouts_lib
from ..interventions.components import COMPONENTS, grid, variables
from ..interventions.corruption import RunInput
from ..interventions.operations import ABLATIONS, Values, operation
from ..interventions.plan import Batch, Cell, cells, patches, schedule, screened, slot
from ..model.loading import REMOTE
from ..model.parts import Adapter, Parts
from ..model.sites import SITES, in_forward_order
from .attribution import NUMBERS, attribute_group, names
from .measures import MEAN_BY_POSITION, Measures

Answers = tuple[tuple[int, ...], tuple[int, ...]]  # (target tokens, alt tokens)
# What a forward reports per row: p(target), p(alt), logit(target), logit(alt) of the answers'
# first tokens at the last prompt position, and the log-probability of the rest of one
# answer, teacher-forced (0 when none is read); then the extra readouts' columns
# (`interventions.readouts`), from EXTRA on.
P, LOGIT, FOLLOW = slice(0, 2), slice(2, 4), 4
N_VALUES = 5
EXTRA = slice(N_VALUES, None)


@dataclass(frozen=True)
class Settings:
    components: tuple[str, ...] = ("hidden", "mlp", "attn")
    window: int = 10
    reverse: bool = False
    batch_rows: int | None = None  # None: `auto_batch_rows` for each example
    batch_budget: int = 1 << 30  # bytes of working memory a batch may take, for auto
    estimate: str = "exact"  # atp, atp*: attribution patching's estimates instead (`attribution`)
    verify: int = 0  # with an estimate: the cells per component it ranks highest are also patched exactly
    verify_sample: int = 0  # ... and this many more per component, drawn at random from the rest
    seed: int = 0  # of that draw (with the prompt's tokens: each example draws its own)
    readouts: tuple = ()  # the extra readouts (`readouts.extra`), each stored per run and cell
    operation: str = "copy"  # what a cell writes (`interventions.operations`); zero, mean: ablation
    reference: tuple = ()  # mean ablation: the reference prompts' token ids
    pass_positions: tuple | None = None  # the cost model's (`costs.pass_positions`); None: FLOPs alone


def _trace_kwargs(kept_logits: int, keep_cache: bool, cache) -> dict:
    """A trace's keyword arguments: the logits kept, and the key/value cache it reads (`cache`)
    or fills (`keep_cache`: a fresh one)."""
    kwargs = {"logits_to_keep": kept_logits, "use_cache": keep_cache or cache is not None}
    if keep_cache:
        from transformers import DynamicCache

        # A plain cache keeps every position: the one a model builds for itself may keep
        # only a sliding window on some layers (Gemma 2/3, Mistral), not what we crop.
        cache = DynamicCache()
    if cache is not None:
        kwargs[compat.TRACE_CACHE_KEYWORD] = cache
    return kwargs


def total_memory(device: str, meminfo: str = "/proc/meminfo") -> int:
    """The device's total memory in bytes (MemTotal on a CPU; 16 GiB where it cannot be read)."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    try:
        with open(meminfo) as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        return 16 << 30


def memory_budget(device: str, meminfo: str = "/proc/meminfo") -> int:
    """Bytes a batch may take: a quarter of the device's total memory, at most 1 GiB on a CPU
    and 16 GiB on a GPU; 4 GiB on a remote server, whose memory cannot be read from here.
    Never the memory free at the moment: the same command on the same machine makes the same
    batches, and so the same bits, whatever else runs beside it. A run stores it, so that a
    resumed run makes the same batches too."""
    if device == REMOTE:
        return 4 << 30
    cap = 16 << 30 if device == "cuda" else 1 << 30
    return min(cap, total_memory(device, meminfo) // 4)


# On a CPU, a batch of about this many rows x positions already runs near the machine's
# matmul rate; more rows only make a batch start earlier than its later cells need
# (measured on the embedded model at 25 tokens: 60-90 rows beat 290 by 1.9x).
CPU_TOKEN_ROWS = 2048


def auto_batch_rows(model: Adapter | Parts, n_tokens: int, samples: int, budget: int = 1 << 30) -> int:
    """The most rows per forward that `budget` bytes of working memory allow (the copied
    key/value cache and its extension, the activations, the attention scores and the
    float32 softmax over the vocabulary, per row), in whole cells, at least one."""
    a = model
    elt = a.torch_dtype.itemsize
    per_row = elt * n_tokens * (4 * a.n_layers * a.d_kv + 6 * a.d_model + 3 * a.d_ff + a.n_heads * n_tokens) + 8 * a.vocab
    rows = max(samples, min(4096, budget // per_row))
    return rows - rows % samples


def passes(answers: Answers) -> int:
    """Passes over the plan an example takes (for progress counts): `Engine._passes`'."""
    return len(Engine._passes([answers]))


@dataclass
class Run:
    """What a full forward leaves for the batches."""

    values: torch.Tensor  # [row, N_VALUES + extra readouts' columns], float64, CPU
    states: dict[str, torch.Tensor]  # site -> [row, layer, token, d_model]
    cache: object = None  # the model's key/value cache of every position
    top1: torch.Tensor | None = None  # [row], the most probable next token
    logprobs: torch.Tensor | None = None  # [row, vocab]: the log-probabilities (the clean runs': `kl`'s reference)


@dataclass(frozen=True)
class _Read:
    """What one pass reads, per example of the group (`first` and `follow` hold one entry
    each, in order; an example's rows are a contiguous block of a forward's rows): the
    answers' first tokens at the last prompt position, and `follow`, the tokens of one
    answer after its first, at the positions after it; the extra readouts' inputs
    (`spellings`, each example's pair, None for none; `reference`: the clean runs'
    log-probabilities [example, vocab], set once the clean runs have them)."""

    first: tuple[tuple[int, int], ...]
    follow: tuple[tuple[int, ...], ...] = ((),)
    answer: int = 0  # which answer `follow` continues (0 target, 1 alt)
    spellings: tuple | None = None
    reference: torch.Tensor | None = None


def _stacked(inputs: list[RunInput]) -> RunInput:
    """A group's corrupted inputs as one: each example's rows (its ids repeated to as many)
    after those of the one before. They share their positions (`Engine.group_key`)."""
    if len(inputs) == 1:
        return inputs[0]
    first = inputs[0]
    values = None if first.values is None else torch.cat([i.values for i in inputs])
    return RunInput(torch.cat([i.ids.expand(i.rows, -1) for i in inputs]), first.positions, values, first.replace)


class Engine:
    def __init__(self, model: Adapter | Parts, settings: Settings):
        # envoys and sizes only: the engine can travel to a remote session
        self.parts = model.parts if isinstance(model, Adapter) else model
        self.settings = settings
        self._means: dict = {}  # mean ablation's reference values, by (sites, prompt length or None)
        self.forwards = 0  # forward passes run (`nnct bench` reports them)

    def _forward(self, ids: torch.Tensor, rows: int, read: _Read, *, edit=None, writes=None, save=(), keep_cache=False,
                 first_layer=0, cache=None, skip_value=None, top1=False, keep_logprobs=False) -> Run:
        """One nnsight trace over `rows` rows of `ids` ([1 or rows, positions]).

        edit: (positions, values [row, position, d_model], replace) onto the input
        embeddings; writes: (layer, site) -> (rows, positions, values, heads, added); layers before
        `first_layer` are skipped and output `skip_value`; `cache` holds the positions
        before these.
        """
        self.forwards += 1
        a, writes, extra = self.parts, writes or {}, self.settings.readouts
        x = ids.to(a.device).expand(rows, -1)
        saved: dict[str, list] = {c: [] for c in save}
        # each example's tokens to read, repeated over its block of rows
        per = rows // len(read.first)
        first = torch.tensor(read.first, device=a.device).repeat_interleave(per, dim=0)
        n_follow = len(read.follow[0])
        follow_at = torch.tensor(read.follow, device=a.device).repeat_interleave(per, dim=0)[..., None] if n_follow else None
        kwargs = _trace_kwargs(1 + n_follow, keep_cache, cache)
        # each example's readout inputs, read by its own block of rows
        given = readouts_lib.per_example(read.first, read.spellings, read.reference, a.device) if extra else None
        sites = in_forward_order({name for _, name in writes} | set(saved))
        kept = top = follow = measured = logprobs = None  # only values saved in the trace come out of it
        with torch.no_grad(), compat.old_cache_keyword(), a.nn.trace(x, **kwargs):
            if edit is not None:
                positions, values, replace = edit
                emb = a.embed.output
                emb[:, positions] = values if replace else emb[:, positions] + values
            for layer in range(first_layer):
                a.layers[layer].skip((skip_value,) if a.layer_tuple else skip_value)
            for layer in range(first_layer, a.n_layers):
                for site in sites:
                    write = writes.get((layer, site.name))
                    if write is None and site.name not in saved:
                        continue
                    value = site.read(a, layer)
                    if write is not None:
                        rows_at, tokens, values, heads, added = write
                        site.write(value, rows_at, tokens, values, heads, a.d_head, added)
                    if site.name in saved:
                        saved[site.name].append(value.save())
            # The model's own logits, not the unembedding's output: Gemma 2/3 soft-cap after it.
            output = a.nn.output
            at = output.logits[:, 0].float()
            logits = at.gather(-1, first).save()
            probs = at.softmax(-1).gather(-1, first).save()
            if extra:
                measured = readouts_lib.compute(extra, at, given).save()
            if keep_logprobs:
                logprobs = at.log_softmax(-1).save()
            if n_follow:
                rest = output.logits[:, 1:].float().log_softmax(-1)
                follow = rest.gather(-1, follow_at).sum(dim=(1, 2)).save()
            if top1:
                top = at.argmax(-1).save()
            if keep_cache:
                kept = compat.output_cache(output, compat.TRACE_CACHE_KEYWORD).save()
        values = torch.zeros(rows, self.width, dtype=torch.float64, device="cpu")  # the host's copy of what came out
        values[:, P], values[:, LOGIT] = probs.double().cpu(), logits.double().cpu()
        if follow is not None:
            values[:, FOLLOW] = follow.double().cpu()
        if measured is not None:
            values[:, EXTRA] = measured.double().cpu()
        states = {c: torch.stack(v, dim=1) for c, v in saved.items()}
        return Run(values, states, kept, top.cpu() if top1 else None, logprobs)

    @property
    def width(self) -> int:
        """Values per row: the answers' and the extra readouts'."""
        return N_VALUES + readouts_lib.columns(self.settings.readouts)

    def _batch_inputs(self, batch: Batch, samples: int, group: int, base_input: RunInput, base: Run, source: Run,
                      n_tokens: int, means: dict | None = None) -> dict:
        """The keyword arguments of `_forward` for one batch of the schedule, run for each of
        the `group` examples in a block of rows of its own (`n_tokens`: the prompt's, where an
        all-positions cell stops; `means`: mean ablation's reference values, site -> [layer,
        position or 1, d])."""
        a, s = self.parts, self.settings
        per, start, first_layer = len(batch.cells) * samples, batch.start, batch.first_layer
        rows = group * per
        row = torch.arange(rows, device=a.device)
        # row e*per + j*S + s is example e's cell j, sample s: its clean row is e, its corrupted one e*S + s
        example, corrupted = row // per, row // per * samples + row % samples
        base_row, source_row = (example, corrupted) if s.reverse else (corrupted, example)
        blocks = torch.arange(group, device=a.device)[:, None] * per
        op = operation(s.operation)

        writes = {}
        for (layer, name), p in patches(batch.cells, samples, s.window, a.n_layers, n_tokens).items():
            rows_at = (torch.tensor(p.rows, device=a.device)[None, :] + blocks).flatten()
            tokens = torch.tensor(p.tokens, device=a.device).repeat(group)
            frozen = torch.tensor(p.frozen, device=a.device).repeat(group)
            values = None
            if not frozen.all():
                given = source.states[name][source_row[rows_at], layer, tokens]
                mean = None
                if means is not None:
                    at = means[name][layer]
                    mean = at[tokens] if at.shape[0] > 1 else at[0].expand(len(tokens), -1)
                values = op.make(Values(source=given, mean=mean, like=given))
            if frozen.any():  # a severed path keeps the base run's own value
                kept = base.states[name][base_row[rows_at], layer, tokens]
                values = kept if values is None else torch.where(frozen[:, None], kept, values)
            heads = None
            if p.heads is not None:
                heads = torch.tensor(p.heads, device=a.device).repeat(group)
                values = SITES[name].slice(values, heads, a.d_head)
            writes[(layer, name)] = (rows_at, tokens - start, values, heads, False)
        # Residual-stream writes just before the first layer run go into the skipped stream instead.
        into_skip = [writes.pop(key) for key in list(writes) if key[0] == first_layer - 1 and SITES[key[1]].residual]
        ids = base_input.ids.to(a.device)
        kwargs = {"ids": ids[:, start:] if ids.shape[0] == 1 else ids[base_row, start:], "writes": writes, "first_layer": first_layer}

        edited = [k for k, t in enumerate(base_input.positions) if t >= start]
        if first_layer == 0 and edited:
            values = base_input.values.to(a.device, a.torch_dtype)[base_row][:, edited]
            kwargs["edit"] = ([base_input.positions[k] - start for k in edited], values, base_input.replace)
        if first_layer > 0:
            stream = base.states["hidden"][base_row, first_layer - 1, start:]  # indexing copies: ours to write
            for rows_at, tokens, values, _, _ in into_skip:
                stream[rows_at, tokens] = values
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
        for layer, kv in enumerate(compat.cache_layers(cache)):
            assert kv[0].shape[-2] >= start, "the base run's cache lacks positions"
            if layer < first_layer:
                keys, values = (t[:1, :, :start].expand(rows, -1, -1, -1) for t in kv)
            else:
                keys, values = (t[base_row, :, :start] for t in kv)
            out.update(keys, values, layer)
        return out

    def _edit(self, inp: RunInput):
        a = self.parts
        return None if inp.values is None else (list(inp.positions), inp.values.to(a.device, a.torch_dtype), inp.replace)

    def clean(self, ids, answers: Answers) -> tuple[np.ndarray, int]:
        """P(answers) and the most probable token after the untouched prompt: one forward per pass."""
        p, top = None, 0
        for k, (extra, read) in enumerate(self._passes([answers])):
            run = self._forward(torch.tensor([list(ids) + extra[0]]), 1, read, top1=k == 0)
            p, top = self._combine(p, run.values, read), (int(run.top1[0]) if k == 0 else top)
        return p[0, P].numpy(), top

    @staticmethod
    def _passes(group: list[Answers], spellings=None) -> list[tuple[list[list[int]], _Read]]:
        """(tokens appended to each example's prompt, what is read) per pass: one pass when
        both answers are one token, else one per answer of several tokens (its earlier tokens
        appended). A group's answers have the same lengths (`group_key`): the same passes.
        `spellings`: each example's (`prob_any`), None for none."""
        first = tuple((answers[0][0], answers[1][0]) for answers in group)
        long = [k for k, a in enumerate(group[0]) if len(a) > 1]
        return ([([list(answers[k][:-1]) for answers in group],
                  _Read(first, tuple(tuple(answers[k][1:]) for answers in group), k, spellings)) for k in long]
                or [([[] for _ in group], _Read(first, spellings=spellings))])

    @staticmethod
    def _combine(summed, values: torch.Tensor, read: _Read) -> torch.Tensor:
        """The pass's values folded into those of earlier passes: an answer read to its end
        has p = p(first token) x exp(log p of the rest)."""
        out = values.clone() if summed is None else summed
        if read.follow[0]:
            out[..., read.answer] = out[..., read.answer] * torch.exp(values[..., FOLLOW])
        return out

    def group_key(self, ids, corrupt: RunInput, answers: Answers) -> tuple:
        """What examples must share to run as one group: their prompt's and corrupted input's
        shapes, first changed token, noised positions and answers' lengths, and so their cells,
        schedule and passes (with an estimate, attribution patching's stacked runs: the same
        rows, positions and changed positions), and the estimate. Extra readouts group too:
        each example reads its own answers, spellings and clean reference."""
        return (len(ids), len(answers[0]), len(answers[1]), corrupt.rows, tuple(corrupt.ids.shape),
                corrupt.changed(list(ids)), tuple(corrupt.positions), corrupt.replace, corrupt.values is None,
                self.settings.estimate)

    def group_size(self, key: tuple) -> int:
        """The most examples of `key` one group may hold: one cell of each must fit in the rows
        (and, on a CPU, the rows x positions) that one forward may take; with an estimate,
        each example's rows stacked once per number (`attribution`)."""
        s = self.settings
        n_all = key[0] + max(key[1], key[2]) - 1  # with an answer's earlier tokens appended
        samples = 1 if s.operation in ABLATIONS else key[3]
        if s.estimate != "exact":
            samples = key[3] * (len(NUMBERS) + readouts_lib.columns(s.readouts))
        rows, token_rows = self._rows(n_all, samples)
        most = rows // samples if token_rows is None else min(rows // samples, token_rows // (samples * n_all))
        return max(1, most)

    def _rows(self, n_all: int, samples: int) -> tuple[int, int | None]:
        """The rows one forward may take, and on a CPU its rows x positions (`CPU_TOKEN_ROWS`)."""
        s, a = self.settings, self.parts
        rows = s.batch_rows or auto_batch_rows(a, n_all, samples, s.batch_budget)
        return rows, (CPU_TOKEN_ROWS if s.batch_rows is None and a.device == "cpu" else None)

    def trace(self, ids, corrupt: RunInput, answers: Answers, spellings=((), ()),
              on_batch: Callable[[int], None] | None = None) -> Measures:
        """The example's measures: every cell of the settings' components restored (or, with
        `estimate` "atp" or "atp*", estimated by attribution patching; with `verify`, the
        estimates' top cells and a random sample of the others also patched exactly: their
        p_restored, the rest NaN). `spellings`: each answer's spellings' first tokens, for
        the `prob_any` readout. With an ablating operation the clean run is the base and
        `corrupt` is not read."""
        return self._group([(ids, corrupt, answers, spellings)], on_batch)[0]

    def trace_group(self, jobs: list[tuple], on_batch: Callable[[int], None] | None = None) -> list[Measures]:
        """The measures of several examples, each job `trace`'s (ids, corrupted input, answers,
        spellings), that share a `group_key`: every forward runs all of them, each in its own
        block of rows, and each example's measures equal its own `trace`'s
        (docs/many-examples.md). `on_batch` counts the cells of all of them."""
        if len({self.group_key(*job[:3]) for job in jobs}) > 1:
            raise ConfigError("the examples of a group must share one group_key")
        return self._group(jobs, on_batch)

    def _group(self, jobs: list[tuple], on_batch) -> list[Measures]:
        """`trace_group` of jobs known to share a key: exact patching, or the estimates of
        attribution patching (one stacked run for the group), each example's screen then
        patched exactly on its own (its cells are its own)."""
        s = self.settings
        jobs = [(*job[:3], job[3] if len(job) > 3 else ((), ())) for job in jobs]
        if s.estimate == "exact":
            return self._exact(jobs, on_batch)
        group = attribute_group(self.parts, s.components, s.window, s.reverse, jobs, s.estimate, s.readouts)
        if s.verify or s.verify_sample:
            a = self.parts
            p_name = {v: names(v)[0] for v in variables(s.components)}
            for job, measures in zip(jobs, group):
                ids, corrupt = job[:2]
                target = {v: measures.restored[p_name[v]][..., 0] for v in p_name}
                first_changed = corrupt.changed(list(ids))
                rng = np.random.default_rng([s.seed % (1 << 64), *[int(i) for i in ids]])  # numpy takes no negative seed
                chosen = screened(target, cells(len(ids), a.n_layers, s.components, a.n_heads, first_changed),
                                  s.components, s.verify, s.verify_sample, rng, first_changed)
                measures.restored.update(self._exact([job], None, chosen)[0].restored)
        return group

    def _exact(self, jobs: list[tuple], on_batch, only: list[Cell] | None = None) -> list[Measures]:
        """Every cell (or those of `only`) patched, for each job (ids, corrupted input,
        answers, spellings) of a group: the measures of `trace`, one per job."""
        summed, top1 = None, []
        spellings = [job[3] for job in jobs] if self.settings.readouts else None
        for k, (extra, read) in enumerate(self._passes([job[2] for job in jobs], spellings)):
            group_ids, inputs = [], []
            for (ids, corrupt, *_), more in zip(jobs, extra):
                group_ids.append(list(ids) + more)
                more = torch.tensor([more], dtype=torch.long, device=corrupt.ids.device).expand(corrupt.ids.shape[0], -1)
                inputs.append(RunInput(torch.cat([corrupt.ids, more], dim=1), corrupt.positions, corrupt.values, corrupt.replace))
            got, top = self._pass(group_ids, len(jobs[0][0]), inputs, read, on_batch, top1=k == 0, only=only)
            top1 = top if k == 0 else top1
            summed = {name: self._combine(None if summed is None else summed[name], v, read) for name, v in got.items()}
        clean, corrupted = summed.pop("clean"), summed.pop("corrupt")
        S = corrupted.shape[0] // len(jobs)  # the corrupted rows of each example
        return [self._measures(len(job[0]), clean[e : e + 1], corrupted[e * S : (e + 1) * S], top1[e],
                               {name: v[..., e * S : (e + 1) * S, :] for name, v in summed.items()})
                for e, job in enumerate(jobs)]

    def _measures(self, n_tokens: int, clean: torch.Tensor, corrupted: torch.Tensor, top1: int, summed: dict) -> Measures:
        """One example's measures from its rows' values: the clean run's [1, V], the corrupted
        run's [S, V] and each cube variable's restored cells [cells..., S, V]."""
        extra = self.settings.readouts
        restored = {}
        for variable, values in summed.items():
            mean = values.mean(dim=-2).numpy()  # over the corrupted rows
            restored["p_" + variable] = mean[..., P].astype(np.float32)
            restored["logit_" + variable] = mean[..., LOGIT].astype(np.float32)
            restored.update({k: v.astype(np.float32) for k, v in readouts_lib.named(extra, variable, mean[..., EXTRA]).items()})
        runs = {**readouts_lib.named(extra, "clean", clean[0, EXTRA].numpy()),
                **readouts_lib.named(extra, "corrupt", corrupted[:, EXTRA].mean(dim=0).numpy())}
        if self.settings.operation == "mean":  # which mean the cells took: the cube says (docs/method.md)
            runs[MEAN_BY_POSITION] = np.array(int(self.means_by_position(n_tokens)), dtype=np.int8)
        return Measures(clean[0, P].numpy(), corrupted[:, P].mean(dim=0).numpy(), clean[0, LOGIT].numpy(),
                        corrupted[:, LOGIT].mean(dim=0).numpy(), top1, restored, runs)

    def _pass(self, group_ids: list[list[int]], n_tokens: int, corrupts: list[RunInput], read: _Read, on_batch,
              top1: bool, only: list[Cell] | None = None):
        """One pass over the plan for a group of G examples (their ids and corrupted inputs):
        the values of the clean runs ("clean": [G, V]), the corrupted runs ("corrupt": [G*S,
        V]) and the restored cells of the first `n_tokens` positions (per cube variable:
        [cells..., G*S, V]; with `only`, those cells, the others NaN), example e's rows
        e*S to (e+1)*S, and the clean runs' top tokens."""
        a, s = self.parts, self.settings
        ablating = s.operation in ABLATIONS
        reverse = s.reverse or ablating  # an ablation writes into the clean run
        G, corrupt = len(group_ids), _stacked(corrupts)
        S, n_all = (1 if ablating else corrupts[0].rows), len(group_ids[0])
        clean_input = RunInput(torch.tensor(group_ids, dtype=torch.long, device="cpu"))  # data, as corruption makes it
        comps = [COMPONENTS[c] for c in s.components]
        # the base run keeps its stream, and the values a severed path freezes
        base_save = ("hidden", *{c.sever for c in comps if c.sever})
        source_save = tuple({c.site for c in comps})
        clean_save = tuple({*base_save, *source_save}) if ablating else base_save if reverse else source_save
        clean = self._forward(clean_input.ids, G, read, save=clean_save, keep_cache=reverse, top1=top1,
                              keep_logprobs=bool(s.readouts))
        read = replace(read, reference=clean.logprobs)
        if ablating:  # the clean run is base and source: an operation makes the values
            corrupted, first_changed = clean, 0
        else:
            corrupted = self._forward(corrupt.ids, G * S, read, edit=self._edit(corrupt),
                                      save=source_save if reverse else base_save, keep_cache=not reverse)
            first_changed = corrupts[0].changed(group_ids[0])
        base, source = (clean, corrupted) if reverse else (corrupted, clean)
        base_input = clean_input if reverse else corrupt
        base_values = base.values.repeat_interleave(S, dim=0) if reverse else base.values
        means = self._reference_means(source_save, n_tokens) if s.operation == "mean" else None

        restored = {v: torch.full((*grid(v, s.components, n_tokens, a.n_layers, a.n_heads), G * S, self.width),
                                  float("nan"), device="cpu", dtype=torch.float64) for v in variables(s.components)}
        rows, token_rows = self._rows(n_all, S)
        # each example's share of a forward: the group's batches take as many rows as one example's would
        rows, token_rows = max(S, rows // G), (None if token_rows is None else token_rows // G)
        todo = cells(n_tokens, a.n_layers, s.components, a.n_heads, first_changed) if only is None else only
        # a pass's own cost is shared by the group's examples
        slack = None if s.pass_positions is None else tuple(p / G for p in s.pass_positions)
        plan = schedule(todo, S, rows, s.window, a.n_layers, first_changed, n_all, token_rows, pass_positions=slack)
        for cell in plan.unchanged:
            variable, at = slot(cell, s.components)
            restored[variable][at] = base_values
        if on_batch and plan.unchanged:
            on_batch(len(plan.unchanged) * G)
        for batch in plan.batches:
            inputs = self._batch_inputs(batch, S, G, base_input, base, source, n_tokens, means)
            run = self._forward(rows=G * len(batch.cells) * S, read=read, **inputs)
            values = run.values.view(G, len(batch.cells), S, self.width)
            for j, cell in enumerate(batch.cells):
                variable, at = slot(cell, s.components)
                restored[variable][at] = values[:, j].reshape(G * S, self.width)
            if on_batch:
                on_batch(len(batch.cells) * G)
        return {"clean": clean.values, "corrupt": corrupted.values, **restored}, (clean.top1.tolist() if top1 else [0] * G)

    def _reference_means(self, sites: tuple[str, ...], n_tokens: int) -> dict:
        """Mean ablation's values: site -> [layer, position, d], each site's mean over the
        reference prompts at each position where they all have the prompt's `n_tokens`
        tokens, else [layer, 1, d], its mean over all their positions (`means_by_position`).
        Made once per engine and key: the examples of a run share them."""
        a, s = self.parts, self.settings
        by_position = self.means_by_position(n_tokens)
        key = (sites, n_tokens if by_position else None)
        if key in self._means:
            return self._means[key]
        read = _Read(((0, 0),))
        summed, count = {}, 0
        for ids in s.reference:
            run = self._forward(torch.tensor([list(ids)], dtype=torch.long), 1, read, save=sites)
            for name, v in run.states.items():  # [1, layer, token, d]
                v = v[0].double() if by_position else v[0].double().sum(dim=1, keepdim=True)
                summed[name] = v if name not in summed else summed[name] + v
            count += 1 if by_position else len(ids)
        self._means[key] = {name: (v / count).to(a.torch_dtype) for name, v in summed.items()}
        return self._means[key]

    def means_by_position(self, n_tokens: int) -> bool:
        """Whether mean ablation takes the reference's mean at each position (every reference
        prompt has `n_tokens` tokens) or over all positions."""
        return all(len(ids) == n_tokens for ids in self.settings.reference)


def embedding_std(parts: Parts, span_token_ids: list[list[int]], backend=None) -> float:
    """Std of the input embeddings of all span tokens (repeats counted, as ROME does): the
    embedding module's output, one token per row, in one nnsight session that stops after
    the embeddings. Through a remote `backend` it runs where the weights are, and only the
    number comes back."""
    import nnsight

    from ..errors import ConfigError

    ids = torch.tensor([i for ids in span_token_ids for i in ids], dtype=torch.long, device="cpu")[:, None]
    if ids.numel() == 0:
        raise ConfigError("no span tokens to measure the embeddings' standard deviation on")
    std = None
    with parts.nn.session(backend=backend):
        tokens = ids.to(parts.embed.weight.device)  # the server's device, remotely
        with parts.nn.trace(tokens) as tracer:
            rows = parts.embed.output.detach().double()
            std = nnsight.save(float(rows.std()))
            tracer.stop()
    return std
