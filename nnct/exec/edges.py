"""Edge attribution (EAP, EAP-IG) and exact edge patching over the graph of `model.graph`.

For one prompt pair (clean and corrupt prompts of equal length, a target and an alternative
token), M is a readout of the last position's logits (`interventions.readouts`: the logit
difference target - alt by default; a readout of the answers reads the target's; `kl` is to
the clean run's distribution, kept in `Nodes.reference`). docs/method.md ("Edge attribution
and circuits") has the formulas.

- **`node_values`**: one forward pass of both prompts. Every node's output, and M of each.
- **`edge_scores`**: one backward pass over 1 + m rows, with the input embeddings set to the
  clean prompt's (EAP) and to corrupt + k/m (clean - corrupt) for k = 0..m-1 (EAP-IG).
  - From it, the gradient at every destination's input. The projections' gradients are
    carried back by their rows' weights and through the norm (`graph.norm_vjp`, at each row's
    own residual).
  - The score of u -> v is sum over positions of (a_u(corrupt) - a_u(clean)) . dM/d in_v: at
    the clean row for EAP, averaged over the m rows for EAP-IG.
- **`patched_metric`**: M of the clean prompt with the edges outside a circuit patched
  exactly. Destination v's input becomes its input in this run plus, for each dropped edge
  u -> v, a_u(corrupt) - a_u(this run). So v sees u's corrupted output, and nothing else
  changes. No edge dropped gives M(clean); every edge dropped gives M(corrupt), since every
  destination, the logits among them, then sees the corrupt run.

Everything runs inside nnsight traces, reading and writing through `graph.Access`, so the
same code runs on a server. `scored` and `patched` take pairs ((clean, corrupt, target, alt)
each) and, given an nnsight backend (`exec.remote.backend`), run them in one session there.
Only the scores and metrics come back; node outputs stay with the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .. import compat
from ..interventions.readouts import READOUTS, Given
from ..model.graph import Access, Graph, norm, norm_vjp
from ..model.parts import first


@dataclass
class Nodes:
    """The two runs of a pair: node outputs [2 (clean, corrupt), node, token, d_model], the
    input embeddings [2, token, d_model], M of each [2] and the clean run's log-probabilities
    at the last position [vocab] (the reference of `kl`)."""

    outputs: torch.Tensor
    embeddings: torch.Tensor
    metric: torch.Tensor
    reference: torch.Tensor | None = None


DEFAULT = READOUTS["logit_diff"]


def _metric(logits, target: int, alt: int, readout=DEFAULT, reference=None):
    """M per row: the readout's value (the target's, for a readout of both answers)."""
    return readout.value(logits[:, -1].float(), Given((target, alt), reference=reference))[:, 0]


def node_values(access: Access, g: Graph, clean: list[int], corrupt: list[int], target: int, alt: int,
                readout=DEFAULT) -> Nodes:
    parts = access.parts
    ids = torch.tensor([clean, corrupt], dtype=torch.long, device=parts.device)
    with torch.no_grad(), parts.nn.trace(ids):
        emb = parts.embed.output.save()
        outs = [access.residual_in(0)[:, None]]
        for layer in range(g.n_layers):
            outs.append(access.head_outputs(layer, access.attn_out(layer).input))
            outs.append(first(access.mlp(layer).output)[:, None])
        nodes = torch.cat(outs, 1).save()
        reference = parts.nn.output.logits[0, -1].float().log_softmax(-1).save()
        metric = _metric(parts.nn.output.logits, target, alt, readout, reference).save()
    return Nodes(nodes.float(), emb, metric.double().cpu(), reference)


def edge_scores(access: Access, g: Graph, clean: list[int], nodes: Nodes, target: int, alt: int, steps: int,
                readout=DEFAULT):
    """(EAP scores, EAP-IG scores), each [node, dest] float64 (0 where no edge), for one pair
    whose two runs `nodes` holds."""
    parts = access.parts
    clean_emb, corrupt_emb = nodes.embeddings[0], nodes.embeddings[1]
    alphas = torch.arange(steps, dtype=torch.float32, device=clean_emb.device) / steps
    rows = torch.cat([clean_emb[None], corrupt_emb[None] + alphas[:, None, None] * (clean_emb - corrupt_emb)[None]])
    rows = rows.to(parts.torch_dtype)
    ids = torch.tensor([clean], dtype=torch.long, device=parts.device).expand(rows.shape[0], -1)
    delta = (nodes.outputs[1] - nodes.outputs[0]).double()  # [node, token, d]
    trainable = [p for p in compat.torch_module(parts.nn).parameters() if p.requires_grad]
    for p in trainable:  # no .grad accumulates in a local model's weights
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), parts.nn.trace(ids):
            emb = parts.embed.output
            emb[:] = rows
            emb.requires_grad_(True)
            resid, mid, proj, mlp_in = [], [], [], []
            for layer in range(g.n_layers):
                resid.append(access.residual_in(layer).detach())
                proj.append(access.qkv_outputs(layer))
                mid.append(access.ln_mlp(layer).input.detach())
                mlp_in.append(access.mlp(layer).input)
            final = access.final_norm().input
            metric = _metric(parts.nn.output.logits, target, alt, readout, nodes.reference).sum()
            grads_final, grads_mlp, grads_proj = None, [None] * g.n_layers, [None] * g.n_layers
            with metric.backward():
                grads_final = final.grad
                for layer in reversed(range(g.n_layers)):
                    grads_mlp[layer] = mlp_in[layer].grad
                    grads_proj[layer] = [p.grad for p in reversed(proj[layer])][::-1]
            scores = _scores(access, g, delta, resid, mid, grads_final, grads_mlp, grads_proj).save()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return scores[0].cpu(), scores[1:].mean(0).cpu()


def _scores(access: Access, g: Graph, delta, resid, mid, grads_final, grads_mlp, grads_proj):
    """[row, node, dest]: delta . the gradient at each destination's input, per row (the
    logits' input, the final residual, feeds only the final norm: its gradient is the one read)."""
    rows = grads_final.shape[0]
    out = torch.zeros(rows, g.n_nodes, g.n_dests, dtype=torch.float64, device=delta.device)
    for layer in range(g.n_layers):
        cot = access.qkv_cotangents(layer, grads_proj[layer])  # [row, dest, token, d]
        at = norm_vjp(resid[layer][:, None], cot, access.ln_attn(layer), access.r.rms)
        first_dest, up = g.dest(layer, "q"), g.upstream(g.dest(layer, "q"))
        out[:, :up, first_dest:first_dest + at.shape[1]] = torch.einsum("utd,rvtd->ruv", delta[:up], at.double())
        gm = norm_vjp(mid[layer], grads_mlp[layer], access.ln_mlp(layer), access.r.rms)
        v = g.dest(layer, "mlp")
        out[:, :g.upstream(v), v] = torch.einsum("utd,rtd->ru", delta[:g.upstream(v)], gm.double())
    out[:, :, g.n_dests - 1] = torch.einsum("utd,rtd->ru", delta, grads_final.double())
    return out


def patched_metric(access: Access, g: Graph, clean: list[int], corrupt_nodes: torch.Tensor, dropped: torch.Tensor,
                   target: int, alt: int, readout=DEFAULT, reference=None) -> float:
    """M of the clean prompt with every edge u -> v where `dropped[u, v]` patched exactly
    (its destination sees u's output `corrupt_nodes[u]`; see the module's docstring)."""
    parts = access.parts
    ids = torch.tensor([clean], dtype=torch.long, device=parts.device)
    corrupt_nodes = corrupt_nodes.to(parts.device)
    drop = dropped.to(parts.device, corrupt_nodes.dtype)
    with torch.no_grad(), parts.nn.trace(ids):
        current = []
        for layer in range(g.n_layers):
            r = access.residual_in(layer)
            if layer == 0:
                current.append(r[0].float())  # the embedding node's output
            q0, m = g.dest(layer, "q"), g.dest(layer, "mlp")
            up = g.upstream(q0)
            which = drop[:up, q0:m].any(0)
            if bool(which.any()):
                change = torch.einsum("uv,utd->vtd", drop[:up, q0:m], corrupt_nodes[:up] - torch.stack(current))
                access.write_qkv(layer, norm(r[0][None] + change[None].to(r.dtype), access.ln_attn(layer), access.r.rms), which)
            heads = access.head_outputs(layer, access.attn_out(layer).input)[0]
            current += list(heads.float())
            mid = access.ln_mlp(layer).input
            up = g.upstream(m)
            if bool(drop[:up, m].any()):
                change = torch.einsum("u,utd->td", drop[:up, m], corrupt_nodes[:up] - torch.stack(current))
                x = access.mlp(layer).input
                x[:] = norm(mid + change.to(mid.dtype), access.ln_mlp(layer), access.r.rms)
            current.append(first(access.mlp(layer).output)[0].float())
        last = g.n_dests - 1
        if bool(drop[:, last].any()):
            x = access.final_norm().input
            x[:] = x + torch.einsum("u,utd->td", drop[:, last], corrupt_nodes - torch.stack(current)).to(x.dtype)
        metric = _metric(parts.nn.output.logits, target, alt, readout, reference).save()
    return float(metric[0])


def _on_server(access: Access) -> Access:
    """Inside a session: the Access with the device and dtype of the weights found there."""
    weight = access.parts.embed.weight
    return Access(dataclasses.replace(access.parts, device=str(weight.device), torch_dtype=weight.dtype), access.r)


def scored(access: Access, g: Graph, pairs: list, steps: int, backend=None, readout=DEFAULT) -> list:
    """Per pair (clean, corrupt, target, alt): (EAP scores, EAP-IG scores, M [clean, corrupt]),
    and, run here, the pair's `Nodes` (for `patched`)."""
    if backend is None:
        out = []
        for clean, corrupt, target, alt in pairs:
            nodes = node_values(access, g, clean, corrupt, target, alt, readout)
            scores = edge_scores(access, g, clean, nodes, target, alt, steps, readout)
            # `patched` needs the corrupt run's outputs only: kept in the host's memory
            out.append((*scores, nodes.metric, dataclasses.replace(nodes, outputs=nodes.outputs[1:].cpu(), embeddings=None)))
        return out
    import nnsight

    out = None
    with access.parts.nn.session(backend=backend):
        there = _on_server(access)
        results = []  # a loop, not a comprehension: nnsight runs the body with its own locals
        for clean, corrupt, target, alt in pairs:
            nodes = node_values(there, g, clean, corrupt, target, alt, readout)
            eap, ig = edge_scores(there, g, clean, nodes, target, alt, steps, readout)
            results.append([eap, ig, nodes.metric])
        out = nnsight.save(results)
    return [(*r, None) for r in out]


def metrics(access: Access, g: Graph, pairs: list, backend, readout=DEFAULT) -> list:
    """M [clean, corrupt] per pair, from one session through `backend`."""
    import nnsight

    out = None
    with access.parts.nn.session(backend=backend):
        there = _on_server(access)
        results = []
        for clean, corrupt, target, alt in pairs:
            results.append(node_values(there, g, clean, corrupt, target, alt, readout).metric)
        out = nnsight.save(results)
    return [m.numpy() for m in out]


def patched(access: Access, g: Graph, pairs: list, dropped: torch.Tensor, nodes: list | None = None, backend=None,
            readout=DEFAULT) -> list:
    """M per pair with the `dropped` edges patched; the pairs' `Nodes` reused when given
    (here; their last row of outputs is the corrupt run's), else made again (in the session
    on the server)."""
    if backend is None:
        nodes = nodes or [node_values(access, g, *p, readout) for p in pairs]
        return [patched_metric(access, g, p[0], n.outputs[-1], dropped, p[2], p[3], readout, n.reference)
                for p, n in zip(pairs, nodes)]
    import nnsight

    out = None
    with access.parts.nn.session(backend=backend):
        there = _on_server(access)
        results = []
        for clean, corrupt, target, alt in pairs:
            made = node_values(there, g, clean, corrupt, target, alt, readout)
            results.append(patched_metric(there, g, clean, made.outputs[1], dropped, target, alt, readout, made.reference))
        out = nnsight.save(results)
    return list(out)
