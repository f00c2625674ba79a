"""ROME's rank-one edit, checked by algebra: the edited weight maps k* to v* exactly, leaves
every key C-orthogonal to k* alone, and the intervention on the output equals the edited
weight (nn.Linear and Conv1D layouts)."""

import torch

from nnct.interventions.rank_one import edit_output, edited, rank_one


def _problem(seed=0, d_model=6, d_ff=10):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_model, d_ff, generator=g)
    keys = torch.randn(200, d_ff, generator=g)
    cov = keys.T @ keys / len(keys)  # an uncentred second moment, positive definite
    k, v = torch.randn(d_ff, generator=g), torch.randn(d_model, generator=g)
    return w, cov, k, v


def test_the_edit_maps_the_key_to_the_value_and_spares_c_orthogonal_keys():
    w, cov, k, v = _problem()
    u = torch.linalg.solve(cov.double(), k.double())
    left, right = rank_one(w, k, v, u)
    w2 = edited(w.double(), left, right)
    torch.testing.assert_close(w2 @ k.double(), v.double(), rtol=1e-10, atol=1e-10)
    x = torch.randn(10, dtype=torch.float64)
    x = x - (u @ x) / (u @ u) * u  # (C^-1 k*) . x = 0
    torch.testing.assert_close(w2 @ x, w.double() @ x, rtol=1e-10, atol=1e-10)
    # one key rewritten: the update has rank one
    assert torch.linalg.matrix_rank(w2 - w.double()) == 1


def test_identity_covariance_and_conv1d_layout():
    w, _, k, v = _problem(1)
    left, right = rank_one(w, k, v, k)  # C = I: C^-1 k* = k*
    conv = edited(w.T.contiguous(), left, right)  # GPT-2 stores [d_ff, d_model]
    torch.testing.assert_close(k @ conv, v, rtol=1e-5, atol=1e-5)


def test_the_intervention_is_the_edited_weight():
    w, cov, k, v = _problem(2)
    left, right = rank_one(w, k, v, torch.linalg.solve(cov, k))
    keys = torch.randn(3, 4, 10)
    out = keys @ w.T
    torch.testing.assert_close(edit_output(out, keys, left, right), keys @ edited(w, left, right).T, rtol=1e-5, atol=1e-5)
