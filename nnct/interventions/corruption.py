"""Corruptions as data: what the corrupted run is given instead of the clean prompt.

A corruption ends as a `RunInput`: token ids per row and, optionally, values added to (or
written over) the input embeddings at some positions. The engine runs whatever `RunInput`
it is handed and never learns which corruption made it. Two kinds exist:

- **noise** (ROME): the clean ids in S rows, with Gaussian noise on the span's embeddings.
  The noise of an example is drawn once, on the client's CPU with its own generator seeded
  by the run's seed, in float32, and used for every cell of the example (ROME's common
  random numbers); drawing on the CPU is what makes a CUDA run and a remote run see the
  same noise. The level is a float, or a rule `sK`: K times the standard deviation of the
  input embeddings of every span token of the data set being run (`s3` is ROME's rule).
- **prompt** (a counterfactual prompt, e.g. another subject substituted): one row of other
  ids, of the clean prompt's length, and nothing on the embeddings.

`changed` is the first position where the corrupted input differs from the clean one: the
plan's cells before it need no forward pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

_RULE = re.compile(r"^s(\d+(\.\d*)?)$")


@dataclass(frozen=True)
class RunInput:
    """What a forward pass is given. `ids` is [row, token] (one row is shared by every row
    of a batch); `values` [row, position, d_model] go onto the input embeddings at
    `positions`, added, or written over them with `replace`."""

    ids: Any  # torch.LongTensor [row, token]
    positions: tuple[int, ...] = ()
    values: Any = None  # torch.Tensor [row, position, d_model] or None
    replace: bool = False

    @property
    def rows(self) -> int:
        return max(int(self.ids.shape[0]), 0 if self.values is None else int(self.values.shape[0]))

    def changed(self, clean_ids) -> int:
        """The first position where this input differs from the clean prompt `clean_ids`."""
        import torch

        clean = torch.as_tensor(clean_ids, device="cpu")
        differ = (self.ids != clean[None, : self.ids.shape[1]]).any(dim=0).nonzero().flatten().tolist()
        found = sorted(set(differ) | set(self.positions))
        return found[0] if found else len(clean)


def clean_input(ids) -> RunInput:
    import torch

    return RunInput(torch.tensor([list(ids)], dtype=torch.long, device="cpu"))


def prompt_input(corrupt_ids) -> RunInput:
    """The corrupted run of a prompt pair: the other prompt's ids, one row."""
    return clean_input(corrupt_ids)


def noise_input(ids, span, noise, replace: bool = False) -> RunInput:
    """The corrupted run of ROME's tracing: the clean ids, `noise` [sample, span token,
    d_model] added to (or written over) the span's input embeddings."""
    return RunInput(clean_input(ids).ids, tuple(span), noise, replace)


@dataclass(frozen=True)
class NoiseSpec:
    rule: str  # "s3", "s2.5", or the float as given
    multiplier: float | None  # K of a rule; None for a plain level

    def level(self, embedding_std: float | None) -> float:
        if self.multiplier is None:
            return float(self.rule)
        if embedding_std is None:
            raise ConfigError(f"noise rule {self.rule} needs the embeddings' standard deviation")
        return self.multiplier * embedding_std


def parse(spec: str | float) -> NoiseSpec:
    text = str(spec).strip()
    m = _RULE.match(text)
    if m:
        return NoiseSpec(text, float(m.group(1)))
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"noise level '{spec}': use a number or a rule like s3") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"noise level {text}: need a finite number >= 0")
    return NoiseSpec(text, None)


def draw(seed: int, samples: int, span_len: int, d_model: int, level: float):
    """noise[sample, span token, d_model], float32 on the CPU."""
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(samples, span_len, d_model, generator=generator, dtype=torch.float32, device="cpu") * level
