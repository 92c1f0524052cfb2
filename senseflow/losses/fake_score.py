"""Denoising loss of the fake score model (DMD / DMD2, Yin et al. 2024; method.md section 1).

The fake model tracks the generator's distribution: every iteration it is trained, like any
diffusion model, on detached generator samples. Flow models regress the velocity ``eps - x0``
at a logit-normal sigma; epsilon (DDPM) models regress the noise at a uniform timestep.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from senseflow.backbones.conversions import flow_velocity
from senseflow.schedules import sample_train_sigmas

Prediction = Literal["flow", "epsilon"]
PREDICTIONS: tuple[str, ...] = ("flow", "epsilon")


def _float32_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # bf16 squares of small residuals underflow; the mean is taken in float32 or better
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return F.mse_loss(pred.to(dtype), target.to(dtype))


def flow_fake_score_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Flow matching loss ``mse(v_pred, eps - x0)`` (rectified flow; Liu et al. 2023, Esser et al. 2024).

    ``v_pred`` is the fake model's velocity at ``x_t = (1 - s) x0 + s eps``; ``x0`` is the
    detached generator sample. The fake model of DMD2 / SenseFlow uses no loss weighting.
    """
    return _float32_mse(v_pred, flow_velocity(x0.detach(), eps))


def epsilon_fake_score_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Epsilon prediction loss ``mse(eps_pred, eps)`` (Ho et al. 2020, L_simple), for DDPM models (SDXL)."""
    return _float32_mse(eps_pred, eps)


def fake_score_loss(
    prediction: Prediction, pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Fake-score loss for a model family: :func:`flow_fake_score_loss` or :func:`epsilon_fake_score_loss`.

    ``x0`` is unused for ``"epsilon"`` (the target is the noise alone) but kept so one call
    site serves both families.
    """
    if prediction == "flow":
        return flow_fake_score_loss(pred, x0, eps)
    if prediction == "epsilon":
        return epsilon_fake_score_loss(pred, eps)
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")


def sample_fake_score_sigmas(
    batch_size: int,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sigmas for the flow fake-score update, logit-normal (Esser et al. 2024), then shifted.

    Thin wrapper of :func:`senseflow.schedules.sample_train_sigmas` fixing the density the
    released SenseFlow code uses for its fake model (method.md section 1).
    """
    return sample_train_sigmas(
        batch_size,
        density="logit_normal",
        logit_mean=logit_mean,
        logit_std=logit_std,
        shift=shift,
        generator=generator,
    )
