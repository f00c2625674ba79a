"""ROME's key, value and key statistics, measured on the model through nnsight (Meng et al.
2022; docs/method.md, "ROME editing").

The key of a fact at layer l is the MLP's hidden activation at the last subject token (the
`down` site, the down projection's input), averaged over the prompt behind several context
prefixes. The value v* is the MLP output at that token which makes the model say the new
object: ROME finds it by Adam on an additive delta written into the MLP's output at the
lookup token of every rewriting prompt (prefix + prompt + the new object's tokens but the
last), minimising

    mean NLL(new object | rewriting prompt) + kl_factor * KL(P(. | "{subject} is a") unedited || edited)
        + weight_decay * |delta| / |v0|^2

with |delta| clamped to clamp * |v0| (v0: the unedited MLP output at the lookup token of
the first prompt, which is the bare prompt), and stopping early once the loss is below
`stop`. C, the uncentred second moment of the keys over a text corpus, makes the update
change W least for the keys the model usually sees (`interventions.rank_one`).

Here, these read the local model's weights. For a model on a server (`*_on_server`,
`value_by_requests`) the same measurements are sessions sent through a backend: the keys
with W k (the down projection's output less its bias, which `rank_one_from` takes instead of
W), C summed where the weights are, and each Adam step's loss terms and their gradient with
respect to the delta (the optimiser runs here). An edit may be applied anywhere: written into
a local model's weights (`edited_weights`), or as the intervention out += left * (key . right)
inside any nnsight trace (`apply_in_trace`), which a server runs as well.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from .. import compat
from ..interventions.rank_one import columns, edit_output, edited
from ..model.parts import Parts, first, resolve
from ..model.sites import SITES


@dataclass(frozen=True)
class Hparams:
    """ROME's GPT-2 XL settings (hparams/ROME/gpt2-xl.json), the loss read at the output."""

    steps: int = 20
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp: float = 4.0
    stop: float = 5e-2  # ROME stops once the loss is below this


KEY_ROWS = 32  # prompts read in one forward by `keys`


def keys(parts: Parts, prompts: list[list[int]], positions: list[int], layer: int, site: str = "down",
         pad: int = 0) -> torch.Tensor:
    """[prompt, d_ff] float64: the down projection's input at `positions[i]` of prompt i, the
    prompts right-padded (with `pad`, masked) in batches of KEY_ROWS (a position never sees the
    pads after it); another site's value with `site` (MEMIT reads the residual stream,
    `hidden`, the same way)."""
    out = []
    for lo in range(0, len(prompts), KEY_ROWS):
        ids, mask = _padded(prompts[lo:lo + KEY_ROWS], pad, parts.device)
        at = torch.tensor(positions[lo:lo + KEY_ROWS], device=parts.device)
        with torch.no_grad(), parts.nn.trace(ids, attention_mask=mask) as tracer:
            key = SITES[site].read(parts, layer)[torch.arange(len(at), device=parts.device), at].save()
            tracer.stop()
        out.append(key.double().cpu())
    return torch.cat(out)


def keys_on_server(parts: Parts, prompts: list[list[int]], positions: list[int], layer: int, backend):
    """(keys [prompt, d_ff], W k [prompt, d_model]) float64, from one session through
    `backend`: `keys`' keys, and the down projection's output at them less its bias (W k,
    which `rank_one_from` takes where the weights stay on the server)."""
    import nnsight

    out = None
    with parts.nn.session(backend=backend):
        device = parts.embed.weight.device
        down = resolve(parts.layers[layer], parts.layout.mlp_down)
        bias = down.bias
        got_keys, got_wk = [], []
        for ids, at in zip(prompts, positions):
            with torch.no_grad(), parts.nn.trace(torch.tensor([ids], device=device)):
                key = SITES["down"].read(parts, layer)[0, at].double().cpu().save()
                wk = first(down.output)[0, at].double()
                wk = (wk if bias is None else wk - bias.double()).cpu().save()
            got_keys.append(key)
            got_wk.append(wk)
        out = nnsight.save((torch.stack(got_keys), torch.stack(got_wk)))
    return out


def second_moments_on_server(parts: Parts, chunks: list[list[int]], layers: list[int], backend):
    """`second_moments` from one session through `backend`: the sums stay on the server, only
    C comes back."""
    import dataclasses

    import nnsight

    out = None
    with parts.nn.session(backend=backend):
        weight = parts.embed.weight
        there = dataclasses.replace(parts, device=str(weight.device), torch_dtype=weight.dtype)
        out = nnsight.save(second_moments(there, chunks, layers))
    return out


def second_moments(parts: Parts, chunks: list[list[int]], layers: list[int]) -> tuple[dict[int, torch.Tensor], int]:
    """({layer: C [d_ff, d_ff] float64}, tokens): the uncentred second moment sum(k k^T) / n of
    the keys at each of `layers` over every token of `chunks` (token id lists, one forward
    each, every layer read in the same pass)."""
    total = {layer: torch.zeros(parts.d_ff, parts.d_ff, dtype=torch.float64, device="cpu") for layer in layers}
    n = 0
    for ids in chunks:
        read = {}  # made outside the trace: only saved values come out of one
        with torch.no_grad(), parts.nn.trace(torch.tensor([ids], device=parts.device)) as tracer:
            for layer in sorted(layers):
                read[layer] = SITES["down"].read(parts, layer)[0].save()
            tracer.stop()
        for layer, k in read.items():
            k = k.double().cpu()
            total[layer] += k.T @ k
        n += len(ids)
    return {layer: c / max(n, 1) for layer, c in total.items()}, n


def _padded(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


@contextlib.contextmanager
def frozen(parts: Parts):
    """The model's weights without gradients for the block: no .grad accumulates in a local
    model's weights while a value is found (a server's are frozen already)."""
    params = [p for p in compat.torch_module(parts.nn).parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _value_inputs(rows: list[list[int]], pad: int, lookups: list[int], target: list[int], n_rw: int, device):
    """The tensors of a server step's batch (`_value_step`, whole rows) on `device`:
    right-padded ids and their mask, the lookup positions, where each rewriting row predicts
    the target's tokens (at its end, from the positions before them) and which, each row's
    index, and the position after each KL prompt's last token (P(. | "{s} is a"))."""
    ids, mask = _padded(rows, pad, device)
    n_t = len(target)
    pred = torch.tensor([[len(r) - n_t + j for j in range(n_t)] for r in rows[:n_rw]], device=device)
    kl_next = torch.tensor([len(r) - 1 for r in rows[n_rw:]], device=device)
    return (ids, mask, torch.tensor(lookups, device=device), pred, torch.tensor(target, device=device),
            torch.arange(len(rows), device=device), kl_next)


def _prefix_cache(parts: Parts, rows: list[list[int]], starts: list[int]):
    """(keys and values per layer, mask [row, P]): those of each row's tokens before `starts[row]`,
    left-padded to P = max(starts) with zeros (masked out, and zeros rather than whatever a
    padded forward would leave there, which may be NaN), one plain forward per length; no
    cache when every row starts at its first token."""
    from transformers import DynamicCache

    module = compat.torch_module(parts.nn)
    keyword = compat.cache_keyword(module.forward)
    width = max(starts)
    if width == 0:
        return [], torch.zeros(len(rows), 0, dtype=torch.long, device=parts.device)
    per_row = [None] * len(rows)
    for start in sorted(set(starts) - {0}):
        which = [i for i, s in enumerate(starts) if s == start]
        with torch.no_grad():
            made = module(torch.tensor([rows[i][:start] for i in which], device=parts.device), use_cache=True,
                          logits_to_keep=1, **{keyword: DynamicCache()})
        for j, i in enumerate(which):
            per_row[i] = [(k[j:j + 1], v[j:j + 1]) for k, v in compat.cache_layers(compat.output_cache(made, keyword))]
    shape = next(kv for kv in per_row if kv is not None)
    out = []
    for layer, (k0, v0) in enumerate(shape):
        keys, values = [], []
        for kv, start in zip(per_row, starts):
            k = torch.zeros(1, k0.shape[1], width, k0.shape[3], dtype=k0.dtype, device=k0.device)
            v = torch.zeros(1, v0.shape[1], width, v0.shape[3], dtype=v0.dtype, device=v0.device)
            if kv is not None:
                k[:, :, width - start:], v[:, :, width - start:] = kv[layer]
            keys.append(k)
            values.append(v)
        out.append((torch.cat(keys), torch.cat(values)))
    mask = torch.tensor([[0] * (width - s) + [1] * s for s in starts], device=parts.device)
    return out, mask


def _cache(kv: list[tuple]):
    """A fresh transformers cache holding `kv` (a forward appends to its cache, never to `kv`)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (keys, values) in enumerate(kv):
        cache.update(keys, values, layer)
    return cache


def value(parts: Parts, rewriting: list[list[int]], lookups: list[int], target: list[int], kl: list[list[int]],
          kl_lookups: list[int], layer: int, hp: Hparams = Hparams(), pad: int = 0,
          site: str = "mlp") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(v* [d_model], v0 [d_model], log) float64: ROME's value for `target` (the new object's
    token ids) at `layer` (see the module's docstring), written into the MLP's output, or into
    another site's (`site`: MEMIT's target z is the layer's residual output, `hidden`). `rewriting`: prefix + prompt + target
    but its last token, one row each, the subject's last token at `lookups`; `kl`: the
    "{subject} is a" prompts, lookups at `kl_lookups`. `values` with one fact."""
    return values(parts, [Value(rewriting, lookups, target, kl, kl_lookups)], layer, hp, pad=pad, site=site)[0]


@dataclass(frozen=True)
class Value:
    """One value optimisation's rows (`value`'s arguments of the same names)."""

    rewriting: list[list[int]]
    lookups: list[int]
    target: list[int]
    kl: list[list[int]]
    kl_lookups: list[int]


def values(parts: Parts, facts: list[Value], layer: int, hp: Hparams = Hparams(), pad: int = 0,
           site: str = "mlp") -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """`value` of every fact, optimised together: each step one forward and one backward over
    every fact's rows still optimising, each fact with its own delta (added at its own rows'
    lookup tokens), its own Adam, v0, KL reference, clamp, early stop and log. The loss
    differentiated is the sum of the facts' losses, and rows never meet in a forward, so each
    delta gets its own loss's gradient: the same optimisation as each fact's alone. A fact
    that stops leaves the batch (its optimiser never steps again).

    Nothing before a row's lookup token depends on delta, so those positions run once
    (`_prefix_cache`) and each step runs only the rest of every row, from its lookup token
    on, over their keys and values (the rows right-padded, at their own positions), and the
    unembedding runs only at the positions the loss reads: the same loss for a fraction of
    the tokens."""
    device = parts.device
    # every fact's rewriting rows, then every fact's KL rows: (fact, row, lookup) each
    rw = [(f, r, s) for f, v in enumerate(facts) for r, s in zip(v.rewriting, v.lookups)]
    kl = [(f, r, s) for f, v in enumerate(facts) for r, s in zip(v.kl, v.kl_lookups)]
    rows, starts, owner = [r for _, r, _ in rw + kl], [s for _, _, s in rw + kl], [f for f, _, _ in rw + kl]
    kv, before = _prefix_cache(parts, rows, starts)
    ids, mask = _padded([r[s:] for r, s in zip(rows, starts)], pad, device)
    positions = torch.tensor(starts, device=device)[:, None] + torch.arange(ids.shape[1], device=device)
    # where each rewriting row predicts its fact's target (at its end, from the positions before), padded and masked
    n_t = max(len(v.target) for v in facts)
    targets = [facts[f].target for f, _, _ in rw]
    pred = torch.tensor([[len(r) - s - len(t) + min(j, len(t) - 1) for j in range(n_t)] for (_, r, s), t in zip(rw, targets)],
                        device=device)
    want = torch.tensor([t + [t[-1]] * (n_t - len(t)) for t in targets], device=device)
    counted = torch.tensor([[float(j < len(t)) for j in range(n_t)] for t in targets], device=device)
    kl_next = torch.tensor([len(r) - s - 1 for _, r, s in kl], device=device)
    firsts = [next(i for i, (g, _, _) in enumerate(rw) if g == f) for f in range(len(facts))]
    deltas = [torch.zeros(parts.d_model, device=device, dtype=torch.float32, requires_grad=True) for _ in facts]
    opts = [torch.optim.Adam([d], lr=hp.lr) for d in deltas]
    logs = [{"loss": [], "nll": [], "kl": [], "p_target": []} for _ in facts]
    v0s, kl_inits, active = None, None, list(range(len(facts)))
    head = resolve(parts.nn, parts.layout.unembed)
    with frozen(parts):
        for step in range(hp.steps):
            keep = [i for i, f in enumerate(owner) if f in active]
            n_rw = sum(i < len(rw) for i in keep)
            at = torch.tensor(keep, device=device)
            width, p = int(mask[at].sum(1).max()), max(starts[i] for i in keep)
            kwargs = {"attention_mask": torch.cat([before[at, before.shape[1] - p:], mask[at, :width]], 1),
                      "position_ids": positions[at, :width]}
            if p:
                kept = [(k[at][:, :, k.shape[2] - p:], v[at][:, :, v.shape[2] - p:]) for k, v in kv]
                kwargs.update({"use_cache": True, compat.TRACE_CACHE_KEYWORD: _cache(kept)})
            shift = torch.stack(deltas)[torch.tensor([owner[i] for i in keep], device=device)]
            row = torch.arange(len(keep), device=device)
            rw_at, kl_at = at[:n_rw], at[n_rw:] - len(rw)
            with torch.enable_grad(), compat.old_cache_keyword(), parts.nn.trace(ids[at, :width], **kwargs):
                out = SITES[site].read(parts, layer)
                base = out[:, 0].detach().save()
                out[row, 0] += shift.to(out.dtype)
                # the unembedding (and what follows it) only at the positions the loss reads
                hidden = head.input
                head.input = torch.cat([hidden[row[:n_rw, None], pred[rw_at]].reshape(-1, hidden.shape[-1]),
                                        hidden[row[n_rw:], kl_next[kl_at]]])[:, None]
                logp = parts.nn.output.logits[:, 0].float().log_softmax(-1)
                picked = logp[:n_rw * n_t].reshape(n_rw, n_t, -1).gather(-1, want[rw_at, :, None])[..., 0]
                nll = (-(picked * counted[rw_at]).sum(1) / counted[rw_at].sum(1)).save()
                kl_logp = logp[n_rw * n_t:].save()
            per_rw = [sum(owner[i] == f for i in keep[:n_rw]) for f in active]
            per_kl = [sum(owner[i] == f for i in keep[n_rw:]) for f in active]
            nlls, kl_logps = nll.split(per_rw), kl_logp.split(per_kl)
            if v0s is None:
                v0s, kl_inits = [base[i].double() for i in firsts], [x.detach() for x in kl_logps]
            going = []
            for f, f_nll, f_kl in zip(active, nlls, kl_logps):
                opts[f].zero_grad()
                loss = _loss(deltas[f], f_nll, f_kl, v0s[f], kl_inits[f], hp, logs[f])[0]
                if not (loss.item() < hp.stop or step == hp.steps - 1):
                    going.append((f, loss))
            if not going:
                break
            torch.stack([loss for _, loss in going]).sum().backward()
            for f, _ in going:
                _step(opts[f], deltas[f], v0s[f], hp)
            active = [f for f, _ in going]
    return [(v0 + d.detach().double(), v0, log) for v0, d, log in zip(v0s, deltas, logs)]


def value_by_requests(parts: Parts, rewriting: list[list[int]], lookups: list[int], target: list[int], kl: list[list[int]],
                      kl_lookups: list[int], layer: int, execute, hp: Hparams = Hparams(),
                      pad: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """`value` for a model on a server: the same loss, with Adam here on a delta kept here,
    and each step's model part (the NLL, the KL prompts' log-probabilities and the gradient
    of both with respect to delta) one request, `execute(fn)` calling fn(backend). The decay
    term and its gradient are computed here."""
    rows = rewriting + kl
    delta = torch.zeros(parts.d_model, dtype=torch.float32, device="cpu", requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.lr)
    v0, kl_init, log = None, None, {"loss": [], "nll": [], "kl": [], "p_target": []}
    with frozen(parts):
        for step in range(hp.steps):
            got = execute(functools.partial(_value_step, parts, rows, pad, lookups + kl_lookups, target, len(rewriting),
                                            layer, delta.detach().clone(), kl_init, hp.kl_factor))
            if v0 is None:
                v0, kl_init = got["base"], got["kl_logp"]
            if _adam_step(opt, delta, got, v0, kl_init, hp, log, last=step == hp.steps - 1):
                break
    return v0 + delta.detach().double(), v0, log


def _adam_step(opt, delta: torch.Tensor, got: dict, v0, kl_init, hp: Hparams, log: dict, last: bool) -> bool:
    """`value_by_requests`' step: the loss from the server's part of it (`got`: nll, kl_logp and
    the gradient of their terms with respect to delta, `grad`), logged; then, unless it is
    small enough or this is the last step, Adam's step on delta (the decay term differentiated
    here, the server's gradient added) and the clamp. True: stop."""
    opt.zero_grad()
    loss, decay = _loss(delta, got["nll"], got["kl_logp"], v0, kl_init, hp, log)
    if loss.item() < hp.stop or last:
        return True
    decay.backward()
    delta.grad += got["grad"]
    _step(opt, delta, v0, hp)
    return False


def _loss(delta: torch.Tensor, nll: torch.Tensor, kl_logp: torch.Tensor, v0, kl_init, hp: Hparams, log: dict):
    """(loss, its decay term) of one fact's step: the mean of its rewriting rows' NLL, plus
    kl_factor times KL over its KL rows (batchmean) against their log-probabilities at step 0
    (`kl_init`), plus the decay term; logged in `log`."""
    # KL(unedited || edited), docs/method.md's direction (ROME's code passes them the other way round)
    kl_loss = torch.nn.functional.kl_div(kl_logp, kl_init, log_target=True, reduction="batchmean")
    decay = hp.weight_decay * delta.norm() / v0.float().norm() ** 2
    loss = nll.mean() + hp.kl_factor * kl_loss + decay
    for k, x in (("loss", loss), ("nll", nll.mean()), ("kl", kl_loss), ("p_target", torch.exp(-nll).mean())):
        log[k].append(x.item())
    return loss, decay


def _step(opt, delta: torch.Tensor, v0, hp: Hparams) -> None:
    """Adam's step on delta (its gradient in delta.grad), then delta clamped to clamp * |v0|."""
    opt.step()
    limit = hp.clamp * v0.norm()
    with torch.no_grad():
        if delta.norm() > limit:
            delta.mul_(float(limit / delta.norm()))


def _value_step(parts: Parts, rows: list[list[int]], pad: int, lookups: list[int], target: list[int], n_rw: int, layer: int,
                delta: torch.Tensor, kl_init, kl_factor: float, backend) -> dict:
    """One step of `value_by_requests` in one session: base (v0), nll [rewriting rows],
    kl_logp [kl rows, vocab], grad (of mean NLL + kl_factor * KL with respect to delta)."""
    import nnsight

    out = None
    with parts.nn.session(backend=backend):
        device = parts.embed.weight.device
        ids, mask, at, pred, want, row, kl_next = _value_inputs(rows, pad, lookups, target, n_rw, device)
        with torch.enable_grad(), parts.nn.trace(ids, attention_mask=mask):
            parts.embed.output.requires_grad_(True)  # a graph to differentiate, the weights frozen
            mlp = SITES["mlp"].read(parts, layer)
            base = mlp[0, at[0]].detach().double().cpu().save()
            mlp[row, at] += delta.to(device, mlp.dtype)
            logp = parts.nn.output.logits.float().log_softmax(-1)
            nll = -logp[torch.arange(n_rw, device=device)[:, None], pred, want[None, :]].mean(1)
            kl_logp = logp[row[n_rw:], kl_next]
            reference = kl_logp.detach() if kl_init is None else kl_init.to(device)
            kl_loss = torch.nn.functional.kl_div(kl_logp, reference, log_target=True, reduction="batchmean")
            loss = nll.mean() + kl_factor * kl_loss
            grad = None
            with loss.backward():
                grad = mlp.grad[row, at].float().sum(0).cpu().save()
            nll_out, kl_out = nll.detach().cpu().save(), kl_logp.detach().cpu().save()
        out = nnsight.save({"base": base, "nll": nll_out, "kl_logp": kl_out, "grad": grad})
    return out


def apply_in_trace(parts: Parts, edits) -> None:
    """Inside an nnsight trace: every edit ((layer, left, right) each) as the intervention
    out += left * (key . right) on its layer's MLP output, the key read at the down
    projection's input; edits of one layer add up. No weight changes, so a model on a
    server can be edited. Call it where the trace reaches the first edited layer's MLP (it
    reads modules in forward order)."""
    by_layer: dict[int, list] = {}
    for layer, left, right in edits:
        by_layer.setdefault(int(layer), []).append((left, right))
    for layer in sorted(by_layer):
        key = SITES["down"].read(parts, layer)
        out = SITES["mlp"].read(parts, layer)
        for left, right in by_layer[layer]:
            out[:] = edit_output(out, key, torch.as_tensor(left, device=out.device), torch.as_tensor(right, device=out.device))


@contextlib.contextmanager
def edited_weights(adapter, edits):
    """The local model with every edit written into its down projections' weights
    (W + outer(left, right), or W + left @ right.T for a batch edit's factors,
    `rank_one.edited`), restored on exit."""
    kept, by_layer = {}, {}
    for layer, left, right in edits:  # a layer's terms as one factor pair: one update (and rounding) per weight
        down = adapter.layer_modules()[int(layer)].get_submodule(adapter.layout.mlp_down)
        lefts, rights = by_layer.setdefault(int(layer), (down, [], []))[1:]
        lefts.append(columns(torch.as_tensor(left, device=down.weight.device)).double())
        rights.append(columns(torch.as_tensor(right, device=down.weight.device)).double())
    try:
        for layer, (down, lefts, rights) in by_layer.items():
            kept[layer] = (down, down.weight.data.clone())
            down.weight.data = edited(down.weight.data, torch.cat(lefts, 1), torch.cat(rights, 1))
        yield adapter
    finally:
        for down, weight in kept.values():
            down.weight.data = weight
