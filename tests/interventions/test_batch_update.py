"""MEMIT's and AlphaEdit's updates, checked against plain least-squares solutions computed
another way (torch.linalg.lstsq on stacked systems), against their exact limits, and against
ROME's rank-one edit where the algebra makes them coincide."""

import torch

from nnct.interventions.batch_update import alphaedit, memit, null_space
from nnct.interventions.rank_one import edit_output, edited, rank_one

D_MODEL, D_FF = 6, 12


def _problem(seed=0, n=3, d_model=D_MODEL, d_ff=D_FF):
    g = torch.Generator().manual_seed(seed)
    corpus = torch.randn(300, d_ff, generator=g, dtype=torch.float64)
    cov = corpus.T @ corpus / len(corpus)  # an uncentred second moment, positive definite
    keys = torch.randn(d_ff, n, generator=g, dtype=torch.float64)
    residuals = torch.randn(d_model, n, generator=g, dtype=torch.float64)
    return cov, keys, residuals


def _sqrt(m):
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def _delta(left, right):
    return left @ right.T


def test_memit_is_the_regularised_least_squares_solution():
    """argmin_D |D K - R|^2 + lambda tr(D C D^T) = |[K^T; sqrt(lambda) C^1/2] D^T - [R^T; 0]|^2,
    solved by lstsq."""
    cov, k, r = _problem()
    lam = 0.7
    stacked = torch.cat([k.T, lam ** 0.5 * _sqrt(cov)])
    want = torch.linalg.lstsq(stacked, torch.cat([r.T, torch.zeros(D_FF, D_MODEL, dtype=torch.float64)])).solution.T
    left, right = memit(k, r, cov, lam)
    assert left.shape == (D_MODEL, 3) and right.shape == (D_FF, 3)
    torch.testing.assert_close(_delta(left, right), want, rtol=1e-9, atol=1e-10)


def test_memit_writes_the_keys_exactly_as_lambda_vanishes():
    cov, k, r = _problem(1, n=4)
    left, right = memit(k, r, cov, 1e-12)
    torch.testing.assert_close(_delta(left, right) @ k, r, rtol=1e-7, atol=1e-7)
    # with a real lambda it does not: the corpus's keys pull the other way
    left, right = memit(k, r, cov, 5.0)
    assert (_delta(left, right) @ k - r).abs().max() > 1e-2


def test_one_fact_is_rome_direction_scaled():
    """N = 1: right = C^-1 k / (lambda + k^T C^-1 k) (Sherman-Morrison), ROME's right times
    k^T C^-1 k / (lambda + k^T C^-1 k); with C = I and lambda -> 0, ROME's edit itself."""
    cov, k, r = _problem(2, n=1)
    w = torch.randn(D_MODEL, D_FF, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    key = k[:, 0]
    u = torch.linalg.solve(cov, key)
    rome_left, rome_right = rank_one(w, key, w @ key + r[:, 0], u)
    lam = 2.0
    left, right = memit(k, r, cov, lam)
    torch.testing.assert_close(left[:, 0], rome_left)
    torch.testing.assert_close(right[:, 0], rome_right * (u @ key) / (lam + u @ key), rtol=1e-9, atol=1e-12)
    eye = torch.eye(D_FF, dtype=torch.float64)
    # lambda small, not 0: lambda I + k k^T is singular at 0, and its condition grows as 1 / lambda
    left, right = memit(k, r, eye, 1e-7)
    rome_left, rome_right = rank_one(w, key, w @ key + r[:, 0], key)
    torch.testing.assert_close(edited(w, left, right), edited(w, rome_left, rome_right), rtol=1e-6, atol=1e-6)


def _low_rank_cov(seed=4, rank=5):
    """A second moment whose keys use `rank` directions of d_ff, the rest barely."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D_FF, D_FF, generator=g, dtype=torch.float64)).Q
    values = torch.cat([torch.rand(rank, generator=g, dtype=torch.float64) + 1.0,
                        torch.full((D_FF - rank,), 1e-4, dtype=torch.float64)])
    return basis @ torch.diag(values) @ basis.T, basis[:, :rank]


def test_alphaedit_spares_the_preserved_keys():
    cov, used = _low_rank_cov()
    p = null_space(cov, 1e-2)
    torch.testing.assert_close(p, torch.eye(D_FF, dtype=torch.float64) - used @ used.T, rtol=1e-9, atol=1e-9)
    _, k, r = _problem(5, n=3)
    left, right = alphaedit(k, r, p, torch.zeros(D_FF, D_FF, dtype=torch.float64), 10.0)
    preserved = used @ torch.randn(5, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert (_delta(left, right) @ preserved).abs().max() < 1e-12
    assert (_delta(left, right) @ k).abs().max() > 1e-2  # and it edits


def test_alphaedit_is_ridge_regression_inside_the_null_space():
    """Delta = D U^T with U an orthonormal basis of P's range and D = argmin |D U^T K - R|^2 +
    |D U^T K_p|^2 + l2 |D|^2 (lstsq on the stacked system): AlphaEdit's solution, earlier
    keys K_p included."""
    cov, used = _low_rank_cov()
    p = null_space(cov, 1e-2)
    values, vectors = torch.linalg.eigh(p)
    u = vectors[:, values > 0.5]
    _, k, r = _problem(7, n=2)
    earlier = torch.randn(D_FF, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    l2 = 0.3
    a = torch.cat([k.T @ u, earlier.T @ u, l2 ** 0.5 * torch.eye(u.shape[1], dtype=torch.float64)])
    b = torch.cat([r.T, torch.zeros(3 + u.shape[1], D_MODEL, dtype=torch.float64)])
    want = torch.linalg.lstsq(a, b).solution.T @ u.T
    left, right = alphaedit(k, r, p, earlier @ earlier.T, l2)
    torch.testing.assert_close(_delta(left, right), want, rtol=1e-8, atol=1e-10)


def test_alphaedit_keeps_earlier_edits_as_l2_vanishes():
    """Two edits in sequence: the second, told the first one's keys, leaves their outputs
    unchanged and writes its own exactly once l2 -> 0 (P K and P K_p independent: 4 columns in
    a null space of 7 dimensions)."""
    cov, _ = _low_rank_cov()
    p = null_space(cov, 1e-2)
    zero = torch.zeros(D_FF, D_FF, dtype=torch.float64)
    _, k1, r1 = _problem(9, n=2)
    _, k2, r2 = _problem(10, n=2)
    w = torch.randn(D_MODEL, D_FF, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    w1 = edited(w, *alphaedit(k1, r1, p, zero, 1e-10))
    w2 = edited(w1, *alphaedit(k2, r2, p, k1 @ k1.T, 1e-10))
    torch.testing.assert_close(w2 @ k1, w1 @ k1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w2 @ k2, w1 @ k2 + r2, rtol=1e-6, atol=1e-6)
    # without the earlier keys the second edit moves the first one's outputs
    w2_blind = edited(w1, *alphaedit(k2, r2, p, zero, 1e-10))
    assert (w2_blind @ k1 - w1 @ k1).abs().max() > 1e-2


def test_factors_apply_as_an_intervention_and_in_conv1d_layout():
    cov, k, r = _problem(12)
    left, right = memit(k, r, cov, 1.0)
    w = torch.randn(D_MODEL, D_FF, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    x = torch.randn(2, 4, D_FF, dtype=torch.float64)
    torch.testing.assert_close(edit_output(x @ w.T, x, left, right), x @ edited(w, left, right).T)
    torch.testing.assert_close(edited(w.T.contiguous(), left, right), edited(w, left, right).T)


def test_a_null_space_by_energy_holds_the_directions_of_least_variance_up_to_that_share():
    """Eigenvalues 0.001, 0.002, 0.01, 1, 2 (trace 3.013): a share of 0.005 (0.01507) holds the
    first three (0.013), 0.0005 only the first, and the absolute threshold ignores the scale."""
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(12), dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor([0.001, 0.002, 0.01, 1.0, 2.0], dtype=torch.float64)) @ q.T
    torch.testing.assert_close(null_space(cov, 1e-2, energy=0.005), q[:, :3] @ q[:, :3].T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(null_space(cov, 1e-2, energy=0.0005), q[:, :1] @ q[:, :1].T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(null_space(100 * cov, 1e-2, energy=0.005), q[:, :3] @ q[:, :3].T, rtol=1e-9,
                               atol=1e-9)
    assert null_space(100 * cov, 1e-2).abs().max() < 1e-12  # scaled up, nothing is under the threshold
