"""``fid_t_probe``: FID-T of the embedded world, in the attribute probe's feature space.

FID-T (SenseFlow) compares a student with its teacher on the same prompts: the reference is
the teacher's sample folder (``--reference``), paired with the candidate by prompt id, and
both sets are the images of the shared ids. Features are the probe's penultimate layer
(the embedded stand-in for Inception). The interval half-samples the prompt pairs
(``eval.stats.subsample_set_ci``).
"""

from __future__ import annotations

import numpy as np

from eval.metrics.adherence import probe_protocol_card
from eval.metrics.pairing import paired_fid, paired_indices
from eval.registry import EvalContext, MetricResult, embedded_only, register
from eval.stats import SUBSAMPLING
from senseflow.world.probes import run_probe
from senseflow.world.scenes import to_tensor_range

VERSION = "fid-t-probe/2"  # 2: half-sampling interval (1: with-replacement bootstrap)


def probe_features(ctx: EvalContext, images: np.ndarray) -> np.ndarray:
    """Probe features of ``images``, each rank computing its block of rows (gathered)."""
    return ctx.map_rows(
        lambda idx: run_probe(ctx.probe, to_tensor_range(images[idx])).features.double().numpy(),
        n=len(images),
    )


def fid_t_probe_metric(ctx: EvalContext) -> MetricResult:
    """FID between candidate and teacher samples of the shared prompt ids."""
    s_idx, r_idx = paired_indices(ctx, "fid_t_probe")
    fs, fr = probe_features(ctx, ctx.samples.images[s_idx]), probe_features(ctx, ctx.reference.images[r_idx])
    value, ci, ref_hash = paired_fid(ctx, fs, fr, r_idx)
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
