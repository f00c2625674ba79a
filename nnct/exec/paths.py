"""Path patching (Wang et al. 2022, IOI) over the graph of `model.graph`.

A **sender** is a node of the graph (an attention head or an MLP; the embedding is none). Its
**receivers** are destinations: the logits (the direct effect), heads' query, key and value
inputs, MLP inputs. Path patching asks what the sender does to the output only through
those receivers. In the edge language of `exec.edges` it is the patching of the edges
sender -> receiver, and of nothing else:
- **noising** (the default): the clean prompt runs, and each receiver v the sender u feeds
  gets in_v += a_u(corrupt) - a_u(clean); every other edge keeps what the run computes;
- **denoising**: the corrupt prompt runs, and in_v += a_u(clean) - a_u(corrupt).

The run patched is the **base** (clean, or corrupt when denoising), the other the
**source**. A receiver's input is recomputed as `edges.patched_metric` recomputes it: the
layer's residual plus the difference, through the model's norm and that head's rows of the
projection (`graph.Access.write_qkv`), or through the MLP's norm, or added to the final
residual before the final norm. The sender precedes every receiver it feeds and nothing
upstream of a receiver changes, so a_u in the patched run is a_u(base): this is exactly
`patched_metric` with the edges u -> R dropped (tests/exec/test_paths.py checks it).

**Batching.** One forward of the two prompts reads every node's output and the residual
stream entering the first receiver's layer (for the logits alone: the final residual).
Then each batch holds one row per sender, each writing its own sender's difference into the
receivers. Every row equals the base run before the first receiver's layer, so those
layers are skipped (nnsight's `skip`, as the engine skips them), their output being the
base run's stream; only the last position's logits are computed. A sender that feeds no
receiver (it is not before any of them) has no row and no value.

Everything runs inside nnsight traces through `graph.Access`, module-level functions only,
so that `patched` sends the same code to a server in one session; only the readouts'
values leave the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..interventions import readouts as readouts_lib
from ..model.graph import Access, Graph, norm
from ..model.parts import first
from .edges import _on_server

RECEIVERS_HELP = ("logits (the direct effect), or comma-separated destinations: L<layer>H<head>.q, .k or .v (a head's"
                  " query, key or value input; L<layer>H<head> alone: all three), mlp<layer> (an MLP's input),"
                  " logits; e.g. L23H4 or L23H4.q,L23H4.k,mlp12")
_ITEM = re.compile(r"^(?:l(\d+)h(\d+)(?:\.([qkv]))?|mlp(\d+)|logits)$", re.IGNORECASE)


@dataclass(frozen=True)
class Receiver:
    """One destination as a user names it: kind q, k, v, mlp or logits; layer (None for the
    logits); the query head (q, k, v: k and v are its key/value head's)."""

    kind: str
    layer: int | None = None
    head: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "logits":
            return "logits"
        return f"mlp{self.layer}" if self.kind == "mlp" else f"L{self.layer}H{self.head}.{self.kind}"


def parse(spec) -> tuple[Receiver, ...]:
    """The receivers of a spec (`RECEIVERS_HELP`: a comma-separated string, or a list of
    items), in the order given, without repeats; ConfigError for anything else. Only the
    syntax is checked here: `destinations` checks layers and heads against a model."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or [])
    out: dict[Receiver, None] = {}
    for item in items:
        text = str(item).strip()
        m = _ITEM.match(text)
        if m is None:
            raise ConfigError(f"receiver {text!r}: use {RECEIVERS_HELP}")
        layer, head, part, mlp = m.groups()
        if mlp is not None:
            out[Receiver("mlp", int(mlp))] = None
        elif layer is not None:
            for kind in (part.lower(),) if part else ("q", "k", "v"):
                out[Receiver(kind, int(layer), int(head))] = None
        else:
            out[Receiver("logits")] = None
    if not out:
        raise ConfigError(f"no receiver given: use {RECEIVERS_HELP}")
    return tuple(out)


def destinations(g: Graph, receivers: tuple[Receiver, ...]) -> list[int]:
    """The graph's destination indices of `receivers`, in forward order, without repeats (a
    key or value input is its key/value head's, shared by its group of query heads);
    ConfigError for a layer or head the model lacks."""
    out = set()
    for r in receivers:
        if r.kind == "logits":
            out.add(g.n_dests - 1)
            continue
        if not 0 <= r.layer < g.n_layers:
            raise ConfigError(f"receiver {r.label}: the model has layers 0-{g.n_layers - 1}")
        if r.kind == "mlp":
            out.add(g.dest(r.layer, "mlp"))
            continue
        if not 0 <= r.head < g.n_heads:
            raise ConfigError(f"receiver {r.label}: the model has heads 0-{g.n_heads - 1} per layer")
        out.add(g.dest(r.layer, r.kind, r.head if r.kind == "q" else r.head // (g.n_heads // g.n_kv)))
    return sorted(out)


def senders(g: Graph) -> tuple[list[int], list[int]]:
    """The senders' node indices: every head in (layer, head) order, and every MLP by layer."""
    heads = [g.node(layer, h) for layer in range(g.n_layers) for h in range(g.n_heads)]
    return heads, [g.node(layer, None) for layer in range(g.n_layers)]


def first_layer(g: Graph, dests: list[int]) -> int:
    """The first layer a receiver sits in (n_layers for the logits): every layer before it
    runs as in the base run."""
    return min(g.dests[v][2] for v in dests)


def reading(readouts) -> tuple:
    """What every run reports: the answers' probabilities and logits, then the extra readouts."""
    return (readouts_lib.READOUTS["prob"], readouts_lib.READOUTS["logit"], *readouts)


# -- in a trace ----------------------------------------------------------------------------------

@dataclass
class Base:
    """The two runs of a pair (row 0 clean, row 1 corrupt): every node's output [2, node,
    token, d_model] float32, the residual stream entering the first receiver's layer (the
    final residual for the logits) [2, token, d_model], the readouts' values [2, column]
    float64 on the host, and the clean run's log-probabilities at the last position."""

    outputs: torch.Tensor
    stream: torch.Tensor
    values: torch.Tensor
    reference: torch.Tensor


def base_runs(access: Access, g: Graph, clean: list[int], corrupt: list[int], at_layer: int, readouts,
              answers: tuple[int, int]) -> Base:
    parts = access.parts
    ids = torch.tensor([clean, corrupt], dtype=torch.long, device=parts.device)
    with torch.no_grad(), parts.nn.trace(ids, logits_to_keep=1):
        embedded = access.residual_in(0)
        outs, stream = [embedded[:, None]], embedded.save() if at_layer == 0 else None
        for layer in range(g.n_layers):
            if 0 < layer == at_layer:
                stream = access.residual_in(layer).save()
            outs.append(access.head_outputs(layer, access.attn_out(layer).input))
            outs.append(first(access.mlp(layer).output)[:, None])
        nodes = torch.cat(outs, 1).float().save()
        if stream is None:
            stream = access.final_norm().input.save()
        logits = parts.nn.output.logits[:, -1].float()
        reference = logits[0].log_softmax(-1).save()
        values = readouts_lib.compute(readouts, logits, readouts_lib.Given(answers, ((answers[0],), (answers[1],)),
                                                                           reference)).save()
    return Base(nodes, stream, values.double().cpu(), reference)


def patched_rows(access: Access, g: Graph, ids: list[int], stream, deltas, reach, dests: list[int], readouts,
                 given) -> torch.Tensor:
    """The readouts' values [row, column] of one batch: row i runs the base prompt `ids`
    with deltas[i] [token, d_model] added to the input of each receiver dests[j] where
    reach[i, j]; the layers before the first receiver's are skipped, outputting `stream`
    [token, d_model], the base run's residual there."""
    parts = access.parts
    rows, start = deltas.shape[0], first_layer(g, dests)
    x = torch.tensor([ids], dtype=torch.long, device=parts.device).expand(rows, -1)
    skip = stream[None].expand(rows, -1, -1).contiguous()  # a copy of its own: a receiver may write into it
    mask = reach.to(deltas.dtype)[:, :, None, None]  # [row, receiver, 1, 1]
    with torch.no_grad(), parts.nn.trace(x, logits_to_keep=1):
        for layer in range(min(start, g.n_layers)):
            parts.layers[layer].skip((skip,) if parts.layer_tuple else skip)
        for layer in range(start, g.n_layers):
            _write_layer(access, g, layer, deltas, mask, dests)
        if dests[-1] == g.n_dests - 1:
            x_final = access.final_norm().input
            x_final[:] = x_final + (mask[:, -1] * deltas).to(x_final.dtype)
        values = readouts_lib.compute(readouts, parts.nn.output.logits[:, -1].float(), given).save()
    return values.double().cpu()


def _write_layer(access: Access, g: Graph, layer: int, deltas, mask, dests: list[int]) -> None:
    """Inside the trace: the receivers of `layer` get their rows' differences (in forward
    order: the q/k/v projections, then the MLP)."""
    q0, m = g.dest(layer, "q"), g.dest(layer, "mlp")
    mine = [(j, v) for j, v in enumerate(dests) if q0 <= v < m]
    if mine:
        r = access.residual_in(layer)
        normed = torch.zeros(deltas.shape[0], m - q0, *deltas.shape[1:], dtype=r.dtype, device=r.device)
        which = torch.zeros(m - q0, dtype=torch.bool)
        for j, v in mine:
            normed[:, v - q0] = norm(r + (mask[:, j] * deltas).to(r.dtype), access.ln_attn(layer), access.r.rms)
            which[v - q0] = True
        access.write_qkv(layer, normed, which)
    if m in dests:
        j = dests.index(m)
        mid = access.ln_mlp(layer).input
        x = access.mlp(layer).input
        x[:] = norm(mid + (mask[:, j] * deltas).to(mid.dtype), access.ln_mlp(layer), access.r.rms)


def pair_values(access: Access, g: Graph, pair: tuple, dests: list[int], readouts, denoise: bool, sent: list[int],
                batch_rows: int) -> list[torch.Tensor]:
    """[clean and corrupt runs' values [2, column], the senders' path-patched values [sender,
    column]] of one pair (clean, corrupt, target, alt); `sent`: the senders' node indices, each
    feeding at least one receiver."""
    clean, corrupt, target, alt = pair
    base = base_runs(access, g, clean, corrupt, first_layer(g, dests), readouts, (target, alt))
    b, s = (1, 0) if denoise else (0, 1)
    given = readouts_lib.Given((target, alt), ((target,), (alt,)), base.reference)
    exists = torch.as_tensor(g.edges, device=base.outputs.device)
    nodes = torch.tensor(sent, dtype=torch.long, device=base.outputs.device)
    dest = torch.tensor(dests, dtype=torch.long, device=base.outputs.device)
    out = []
    for i in range(0, len(sent), batch_rows):
        chunk = nodes[i:i + batch_rows]
        deltas = base.outputs[s, chunk] - base.outputs[b, chunk]
        reach = exists[chunk][:, dest]
        out.append(patched_rows(access, g, corrupt if denoise else clean, base.stream[b], deltas, reach, dests, readouts,
                                given))
    return [base.values, torch.cat(out) if out else base.values[:0]]


def patched(access: Access, g: Graph, pairs: list, dests: list[int], readouts, denoise: bool, sent: list[int],
            batch_rows: int, backend=None) -> list:
    """`pair_values` of every pair, here, or (with an nnsight backend) in one session there."""
    if backend is None:
        return [pair_values(access, g, p, dests, readouts, denoise, sent, batch_rows) for p in pairs]
    import nnsight

    out = None
    with access.parts.nn.session(backend=backend):
        there = _on_server(access)
        results = []  # a loop, not a comprehension: nnsight runs the body with its own locals
        for pair in pairs:
            results.append(pair_values(there, g, pair, dests, readouts, denoise, sent, batch_rows))
        out = nnsight.save(results)
    return [[v.cpu() for v in r] for r in out]


def feeding(g: Graph, nodes: list[int], dests: list[int]) -> np.ndarray:
    """[node] bool: whether each of `nodes` feeds at least one of `dests`."""
    return g.edges[np.ix_(nodes, dests)].any(1)
