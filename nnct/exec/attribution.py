"""Attribution patching (AtP, Nanda 2023; AtP* with GradDrop): every cell's indirect effect
from one forward and one backward pass (AtP*: one per layer), as nnsight interventions.

The exact effect of restoring a cell is M(restored) - M(corrupted). AtP takes its first-order
estimate at the base run: the change a restoration writes, dotted with the gradient of M
there, summed over the positions and layers the exact cell writes (the window for mlp, attn
and head; every prompt position from the first corrupted one for head_all_pos), then averaged
over the corrupted rows:

    IE_atp(cell) = mean_s sum_(layer, position) (a_source - a_base) . dM/da |base run s

Restoring, the base is the corrupted run and the source the clean one; reverse patching
(noising) swaps them: (a_corrupt - a_clean) . dM/da at the clean run, which estimates
M(patched) - M(clean); the estimates are returned in the cube's IE convention (reverse:
M(clean) - M(patched)), so that they compare with `results.cube.effects` directly. M is each of the
numbers a forward reports: p(target), p(alt) and their logits (float32, at the last prompt
position, as `engine` reads them), so that the cube's metrics can be formed from the
estimates, and each column of the extra readouts asked for (`interventions.readouts`; `kl`
to the clean run's distribution). All gradients come from one backward pass: the base rows
are stacked once per number and each copy contributes one number to the sum that is
differentiated (rows of a batch do not interact, so each row's gradient is its own number's).

Several examples that share their prompts' length, corrupted rows and positions
(`Engine.group_key`) are estimated at once (`attribute_group`; `attribute` is a group of
one): the clean runs are the rows of one trace, each example's corrupted rows a block of
another, and each gradient pass stacks all the examples' base rows once per number; each row
reads its own example's answers and readout inputs (`readouts.per_example`), so each
example's estimates are those it has alone (tests/exec/test_engine_groups_more.py).

AtP* (Kramar et al. 2024) adds GradDrop against cancellation: a cell whose direct effect
and an indirect one through some later layer cancel to first order has a gradient near zero
although either path alone matters. With estimate "atp*" the gradient is taken L times,
each time with no gradient flowing through what one layer adds to the residual stream (its
attention and MLP outputs' gradients set to zero in nnsight's backward pass), and the
estimate is the mean of the L estimates (docs/method.md: signed, as nnct's contract has it;
the paper averages their magnitudes). Its other fix, recomputing the attention softmax for
a head's queries and keys, estimates cells that patch a query or a key: nnct's head cells
patch the head's output, whose own attention pattern no estimate here linearises, so it
has nothing to correct in this cube (docs/method.md).

A severed path is not a single write, and an answer of several tokens is a product of
probabilities; neither has an AtP estimate here (`ConfigError`). Cells before the first
corrupted token are 0, as the exact engine makes them (the two runs are equal there). The
gradient flows from the input embeddings, which get `requires_grad` (a hosted model's weights
have none; the corruption is written there too); weights that require a gradient (a local
model) are taken out of the graph for the pass, so that none accumulates in the model, and a
model whose weights require none is left as it is.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import compat
from ..errors import ConfigError
from ..interventions import readouts as readouts_lib
from ..interventions.components import COMPONENTS, grid, variables
from ..interventions.corruption import RunInput
from ..interventions.plan import cells, slot, written_layers
from ..model.parts import Adapter, Parts
from ..model.sites import CONTRIBUTIONS, in_forward_order
from .measures import Measures

# The estimates: plain AtP, and AtP with GradDrop (docs/method.md).
ESTIMATES = ("atp", "atp*")
# The numbers whose gradients are always taken, in stacking order (the extra readouts' columns follow).
NUMBERS = ("p_target", "p_alt", "logit_target", "logit_alt")


def names(variable: str) -> tuple[str, str]:
    """The cube's names of the estimates of a restored variable (`components`): of p, of the logits."""
    suffix = variable.removeprefix("restored")
    return "ie_atp" + suffix, "ie_atp_logit" + suffix


def readout_name(readout: str, variable: str) -> str:
    """The cube's name of the estimates of an extra readout's IE in a restored variable."""
    return f"ie_atp_{readout}{variable.removeprefix('restored')}"


def _set_grad(params: list, on: bool) -> None:
    """Weights that require a gradient leave the graph for the pass (no .grad accumulates in
    the user's model) and come back after it; frozen ones, as a server's, are never in
    `params`. (Plain calls, not a context manager: a decorator does not travel with the
    code nnsight sends to a server.)"""
    for p in params:
        p.requires_grad_(on)


def check(components, several_tokens: bool) -> None:
    """ConfigError for what AtP cannot estimate: severed paths, answers of several tokens."""
    severed = [c for c in components if COMPONENTS[c].sever]
    if severed:
        raise ConfigError(f"attribution patching has no estimate for {', '.join(severed)} (a severed path is not one write)")
    if several_tokens:
        raise ConfigError("attribution patching takes one-token answers: use --answer first")


def _values(a: Parts, ids: torch.Tensor, rows: int, sites, answers, edit=None, grad=False, drop=None, extra=(),
            given=None, kept_logprobs: int = 1):
    """One trace over `rows` rows: the sites' values ({site: [row, layer, token, d]}), the
    numbers of each row [row, n] (NUMBERS of the answers' first tokens `answers` [row, 2],
    then the `extra` readouts' columns, read with `given`), its top token [row] and the first
    `kept_logprobs` rows' log-probabilities [row, vocab]; with `grad`, also the gradients of
    the numbers over `rows` = n x base rows, row block k carrying number k ({site: [n, base
    row, layer, token, d]}). With `drop` (a layer; GradDrop), no gradient flows through what
    that layer adds to the residual stream (`CONTRIBUTIONS`): their gradients are set to
    zero, so its own sites' gradients are zero."""
    n = len(NUMBERS) + readouts_lib.columns(extra)
    x = ids.to(a.device).expand(rows, -1)
    answers = answers.to(a.device)
    saved: dict[str, list] = {s.name: [] for s in sites}
    grads: dict[tuple[str, int], object] = {}
    context = torch.enable_grad() if grad else torch.no_grad()
    with context, a.nn.trace(x, logits_to_keep=1):
        emb = a.embed.output
        if edit is not None:
            positions, values, replace = edit
            emb[:, positions] = values if replace else emb[:, positions] + values
        if grad:
            emb.requires_grad_(True)
        read = []  # (site, layer, value, whether its gradient is dropped), in forward order
        for layer in range(a.n_layers):
            dropped = set(CONTRIBUTIONS) if layer == drop else set()
            for site in in_forward_order({s.name for s in sites} | dropped):
                value = site.read(a, layer)
                if site.name in saved:
                    saved[site.name].append(value.detach().save())
                read.append((site.name, layer, value, site.name in dropped))
        logits = a.nn.output.logits[:, -1].float()
        probs = logits.softmax(-1)
        every = torch.cat([probs.gather(-1, answers), logits.gather(-1, answers)], dim=1)
        if extra:
            every = torch.cat([every, readouts_lib.compute(extra, logits, given)], dim=1)
        numbers = every.detach().save()
        logprobs = logits[:kept_logprobs].log_softmax(-1).detach().save()
        top = logits.argmax(-1).save()
        if grad:
            base = rows // n
            number = torch.cat([every[k * base:(k + 1) * base, k] for k in range(n)]).sum()
            with number.backward():
                for name, layer, value, zeroed in reversed(read):
                    if zeroed:
                        value.grad = torch.zeros_like(value)
                    elif name in saved:
                        grads[(name, layer)] = value.grad.save()
    values = {k: torch.stack(v, dim=1) for k, v in saved.items()}
    if not grad:
        return values, numbers.double().cpu(), top.cpu(), logprobs, None
    gradients = {}
    for k, v in values.items():
        zero = torch.zeros_like(v[:, 0])
        per_layer = [grads.get((k, layer), zero) for layer in range(a.n_layers)]  # a dropped site's is zero
        gradients[k] = torch.stack(per_layer, dim=1).reshape(n, rows // n, *v.shape[1:])
    return values, numbers.double().cpu(), top.cpu(), logprobs, gradients


def _mean_gradient(a: Parts, ids, rows: int, sites, answers, edit, drops, extra, given):
    """`_values` with gradients, the gradients averaged (float64) over one backward pass per
    entry of `drops` (None: none dropped). The estimate is linear in the gradient, so
    GradDrop's mean of L estimates is the estimate at the mean gradient."""
    total = None
    for drop in drops:
        values, numbers, top, _, grads = _values(a, ids, rows, sites, answers, edit, True, drop, extra, given)
        if total is None:
            total, kept = {k: v.double() for k, v in grads.items()}, (values, numbers, top)
        else:
            for k, v in grads.items():
                total[k] += v.double()
    return (*kept, {k: v / len(drops) for k, v in total.items()})


def _cell_sums(contrib: dict, a: Parts, components, window: int, n_tokens: int, first_changed: int, n: int) -> dict:
    """Each cell's estimate [number, cells...] (`n` numbers): its site's contributions summed
    over the layers and positions it restores (0 before the first changed position, where the
    runs agree)."""
    out = {v: np.full((n, *grid(v, components, n_tokens, a.n_layers, a.n_heads)), np.nan)
           for v in variables(components)}
    for cell in cells(n_tokens, a.n_layers, components, a.n_heads, first_changed):
        c = COMPONENTS[cell.component]
        variable, at = slot(cell, components)
        if cell.token < first_changed:
            out[variable][(slice(None), *at)] = 0.0
            continue
        layers = list(written_layers(cell, window, a.n_layers))
        tokens = list(range(cell.token, n_tokens)) if c.all_positions else [cell.token]
        values = contrib[c.site][:, layers][:, :, tokens]
        if c.heads:
            values = values[..., cell.head]
        out[variable][(slice(None), *at)] = values.sum(dim=(1, 2)).numpy()
    return out


def attribute(model: Adapter | Parts, components: tuple[str, ...], window: int, reverse: bool, ids, corrupt: RunInput,
              answers, estimate: str = "atp", extra=(), spellings=((), ())) -> Measures:
    """The AtP estimate of every cell of `components` for one example (see the module's
    docstring), with the clean and corrupted runs' own values: `Measures` whose `restored`
    holds the estimates under their cube names (`names`, `readout_name` for each of the
    `extra` readouts), [cells..., answer]. `estimate` "atp*" adds GradDrop: the gradient is
    the mean of the model's L gradients with one layer's residual contribution dropped each
    (`_values`), one backward pass each. A group of one (`attribute_group`)."""
    return attribute_group(model, components, window, reverse, [(ids, corrupt, answers, spellings)], estimate, extra)[0]


def _stacked(jobs: list[tuple]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The group's corrupted ids [1 or G*S, position] (one row for a single example's noise:
    the trace expands it) and noise [G*S, noised position, d] or None, example e's rows
    e*S..e*S+S-1 (the examples share their positions and rows: `Engine.group_key`)."""
    inputs = [job[1] for job in jobs]
    if len(inputs) == 1:
        return inputs[0].ids, inputs[0].values
    ids = torch.cat([i.ids.expand(i.rows, -1) for i in inputs])
    return ids, None if inputs[0].values is None else torch.cat([i.values for i in inputs])


def attribute_group(model: Adapter | Parts, components: tuple[str, ...], window: int, reverse: bool, jobs: list[tuple],
                    estimate: str = "atp", extra=()) -> list[Measures]:
    """`attribute` of G examples at once, each job (ids, corrupted input, answers,
    spellings), sharing their prompts' length, corrupted rows S and corrupted positions
    (`Engine.group_key`): the clean runs are rows 0..G-1 of one trace, the corrupted runs
    rows e*S..e*S+S-1 of another, and a gradient pass stacks the base runs' G (or G*S) rows
    once per number. Rows do not interact, so the backward of the summed numbers gives each
    row its own number's gradient, and each example's estimates are those it has alone."""
    if estimate not in ESTIMATES:
        raise ConfigError(f"estimate {estimate!r}: attribution patching is one of {', '.join(ESTIMATES)}")
    check(components, any(len(a) > 1 for job in jobs for a in job[2]))
    readouts_lib.check_gradient(extra)
    n = len(NUMBERS) + readouts_lib.columns(extra)
    a = parts = model.parts if isinstance(model, Adapter) else model
    sites = in_forward_order({COMPONENTS[c].site for c in components})
    G, S, n_tokens, corrupt = len(jobs), jobs[0][1].rows, len(jobs[0][0]), jobs[0][1]
    first = [(job[2][0][0], job[2][1][0]) for job in jobs]
    spellings = [job[3] for job in jobs]
    tokens = torch.tensor(first, dtype=torch.long, device=a.device)  # [G, 2]: each example's answers' first tokens
    clean_ids = torch.tensor([list(job[0]) for job in jobs], dtype=torch.long, device=a.device)
    corrupt_ids, noise = _stacked(jobs)
    edit = None if noise is None else (list(corrupt.positions), noise.to(a.device, a.torch_dtype), corrupt.replace)
    drops = list(range(a.n_layers)) if estimate == "atp*" else [None]
    trainable = [p for p in compat.torch_module(parts.nn).parameters() if p.requires_grad]
    _set_grad(trainable, False)
    given = readouts_lib.per_example(first, spellings, device=a.device)
    try:
        if reverse:  # the gradient at the clean run, the corrupted values as the source
            if extra:  # the corrupted run's readouts (`kl`) need the clean run's distribution
                reference = _values(parts, clean_ids, G, (), tokens, kept_logprobs=G)[3]
                given = readouts_lib.per_example(first, spellings, reference, a.device)
            source, corrupted, _, _, _ = _values(parts, corrupt_ids, G * S, sites, tokens.repeat_interleave(S, dim=0),
                                                 edit, extra=extra, given=given)
            # the gradient pass: number k's block holds the G clean rows
            stacked = readouts_lib.per_example(first * n, spellings * n, None if not extra else reference.repeat(n, 1),
                                               a.device)
            base, clean, top, g = _mean_gradient(parts, clean_ids.repeat(n, 1), n * G, sites, tokens.repeat(n, 1),
                                                 None, drops, extra, stacked)
            base = {k: v[:G].repeat_interleave(S, dim=0) for k, v in base.items()}  # each example's, per corrupted row
            g = {k: v[:, :, None] for k, v in g.items()}  # [number, G, 1, layer, token, d]
            clean, top = clean[:G], top[:G]
        else:
            source, clean, top, reference, _ = _values(parts, clean_ids, G, sites, tokens, extra=extra, given=given,
                                                       kept_logprobs=G)
            source = {k: v.repeat_interleave(S, dim=0) for k, v in source.items()}  # each example's, per corrupted row
            # the gradient pass: number k's block holds the G*S corrupted rows
            stacked = readouts_lib.per_example(first * n, spellings * n, reference.repeat(n, 1), a.device)
            stacked_edit = None if edit is None else (edit[0], edit[1].repeat(n, 1, 1), edit[2])
            stacked_ids = corrupt_ids.repeat(n, 1) if corrupt_ids.shape[0] > 1 else corrupt_ids
            base, corrupted, _, g = _mean_gradient(parts, stacked_ids, n * G * S, sites,
                                                   tokens.repeat_interleave(S, dim=0).repeat(n, 1), stacked_edit, drops,
                                                   extra, stacked)
            base = {k: v[:G * S] for k, v in base.items()}
            g = {k: v.unflatten(1, (G, S)) for k, v in g.items()}  # [number, G, S, layer, token, d]
            corrupted = corrupted[:G * S]
    finally:
        _set_grad(trainable, True)
    out = []
    for e, (ids, corrupt_e, *_) in enumerate(jobs):
        rows = slice(e * S, (e + 1) * S)
        # contributions [number, sample, layer, token(, head)]: the change dotted with the gradient
        contrib = {}
        for site in sites:
            delta = source[site.name][rows] - base[site.name][rows]  # [S, layer, token, d]
            product = delta[None].double() * g[site.name][:, e]
            if site.heads:
                product = product.unflatten(-1, (a.n_heads, a.d_head))
            contrib[site.name] = product.sum(-1).mean(dim=1).cpu()  # [number, layer, token(, head)]
        cube = _cell_sums(contrib, a, components, window, n_tokens, corrupt_e.changed(list(ids)), n)
        out.append(_measures(cube, extra, reverse, clean[e:e + 1].cpu(), corrupted[rows].cpu(), int(top[e])))
    return out


def _measures(out: dict, extra, reverse: bool, clean, corrupted, top: int) -> Measures:
    """`Measures` of the cells' estimates `out` ({variable: [number, cells...]}) and the two
    runs' numbers (clean [1, number], corrupted [S, number]), under the cube's names."""
    sign = -1.0 if reverse else 1.0  # reverse estimates M(patched) - M(clean): the IE is its negative
    restored = {}
    for variable, values in out.items():
        p_name, logit_name = names(variable)
        values = sign * np.moveaxis(values, 0, -1)  # [cells..., number]
        restored[p_name] = values[..., :2].astype(np.float32)
        restored[logit_name] = values[..., 2:4].astype(np.float32)
        for name, v in readouts_lib.split(extra, values[..., 4:]).items():
            restored[readout_name(name, variable)] = v.astype(np.float32)
    runs = {**readouts_lib.named(extra, "clean", clean[0, 4:].numpy()),
            **readouts_lib.named(extra, "corrupt", corrupted[:, 4:].mean(0).numpy())}
    return Measures(clean[0, :2].numpy(), corrupted[:, :2].mean(0).numpy(), clean[0, 2:4].numpy(),
                    corrupted[:, 2:4].mean(0).numpy(), top, restored, runs)
