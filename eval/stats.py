"""Seeded percentile bootstrap: confidence intervals of metrics and paired differences.

Every draw comes from ``numpy.random.default_rng(seed)``, so an interval is a pure function
of the scores and the seed (two runs of the same evaluation print the same interval).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LEVEL = 0.95


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement from ``range(n)``."""
    if n < 1:
        raise ValueError("bootstrap needs at least one observation")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(stats: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Central ``level`` interval of bootstrap replicates (percentile method)."""
    alpha = (1 - level) / 2
    lo, hi = np.quantile(np.asarray(stats, dtype=np.float64), [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_mean_ci(
    values, *, n_boot: int = 1000, seed: int = 0, level: float = LEVEL
) -> tuple[float, tuple[float, float]]:
    """Mean of per-image ``values`` and its bootstrap interval (images resampled)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError("scores contain NaN or inf")
    idx = bootstrap_indices(len(v), n_boot, seed)
    return float(v.mean()), percentile_interval(v[idx].mean(axis=1), level)


def bootstrap_set_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Interval of a set-level statistic (FID) over resampled sets of ``n`` items.

    ``statistic(indices)`` computes the metric on the items at ``indices``. The replicates
    describe the sampling variability of the set; FID's small-sample bias means they sit
    above the full-set value, so the interval is reported beside, not around, the estimate.
    """
    idx = bootstrap_indices(n, n_boot, seed)
    return percentile_interval(np.array([statistic(row) for row in idx]), level)


def paired_difference(
    a, b, *, n_boot: int = 1000, seed: int = 0, level: float = LEVEL
) -> dict[str, float | bool | int]:
    """Mean of ``b - a`` over pairs, its bootstrap interval (pairs resampled) and significance.

    Significant means the interval excludes 0.
    """
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    mean, (lo, hi) = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed, level=level)
    return {
        "difference": mean,
        "ci_low": lo,
        "ci_high": hi,
        "n": int(len(d)),
        "significant": lo > 0 or hi < 0,
    }
