"""FID-T's shared part: samples paired with the teacher's by prompt id, distance and interval.

``fid_t``, ``patch_fid_t`` and the embedded world's ``fid_t_probe`` differ only in their
features: the pairing, the distance of the pairs' features and its half-sampling interval
live here.

Kept apart from :mod:`eval.metrics.fid_t` so ``fid_t_probe`` does not import the Inception /
torchmetrics stack.
"""

from __future__ import annotations

import hashlib

import numpy as np

from eval.metrics.frechet import fid_from_features
from eval.registry import EvalContext, MetricError
from eval.stats import subsample_set_ci


def paired_indices(ctx: EvalContext, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the samples and of the reference that share a prompt id, in sample order.

    Each pair must also share the prompt text and the seed (a prompt id only names a prompt
    within one list; FID-T compares the same noise), except that ``ctx.paired_seeds=False``
    (the noise-floor set, sampled with other seeds by design) waives the seed.
    """
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
    for i, j in pairs:
        # a prompt id names a prompt only within one prompt list: the text and the seed must agree too
        for key in ("prompt", "seed") if ctx.paired_seeds else ("prompt",):
            a, b = ctx.samples.records[i].get(key), ref.records[j].get(key)
            if a != b:
                pid = ctx.samples.records[i]["id"]
                raise MetricError(
                    f"{name}: prompt id {pid!r} has {key} {a!r} in {ctx.samples.path} but {b!r} in "
                    f"--reference {ref.path}: sample both with the same prompt list and seeds"
                )
    if len(pairs) < 2:
        raise MetricError(
            f"--reference {ref.path} shares {len(pairs)} prompt ids with the samples; FID-T needs the "
            "teacher's samples of the same prompts"
        )
    s_idx, r_idx = (np.array(x) for x in zip(*pairs, strict=True))
    return s_idx, r_idx


def paired_fid(
    ctx: EvalContext, fs: np.ndarray, fr: np.ndarray, r_idx: np.ndarray
) -> tuple[float, tuple[float, float], str]:
    """``(value, ci95, reference hash)`` of FID-T between paired features.

    ``fs`` / ``fr``: features of the candidate's and the teacher's images of the same prompts,
    row ``i`` of each from prompt pair ``i``; (N, D), or (N, crops, D) with every crop of a
    prompt staying with it when the pairs are half-sampled (``eval.stats.subsample_set_ci``).
    The hash names the reference images used (their sha256s, in pair order).
    """

    def fid(k) -> float:
        a, b = fs[k].reshape(-1, fs.shape[-1]), fr[k].reshape(-1, fr.shape[-1])
        # identical sets give -1e-6 from float64 round-off in the traces; a distance is >= 0
        return max(0.0, fid_from_features(a, b))

    value = fid(np.arange(len(fs)))
    ci = subsample_set_ci(len(fs), fid, value, n_sub=ctx.n_boot_set, seed=ctx.seed)
    ref_hash = hashlib.sha256("".join(ctx.reference.records[j]["sha256"] for j in r_idx).encode()).hexdigest()
    return value, ci, ref_hash
