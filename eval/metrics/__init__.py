"""Metric functions and classes of the evaluation suite."""

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

__all__ = [
    "FID",
    "FIDInputError",
    "InceptionFeatures",
    "PatchCrops",
    "ProbeFeatures",
    "ReferenceStats",
    "check_pairing",
    "feature_statistics",
    "fid_from_features",
    "fid_t",
    "frechet_distance",
    "reference_statistics",
]
