"""Seeded confidence intervals: bootstrap of means and differences, half-sampling of sets.

Per-image means and paired differences use the percentile bootstrap; set-level statistics
such as FID use half-sampling (subsampling without replacement), see :func:`subsample_set_ci`.

Every draw comes from ``numpy.random.default_rng(seed)``, so an interval is a pure function
of the scores and the seed (two runs of the same evaluation print the same interval).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95
# default replicate counts of every caller (senseflow-eval, evaluate(), the dashboard, the study);
# the profile's values are senseflow/config.py's PipelineConfig.n_boot / n_boot_set, equal to
# these (tests/test_defaults.py)
N_BOOT = 1000  # bootstrap resamples of per-image means and paired differences
N_BOOT_SET = 200  # half-sampled subsets of set statistics (FID, FID-T)


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
    values, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> tuple[float, tuple[float, float]]:
    """Mean of per-image ``values`` and its bootstrap interval (images resampled)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError("scores contain NaN or inf")
    idx = bootstrap_indices(len(v), n_boot, seed)
    return float(v.mean()), percentile_interval(v[idx].mean(axis=1), level)


SUBSAMPLING = "half-sampling without replacement (m = n // 2), median-centred, sqrt(m / (n - m)) scale"


def subsample_indices(n: int, m: int, n_sub: int, rng: np.random.Generator) -> np.ndarray:
    """(n_sub, m) indices, each row ``m`` distinct items of ``range(n)`` (without replacement)."""
    return rng.random((n_sub, n)).argsort(axis=1)[:, :m]


def subsample_set_ci(
    sizes: int | Sequence[int],
    statistic: Callable[..., float],
    estimate: float,
    *,
    n_sub: int = N_BOOT_SET,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Half-sampling interval of a set-level statistic (FID), around its full-set ``estimate``.

    ``statistic(*indices)`` computes the metric on the items at ``indices`` of each set
    (one set: paired items such as FID-T's prompt pairs; two: independent sets such as FID's
    samples and references). Each replicate keeps ``m = n // 2`` distinct items of every set
    (subsampling without replacement, Politis & Romano 1994), never a duplicate: the
    with-replacement bootstrap repeats items, which inflates FID (fewer distinct items), so
    its replicates sat far above the estimate (measured: FID-T 209.9, bootstrap interval
    [271.8, 326.4]).

    Scale: for a smooth statistic, ``Var(theta_m) - Var(theta_n) = (d / m) Var(theta_n)`` with
    ``d = n - m`` (the delete-d jackknife of Shao & Wu 1989: ``v = (m / d) Var_b(theta_b)``), so
    ``sqrt(m / d) * (theta_b - centre)`` has the spread of ``theta_n``; ``m = n // 2`` makes the
    factor 1 for even ``n`` (for several sets it is their average). Centre: the replicates'
    median, not ``estimate``: FID on ``m`` items carries a larger small-sample bias than on
    ``n`` (its trace term grows like ``1 / m``), and centring on the replicates removes that
    shift instead of reading it as uncertainty. The interval is therefore
    ``estimate + sqrt(m / d) * quantiles(theta_b - median(theta_b))``; the quantiles straddle
    the median, so it always contains the estimate. Replicates are drawn from
    ``default_rng(seed)``: the interval is a pure function of the data and the seed.
    """
    sizes = [sizes] if isinstance(sizes, int | np.integer) else list(sizes)
    if min(sizes) < 4:
        raise ValueError(f"a subsampling interval needs at least 4 items per set, got sizes {sizes}")
    rng = np.random.default_rng(seed)
    ms = [n // 2 for n in sizes]
    draws = [subsample_indices(n, m, n_sub, rng) for n, m in zip(sizes, ms, strict=True)]
    reps = np.array([statistic(*(d[b] for d in draws)) for b in range(n_sub)], dtype=np.float64)
    if not np.isfinite(reps).all():
        raise ValueError("the statistic is not finite on some subsets")
    scale = np.sqrt(1.0 / np.mean([(n - m) / m for n, m in zip(sizes, ms, strict=True)]))
    lo, hi = percentile_interval(reps - np.median(reps), level)
    return float(estimate + scale * lo), float(estimate + scale * hi)


def paired_difference(
    a, b, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
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
