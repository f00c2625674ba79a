"""MEMIT's and AlphaEdit's batch edits measured on a local model through nnsight (Meng et al.
2023, Fang et al. 2025; docs/method.md, "Many edits at once").

N facts are written over a range of layers R ending at L. Each fact's target z_i is a hidden
state at layer L's residual output (the `hidden` site) at its last subject token: ROME's
value optimisation (`rome.value`) with the delta added to the residual stream instead of the
MLP's output, as MEMIT's compute_z does (`targets` optimises several facts' in the same
passes, each as if alone: `rome.values`). Then, for each layer l of R in ascending order, with
the updates of the layers before it already in the weights: the keys K_l (the down
projection's input at the last subject token, as `rome.keys` reads it: the mean of the bare
prompt's key and of the prefixed prompts' mean, as MEMIT's compute_ks averages within each
kind of context template first), the hidden states h_L at the bare prompts, and the residuals
R_l = (z - h_L) / (|R| - index of l), so the first layer takes a share of what is left and
the last layer all of it. A solver turns (K_l, R_l) into factors (`interventions.batch_update`):
MEMIT's, with C_l and its weight, or AlphaEdit's, with C_l's null space and the keys of
earlier batches (`preserved`), which the caller adds a batch's keys to once it is written.

The model's weights are edited only inside `rome.edited_weights` blocks and come back after;
the result is a list of (layer, left, right), one per layer of R, that `rome.edited_weights`
and `rome.apply_in_trace` apply like ROME's edits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..interventions import batch_update
from . import rome


@dataclass(frozen=True)
class Hparams:
    """MEMIT's and AlphaEdit's GPT-2 XL settings (hparams/MEMIT/gpt2-xl.json,
    hparams/AlphaEdit/gpt2-xl.json): the value optimisation is ROME's but for the clamp
    (0.75 |z0|); lambda (mom2_update_weight) 20000; AlphaEdit's null-space threshold 2e-2
    and its L2 weight 10. `nullspace_energy` (not AlphaEdit's): a null space of the
    directions holding at most this share of C's trace instead of the threshold's."""

    value: rome.Hparams = field(default_factory=lambda: rome.Hparams(clamp=0.75))
    mom2_update_weight: float = 20000.0
    nullspace_threshold: float = 2e-2
    l2: float = 10.0
    nullspace_energy: float | None = None


LLAMA_FAMILY = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text")
# lambda chosen for a model on its own development facts (docs/method.md): the embedded model's
# maximises MEMIT's score (the harmonic mean of efficacy, paraphrase and specificity) there
UPDATE_WEIGHT_BY_MODEL = {"smollm2-135m": 5000.0}


def hparams_for(model_type: str, name: str = "") -> Hparams:
    """The settings for a model: lambda chosen for it on its development facts where one was
    (`UPDATE_WEIGHT_BY_MODEL`, by nnct's model name), else its family's: GPT-2 XL's, but
    lambda 15000 for Llama-like models (AlphaEdit's Llama3-8B and EasyEdit's Llama setting).
    That file's value settings (lr 0.1, 25 steps) are not taken: on 20 development facts of
    the embedded model (none of them the held-out ones) they wrote targets the model reached
    with p 0.39 on average, and MEMIT's efficacy was 0.70, against 0.95 with GPT-2 XL's
    (docs/method.md)."""
    if name in UPDATE_WEIGHT_BY_MODEL:
        return Hparams(mom2_update_weight=UPDATE_WEIGHT_BY_MODEL[name])
    return Hparams(mom2_update_weight=15000.0) if model_type in LLAMA_FAMILY else Hparams()


@dataclass(frozen=True)
class Fact:
    """One fact's token ids: its prompt alone first and then behind each context prefix, the
    last subject token in each (`lookups`), the new object's tokens, and the KL prompt
    "{subject} is a" with its last subject token."""

    prompts: list[list[int]]
    lookups: list[int]
    target: list[int]
    kl: list[int]
    kl_lookup: int


def target(parts, fact: Fact, layer: int, hp: rome.Hparams, pad: int = 0) -> tuple[torch.Tensor, dict]:
    """(z [d_model] float64 on the CPU, the optimisation's log): the residual output of `layer`
    at the fact's last subject token that makes the model say its new object."""
    return targets(parts, [fact], layer, hp, pad=pad)[0]


TARGET_BATCH = 8  # facts whose targets `targets` optimises together (analysis/bench_memit.py)


def targets(parts, facts: list[Fact], layer: int, hp: rome.Hparams, pad: int = 0,
            batch: int | None = None, found=None) -> list[tuple[torch.Tensor, dict]]:
    """`target` of every fact, `batch` (TARGET_BATCH) facts at a time optimised together in
    the same forward passes (`rome.values`: each as if alone), the facts taken in order of how many tokens
    each step runs of their rows (those from the lookup on: less padding in a batch);
    `found(i, (z, log))` is called as each fact's is done (a long run keeps them as it goes)."""
    tokens = [max(len(p) + len(f.target) - 1 - at for p, at in zip(f.prompts, f.lookups)) for f in facts]
    order = sorted(range(len(facts)), key=tokens.__getitem__)
    out, batch = [None] * len(facts), batch or TARGET_BATCH
    for lo in range(0, len(facts), batch):
        which = order[lo:lo + batch]
        group = [rome.Value([p + f.target[:-1] for p in f.prompts], f.lookups, f.target, [f.kl], [f.kl_lookup])
                 for f in (facts[i] for i in which)]
        for i, (z, _, log) in zip(which, rome.values(parts, group, layer, hp, pad=pad, site="hidden")):
            out[i] = (z.cpu(), log)
            if found is not None:
                found(i, out[i])
    return out


def fact_keys(parts, facts: list[Fact], layer: int) -> torch.Tensor:
    """[d_ff, N] float64: each fact's key at `layer`: the mean of its bare prompt's key and
    of the mean of its prefixed prompts' keys, as MEMIT's `compute_ks` averages within each
    kind of context template first (every fact's prompts read in the same batches)."""
    every = rome.keys(parts, [p for f in facts for p in f.prompts], [at for f in facts for at in f.lookups], layer)
    return torch.stack([(k[0] + k[1:].mean(0)) / 2 if len(k) > 1 else k[0]
                        for k in every.split([len(f.prompts) for f in facts])], 1)


def batch_edit(adapter, facts: list[Fact], layers: list[int], solve, zs: torch.Tensor, earlier=()) -> list[tuple]:
    """[(layer, left, right)] for `layers` (ascending): the facts' targets `zs` [d_model, N]
    (`target`, at layers[-1]) written by `solve(layer, keys, residuals)`, with the edits
    `earlier` (of earlier batches) and the layers before each one already in the weights."""
    parts, top, made = adapter.parts, layers[-1], []
    for i, layer in enumerate(layers):
        with rome.edited_weights(adapter, [*earlier, *made]):
            keys = fact_keys(parts, facts, layer)
            now = rome.keys(parts, [f.prompts[0] for f in facts], [f.lookups[0] for f in facts], top, site="hidden").T
        left, right = solve(layer, keys, (zs - now) / (len(layers) - i))
        made.append((layer, left, right))
    return made


def memit_solver(covs: dict[int, torch.Tensor], hp: Hparams):
    """MEMIT's update at each layer: lambda C_l + K K^T."""
    return lambda layer, keys, residuals: batch_update.memit(keys, residuals, covs[layer], hp.mom2_update_weight)


def alphaedit_solver(covs: dict[int, torch.Tensor], preserved: dict[int, torch.Tensor], hp: Hparams):
    """AlphaEdit's update at each layer: inside C_l's null space (computed here, once per
    layer), keeping the keys K_p K_p^T in `preserved` (per layer; a missing layer has none)."""
    projections = {layer: batch_update.null_space(c, hp.nullspace_threshold, hp.nullspace_energy)
                   for layer, c in covs.items()}

    def solve(layer, keys, residuals):
        kept = preserved.get(layer, torch.zeros_like(projections[layer]))
        return batch_update.alphaedit(keys, residuals, projections[layer], kept, hp.l2)

    return solve


def preserve(adapter, facts: list[Fact], layers: list[int], edits, preserved: dict[int, torch.Tensor]) -> None:
    """Add the facts' K K^T at each layer, measured with `edits` in the weights, to
    `preserved`: what AlphaEdit keeps of a batch once it is written (its code does the same)."""
    with rome.edited_weights(adapter, edits):
        for layer in layers:
            k = fact_keys(adapter.parts, facts, layer)
            preserved[layer] = preserved.get(layer, 0) + k @ k.T
