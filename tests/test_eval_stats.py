"""Intervals of set-level metrics: half-sampling without replacement, around the estimate."""

import numpy as np
import pytest

from eval.metrics.fid import fid_from_features
from eval.stats import bootstrap_indices, percentile_interval, subsample_indices, subsample_set_ci


@pytest.fixture(scope="module")
def gaussian_sets():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 16)), rng.normal(size=(200, 16)) + 0.2


def test_fid_interval_contains_the_estimate_where_the_bootstrap_does_not(gaussian_sets):
    a, b = gaussian_sets
    value = fid_from_features(a, b)
    lo, hi = subsample_set_ci(
        [200, 200], lambda i, j: fid_from_features(a[i], b[j]), value, n_sub=100, seed=1
    )
    assert lo < value < hi
    paired_lo, paired_hi = subsample_set_ci(200, lambda k: fid_from_features(a[k], b[k]), value, n_sub=100)
    assert paired_lo < value < paired_hi
    # the trap it replaces: resampling with replacement duplicates items and inflates FID, so the
    # percentile bootstrap's interval lies wholly above the estimate
    boot = [fid_from_features(a[k], b[k]) for k in bootstrap_indices(200, 100, 1)]
    assert percentile_interval(boot)[0] > value


def test_interval_is_seeded(gaussian_sets):
    a, b = gaussian_sets
    value = fid_from_features(a, b)

    def ci(seed):
        return subsample_set_ci(
            [200, 200], lambda i, j: fid_from_features(a[i], b[j]), value, n_sub=50, seed=seed
        )

    assert ci(3) == ci(3)
    assert ci(3) != ci(4)


def test_subsets_have_no_duplicates():
    idx = subsample_indices(10, 5, 30, np.random.default_rng(0))
    assert idx.shape == (30, 5)
    assert all(len(set(row)) == 5 for row in idx.tolist())
    assert idx.min() >= 0 and idx.max() <= 9


def test_scale_gives_the_sampling_spread_of_a_mean():
    # for a mean, half-sampling with the sqrt(m / d) scale reproduces the normal interval's width
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    lo, hi = subsample_set_ci(400, lambda k: x[k].mean(), x.mean(), n_sub=2000, seed=0)
    assert (hi - lo) / (2 * 1.96 * x.std() / 20) == pytest.approx(1.0, abs=0.1)
    hits = 0
    for r in range(100):  # and it covers the true mean about 95% of the time
        y = rng.normal(size=100)
        lo, hi = subsample_set_ci(100, lambda k, y=y: y[k].mean(), y.mean(), n_sub=200, seed=r)
        hits += lo <= 0 <= hi
    assert 85 <= hits <= 100


def test_too_few_items_and_non_finite():
    with pytest.raises(ValueError, match="at least 4"):
        subsample_set_ci(3, lambda k: 0.0, 0.0)
    with pytest.raises(ValueError, match="not finite"):
        subsample_set_ci(10, lambda k: float("nan"), 0.0, n_sub=5)
