"""Noise on the span's input embeddings, reproducible everywhere (METHOD.md).

The noise of an example is drawn once, on the client's CPU with its own generator seeded by
the run's seed, in float32, and used for every cell of the example (ROME's common random
numbers). Drawing on the CPU is what makes a CUDA run and a remote run see the same noise.
The level is a float, or a rule `sK`: K times the standard deviation of the input
embeddings of every span token in the data set being run (`s3` is ROME's rule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError

_RULE = re.compile(r"^s(\d+(\.\d*)?)$")


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


def embedding_std(adapter, span_token_ids: list[list[int]], backend=None) -> float:
    """Std of the input embeddings of all span tokens (repeats counted, as ROME does): the
    embedding module's output, one token per row, in one nnsight session that stops after
    the embeddings. Through a remote `backend` it runs where the weights are, and only the
    number comes back."""
    import nnsight
    import torch

    ids = torch.tensor([i for ids in span_token_ids for i in ids], dtype=torch.long)[:, None]
    if ids.numel() == 0:
        raise ConfigError("no span tokens to measure the embeddings' standard deviation on")
    std, parts = None, adapter.parts  # envoys only travel: the adapter holds a tokenizer
    with parts.nn.session(backend=backend):
        tokens = ids.to(parts.embed.weight.device)  # the server's device, remotely
        with parts.nn.trace(tokens) as tracer:
            rows = parts.embed.output.detach().double()
            std = nnsight.save(float(rows.std()))
            tracer.stop()
    return std


def draw(seed: int, samples: int, span_len: int, d_model: int, level: float):
    """noise[sample, span token, d_model], float32 on the CPU."""
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(samples, span_len, d_model, generator=generator, dtype=torch.float32) * level
