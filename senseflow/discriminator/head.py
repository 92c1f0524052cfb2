"""A light trainable head per feature map of the VFM discriminator (SenseFlow, method.md section 4).

Design of projected GAN (Sauer et al. 2021) and StyleGAN-T (Sauer et al. 2023): small
spectral-norm conv heads on frozen features, with projection conditioning (Miyato & Koyama
2018) evaluated at every location of the logit map.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

MAX_LOGIT_SIZE = 10  # SenseFlow's heads downsample to ~10x10 logits


def downsamplings(size: int, max_size: int = MAX_LOGIT_SIZE) -> int:
    """How many stride-2 (k3, p1) convs bring a side of ``size`` to at most ``max_size`` (and >= 1)."""
    if size < 1 or max_size < 1:
        raise ValueError(f"sizes must be positive, got size={size}, max_size={max_size}")
    n = 0
    while size > max_size:
        size = (size - 1) // 2 + 1
        n += 1
    return n


def _block(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """Spectral-norm conv, local BatchNorm, LeakyReLU(0.2): the head's unit (projected GAN / StyleGAN-T)."""
    return nn.Sequential(
        # Spectral norm bounds D's Lipschitz constant (Miyato et al. 2018), the main stabiliser here.
        spectral_norm(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)),
        # Plain BatchNorm2d: statistics of the local batch only (not synced across ranks), as in
        # SenseFlow's heads; real and fake batches are normalised separately.
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    )


class DiscriminatorHead(nn.Module):
    """Projection-conditioned logit map over one feature map (projected GAN / StyleGAN-T head).

    ``(B, in_channels, H, W)`` features -> a 1x1 spectral-norm conv to ``width`` channels,
    ``downsamplings(max(in_size))`` stride-2 3x3 blocks, one 3x3 block (each logit sees its
    neighbours even when no downsampling is needed), giving ``h`` (B, width, h, w) with
    h, w <= 10. Logits ``out(h) + <h, proj(cond)> / sqrt(width)`` per location: the
    unconditional 1x1 conv plus the projection term of Miyato & Koyama 2018, scaled so it
    stays comparable to the unconditional term whatever the width. ``cond`` (B, cond_dim).
    """

    def __init__(
        self,
        in_channels: int,
        cond_dim: int,
        width: int = 64,
        *,
        in_size: int | tuple[int, int],
        max_logit_size: int = MAX_LOGIT_SIZE,
    ):
        super().__init__()
        side = max(in_size) if isinstance(in_size, tuple) else in_size
        layers = [_block(in_channels, width, 1, 1)]
        layers += [_block(width, width, 3, 2) for _ in range(downsamplings(side, max_logit_size))]
        layers.append(_block(width, width, 3, 1))
        self.body = nn.Sequential(*layers)
        self.out = spectral_norm(nn.Conv2d(width, 1, 1))
        self.proj = spectral_norm(nn.Linear(cond_dim, width))
        self.width = width
        self.cond_dim = cond_dim

    def forward(self, features: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Logit map (B, 1, h, w) of ``features`` (B, C, H, W) under condition ``cond`` (B, cond_dim)."""
        h = self.body(features)
        projection = (h * self.proj(cond)[:, :, None, None]).sum(1, keepdim=True)
        return self.out(h) + projection / math.sqrt(self.width)
