"""Hinge GAN losses and the timestep-aware GAN weight (SenseFlow VFM discriminator; method.md section 4).

The discriminator's heads emit logit maps; every logit counts as one hinge term (Lim & Ye
2017; Miyato et al. 2018), averaged. The generator's adversarial term is weighted by a curve
of the sigma of the anchor its sample came from, ``(1 - sigma)^2`` in the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from senseflow.backbones.conversions import _bcast, _up
from senseflow.schedules import shift_sigma, unshift_sigma

GAN_WEIGHT_CURVES: tuple[str, ...] = (
    "one_minus_sigma_sq", "mirrored_sigma_sq", "sqrt_alpha_bar", "one_minus_sigma", "sigma", "constant",
)  # fmt: skip


def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``.

    Lim & Ye 2017 (geometric GAN) hinge form, as in SenseFlow's discriminator loss. Each
    term is averaged over its own logits, so real and fake batches may differ in size.
    """
    return torch.relu(1 - _up(real_logits)).mean() + torch.relu(1 + _up(fake_logits)).mean()


def g_hinge_loss(fake_logits: torch.Tensor, weight: torch.Tensor | float | None = None) -> torch.Tensor:
    """Generator hinge loss ``-mean(w * D(fake))`` (Lim & Ye 2017; SenseFlow generator GAN term).

    ``weight`` is per sample, shape (B,) (or a scalar), broadcast over each sample's logit
    map; typically :func:`gan_weight` of the anchor sigma. None means 1.
    """
    logits = _up(fake_logits)
    if weight is None:
        return -logits.mean()
    w = _bcast(weight, logits)
    if w.ndim and w.shape[0] != logits.shape[0]:
        raise ValueError(f"weight has {w.shape[0]} entries for a batch of {logits.shape[0]}")
    return -(w * logits).mean()


def gan_weight(
    sigma: torch.Tensor | float,
    curve: str = "one_minus_sigma_sq",
    shift: float = 1.0,
    alpha_bar: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Timestep-aware GAN weight ``w(sigma)`` (SenseFlow, method.md section 4), float32 or better.

    ``one_minus_sigma_sq``: ``(1 - sigma)^2``, the paper and the FLUX code: the x0 estimate
    from a noisy anchor is necessarily coarse, so its adversarial signal is damped (0 at
    sigma = 1). ``mirrored_sigma_sq``: the released SD 3.5 code's ``sigma_desc[idx]^2``, the
    shifted sigma of the anchor's index read from the *descending* table, i.e.
    ``shift(1 - unshift(sigma))^2``: 0 / 0.25 / 0.56 / 0.81 at SD 3.5's anchors (shift 3;
    equal to ``one_minus_sigma_sq`` at shift 1). ``sqrt_alpha_bar``: the released SDXL
    code's ``sqrt(alpha_bar[t])`` of the anchor's DDPM index (the clean signal's share of
    the noisy input: 0.068 / 0.238 / 0.527 / 0.822 at SDXL's anchors 999 / 749 / 499 / 249);
    ``alpha_bar`` maps the anchor time to it (SDXL backbones' ``alpha_bar``).
    ``one_minus_sigma``: ``1 - sigma``; ``sigma``: ``sigma``; ``constant``: 1.
    """
    s = torch.as_tensor(sigma)
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    if curve == "sqrt_alpha_bar":
        if alpha_bar is None:
            raise ValueError(
                "GAN weight curve sqrt_alpha_bar needs a DDPM (epsilon) backbone's alpha_bar (SDXL); "
                "flow backbones use one_minus_sigma_sq or mirrored_sigma_sq"
            )
        return alpha_bar(s).to(s.device, s.dtype).sqrt()
    if curve == "one_minus_sigma_sq":
        return (1 - s).square()
    if curve == "mirrored_sigma_sq":
        return shift_sigma(1 - unshift_sigma(s, shift), shift).square()
    if curve == "one_minus_sigma":
        return 1 - s
    if curve == "sigma":
        return s.clone()
    if curve == "constant":
        return torch.ones_like(s)
    raise ValueError(f"unknown GAN weight curve {curve!r}; expected one of {', '.join(GAN_WEIGHT_CURVES)}")


def g_logistic_loss(fake_logits: torch.Tensor, weight: torch.Tensor | float | None = None) -> torch.Tensor:
    """Non-saturating generator loss ``mean(w * softplus(-D(fake)))`` (Goodfellow et al. 2014; DMD2)."""
    per = F.softplus(-fake_logits.float())
    if weight is None:
        return per.mean()
    w = torch.as_tensor(weight, device=per.device, dtype=per.dtype)
    return (w.view(-1, *[1] * (per.ndim - 1)) * per).mean() if w.ndim else (w * per).mean()


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss ``mean(softplus(-D(real))) + mean(softplus(D(fake)))`` (DMD2's classifier)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def _weighted_mean(per_logit: torch.Tensor, weight: torch.Tensor | float | None) -> torch.Tensor:
    """``mean(w * per_logit)`` with ``w`` per sample (B,) broadcast over each sample's logits."""
    if weight is None:
        return per_logit.mean()
    w = _bcast(weight, per_logit)
    if w.ndim and w.shape[0] != per_logit.shape[0]:
        raise ValueError(f"weight has {w.shape[0]} entries for a batch of {per_logit.shape[0]}")
    return (w * per_logit).mean()


def d_loss_parts(kind: str) -> tuple[Callable, Callable]:
    """``(real_part, fake_part)`` of the discriminator loss, each ``(logits, weight=None) -> loss``.

    Their sum is :func:`d_hinge_loss` / :func:`d_logistic_loss` (unweighted). Separate parts
    let real and generated images go through the discriminator in separate forward passes,
    as the released code does: its heads' BatchNorm then normalises a real batch and a fake
    batch each by its own statistics, exactly as in the generator's step (fakes only).
    ``weight`` is per sample (the released code weights both parts by w(t)).
    """
    if kind == "hinge":
        return (lambda x, w=None: _weighted_mean(torch.relu(1 - _up(x)), w),
                lambda x, w=None: _weighted_mean(torch.relu(1 + _up(x)), w))  # fmt: skip
    if kind == "logistic":
        return (lambda x, w=None: _weighted_mean(F.softplus(-_up(x)), w),
                lambda x, w=None: _weighted_mean(F.softplus(_up(x)), w))  # fmt: skip
    raise ValueError(f"unknown GAN loss {kind!r}; expected 'hinge' or 'logistic'")


def gan_losses(kind: str) -> tuple[Callable, Callable]:
    """``(generator_loss, discriminator_loss)`` for ``"hinge"`` (SenseFlow) or ``"logistic"`` (DMD2)."""
    if kind == "hinge":
        return g_hinge_loss, d_hinge_loss
    if kind == "logistic":
        return g_logistic_loss, d_logistic_loss
    raise ValueError(f"unknown GAN loss {kind!r}; expected 'hinge' or 'logistic'")
