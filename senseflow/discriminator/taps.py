"""Frozen feature extractors of the VFM discriminator (SenseFlow, method.md section 4).

A tap set turns images in [-1, 1] into a list of 2-D feature maps, one per tapped layer of a
frozen vision model: DINOv2 in the paper's profiles, the embedded world's attribute probe in
the embedded profile. Weights never train, but the maps stay differentiable w.r.t. the input
image, because the generator's adversarial gradient flows back through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Model

from senseflow.world.probes import AttributeProbe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class FeatureTaps(Protocol):
    """Frozen, differentiable ``images (B, 3, H, W) in [-1, 1] -> [maps (B, C_i, H_i, W_i)]``.

    Implementations are ``nn.Module`` s whose parameters do not require grad and that stay in
    eval mode whatever ``train()`` is called with. ``blocks`` are the tapped layers, in the
    order of the returned maps.
    """

    blocks: list[int]

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """One map (B, C_i, H_i, W_i) per entry of ``blocks``, differentiable w.r.t. ``images``."""
        ...


class _FrozenTaps(nn.Module):
    """Base of the tap sets: freezes ``backbone`` and pins it to eval mode."""

    def __init__(self, backbone: nn.Module, blocks: Sequence[int], n_layers: int, first: int = 0):
        super().__init__()
        blocks = [int(b) for b in blocks]
        if not blocks:
            raise ValueError("no layer to tap: blocks is empty")
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"blocks {blocks} repeat a layer")
        bad = [b for b in blocks if not first <= b < n_layers]
        if bad:
            raise ValueError(f"blocks {bad} out of range: this backbone has layers {first}..{n_layers - 1}")
        self.blocks = blocks
        self.backbone = backbone.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> _FrozenTaps:
        """Stay in eval mode: the backbone is a fixed feature space (no dropout, fixed norm stats)."""
        return super().train(False)

    def _dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype


class ProbeTaps(_FrozenTaps):
    """Maps after the given indices of ``probe.trunk``: the embedded profile's "VFM".

    SenseFlow (Ge et al. 2026, arXiv 2506.00523) puts its discriminator heads on a frozen
    DINOv2; the embedded world has no such model, so its attribute probe
    (:class:`senseflow.world.probes.AttributeProbe`), which knows digits, colours and
    positions, plays the part. Index ``i`` taps the output of ``probe.trunk[i]``.
    """

    def __init__(self, probe: AttributeProbe, blocks: Sequence[int]):
        super().__init__(probe, blocks, n_layers=len(probe.trunk))
        self._last = max(self.blocks)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images`` (B, 3, H, W) in [-1, 1] (the probe's own input range) -> tapped maps."""
        h = images.to(self._dtype())
        maps: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.backbone.trunk[: self._last + 1]):  # later layers are not needed
            h = layer(h)
            if i in self.blocks:
                maps[i] = h
        return [maps[b] for b in self.blocks]


class Dinov2Taps(_FrozenTaps):
    """DINOv2 hidden states as 2-D maps, the VFM of SenseFlow's discriminator (method.md section 4).

    ``blocks`` index ``output_hidden_states``: 0 is the patch embedding output, ``k`` the
    output of transformer block ``k`` counted from 1 (:func:`dinov2_hidden_state_indices`
    converts the paper's 0-based block numbers). The input is resized to ``image_size``
    rounded down to a multiple of the patch size and normalised with ImageNet statistics, as
    DINOv2 was trained; the CLS token is added to every patch token (so each location also
    sees the global summary) and the patch tokens are reshaped to a (B, D, H/p, W/p) map.
    """

    def __init__(self, model: Dinov2Model, blocks: Sequence[int], image_size: int):
        super().__init__(model, blocks, n_layers=model.config.num_hidden_layers + 1)
        patch = int(model.config.patch_size)
        self.image_size = max(patch, image_size // patch * patch)
        self.grid = self.image_size // patch
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images`` (B, 3, H, W) in [-1, 1] -> ``len(blocks)`` maps (B, hidden, grid, grid)."""
        x = images
        if x.shape[-2:] != (self.image_size, self.image_size):
            # antialias: a large generator output is shrunk to DINOv2's size without aliasing
            x = F.interpolate(
                x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
            )
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        hidden = self.backbone(pixel_values=x.to(self._dtype()), output_hidden_states=True).hidden_states
        n = self.grid * self.grid
        maps = []
        for b in self.blocks:
            tokens = hidden[b]
            # Patch tokens are the last n (register tokens, if any, sit between CLS and patches).
            patches = tokens[:, -n:] + tokens[:, :1]
            maps.append(
                patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], self.grid, self.grid)
            )
        return maps


def dinov2_hidden_state_indices(blocks: Sequence[int]) -> list[int]:
    """The paper's DINOv2 blocks (0-based, e.g. [2, 5, ..., 23] of ViT-L) plus the patch embedding.

    SenseFlow taps the outputs of these transformer blocks and the patch embedding
    (method.md section 4); in ``output_hidden_states`` the patch embedding is index 0 and
    block ``b``'s output is index ``b + 1``.
    """
    return [0] + [int(b) + 1 for b in blocks]
