"""ROME's rank-one edit of a linear map (Meng et al. 2022), as algebra: no model.

A decoder layer's MLP ends in a down projection W (d_model x d_ff, as nn.Linear stores it)
that maps the MLP's hidden activation k (the key, the `down` site) to the MLP's output. ROME
rewrites one fact by making W map the subject's key k* to a new value v*, changing W as
little as possible for the keys the model usually sees (whose uncentred second moment is C):

    W' = W + (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)

so that W' k* = v* exactly, and W' x = W x for every x with (C^-1 k*) . x = 0. An edit is
kept as two vectors, left = v* - W k* (d_model) and right = C^-1 k* / ((C^-1 k*)^T k*)
(d_ff), with W' = W + outer(left, right); on a running model it is the intervention
out += left * (key . right) on the down projection's output, which needs no weights (a
model on a server can be edited this way). `batch_update`'s MEMIT and AlphaEdit updates are
the same two factors with N columns (W' = W + left @ right.T); `edited` and `edit_output`
apply either.
"""

from __future__ import annotations

import torch


def rank_one(weight: torch.Tensor, key: torch.Tensor, value: torch.Tensor, inv_cov_key: torch.Tensor):
    """(left [d_model], right [d_ff]) of the edit mapping `key` to `value` through `weight`
    ([d_model, d_ff]); `inv_cov_key` is C^-1 k* (k* itself when C is the identity).
    Computed in float64, on `weight`'s device."""
    w, k, v, u = (t.detach().to(weight.device, torch.float64) for t in (weight, key, value, inv_cov_key))
    return rank_one_from(w @ k, k, v, u)


def rank_one_from(weight_key: torch.Tensor, key: torch.Tensor, value: torch.Tensor, inv_cov_key: torch.Tensor):
    """`rank_one` given W k* itself (`weight_key`, d_model) instead of W: what a model on a
    server gives (the down projection's output at the keys, less its bias). In float64, on
    the key's device."""
    k = key.detach().double()
    wk, v, u = (t.detach().to(k.device, torch.float64) for t in (weight_key, value, inv_cov_key))
    return v - wk, u / (u @ k)


def columns(factor: torch.Tensor) -> torch.Tensor:
    """A factor as a matrix of columns: a vector (ROME's rank one) is one column, a
    [d, r] factor (`batch_update`'s rank N) is itself."""
    return factor.reshape(factor.shape[0], -1)


def edited(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The edited weight, in `weight`'s dtype: W + left @ right.T (outer(left, right) for
    vectors), for a weight stored [d_model, d_ff] (nn.Linear) or transposed [d_ff, d_model]
    (GPT-2's Conv1D)."""
    update = columns(left.to(weight.device, torch.float64)) @ columns(right.to(weight.device, torch.float64)).T
    if weight.shape != update.shape:
        update = update.T
    return (weight.double() + update).to(weight.dtype)


def edit_output(output, key, left: torch.Tensor, right: torch.Tensor):
    """The down projection's output `output` [.., d_model] as the edited weight would give it
    from its input `key` [.., d_ff]: out + left * (key . right), or out + (key @ right) @ left.T
    for factors of several columns."""
    scale = key @ columns(right).to(key.dtype)
    return output + scale @ columns(left).T.to(output.dtype)
