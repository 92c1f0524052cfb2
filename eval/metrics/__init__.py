"""Metric functions and classes of the evaluation suite."""

from eval.metrics.frechet import feature_statistics, frechet_distance

__all__ = ["feature_statistics", "frechet_distance"]
