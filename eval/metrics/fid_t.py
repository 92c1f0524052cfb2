"""``fid_t`` and ``patch_fid_t``: FID-T of the real profiles, in Inception feature space.

FID-T (SenseFlow) compares a candidate with its teacher on the same prompts: the reference is
the teacher's sample folder (``--reference``; in the pipeline ``teacher_full``), paired with
the candidate by prompt id as in ``fid_t_probe``, and both sets are the images of the shared
ids. ``patch_fid_t`` is the same on ONE 299x299 centre crop per full-resolution image (DMD2's
patch FID, the paper's Patch FID-T column), so it sees the detail that the whole-image resize
to 299 hides; ``patch_fid_t_grid`` is the suite's earlier variant on a grid of crops covering
each image (not the paper's number). Whole images are prepared under ``ctx.protocol``
(``dmd2`` by default, :mod:`eval.image_protocols`). Inception weights come from the weights
directory; intervals half-sample the prompt pairs (``eval.stats.subsample_set_ci``), every
crop of a prompt staying with it.
"""

from __future__ import annotations

from eval.image_protocols import describe_fid_protocol
from eval.metrics.fid import InceptionFeatures, PatchCrops, inception_features
from eval.metrics.pairing import paired_fid, paired_indices
from eval.registry import EvalContext, MetricResult, protocol_card, register
from eval.stats import SUBSAMPLING
from eval.streaming import map_batches

VERSION = "fid-t/2"


def _fid_t(ctx: EvalContext, name: str, patches: PatchCrops | None) -> MetricResult:
    from eval.weights import require

    s_idx, r_idx = paired_indices(ctx, name)
    extractor = InceptionFeatures(require("inception_fid"), resize=ctx.protocol)

    if patches is None or patches.mode == "center":
        center = patches is not None

        def feats(folder, idx):
            return inception_features(ctx, folder, extractor, idx, patch=center)[:, None, :]

    else:

        def feats(folder, idx):
            """(N, crops, 2048) features; each rank extracts its block of images (rows gathered)."""

            def block(rows):
                paths = [folder.images.paths[i] for i in idx[rows]]

                def fn(batch, _rows):
                    x = batch.permute(0, 3, 1, 2).contiguous()
                    return (
                        extractor.forward_prepared(patches(x).float())
                        .numpy()
                        .reshape(len(x), -1, extractor.dim)
                    )

                return map_batches(paths, fn, batch_size=extractor.batch_size)

            return ctx.map_rows(block, n=len(idx))

    fs, fr = feats(ctx.samples, s_idx), feats(ctx.reference, r_idx)
    value, ci, ref_hash = paired_fid(ctx, fs, fr, r_idx)
    resize = f"{patches.id}, full resolution, no resize" if patches else describe_fid_protocol(ctx.protocol)
    card = protocol_card(
        ctx, metric=f"{'patch ' if patches else ''}FID-T (Inception-v3 pool3, teacher samples as reference)",
        version=VERSION, backbone=extractor.id, weights_sha256=extractor.weights_sha256,
        image_count=len(s_idx), resize=resize, reference_stats_sha256=ref_hash, n_boot=ctx.n_boot_set,
        precision="fp32",
    )  # fmt: skip
    details = {"interval": f"{SUBSAMPLING}, {ctx.n_boot_set} subsets of prompt pairs", "crops": fs.shape[1]}
    return MetricResult(card, higher_is_better=False, value=value, ci95=ci, n=len(s_idx), details=details)


def fid_t_metric(ctx: EvalContext) -> MetricResult:
    """FID between candidate and teacher samples of the shared prompt ids (whole images)."""
    return _fid_t(ctx, "fid_t", None)


def patch_fid_t_metric(ctx: EvalContext) -> MetricResult:
    """FID-T on one 299x299 centre crop of every full-resolution image (DMD2's patch FID)."""
    return _fid_t(ctx, "patch_fid_t", PatchCrops(mode="center"))


def patch_fid_t_grid_metric(ctx: EvalContext) -> MetricResult:
    """FID-T on a grid of 299x299 full-resolution crops covering every image (not the paper's)."""
    return _fid_t(ctx, "patch_fid_t_grid", PatchCrops(mode="grid"))


register("fid_t", lambda: fid_t_metric)
register("patch_fid_t", lambda: patch_fid_t_metric)
register("patch_fid_t_grid", lambda: patch_fid_t_grid_metric)
