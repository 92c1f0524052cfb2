"""A light trainable head per feature map of the VFM discriminator (SenseFlow, method.md section 4).

Design of projected GAN (Sauer et al. 2021) and StyleGAN-T (Sauer et al. 2023): small
spectral-norm conv heads on frozen features, with projection conditioning (Miyato & Koyama
2018) evaluated at every location of the logit map. SenseFlow's released heads condition on
two things at once: the prompt's CLIP ViT-L/14 text features (one vector per sample) and the
paired real image's features, mapped *per location* by a conv trunk of the same shape as the
head's own (the released ``refmapper``), so the real image says what belongs where.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

MAX_LOGIT_SIZE = 10  # SenseFlow's heads downsample to ~10x10 logits
ReferenceMode = Literal["per_location", "pooled"]


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


def _trunk(in_channels: int, width: int, side: int, max_logit_size: int) -> nn.Sequential:
    """1x1 block to ``width``, stride-2 3x3 blocks down to <= ``max_logit_size``, one 3x3 block."""
    layers = [_block(in_channels, width, 1, 1)]
    layers += [_block(width, width, 3, 2) for _ in range(downsamplings(side, max_logit_size))]
    # one 3x3 block at the final size: each logit sees its neighbours even without downsampling
    layers.append(_block(width, width, 3, 1))
    return nn.Sequential(*layers)


class DiscriminatorHead(nn.Module):
    """Projection-conditioned logit map over one feature map (SenseFlow's released head).

    ``features`` (B, in_channels, H, W) go through a trunk (:func:`_trunk`: ``width``
    channels, h, w <= 10) and a 1x1 spectral-norm conv to ``cmap_dim`` channels, ``o``. The
    condition map is ``c = text_map(text)`` (the same at every location) plus, for a paired
    real image, ``ref_map(reference)``: with ``reference="per_location"`` (released
    ``refmapper``) a second trunk of the same shape plus a 1x1 conv over the real image's
    feature map, so every location is conditioned on what the real image has *there*; with
    ``"pooled"`` (this suite's earlier choice) a linear map of the real features averaged over
    space and L2-normalised, the same at every location. Logits ``<o, c> / sqrt(cmap_dim)``
    per location (no unconditional term, as released). ``text`` (B, text_dim).
    """

    def __init__(
        self,
        in_channels: int,
        text_dim: int,
        width: int = 64,
        *,
        in_size: int | tuple[int, int],
        cmap_dim: int = 64,
        reference: ReferenceMode = "per_location",
        max_logit_size: int = MAX_LOGIT_SIZE,
    ):
        super().__init__()
        if reference not in ("per_location", "pooled"):
            raise ValueError(f"reference must be per_location or pooled, got {reference!r}")
        side = max(in_size) if isinstance(in_size, tuple) else in_size
        self.body = _trunk(in_channels, width, side, max_logit_size)
        self.out = spectral_norm(nn.Conv2d(width, cmap_dim, 1))
        # released cmapper: a plain (equalised-LR) linear map, no spectral norm
        self.text_map = nn.Linear(text_dim, cmap_dim)
        if reference == "per_location":
            self.ref_map: nn.Module = nn.Sequential(
                _trunk(in_channels, width, side, max_logit_size),
                spectral_norm(nn.Conv2d(width, cmap_dim, 1)),
            )
        else:
            self.ref_map = nn.Linear(in_channels, cmap_dim)
        self.reference = reference
        self.width = width
        self.cmap_dim = cmap_dim
        self.text_dim = text_dim

    def condition_map(self, text: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        """The condition ``c`` (B, cmap_dim, h, w) or (B, cmap_dim, 1, 1) broadcast over the map."""
        c = self.text_map(text)[:, :, None, None]
        if reference is None:
            return c
        if self.reference == "per_location":
            return c + self.ref_map(reference)
        pooled = F.normalize(reference.mean(dim=(2, 3)), dim=1)  # unit norm: layer scales differ a lot
        return c + self.ref_map(pooled)[:, :, None, None]

    def forward(
        self, features: torch.Tensor, text: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logit map (B, 1, h, w) of ``features`` given ``text`` (B, text_dim) and ``reference``.

        ``reference``: the paired real image's feature map, the same shape as ``features``
        (None: no image condition).
        """
        if reference is not None and reference.shape != features.shape:
            raise ValueError(
                f"reference map {tuple(reference.shape)} must match the feature map {tuple(features.shape)}"
            )
        o = self.out(self.body(features))
        # scaled by 1/sqrt(cmap_dim) so the logit scale does not grow with the projection width
        return (o * self.condition_map(text, reference)).sum(1, keepdim=True) / math.sqrt(self.cmap_dim)
