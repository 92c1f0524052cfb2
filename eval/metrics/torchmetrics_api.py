"""The learned metrics as ``torchmetrics.Metric`` objects: CLIPScore, HPSv2Score, PickScore, ImageReward.

For a training loop or notebook that wants ``update(images, prompts)`` / ``compute()`` and
torchmetrics' gathering across ranks. They live apart from the scorers because
``senseflow-eval evaluate`` streams per-image scores itself and never needs torchmetrics:
importing it cost about 3 s in every evaluate stage (2 cores, measured), the largest import
of a pipeline stage after torch and diffusers.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from eval.metrics.clip_score import load_clip_scorer
from eval.metrics.hpsv2 import load_hpsv2_scorer
from eval.metrics.imagereward import load_imagereward_scorer
from eval.metrics.pickscore import load_pickscore_scorer


class PreferenceMetric(Metric):
    """A torchmetrics metric over a scorer ``(images, prompts) -> (B,) scores``; compute is the mean.

    Give ``scorer=`` or the keyword arguments of the subclass's ``loader``; ``metric_kwargs``
    go to ``torchmetrics.Metric``. Per-image scores stay available in ``self.scores`` (after
    ``compute``, gathered across ranks) so that reports can show spreads and per-prompt values.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False
    loader = None

    def __init__(self, scorer=None, metric_kwargs: dict | None = None, **loader_kwargs):
        super().__init__(**(metric_kwargs or {}))
        self.scorer = scorer if scorer is not None else type(self).loader(**loader_kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, images, prompts) -> None:
        """Score a batch and keep its per-image scores."""
        self.scores.append(self.scorer(images, prompts).float().to(self.device))

    def compute(self) -> torch.Tensor:
        """Mean score over every image seen (on every rank)."""
        return dim_zero_cat(self.scores).mean()

    def protocol(self) -> dict:
        """The scorer's protocol (model, weights, preprocessing) to store beside the number."""
        return self.scorer.protocol()


class CLIPScore(PreferenceMetric):
    """CLIP score as a torchmetrics metric: ``update(images, prompts)``, ``compute()`` -> mean.

    Pass ``scorer=`` (e.g. an :class:`~eval.metrics.clip_score.OpenClipScorer` around any
    open_clip model) or the keyword arguments of :func:`~eval.metrics.clip_score.load_clip_scorer`.
    """

    loader = staticmethod(load_clip_scorer)


class HPSv2Score(PreferenceMetric):
    """HPSv2 as a torchmetrics metric; keyword arguments go to ``load_hpsv2_scorer``."""

    loader = staticmethod(load_hpsv2_scorer)


class PickScore(PreferenceMetric):
    """PickScore as a torchmetrics metric; keyword arguments go to ``load_pickscore_scorer``."""

    loader = staticmethod(load_pickscore_scorer)


class ImageReward(PreferenceMetric):
    """ImageReward as a torchmetrics metric; keyword arguments go to ``load_imagereward_scorer``."""

    loader = staticmethod(load_imagereward_scorer)
