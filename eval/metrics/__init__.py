"""Metric functions and classes of the evaluation suite."""

from eval.metrics.clip_score import CLIPScore, OpenClipScorer, clip_score, load_clip_scorer
from eval.metrics.frechet import feature_statistics, frechet_distance
from eval.metrics.hpsv2 import HPSv2Score, hpsv2_score, load_hpsv2_scorer
from eval.metrics.imagereward import ImageReward, imagereward_score, load_imagereward_scorer
from eval.metrics.pickscore import PickScore, PickScoreScorer, load_pickscore_scorer, pickscore

__all__ = [
    "CLIPScore",
    "HPSv2Score",
    "ImageReward",
    "OpenClipScorer",
    "PickScore",
    "PickScoreScorer",
    "clip_score",
    "feature_statistics",
    "frechet_distance",
    "hpsv2_score",
    "imagereward_score",
    "load_clip_scorer",
    "load_hpsv2_scorer",
    "load_imagereward_scorer",
    "load_pickscore_scorer",
    "pickscore",
]
