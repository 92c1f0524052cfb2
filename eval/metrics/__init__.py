"""Metric functions and classes of the evaluation suite.

Names are imported lazily (PEP 562): ``from eval.metrics import frechet_distance`` must not
pay for open_clip, transformers and torch-fidelity, which the learned metrics import.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_WHERE = {
    "CLIPScore": "torchmetrics_api",
    "OpenClipScorer": "clip_score",
    "clip_scores": "clip_score",
    "load_clip_scorer": "clip_score",
    "FIDInputError": "frechet",
    "InceptionFeatures": "fid",
    "PatchCrops": "fid",
    "ProbeFeatures": "fid",
    "ReferenceStats": "fid",
    "check_images": "fid",
    "check_pairing": "fid",
    "fid_from_features": "frechet",
    "fid_protocol": "fid",
    "fid_t": "fid",
    "image_features": "fid",
    "reference_statistics": "fid",
    "feature_statistics": "frechet",
    "frechet_distance": "frechet",
    "HPSv2Score": "torchmetrics_api",
    "hpsv2_scores": "hpsv2",
    "load_hpsv2_scorer": "hpsv2",
    "ImageReward": "torchmetrics_api",
    "ImageRewardScorer": "imagereward",
    "imagereward_scores": "imagereward",
    "load_imagereward_scorer": "imagereward",
    "PickScore": "torchmetrics_api",
    "PickScoreScorer": "pickscore",
    "load_pickscore_scorer": "pickscore",
    "pickscores": "pickscore",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"eval.metrics.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'eval.metrics' has no attribute {name!r}")
