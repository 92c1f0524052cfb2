"""Plumbing the adapters share: per-sample times and classifier-free guidance in one batched call."""

from __future__ import annotations

from collections.abc import Callable

import torch

from senseflow.backbones.conversions import cfg_combine
from senseflow.conditioning import PromptEmbeds

# (x_t, per-sample t of shape (B,), conditioning) -> native prediction
PredictFn = Callable[[torch.Tensor, torch.Tensor, PromptEmbeds], torch.Tensor]


def per_sample(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) value -> a float32 (B,) tensor on ``x``'s device."""
    t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def is_unit_scale(scale: float | torch.Tensor) -> bool:
    """Whether a guidance scale is the plain number 1 (no guidance; tensors are never taken as 1)."""
    return not torch.is_tensor(scale) and scale == 1.0


def batched_cfg(
    predict: PredictFn,
    x_t: torch.Tensor,
    t: torch.Tensor | float,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None,
    scale: float | torch.Tensor,
) -> torch.Tensor:
    """CFG ``u + w (c - u)`` (Ho & Salimans 2022) from one call on the stacked batch ``[cond; uncond]``.

    One call of twice the batch instead of two calls: the network weights are read once,
    which is what makes CFG cheap on a GPU. ``uncond`` must have the batch size of ``cond``
    (expand ``text.encode([""])`` with ``.index([0] * B)``). Without ``uncond`` or with
    ``scale == 1`` this is a plain prediction.
    """
    if uncond is None or is_unit_scale(scale):
        return predict(x_t, t, cond)
    t = per_sample(t, x_t)
    both = predict(torch.cat([x_t, x_t]), torch.cat([t, t]), PromptEmbeds.cat([cond, uncond]))
    pred_cond, pred_uncond = both.chunk(2)
    return cfg_combine(pred_cond, pred_uncond, scale)
