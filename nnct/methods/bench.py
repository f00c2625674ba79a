"""`nnct bench`: nnct's engine against one forward pass per cell, side by side in one run.

The plain loop is what the field runs. For noise it is ROME's `trace_with_patch` as
`experiments/causal_trace.py` runs it: for every cell, one forward of S+1 rows (row 0
clean, rows 1..S noisy), plain PyTorch forward hooks add the noise and copy row 0's value
into the other rows at the cell, and the probability is read from logits over every
position. For a prompt pair it is TransformerLens' `patching.py`: the clean run's values
cached once, then for every cell one forward of the corrupted prompt with the clean value
written at the cell, logits over every position. Either runs on a random sample of the
example's cells (`plain_cells`; the whole example would take the plain loop an hour), so
its time per cell is extrapolated to all cells; nnct traces the whole example, and the two
are compared on the sampled cells (max |difference|). Half the sample is timed before nnct's
run and half after, because a shared machine's speed drifts over minutes.

FLOPs are counted for the matrix multiplications of each forward (projections, MLP,
attention scores and sums over the keys actually attended, the unembedding at the
positions whose logits are computed). The **floor** is what an exact trace cannot avoid:
the clean and corrupted runs once, and for each cell not before the first corrupted token,
S rows over the positions from t on and the layers from the first one whose output
changes (l + 1 for hidden and its severed forms, the window's first layer for mlp, attn and
head), with logits at the last position only; an all-positions head cell runs from the first
corrupted token. (Finer savings are left out of it: the last layer needs only the last
position, and a window's first layer needs only its MLP for an mlp cell.)

An ablation (`operation` zero or mean, as `nnct ablate` runs it) has no corrupted run: the
plain loop is one forward of the clean prompt per cell, its hooks writing what the operation
makes (zeros, or the site's mean over `reference` prompts recorded once by plain hooks) at
the cell's site, positions and layers, logits over every position; nnct runs its engine with
that operation. Its floor is the clean run once and, for every cell (none is unchanged), one
row over the positions from t on and the layers from the first one whose output changes,
logits at the last position only. Mean ablation's reference forwards are counted in all
three (in the floor without logits).
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..exec import costs
from ..exec.engine import CPU_TOKEN_ROWS, Engine, Settings, auto_batch_rows, embedding_std, memory_budget
from ..inputs import spans
from ..inputs.pairs import substitute
from ..inputs.prompts import examples_for, experiment
from ..inputs.records import load_records
from ..interventions.corruption import RunInput, clean_input, draw, noise_input, prompt_input
from ..interventions.operations import ABLATIONS, Values, operation
from ..interventions.components import COMPONENTS, whole
from ..interventions.plan import Cell, cells, first_layer, schedule, slot, written_layers
from ..model.flops import Shape
from ..model.parts import Adapter
from ..model.sites import SITES
from ..results.cube import TITLES


# -- the plain loop ----------------------------------------------------------------------------

def plain_loop(adapter: Adapter, ids, corrupt: RunInput, answers: tuple[int, int], todo: list[Cell], window: int,
               cached_clean: bool = False, op: str = "copy", reference: tuple = (), means: dict | None = None) -> dict:
    """p_restored[answer] per cell, one forward per cell with plain hooks: ROME's S+1 rows
    (row 0 clean), or with `cached_clean` the clean values cached once and only the S
    corrupted rows run (TransformerLens). A severed path's frozen values come from one
    corrupted forward recorded before the loop (ROME's `trace_with_repatch` runs that
    forward again for every cell). `op` is what a cell writes (`interventions.operations`):
    an ablation (zero, mean) runs `corrupt` = the clean prompt (one row, `cached_clean`)
    with zeros, or the site's mean over the `reference` prompts' ids (`means`: those of
    `plain_means`, recorded before), written at the cell."""
    loop = _PlainLoop(adapter, ids, corrupt, cached_clean, op)
    comps = {c.component: COMPONENTS[c.component] for c in todo}
    keys = {(l, comps[c.component].site) for c in todo for l in written_layers(c, window, adapter.n_layers)}
    if cached_clean and loop.op.needs == "source":
        loop.clean = loop.recorded(torch.tensor([list(ids)], device=adapter.device), keys, 1, False)
    if loop.op.needs == "mean":
        loop.means = means if means is not None else loop.reference_means(reference, keys)
    severed = {c.sever for c in comps.values() if c.sever}
    if severed:
        loop.frozen = loop.recorded(loop.corrupted, {(l, s) for l in range(adapter.n_layers) for s in severed}, corrupt.rows,
                                    loop.noise is not None)
    with torch.no_grad():
        return {cell: loop.cell(cell, comps[cell.component], window, answers) for cell in todo}


def plain_means(adapter: Adapter, ids, reference: tuple, sites) -> dict:
    """`plain_loop`'s mean ablation values of `sites` in every layer, recorded once by plain
    hooks over the `reference` prompts."""
    loop = _PlainLoop(adapter, ids, clean_input(ids), True, "mean")
    with torch.no_grad():
        return loop.reference_means(reference, {(l, site) for l in range(adapter.n_layers) for site in sites})


class _PlainLoop:
    """The hooks of `plain_loop`: noise on the corrupted rows' span, a cell's restoration
    (or what its operation writes), a severed path's frozen values, and the forwards that
    record values once."""

    def __init__(self, adapter: Adapter, ids, corrupt: RunInput, cached_clean: bool, op: str = "copy"):
        self.adapter, self.hf, self.layout = adapter, adapter.hf, adapter.layout
        self.layers = adapter.layer_modules()
        self.corrupt, self.cached = corrupt, cached_clean
        self.T = len(ids)
        self.corrupted = corrupt.ids.to(adapter.device).expand(corrupt.rows, -1)
        self.x = self.corrupted if cached_clean else torch.cat([torch.tensor([list(ids)], device=adapter.device),
                                                                self.corrupted])
        self.off = 0 if cached_clean else 1  # the first corrupted row
        dtype = next(self.hf.parameters()).dtype
        self.noise = None if corrupt.values is None else corrupt.values.to(adapter.device, dtype)
        self.span = list(corrupt.positions)
        self.op = operation(op)
        self.clean, self.frozen, self.means = {}, {}, {}

    def noising(self, first_row: int):
        """The hook that noises the span of rows first_row.. (the corrupted ones)."""
        def add_noise(mod, inp, out):
            rows = out[first_row:, self.span]
            out[first_row:, self.span] = self.noise if self.corrupt.replace else rows + self.noise
            return out
        return self.hf.get_submodule(self.layout.embed).register_forward_hook(add_noise)

    def hook(self, layer: int, site: str, fn):
        return SITES[site].hook(SITES[site].module(self.layers[layer], self.layout), fn)

    def recorded(self, inputs, keys, rows, noised) -> dict:
        """{(layer, site): value [rows, token, d]} of one forward over `inputs` (all corrupted
        rows when `noised`)."""
        kept = {}

        def keep(key):
            return lambda value: kept.__setitem__(key, value[:rows].detach().clone())
        hooks = [self.hook(*key, keep(key)) for key in keys] + ([self.noising(0)] if noised else [])
        try:
            with torch.no_grad():
                self.hf(inputs)
        finally:
            for h in hooks:
                h.remove()
        return kept

    def reference_means(self, reference: tuple, keys) -> dict:
        """{(layer, site): [position or 1, d]}: each site's mean over the reference prompts, at
        each position where they all have the prompt's length, else over all their positions
        (as `Engine.means_by_position`)."""
        by_position = all(len(ids) == self.T for ids in reference)
        summed, count = {}, 0
        for ids in reference:
            kept = self.recorded(torch.tensor([list(ids)], device=self.adapter.device), keys, 1, False)
            for key, v in kept.items():
                v = v[0].double() if by_position else v[0].double().sum(dim=0, keepdim=True)
                summed[key] = v if key not in summed else summed[key] + v
            count += 1 if by_position else len(ids)
        return {key: (v / count).to(self.corrupted.device, next(self.hf.parameters()).dtype) for key, v in summed.items()}

    def cell(self, cell: Cell, c, window: int, answers) -> np.ndarray:
        """One cell's p of the answers, from one forward with its hooks."""
        n_layers, dh, off = self.adapter.n_layers, self.adapter.d_head, self.off
        positions = list(range(cell.token, self.T)) if c.all_positions else [cell.token]
        columns = slice(cell.head * dh, (cell.head + 1) * dh) if c.heads else slice(None)

        def restore(key):  # the operation's values at the cell (copy: the clean run's)
            def fn(value):
                given = Values(like=value[off:, positions, columns])
                if self.op.needs == "source":
                    given.source = (self.clean[key][0] if self.cached else value[0])[positions, columns]
                if self.op.needs == "mean":
                    mean = self.means[key]
                    given.mean = (mean[positions] if mean.shape[0] > 1 else mean.expand(len(positions), -1))[:, columns]
                value[off:, positions, columns] = self.op.make(given)
            return fn

        def freeze(key):
            def fn(value):
                value[off:, cell.token] = self.frozen[key][:, cell.token]
            return fn

        hooks = [self.noising(off)] if self.noise is not None else []
        hooks += [self.hook(l, c.site, restore((l, c.site))) for l in written_layers(cell, window, n_layers)]
        if c.sever:
            hooks += [self.hook(l, c.sever, freeze((l, c.sever))) for l in range(cell.layer + 1, n_layers)]
        try:
            logits = self.hf(self.x).logits
        finally:
            for h in hooks:
                h.remove()
        probs = torch.softmax(logits[off:, -1].float(), dim=-1).mean(dim=0)
        return probs[list(answers)].double().cpu().numpy()


# -- counting -------------------------------------------------------------------------------

def floor_flops(shape: Shape, n_tokens: int, samples: int, todo: list[Cell], window: int, first_corrupted: int,
                ablating: bool = False) -> float:
    """The exact trace's floor (module docstring); `ablating`: no corrupted run (samples 1,
    first_corrupted 0: every cell runs)."""
    total = shape.forward(1 if ablating else 1 + samples, n_tokens)
    for c in todo:
        if c.token >= first_corrupted:
            total += shape.forward(samples, n_tokens, start=c.token, first=first_layer(c, window, shape.n_layers))
    return total


def engine_flops(shape: Shape, n_tokens: int, samples: int, todo: list[Cell], window: int, first_corrupted: int, rows: int,
                 token_rows: int | None = None, ablating: bool = False, pass_positions=None) -> float:
    """What the engine's plan computes: the clean run, the corrupted one (none when
    `ablating`), and every batch."""
    return engine_plan(shape, n_tokens, samples, todo, window, first_corrupted, rows, token_rows, ablating, pass_positions)[0]


def engine_plan(shape: Shape, n_tokens: int, samples: int, todo: list[Cell], window: int, first_corrupted: int, rows: int,
                token_rows: int | None = None, ablating: bool = False, pass_positions=None) -> tuple[float, int]:
    """(the FLOPs of the engine's plan, as `engine_flops`, and its forward passes)."""
    plan = schedule(todo, samples, rows, window, shape.n_layers, first_corrupted, n_tokens, token_rows,
                    pass_positions=pass_positions)
    total = shape.forward(1, n_tokens) + (0.0 if ablating else shape.forward(samples, n_tokens))
    for b in plan.batches:
        total += shape.forward(len(b.cells) * samples, n_tokens, start=b.start, first=b.first_layer)
    return total, (1 if ablating else 2) + len(plan.batches)


def matmul_gflops(seconds: float = 1.0, n: int = 1024, device: str = "cpu", dtype: str = "float32") -> float:
    """This machine's matrix-multiply rate in the model's device and dtype, measured now
    (n = 4096 on a GPU, where 1024 would measure launches)."""
    n = 4096 if device == "cuda" else n
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=a.dtype)
    torch.mm(a, b)
    synchronize(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        count += 1
        synchronize(device)
    return count * 2 * n**3 / (time.perf_counter() - t0) / 1e9


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a clock read after it counts that work."""
    if device == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory within the block: the GPU's allocated bytes on cuda, else this process's
    resident memory (Linux: VmHWM after a reset)."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        self.bytes = 0
        if self.device == "cuda":
            synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated()
            return False
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                self.bytes = int(line.split()[1]) * 1024
        return False


# -- the benchmark -----------------------------------------------------------------------------

def bench_example(adapter: Adapter, data: str, n_tokens: int, passage: str = "first", corruption_kind: str = "noise"):
    """A subject-experiment context prompt of about `n_tokens` tokens: the first record's
    passage and passages of the following records until the prompt is long enough. The
    span is the first record's subject in its own passage, which goes `first` (the span
    near the start: the least favourable case for skipping positions) or `last` (the
    relevant passage just before the question, as retrieval often places it). For a
    prompt pair the subject is substituted as `trace --corruption substitute` does."""
    records = load_records(data).items
    if not records:
        raise DataError(f"{data}: no valid record to build a benchmark prompt from")
    base, fillers = records[0], [p for r in records[1:] for p in r.passages]
    exp = experiment("subject")
    others: list[str] = []
    while True:
        passages = list(base.passages) + others if passage == "first" else others + list(base.passages)
        ex = examples_for(replace(base, passages=tuple(passages)), exp, exp.prompt_format, 0)[0]
        tokens = spans.tokenize(adapter.tokenizer, ex.prompt)
        if len(tokens) >= n_tokens or not fillers:
            break
        others.append(fillers.pop(0))
    if corruption_kind == "prompt":
        ex = substitute(ex, exp, base, records, adapter.tokenizer, data)
    return ex, tokens


def _bench_input(adapter: Adapter, data: str, n_tokens: int, passage: str, corruption: str, samples: int, seed: int,
                 ablating: bool = False):
    """(tokens, answers, corrupted RunInput, span, samples) of the bench's prompt (`ablating`:
    the clean prompt's own input, one row)."""
    ex, tokens = bench_example(adapter, data, n_tokens, passage, "noise" if ablating else corruption)
    answers = (spans.answer_token(adapter.tokenizer, ex.target), spans.answer_token(adapter.tokenizer, ex.alt))
    if ablating:
        return tokens, answers, clean_input(tokens.ids), spans.span_positions(tokens, ex), 1
    if corruption == "prompt":
        corrupt_ids = spans.tokenize(adapter.tokenizer, ex.corrupt_prompt).ids
        span = [i for i, (a, b) in enumerate(zip(tokens.ids, corrupt_ids)) if a != b]
        if not span:
            raise DataError(f"{data}: the substituted prompt has the same tokens as the clean one "
                            f"({ex.corrupt_prompt!r}): nothing to patch")
        return tokens, answers, prompt_input(corrupt_ids), span, 1
    span = spans.span_positions(tokens, ex)
    level = 3 * embedding_std(adapter.parts, [[tokens.ids[i] for i in span]])
    return tokens, answers, noise_input(tokens.ids, span, draw(seed, samples, len(span), adapter.d_model, level)), span, samples


def reference_prompts(adapter: Adapter, data: str, n: int = 8) -> tuple:
    """Mean ablation's reference for the bench: the token ids of the subject experiment's
    prompts (each record with its own passage) of the `n` records after the first (whose
    passages fill the bench's prompt; the mean is over all their positions)."""
    exp = experiment("subject")
    records = load_records(data).items[1 : 1 + n]
    if not records:
        raise DataError(f"{data}: no record after the first to take mean ablation's reference from")
    return tuple(spans.tokenize(adapter.tokenizer, examples_for(r, exp, exp.prompt_format, 0)[0].prompt).ids
                 for r in records)


def run_atp(adapter: Adapter, data: str, n_tokens: int = 25, components=("hidden", "mlp", "attn"), samples: int = 10,
            window: int = 10, seed: int = 0, passage: str = "first", corruption: str = "noise", estimate: str = "atp") -> dict:
    """Attribution patching (`estimate` "atp" or "atp*") against nnct's exact engine on the
    bench's prompt, side by side: seconds of each and the agreement of the estimates with the
    exact effects (target's p), per component."""
    from ..analysis.agreement import scores
    from ..exec.attribution import names

    tokens, answers, corrupt, span, samples = _bench_input(adapter, data, n_tokens, passage, corruption, samples, seed)
    both = ((answers[0],), (answers[1],))
    comps = tuple(components)
    seconds, measured = {}, {}
    for how in (estimate, "exact"):  # the estimate first: the machine's speed cannot drift between them
        engine = Engine(adapter, Settings(comps, window, estimate=how, batch_budget=memory_budget(adapter.device)))
        t0 = time.perf_counter()
        measured[how] = engine.trace(tokens.ids, corrupt, both)
        synchronize(adapter.device)
        seconds[how] = time.perf_counter() - t0
    exact, atp = measured["exact"], measured[estimate]
    agreement = {}
    for variable in {k.removeprefix("p_") for k in exact.restored if k.startswith("p_")}:
        ie = exact.restored["p_" + variable][..., 0] - exact.p_corrupt[0]
        est = atp.restored[names(variable)[0]][..., 0]
        groups = [(c, (slice(None), slice(None), i)) for i, c in enumerate(whole(comps))] if variable == "restored" else [
            (variable.removeprefix("restored_"), (Ellipsis,))]
        for label, at in groups:
            x, y = est[at].ravel(), ie[at].ravel()
            keep = np.isfinite(x) & np.isfinite(y)
            agreement[label] = scores(x[keep], y[keep])
    return {"model": adapter.name, "tokens": len(tokens), "span": [min(span), max(span) + 1], "corruption": corruption,
            "components": ",".join(comps), "samples": samples, "window": window, "threads": torch.get_num_threads(),
            "device": adapter.device, "dtype": adapter.dtype, "estimate": estimate, "exact_seconds": seconds["exact"],
            "atp_seconds": seconds[estimate], "speedup": seconds["exact"] / seconds[estimate], "agreement": agreement}


def atp_table(r: dict) -> str:
    lines = [f"{r['model']} | {r['tokens']} tokens ({r['corruption']}, span {r['span'][0]}..{r['span'][1]}) | {r['components']}"
             f" | S={r['samples']} w={r['window']} | {r['device']} {r['dtype']} {r['threads']} threads",
             f"exact engine {r['exact_seconds']:.1f} s | {TITLES[r.get('estimate', 'atp')]} {r['atp_seconds']:.2f} s |"
             f" speedup {r['speedup']:.0f}x",
             f"{'component':16s}{'cells':>7s}{'pearson':>9s}{'spearman':>10s}{'recall@10':>11s}{'recall@50':>11s}"]
    for label, a in r["agreement"].items():
        lines.append(f"{label:16s}{a['cells']:7d}{a['pearson']:9.3f}{a['spearman']:10.3f}{a['recall_10']:11.2f}{a['recall_50']:11.2f}")
    return "\n".join(lines)


def _nnct(adapter: Adapter, settings: Settings, ids, corrupt, answers):
    """(nnct's measures of the example, its seconds, its PeakMemory)."""
    with PeakMemory(adapter.device) as memory:
        t0 = time.perf_counter()
        result = Engine(adapter, settings).trace(ids, corrupt, ((answers[0],), (answers[1],)))
        synchronize(adapter.device)
        seconds = time.perf_counter() - t0
    return result, seconds, memory


def _max_diff(result, plain: dict, components: tuple[str, ...]) -> float:
    """The largest |nnct - plain loop| of p over the cells the plain loop ran."""
    def measured(cell):
        variable, at = slot(cell, components)
        return result.restored["p_" + variable][at]
    return max(float(np.abs(measured(c) - p).max()) for c, p in plain.items())


def _labels(op: str, refs, corruption: str, cached: bool) -> tuple[str, str]:
    """(what corrupts or ablates, what the plain loop is) as the table names them."""
    if op in ABLATIONS:
        return f"{op} ablation" + (f" over {len(refs)} prompts" if refs else ""), "1 forward of the clean prompt per cell"
    return corruption, "TransformerLens (clean cached, 1 forward per cell)" if cached else "ROME (S+1 rows per cell)"


def _flops(shape, T: int, samples: int, todo, window: int, first_changed: int, rows: int, token_rows, cached: bool,
           ablating: bool, refs, pass_positions=None) -> tuple[float, float, float]:
    """(the plain loop's, nnct's, the floor's) FLOPs for the bench's cells, mean ablation's
    reference forwards included (all logits in the plain loop, 1 in nnct, none in the floor)."""
    per_cell_rows = samples if cached else samples + 1
    clean_cache = shape.forward(1, T, logits_at=T) if cached and not ablating else 0  # an ablation writes no clean value

    def means_flops(logits):  # the reference's forwards, with logits at `logits` positions (None: all)
        return sum(shape.forward(1, len(ids), logits_at=len(ids) if logits is None else logits) for ids in refs)
    f_plain = len(todo) * shape.forward(per_cell_rows, T, logits_at=T) + clean_cache + means_flops(None)
    f_nnct = engine_flops(shape, T, samples, todo, window, first_changed, rows, token_rows, ablating,
                          pass_positions) + means_flops(1)
    f_floor = floor_flops(shape, T, samples, todo, window, first_changed, ablating) + means_flops(0)
    return f_plain, f_nnct, f_floor


def run(adapter: Adapter, data: str, n_tokens: int = 25, components=("hidden", "mlp", "attn"), samples: int = 10, window: int = 10,
        batch_rows: int | None = None, plain_cells: int = 30, seed: int = 0, passage: str = "first",
        corruption: str = "noise", op: str = "copy", reference: int = 8, examples: int = 1) -> dict:
    """nnct's engine against the plain loop on the bench's prompt (`op` zero or mean: an
    ablation of the clean prompt, mean over the prompts of `reference` records), measured
    side by side, with the cost model's numbers (`exec.costs`) and the passes of the example;
    with `examples` > 1, nnct also traces that many examples of the bench's key at once
    (`many`): `table`'s numbers."""
    ablating = op in ABLATIONS
    tokens, answers, corrupt, span, samples = _bench_input(adapter, data, n_tokens, passage, corruption, samples, seed,
                                                           ablating)
    T, L = len(tokens), adapter.n_layers
    first_changed = 0 if ablating else min(span)
    todo = cells(T, L, tuple(components), adapter.n_heads, first_changed)
    budget = memory_budget(adapter.device)
    rows = batch_rows or auto_batch_rows(adapter, T, samples, budget)
    token_rows = CPU_TOKEN_ROWS if batch_rows is None and adapter.device == "cpu" else None
    sampled = random.Random(seed).sample(todo, min(plain_cells, len(todo)))
    # TransformerLens caches the clean run; ROME runs it in every forward; an ablation runs the clean prompt alone
    cached = corruption == "prompt" or ablating
    refs = reference_prompts(adapter, data, reference) if op == "mean" else ()
    dev, dtype = adapter.device, adapter.dtype
    rates, results, t_plain_total = [matmul_gflops(device=dev, dtype=dtype)], {}, 0.0
    with PeakMemory(dev) as mem_plain:
        t0 = time.perf_counter()  # the plain loop's means, once (not per cell)
        means = plain_means(adapter, tokens.ids, refs, {COMPONENTS[c].site for c in components}) if op == "mean" else None
        t_means = time.perf_counter() - t0

        def plain(part):
            return plain_loop(adapter, tokens.ids, corrupt, answers, part, window, cached_clean=cached, op=op, means=means)

        # This machine's speed drifts over minutes, so the plain loop is timed in two halves,
        # one before and one after nnct's run, and the matmul rate likewise.
        half = len(sampled) // 2
        t0 = time.perf_counter()
        results.update(plain(sampled[:half]))
        t_plain_total += time.perf_counter() - t0
    cost = costs.cost(adapter, fresh=True)  # measured now, beside the bench's own timings; kept for runs
    slack = costs.pass_positions(adapter, cost)
    settings = Settings(tuple(components), window, batch_rows=batch_rows, batch_budget=budget, operation=op, reference=refs,
                        pass_positions=slack)
    result, t_nnct, mem_nnct = _nnct(adapter, settings, tokens.ids, corrupt, answers)
    t0 = time.perf_counter()
    results.update(plain(sampled[half:]))
    t_plain_total += time.perf_counter() - t0
    rates.append(matmul_gflops(device=dev, dtype=dtype))
    rate, t_plain_cell = sum(rates) / 2, t_plain_total / len(sampled)

    diff = _max_diff(result, results, tuple(components))
    t_plain = t_plain_cell * len(todo) + t_means
    shape = Shape.of(adapter)
    f_plain, f_nnct, f_floor = _flops(shape, T, samples, todo, window, first_changed, rows, token_rows, cached, ablating, refs,
                                      slack)
    n_passes = engine_plan(shape, T, samples, todo, window, first_changed, rows, token_rows, ablating, slack)[1]
    kind, plain_name = _labels(op, refs, corruption, cached)
    grouped = many(adapter, settings, tokens.ids, corrupt, answers, examples, seed) if examples > 1 else None
    return {
        "model": adapter.name, "tokens": T, "span": [min(span), max(span) + 1], "passage": passage,
        "corruption": kind, "operation": op, "plain": plain_name, "components": ",".join(components),
        "samples": samples, "window": window, "cells": len(todo), "plain_cells_timed": len(sampled), "batch_rows": rows,
        "device": adapter.device, "dtype": adapter.dtype, "threads": torch.get_num_threads(),
        "matmul_gflops": rate,
        "plain_loop": {"seconds": t_plain, "cells_per_s": len(todo) / t_plain, "gflop": f_plain / 1e9,
                       "gflops": f_plain / t_plain / 1e9, "peak_mib": mem_plain.bytes / 2**20},
        "nnct": {"seconds": t_nnct, "cells_per_s": len(todo) / t_nnct, "gflop": f_nnct / 1e9,
                 "gflops": f_nnct / t_nnct / 1e9, "peak_mib": mem_nnct.bytes / 2**20},
        "floor_gflop": f_floor / 1e9, "speedup": t_plain / t_nnct, "max_abs_diff": diff,
        "cost": {"pass_s": cost.pass_s, "gflops": cost.gflops, "passes": n_passes,
                 "predicted_s": cost.seconds(n_passes, f_nnct + sum(shape.forward(1, len(i)) for i in refs))},
        "many": grouped,
    }


def many(adapter: Adapter, settings: Settings, ids, corrupt: RunInput, answers, n: int, seed: int = 0) -> dict:
    """nnct's engine on `n` examples of the bench's group key at once, in groups of
    `Engine.group_size`: the bench's prompt with `n` noise draws (seeds `seed`.. of the same
    level), or its prompt pair `n` times (n pairs of one length: the same passes as n
    different pairs). Their seconds and passes beside one example's, and the largest
    |difference| of p between each example and that example traced alone."""
    engine = Engine(adapter, settings)
    noised = corrupt.values is not None
    level = float(corrupt.values.std()) if noised else 0.0

    def example(k: int) -> RunInput:
        if not noised:
            return corrupt
        values = draw(seed + k, corrupt.rows, len(corrupt.positions), adapter.d_model, level).to(corrupt.values.dtype)
        return RunInput(corrupt.ids, corrupt.positions, values, corrupt.replace)

    both = ((answers[0],), (answers[1],))
    jobs = [(ids, example(k), both) for k in range(n)]
    size = engine.group_size(engine.group_key(*jobs[0]))
    with PeakMemory(adapter.device) as memory:
        t0 = time.perf_counter()
        got = [m for i in range(0, n, size) for m in engine.trace_group(jobs[i : i + size])]
        synchronize(adapter.device)
        seconds = time.perf_counter() - t0
    passes, engine.forwards = engine.forwards, 0
    t0 = time.perf_counter()
    alone = engine.trace(*jobs[-1])
    synchronize(adapter.device)
    t_one = time.perf_counter() - t0
    diff = max(float(np.nanmax(np.abs(got[-1].restored[k] - alone.restored[k]))) for k in alone.restored if k.startswith("p_"))
    return {"examples": n, "kind": "noise draws" if noised else "the pair, repeated", "group_size": size,
            "seconds": seconds, "per_example_s": seconds / n, "passes": passes, "peak_mib": memory.bytes / 2**20,
            "one_seconds": t_one, "one_passes": engine.forwards, "ratio": seconds / t_one, "max_abs_diff": diff}


def table(r: dict) -> str:
    head = (f"{r['model']} | {r['tokens']} tokens ({r.get('corruption', 'noise')}, span {r['span'][0]}..{r['span'][1]},"
            f" passage {r.get('passage', 'first')}) | {r['components']} | S={r['samples']} "
            f"w={r['window']} | {r['cells']} cells | {r['device']} {r['dtype']} {r['threads']} threads | "
            f"matmul {r['matmul_gflops']:.1f} GFLOP/s")
    rows = [("engine", "seconds", "cells/s", "GFLOP", "GFLOP/s", "% of matmul", "peak MiB")]
    for name in ("plain_loop", "nnct"):
        m = r[name]
        label = "nnct" if name == "nnct" else f"plain loop: {r.get('plain', 'ROME')} (timed on {r['plain_cells_timed']} cells)"
        rows.append((label, f"{m['seconds']:.1f}", f"{m['cells_per_s']:.2f}", f"{m['gflop']:.0f}", f"{m['gflops']:.1f}",
                     f"{100 * m['gflops'] / r['matmul_gflops']:.0f}%", f"{m['peak_mib']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head] + ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in rows]
    if "cost" in r:
        c = r["cost"]
        lines.append(f"cost model (measured, cached): a pass's own cost {1000 * c['pass_s']:.1f} ms, rate {c['gflops']:.1f} GFLOP/s"
                     f" | nnct: {c['passes']} passes for the example, predicted {c['predicted_s']:.1f} s")
    if r.get("many"):
        m = r["many"]
        lines.append(f"{m['examples']} examples ({m['kind']}) at once, groups of {m['group_size']}: {m['seconds']:.1f} s,"
                     f" {m['per_example_s']:.2f} s per example, {m['passes']} passes | one example alone:"
                     f" {m['one_seconds']:.2f} s, {m['one_passes']} passes | {m['examples']} take {m['ratio']:.2f}x one |"
                     f" max |difference| {m['max_abs_diff']:.2e}")
    floor = "trace" if r.get("operation", "copy") == "copy" else "ablation"
    lines.append(f"speedup {r['speedup']:.1f}x | max |difference| {r['max_abs_diff']:.2e} | "
                 f"exact-{floor} floor {r['floor_gflop']:.0f} GFLOP: nnct computes {r['nnct']['gflop'] / r['floor_gflop']:.2f}x the floor, "
                 f"the plain loop {r['plain_loop']['gflop'] / r['floor_gflop']:.1f}x")
    return "\n".join(lines)
