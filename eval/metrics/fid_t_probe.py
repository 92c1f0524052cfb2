"""``fid_t_probe``: FID-T of the embedded world, in the attribute probe's feature space.

FID-T (SenseFlow) compares a student with its teacher on the same prompts: the reference is
the teacher's sample folder (``--reference``), paired with the candidate by prompt id, and
both sets are the images of the shared ids. Features are the probe's penultimate layer
(the embedded stand-in for Inception). The interval half-samples the prompt pairs
(``eval.stats.subsample_set_ci``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from eval.metrics.adherence import probe_protocol_card
from eval.metrics.frechet import fid_from_features
from eval.metrics.pairing import paired_indices
from eval.registry import EvalContext, MetricResult, embedded_only, register
from eval.stats import SUBSAMPLING, subsample_set_ci
from senseflow.world.probes import run_probe
from senseflow.world.scenes import to_tensor_range

VERSION = "fid-t-probe/2"  # 2: half-sampling interval (1: with-replacement bootstrap)


def _features(ctx: EvalContext, images: np.ndarray) -> np.ndarray:
    """Probe features of ``images``, each rank computing its block of rows (gathered)."""
    return ctx.map_rows(
        lambda idx: run_probe(ctx.probe, to_tensor_range(images[idx])).features.double().numpy(),
        n=len(images),
    )


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (never below 0)."""
    # identical sets give -1e-6 from float64 round-off in the traces; a distance is >= 0
    return max(0.0, fid_from_features(a, b))


def fid_t_probe_metric(ctx: EvalContext) -> MetricResult:
    """FID between candidate and teacher samples of the shared prompt ids."""
    ref = ctx.reference
    s_idx, r_idx = paired_indices(ctx, "fid_t_probe")
    fs, fr = _features(ctx, ctx.samples.images[s_idx]), _features(ctx, ref.images[r_idx])
    value = fid(fs, fr)
    # subsample prompt pairs: both sets keep the same prompts in every replicate
    ci = subsample_set_ci(len(s_idx), lambda k: fid(fs[k], fr[k]), value, n_sub=ctx.n_boot_set, seed=ctx.seed)
    ref_hash = hashlib.sha256("".join(ref.records[j]["sha256"] for j in r_idx).encode()).hexdigest()
    card = probe_protocol_card(
        ctx,
        metric="FID-T (teacher samples as reference)",
        version=VERSION,
        backbone=", penultimate features",
        image_count=len(s_idx),
        reference_stats_sha256=ref_hash,
        n_boot=ctx.n_boot_set,
    )
    details = {"interval": f"{SUBSAMPLING}, {ctx.n_boot_set} subsets of prompt pairs"}
    return MetricResult(card, higher_is_better=False, value=value, ci95=ci, n=len(s_idx), details=details)


register("fid_t_probe", lambda: fid_t_probe_metric, embedded_only)
