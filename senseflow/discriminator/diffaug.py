"""DiffAugment on the discriminator's input (Zhao et al. 2020; SenseFlow, method.md section 4).

Differentiable augmentations applied to every image the discriminator sees, real and fake
alike, so that D cannot overfit the few real images while the generator still receives a
gradient through the augmentation. Images are NCHW in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DIFFAUG_POLICIES: tuple[str, ...] = ("color", "translation", "cutout")
TRANSLATION_RATIO = 1 / 8  # largest shift, as a fraction of the image side (DiffAugment)
# side of the erased square, as a fraction of the image side (released SenseFlow; DiffAugment: 1/2)
CUTOUT_RATIO = 0.2


def _uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One U[0, 1) draw per sample, shaped (B, 1, 1, 1), on ``x``'s device and dtype."""
    # Draw on the generator's device so a CPU generator also drives augmentation of CUDA batches.
    device = generator.device if generator is not None else x.device
    r = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=device)
    return r.to(device=x.device, dtype=x.dtype)


def _randint(
    low: int, high: int, n: int, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``n`` integers in [low, high) on ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.randint(low, high, (n,), generator=generator, device=device).to(like.device)


def _color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random brightness, saturation and contrast, each per sample, in DiffAugment's order and ranges."""
    x = x + (_uniform(x, generator) - 0.5)  # brightness: shift by U[-0.5, 0.5)
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * (2 * _uniform(x, generator)) + grey  # saturation: scale chroma by U[0, 2)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean  # contrast: scale by U[0.5, 1.5)


def _translation(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Shift each sample by whole pixels, up to 1/8 of the side per axis; uncovered pixels become 0."""
    b, _, h, w = x.shape
    sh, sw = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    if sh == 0 and sw == 0:
        return x
    dy = _randint(-sh, sh + 1, b, x, generator)
    dx = _randint(-sw, sw + 1, b, x, generator)
    padded = F.pad(x, (sw, sw, sh, sh))  # zero padding: in [-1, 1] the uncovered border is mid-grey
    # Output pixel (i, j) reads input pixel (i - dy, j - dx), i.e. padded (i - dy + sh, j - dx + sw).
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None] + sh  # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None] + sw  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Gathering by index keeps the op exact (no interpolation) and differentiable w.r.t. x.
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Zero a square of ``CUTOUT_RATIO`` of the side per sample, centred anywhere (clipped at the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    top = _randint(0, h, b, x, generator) - ch // 2
    left = _randint(0, w, b, x, generator) - cw // 2
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= top[:, None]) & (r < top[:, None] + ch)
    in_cols = (c >= left[:, None]) & (c < left[:, None] + cw)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)


_OPS: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}


def check_policy(policy: Sequence[str]) -> list[str]:
    """The policy as a list; ValueError naming the allowed operations if one is unknown."""
    unknown = [p for p in policy if p not in _OPS]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment op(s) {unknown}; expected some of {', '.join(DIFFAUG_POLICIES)}"
        )
    return list(policy)


def diffaugment(
    x: torch.Tensor, policy: Sequence[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) of a batch in [-1, 1], as used by SenseFlow's discriminator.

    ``policy`` lists ops from ``"color"`` (brightness, saturation, contrast), ``"translation"``
    (up to 1/8 of the side, zero padding) and ``"cutout"`` (a square of 0.2 the side), applied
    in the policy's order. Every batch goes through the same ops; the random parameters are
    drawn per sample from ``generator`` (the global RNG when None), so a seeded generator gives
    the same output. Differentiable w.r.t. ``x``. An empty policy returns ``x`` itself.
    """
    if x.ndim != 4:
        raise ValueError(f"diffaugment expects NCHW images, got shape {tuple(x.shape)}")
    for name in check_policy(policy):
        x = _OPS[name](x, generator)
    return x
