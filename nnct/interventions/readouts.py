"""Readouts: what a run reports of its final-position logits (docs/method.md, "Readouts").

A readout maps the logits of the last prompt position, [row, vocab] (float32, the model's own
output, after any soft-capping), to values per row: [row, answer] for a readout of the two
answers (target, alt), [row, 1] for one that has no answer. The engine, attribution
patching, steering and path patching compute every readout asked for inside their traces, so
that only these numbers leave the model (or a server); the cube stores each as
`<name>_clean`, `<name>_corrupt` and `<name>_<restored variable>`, means over the corrupted
rows, and `--metric <name>` reads them back as effects.

`prob` and `logit` are what every run has always stored (`p_*`, `logit_*`), and
`logit_diff` is made from the stored logits; the others are **extra** readouts, each an
entry of `READOUTS`. In Python a readout may also be a callable `logits -> values[row]`
(`Custom`); it runs where the trace runs, so a run sent to a server takes named readouts
only (`check_remote`). A group of examples run in one forward, each in a block of rows of its
own, reads each block against its own example's answers, spellings and reference
(`per_example`).

Adding a readout is one `Readout` entry: a name, whether it has an answer axis, a function
`(logits, given) -> [row, answer or 1]` (plain torch on the trace's tensors, defined at
module level so that nnsight can send it to a server) and an axis label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class Given:
    """What a readout may use besides the logits: the answers' first tokens (target, alt),
    each answer's spellings' first tokens (for `prob_any`; padded with -1), and the clean
    run's log-probabilities over the vocabulary at the last position (for `kl`; None in the
    clean run itself, which is its own reference).

    For one example these are plain tuples and a tensor [vocab]. For G examples whose rows
    are G equal contiguous blocks (`per_example`: the engine's groups, attribution
    patching's stacked runs), they are tensors of one entry per example: answers [G, 2],
    spellings [G, 2, k] (padded with -1) and reference [G, vocab]; each row reads its own
    block's."""

    answers: tuple[int, int]
    spellings: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    reference: object = None  # a tensor [vocab], or [G, vocab]: one per example


def per_example(answers, spellings=None, reference=None, device=None) -> Given:
    """A `Given` of G examples, each read in its own block of rows (G equal contiguous
    blocks): `answers` their first tokens ((target, alt) each), `spellings` each example's
    pair of spellings' first tokens (None: none; an answer without spellings counts its own
    token, as `prob_any` does for one example), `reference` [G, vocab] or None."""
    import torch

    spelled = []
    for e, pair in enumerate(answers):
        given = spellings[e] if spellings else ((), ())
        spelled.append([[t for t in (given[k] or (pair[k],)) if t >= 0] for k in range(2)])
    width = max(len(s) for both in spelled for s in both)
    padded = [[s + [-1] * (width - len(s)) for s in both] for both in spelled]
    return Given(torch.tensor([list(pair) for pair in answers], dtype=torch.long, device=device),
                 torch.tensor(padded, dtype=torch.long, device=device), reference)


def _per_row(values, rows: int):
    """A per-example tensor [G, ...] repeated over each example's block of `rows` // G rows."""
    return values.repeat_interleave(rows // values.shape[0], dim=0)


def _tokens(logits, given: Given):
    """[row, 2]: each row's answers' first tokens (target, alt)."""
    import torch

    if isinstance(given.answers, torch.Tensor):
        return _per_row(given.answers.to(logits.device), logits.shape[0])
    return torch.tensor(list(given.answers), device=logits.device).expand(logits.shape[0], 2)


def _prob(logits, given: Given):
    return logits.softmax(-1).gather(-1, _tokens(logits, given))


def _logit(logits, given: Given):
    return logits.gather(-1, _tokens(logits, given))


def _logprob(logits, given: Given):
    return logits.log_softmax(-1).gather(-1, _tokens(logits, given))


def _rank(logits, given: Given):
    # 0 = the most probable token; ties count in the answer's favour
    own = logits.gather(-1, _tokens(logits, given))
    return (logits[:, None, :] > own[:, :, None]).sum(-1).to(logits.dtype)


def _kl(logits, given: Given):
    logp = logits.log_softmax(-1)
    if given.reference is None:
        ref = logp
    else:
        ref = given.reference.to(logp.device)
        if ref.dim() == 2:  # each example's own, against its block of rows
            blocks = logp.reshape(ref.shape[0], -1, logp.shape[-1])
            ref = ref[:, None, :]
            return (ref.exp() * (ref - blocks)).sum(-1).reshape(-1, 1)
        ref = ref[None, :]
    return (ref.exp() * (ref - logp)).sum(-1, keepdim=True)


def _prob_any(logits, given: Given):
    import torch  # here: commands that only read cubes start without torch

    probs = logits.softmax(-1)
    if isinstance(given.spellings, torch.Tensor):  # per example, padded with -1: [G, 2, k]
        spelled = _per_row(given.spellings.to(logits.device), logits.shape[0])
        found = probs.gather(-1, spelled.clamp(min=0).flatten(1)).reshape(spelled.shape)
        return torch.where(spelled >= 0, found, torch.zeros_like(found)).sum(-1)
    sums = []
    for k in range(2):
        tokens = [t for t in (given.spellings[k] or (given.answers[k],)) if t >= 0]
        sums.append(probs[:, tokens].sum(-1))
    return torch.stack(sums, dim=1)


def _logit_diff(logits, given: Given):
    own = logits.gather(-1, _tokens(logits, given))
    return (own[:, 0] - own[:, 1])[:, None]


@dataclass(frozen=True)
class Readout:
    name: str
    per_answer: bool  # [row, answer]; else [row, 1]
    value: Callable  # (logits [row, vocab], Given) -> [row, answer or 1]
    label: str  # what an effect in it means, for axes
    differentiable: bool = True  # attribution patching takes its gradient
    stored: bool = True  # an extra readout (its own cube variables); else made of p_*/logit_*


READOUTS: dict[str, Readout] = {
    r.name: r
    for r in (
        Readout("prob", True, _prob, "IE in p", stored=False),
        Readout("logit", True, _logit, "IE in logit", stored=False),
        Readout("logit_diff", False, _logit_diff, "IE in logit(target) - logit(alt)", stored=False),
        Readout("logprob", True, _logprob, "IE in log p"),
        Readout("rank", True, _rank, "IE in rank (0 = top)", differentiable=False),
        Readout("kl", False, _kl, "IE in KL(clean || run), nats"),
        Readout("prob_any", True, _prob_any, "IE in p of any spelling"),
    )
}


@dataclass(frozen=True)
class Custom:
    """A readout given as a Python callable `logits [row, vocab] -> values [row]` (answer-free)."""

    name: str
    fn: Callable

    @property
    def per_answer(self) -> bool:
        return False

    @property
    def label(self) -> str:
        return f"IE in {self.name}"

    def value(self, logits, given: Given):
        return self.fn(logits).reshape(-1, 1).to(logits.dtype)


def parse(spec) -> tuple:
    """The readouts a user asked for: a comma-separated string or a list of names and
    callables (a dict maps names to callables), each name checked. Returns `Readout` and
    `Custom` entries, in order, without repeats; `prob` is always stored and need not be named."""
    if spec is None:
        return ()
    items = list(spec.items()) if isinstance(spec, dict) else spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, object] = {}
    for item in items:
        if isinstance(item, tuple):
            name, fn = item
            out[name] = Custom(name, fn)
        elif callable(item):
            name = getattr(item, "__name__", "custom")
            out[name] = Custom(name, item)
        else:
            name = str(item).strip()
            if not name:
                continue
            if name not in READOUTS:
                raise ConfigError(f"unknown readout {name!r}; known: {', '.join(READOUTS)} (or a callable, in Python)")
            out[name] = READOUTS[name]
    clash = [n for n, r in out.items() if isinstance(r, Custom) and n in READOUTS]
    if clash:
        raise ConfigError(f"a callable readout may not take a built-in readout's name: {', '.join(clash)}")
    return tuple(out.values())


def extra(readouts) -> tuple:
    """The readouts that have cube variables of their own (not made of p and the logits)."""
    return tuple(r for r in readouts if isinstance(r, Custom) or r.stored)


def names(readouts) -> str:
    """The readouts as a cube attribute ("kl,rank"; "" for none)."""
    return ",".join(r.name for r in readouts)


def check_remote(readouts) -> None:
    """ConfigError for a callable readout in a run that goes to a server: its code would have
    to run there, and only named readouts are known to travel."""
    custom = [r.name for r in readouts if isinstance(r, Custom)]
    if custom:
        raise ConfigError(f"readout {', '.join(custom)} is a Python callable, which cannot run on a server:"
                          f" use a named readout ({', '.join(READOUTS)}) with --remote")


def check_gradient(readouts) -> None:
    """ConfigError for a readout attribution patching cannot differentiate."""
    flat = [r.name for r in readouts if isinstance(r, Readout) and not r.differentiable]
    if flat:
        raise ConfigError(f"readout {', '.join(flat)} has no gradient (a step function): attribution patching cannot"
                          " estimate it; patch exactly instead")


def columns(readouts) -> int:
    """How many values per row the readouts make: 2 per answer readout, 1 per answer-free one."""
    return sum(2 if r.per_answer else 1 for r in readouts)


def compute(readouts, logits, given: Given):
    """Every readout's values of `logits` [row, vocab] side by side, [row, columns(readouts)]
    (an empty [row, 0] for none)."""
    import torch

    if not readouts:
        return logits[:, :0]
    return torch.cat([r.value(logits, given) for r in readouts], dim=1)


def named(readouts, suffix: str, values) -> dict:
    """{"<name>_<suffix>": ...} of `values` [..., columns(readouts)] (`split` under cube names)."""
    return {f"{name}_{suffix}": v for name, v in split(readouts, values).items()}


def split(readouts, values) -> dict:
    """{name: [..., answer] or [...]} of `values` [..., columns(readouts)] (numpy or torch)."""
    out, at = {}, 0
    for r in readouts:
        if r.per_answer:
            out[r.name], at = values[..., at:at + 2], at + 2
        else:
            out[r.name], at = values[..., at], at + 1
    return out
