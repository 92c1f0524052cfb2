"""Pairing a candidate's samples with the teacher's by prompt id (FID-T and its probe analogue).

Kept apart from :mod:`eval.metrics.fid_t` so the embedded world's ``fid_t_probe`` does not import
the Inception / torchmetrics stack.
"""

from __future__ import annotations

import numpy as np

from eval.registry import EvalContext, MetricError


def paired_indices(ctx: EvalContext, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the samples and of the reference that share a prompt id, in sample order."""
    ref = ctx.reference
    if ref is None:
        raise MetricError(f"{name} needs --reference DIR: teacher samples of the same prompts")
    if ref.images.shape[1:] != ctx.samples.images.shape[1:]:
        raise MetricError(
            f"--reference {ref.path} holds {ref.images.shape[2]}x{ref.images.shape[1]} images, the samples "
            f"{ctx.samples.images.shape[2]}x{ctx.samples.images.shape[1]}: sample both at one resolution"
        )
    ref_index = {r["id"]: i for i, r in enumerate(ref.records)}
    pairs = [(i, ref_index[r["id"]]) for i, r in enumerate(ctx.samples.records) if r["id"] in ref_index]
    if len(pairs) < 2:
        raise MetricError(
            f"--reference {ref.path} shares {len(pairs)} prompt ids with the samples; FID-T needs the "
            "teacher's samples of the same prompts"
        )
    s_idx, r_idx = (np.array(x) for x in zip(*pairs, strict=True))
    return s_idx, r_idx
