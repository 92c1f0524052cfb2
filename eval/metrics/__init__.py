"""Metric functions and classes of the evaluation suite."""

from eval.metrics.clip_score import CLIPScore, OpenClipScorer, clip_scores, load_clip_scorer
from eval.metrics.fid import (
    FID,
    FIDInputError,
    InceptionFeatures,
    PatchCrops,
    ProbeFeatures,
    ReferenceStats,
    check_pairing,
    fid_from_features,
    fid_t,
    reference_statistics,
)
from eval.metrics.frechet import feature_statistics, frechet_distance
from eval.metrics.hpsv2 import HPSv2Score, hpsv2_scores, load_hpsv2_scorer
from eval.metrics.imagereward import (
    ImageReward,
    ImageRewardScorer,
    imagereward_scores,
    load_imagereward_scorer,
)
from eval.metrics.pickscore import PickScore, PickScoreScorer, load_pickscore_scorer, pickscores

__all__ = [
    "CLIPScore",
    "FID",
    "FIDInputError",
    "HPSv2Score",
    "ImageReward",
    "ImageRewardScorer",
    "InceptionFeatures",
    "OpenClipScorer",
    "PatchCrops",
    "PickScore",
    "PickScoreScorer",
    "ProbeFeatures",
    "ReferenceStats",
    "check_pairing",
    "clip_scores",
    "feature_statistics",
    "fid_from_features",
    "fid_t",
    "frechet_distance",
    "hpsv2_scores",
    "imagereward_scores",
    "load_clip_scorer",
    "load_hpsv2_scorer",
    "load_imagereward_scorer",
    "load_pickscore_scorer",
    "pickscores",
    "reference_statistics",
]
