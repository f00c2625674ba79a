"""MEMIT's and AlphaEdit's update of one layer's down projection for many facts at once, as
algebra: no model (Meng et al. 2023, Fang et al. 2025).

Beside `rank_one`, which rewrites one fact, these rewrite N facts in one layer. The layer's
keys K [d_ff x N] (one column per fact) should come out as W K + R, R [d_model x N] the
share of each fact's residual this layer takes on. Both return the update as factors
(left [d_model x r], right [d_ff x r]) with W' = W + left @ right.T, r = N, left = R: the
edits file keeps them and `rank_one.edited` / `edit_output` apply them, in the weights or as
the intervention out += (key . right) @ left.T.

- MEMIT: Delta = argmin |Delta K - R|^2 + lambda tr(Delta C Delta^T), C the keys' uncentred
  second moment over a corpus, lambda MEMIT's mom2_update_weight; Delta = R K^T (lambda C +
  K K^T)^-1, so right = (lambda C + K K^T)^-1 K (MEMIT's adj_k). For one fact this is ROME's
  direction C^-1 k scaled by k^T C^-1 k / (lambda + k^T C^-1 k) (Sherman-Morrison): ROME
  writes the key exactly, MEMIT trades it against the corpus.
- AlphaEdit: the update is confined to the null space of the preserved knowledge, P the
  projection onto C's eigenvectors whose eigenvalues are below a threshold, so Delta k = 0
  for every key in the span of the others; earlier edits' keys K_p enter as a penalty
  |Delta K_p|^2 that keeps what they wrote. AlphaEdit solves (P (K_p K_p^T + K K^T) + l2 I) X
  = P K R^T for X = Delta^T, so right = (P (K_p K_p^T + K K^T) + l2 I)^-1 P K. (AlphaEdit's
  code takes P from an SVD of C; C is symmetric positive semi-definite, so `eigh` gives the
  same vectors, with eigenvalues equal to its singular values.)

Everything is float64 on the keys' device.
"""

from __future__ import annotations

import torch


def _f64(*tensors: torch.Tensor, device=None):
    device = device if device is not None else tensors[0].device
    return tuple(t.detach().to(device, torch.float64) for t in tensors)


def memit(keys: torch.Tensor, residuals: torch.Tensor, cov: torch.Tensor, weight: float):
    """(left [d_model, N], right [d_ff, N]): MEMIT's update mapping `keys` [d_ff, N] to W keys +
    `residuals` [d_model, N] in the least-squares sense, regularised by `weight` * C (`cov`
    [d_ff, d_ff])."""
    k, r, c = _f64(keys, residuals, cov)
    return r, torch.linalg.solve(weight * c + k @ k.T, k)


def null_space(cov: torch.Tensor, threshold: float, energy: float | None = None) -> torch.Tensor:
    """[d_ff, d_ff]: AlphaEdit's P, the projection onto the eigenvectors of `cov` whose
    eigenvalues are below `threshold` (the directions the corpus's keys hardly use); with
    `energy`, onto the eigenvectors of smallest eigenvalue that together hold at most that
    share of trace(cov) (the same idea on a model whose keys have another scale)."""
    values, vectors = torch.linalg.eigh(cov.detach().double())
    if energy is None:
        small = vectors[:, values < threshold]
    else:
        held = values.clamp(min=0)
        small = vectors[:, torch.cumsum(held, 0) <= energy * held.sum()]
    return small @ small.T


def alphaedit(keys: torch.Tensor, residuals: torch.Tensor, projection: torch.Tensor, preserved: torch.Tensor, l2: float):
    """(left [d_model, N], right [d_ff, N]): AlphaEdit's update for `keys` [d_ff, N] and
    `residuals` [d_model, N] inside the null space `projection` (`null_space`), keeping the
    outputs of earlier edits' keys, `preserved` = K_p K_p^T [d_ff, d_ff] (zero for none)."""
    k, r, p, kp = _f64(keys, residuals, projection, preserved)
    a = p @ (kp + k @ k.T) + l2 * torch.eye(len(k), dtype=torch.float64, device=k.device)
    return r, torch.linalg.solve(a, p @ k)
