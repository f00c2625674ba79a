"""`analysis.editing.energy`: a hand-made case, and the second-moment form against keys drawn
with that second moment (Monte Carlo)."""

import numpy as np
import pytest

from nnct.analysis.editing import energy


def test_a_hand_made_case():
    keys = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # e1 and 2 e2, as columns
    first = np.diag([1.0, 0.0, 0.0])  # the projection onto e1
    assert energy(first, keys) == pytest.approx(0.5)  # (1 + 0) / 2
    assert energy(np.eye(3), keys) == pytest.approx(2.5)  # (1 + 4) / 2
    assert energy(first, second_moment=keys @ keys.T / 2) == pytest.approx(0.5)


def test_the_second_moment_form_is_the_mean_over_keys_drawn_with_it():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    c = a @ a.T / 6
    m = rng.normal(size=(4, 6))
    keys = np.linalg.cholesky(c) @ rng.normal(size=(6, 200_000))
    assert energy(m, keys) == pytest.approx(energy(m, second_moment=c), rel=0.02)
