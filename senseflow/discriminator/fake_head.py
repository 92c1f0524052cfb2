"""DMD2's discriminator: a classifier head on the fake score model's middle features (Yin et al. 2024).

Unlike SenseFlow's frozen-VFM discriminator (:mod:`senseflow.discriminator.model`), it
reads the features of the fake score model itself, on a noised input, so the DMD2 variant
needs no extra backbone.
"""

from __future__ import annotations

import torch
from torch import nn

from senseflow.backbones.base import Backbone
from senseflow.conditioning import PromptEmbeds


class FakeFeatureHead(nn.Module):
    """DMD2's discriminator: a small head on the fake score model's middle features.

    A forward hook on the middle block of the fake network (a transformer block's image
    tokens, reshaped to a map, or a UNet's mid block output) captures its features on a
    noised input; the head turns them into a logit map. The fake network is shared with
    the DMD term, so the discriminator costs one extra fake forward per step.
    """

    def __init__(self, network: nn.Module, width: int | None = None):
        super().__init__()
        block, channels = _middle_block(network)
        self._features: torch.Tensor | None = None
        self._handle = block.register_forward_hook(self._capture)
        width = width or channels
        self.head = nn.Sequential(
            nn.GroupNorm(1, channels),
            nn.SiLU(),
            nn.Conv2d(channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 1, 1),
        )

    def _capture(self, module, args, output) -> None:
        out = output[-1] if isinstance(output, tuple) else output
        if out.ndim == 3:  # (B, N, C) image tokens -> (B, C, h, w)
            b, n, c = out.shape
            side = int(round(n**0.5))
            out = out.transpose(1, 2).reshape(b, c, side, n // side)
        self._features = out

    def logits(self, fake: Backbone, x_t: torch.Tensor, t: torch.Tensor, cond: PromptEmbeds) -> torch.Tensor:
        """Run ``fake`` on ``x_t`` and return the head's logits (B, h * w)."""
        self._features = None
        fake.predict(x_t, t, cond)
        if self._features is None:
            raise RuntimeError("the fake network's middle block did not run: is it the hooked network?")
        return self.head(self._features.float()).flatten(1)


def _middle_block(network: nn.Module) -> tuple[nn.Module, int]:
    """The block whose output DMD2's head reads, and its channel count."""
    net = getattr(network, "module", network)
    blocks = getattr(net, "transformer_blocks", None)
    if blocks is not None and len(blocks):
        cfg = net.config
        return blocks[len(blocks) // 2], cfg.num_attention_heads * cfg.attention_head_dim
    mid = getattr(net, "mid_block", None)
    if mid is not None:
        return mid, net.config.block_out_channels[-1]
    raise TypeError(f"no middle block to hook on a {type(net).__name__} (DMD2 discriminator head)")
