"""Fréchet distance: hand-derived values, the scipy reference, and bad input."""

import numpy as np
import pytest
import scipy.linalg

from eval.metrics import feature_statistics, frechet_distance


def test_one_dimensional_by_hand():
    # (mu1 - mu2)^2 + s1 + s2 - 2 sqrt(s1 s2) = 4 + 4 + 9 - 2 * 6 = 5
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(5.0)


def test_matches_scipy_sqrtm_and_is_zero_for_identical_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) * 1.5 + 0.3
    (m1, s1), (m2, s2) = feature_statistics(a), feature_statistics(b)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)


def test_singular_covariances_stay_finite_and_non_negative():
    rng = np.random.default_rng(1)
    m1, s1 = feature_statistics(rng.normal(size=(5, 16)))  # rank 4 < 16
    m2, s2 = feature_statistics(rng.normal(size=(5, 16)))
    d = frechet_distance(m1, s1, m2, s2)
    assert np.isfinite(d) and d >= 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="sigma2 has non-finite"):
        frechet_distance([0.0], [[1.0]], [0.0], [[np.nan]])
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance([0.0, 1.0], np.eye(2), [0.0], [[1.0]])
