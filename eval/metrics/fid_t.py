"""``fid_t`` and ``patch_fid_t``: FID-T of the real profiles, in Inception feature space.

FID-T (SenseFlow) compares a candidate with its teacher on the same prompts: the reference is
the teacher's sample folder (``--reference``; in the pipeline ``teacher_full``), paired with
the candidate by prompt id as in ``fid_t_probe``, and both sets are the images of the shared
ids. ``patch_fid_t`` is the same on 299x299 crops taken at full resolution (a grid covering
each image, DMD2's patch FID), so it sees the detail that the whole-image resize to 299
hides. Inception weights come from the weights directory; intervals half-sample the prompt
pairs (``eval.stats.subsample_set_ci``), every crop of a prompt staying with it.
"""

from __future__ import annotations

import numpy as np
import torch

from eval.metrics.fid import InceptionFeatures, PatchCrops
from eval.metrics.pairing import paired_fid, paired_indices
from eval.registry import EvalContext, MetricResult, protocol_card, register
from eval.stats import SUBSAMPLING

VERSION = "fid-t/1"


def _fid_t(ctx: EvalContext, name: str, patches: PatchCrops | None) -> MetricResult:
    from eval.weights import require

    s_idx, r_idx = paired_indices(ctx, name)
    extractor = InceptionFeatures(require("inception_fid"), resize="clean")

    def feats(images: np.ndarray) -> np.ndarray:
        """(N, crops, 2048) features; each rank extracts its block of images (rows gathered)."""

        def block(idx):
            x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).contiguous()
            crops = patches(x) if patches is not None else x  # crops are 299 px: the resize is the identity
            return extractor(crops).double().numpy().reshape(len(idx), -1, extractor.dim)

        return ctx.map_rows(block, n=len(images))

    fs, fr = feats(ctx.samples.images[s_idx]), feats(ctx.reference.images[r_idx])
    value, ci, ref_hash = paired_fid(ctx, fs, fr, r_idx)
    card = protocol_card(
        ctx, metric=f"{'patch ' if patches else ''}FID-T (Inception-v3 pool3, teacher samples as reference)",
        version=VERSION, backbone=extractor.id, weights_sha256=extractor.id.split(":")[-1],
        image_count=len(s_idx), resize=patches.id if patches else "clean: PIL bicubic to 299",
        reference_stats_sha256=ref_hash, n_boot=ctx.n_boot_set,
    )  # fmt: skip
    details = {"interval": f"{SUBSAMPLING}, {ctx.n_boot_set} subsets of prompt pairs", "crops": fs.shape[1]}
    return MetricResult(card, higher_is_better=False, value=value, ci95=ci, n=len(s_idx), details=details)


def fid_t_metric(ctx: EvalContext) -> MetricResult:
    """FID between candidate and teacher samples of the shared prompt ids (whole images)."""
    return _fid_t(ctx, "fid_t", None)


def patch_fid_t_metric(ctx: EvalContext) -> MetricResult:
    """FID-T on a grid of 299x299 full-resolution crops of every image."""
    return _fid_t(ctx, "patch_fid_t", PatchCrops(mode="grid"))


register("fid_t", lambda: fid_t_metric)
register("patch_fid_t", lambda: patch_fid_t_metric)
