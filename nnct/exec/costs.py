"""The cost model: what a forward pass costs on this device, so that a plan can weigh
passes against arithmetic.

A pass takes time = its own cost + its FLOPs / the rate at which the model computes them.
Its own cost is what does not grow with rows or positions: Python, nnsight's tracing of the
interventions, kernel launches. It is tens of milliseconds whatever the pass computes, so
on a CPU, where the arithmetic of a batch takes seconds, it hardly matters, and on a GPU,
where the same arithmetic takes milliseconds, it is most of the time: there fewer, larger
passes that recompute positions a cell did not need are faster (`plan.schedule`'s
`pass_positions`).

Both numbers are measured on the model itself, in two kinds of pass (each reading and
writing the residual stream at every layer, as a batch of the plan writes its sites): a
small one (one row of a few tokens: nearly all own cost) and a large one (rows doubled until
its arithmetic dominates, within the memory a batch may take). The rate is the slope
between them, the own cost what the small pass takes beyond its FLOPs. They are measured
once per model (the weights' digest), device, dtype and thread count and cached in nnct's
cache (`costs/`); a model without a digest (built in memory) is measured once per process.
Each is the shortest of several passes, and `nnct bench` measures again (and keeps what it
measured): a cost measured while other jobs loaded the machine can be replaced that way. A
wrong cost makes other batches, never other numbers.
A run stores the cost it planned with, so that a resumed run makes the same batches.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import torch

from ..model.flops import Shape
from ..model.parts import Adapter
from ..model.sites import SITES
from .engine import auto_batch_rows, memory_budget

SMALL_TOKENS, LARGE_TOKENS = 4, 32
# The large pass grows until its time is this many times the small one's (its arithmetic then
# dominates), and at least this many seconds (a clock's resolution, a GPU's queue).
DOMINATES, AT_LEAST_S = 4.0, 0.05
REPEATS = 5

_MEASURED: dict = {}  # models without a digest: (id, device, dtype, threads) -> Cost


@dataclass(frozen=True)
class Cost:
    pass_s: float  # a pass's own cost, in seconds
    gflops: float  # the model's arithmetic rate in a pass, GFLOP/s

    def seconds(self, passes: int, flops: float) -> float:
        """The time of `passes` passes computing `flops` FLOPs in all."""
        return passes * self.pass_s + flops / (self.gflops * 1e9)


def _pass_seconds(adapter: Adapter, rows: int, n_tokens: int, repeats: int) -> float:
    """The shortest time of `repeats` passes of `rows` rows of `n_tokens` tokens (after one
    unmeasured pass), each writing the residual stream at every layer and reading the last
    position's logits: the least disturbed by whatever else runs (on a loaded CPU, a pass of
    two threads can stall for seconds)."""
    a, site = adapter.parts, SITES["hidden"]
    ids = torch.randint(0, max(1, a.vocab), (rows, n_tokens), generator=torch.Generator(a.device).manual_seed(0),
                        device=a.device)
    where = torch.zeros(1, dtype=torch.long, device=a.device)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.no_grad(), a.nn.trace(ids, logits_to_keep=1):
            for layer in range(a.n_layers):
                value = site.read(a, layer)
                site.write(value, where, where, value[0:1, 0].clone())
            logits = a.nn.output.logits[:, -1].save()
        logits.cpu()  # waits for a GPU's queue
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def measure(adapter: Adapter) -> Cost:
    """The model's pass cost and rate on its device, measured now (module docstring)."""
    shape = Shape.of(adapter)
    small = _pass_seconds(adapter, 1, SMALL_TOKENS, REPEATS)
    most = auto_batch_rows(adapter, LARGE_TOKENS, 1, memory_budget(adapter.device))
    rows = 1
    large = _pass_seconds(adapter, rows, LARGE_TOKENS, 1)
    while (large < DOMINATES * small or large < AT_LEAST_S) and rows * 2 <= most:
        rows *= 2
        large = _pass_seconds(adapter, rows, LARGE_TOKENS, 1)
    large = min(large, _pass_seconds(adapter, rows, LARGE_TOKENS, 2))
    f_small, f_large = shape.forward(1, SMALL_TOKENS), shape.forward(rows, LARGE_TOKENS)
    # the slope between the two passes; where the large one is not measurably slower (a model
    # too small to keep the device busy), its whole time is taken as arithmetic: a low rate
    rate = (f_large - f_small) / (large - small) if large > 1.5 * small else f_large / large
    return Cost(pass_s=max(0.0, small - f_small / rate), gflops=rate / 1e9)


def cost(adapter: Adapter, fresh: bool = False) -> Cost:
    """The model's cost on its device: from nnct's cache, else (or with `fresh`: `nnct
    bench` measures again) measured and kept there."""
    key = f"{adapter.device}-{adapter.dtype}-{torch.get_num_threads()}threads"
    if not adapter.revision:
        found = None if fresh else _MEASURED.get((id(adapter.hf), key))
        if found is None:
            found = _MEASURED[(id(adapter.hf), key)] = measure(adapter)
        return found
    from ..model.embedded import cache_root

    path = cache_root() / "costs" / f"{adapter.name.replace('/', '_')}-{adapter.revision}" / f"{key}.json"
    if path.is_file() and not fresh:
        return Cost(**json.loads(path.read_text()))
    found = measure(adapter)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.time_ns()}.tmp")
    tmp.write_text(json.dumps(asdict(found)))
    tmp.replace(path)  # whole or absent: runs side by side may measure the same model
    return found


def pass_positions(adapter: Adapter, cost: Cost) -> tuple[float, ...]:
    """Per first layer (0..L), the rows x positions whose arithmetic from that layer on takes
    as long as one pass's own cost: what `plan.schedule` may recompute to save a pass
    (infinite from layer L, where no layer runs)."""
    shape = Shape.of(adapter)
    per_position = [shape.forward(1, 1, first=layer, logits_at=0) for layer in range(adapter.n_layers)]
    return tuple(cost.pass_s * cost.gflops * 1e9 / f for f in per_position) + (float("inf"),)
