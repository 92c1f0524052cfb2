"""Image preprocessing protocols of the published evaluations, as pure functions of one image.

A FID or CLIP-score number depends on how the images were cropped and resized before the
network saw them (Parmar et al. 2022 measured FID moving by several points with the resize
alone). The protocols here are the ones the paper's columns were measured with, so that a
number computed here can sit beside the paper's:

- ``dmd2`` (DMD2 / SenseFlow's evaluator, the default of the real profiles): centre-crop the
  long edge to a square, PIL LANCZOS to 512 (``--eval_res 512``), then clean-fid's float
  bicubic resize to 299 (each channel resized as a float32 ``F`` image, clipped to [0, 255],
  never re-quantised) before the TF-Inception graph. CLIP score: LANCZOS to 256 first, the
  prompt prefixed by "A photo depicts " at token level, fp32.
- ``clean``: clean-fid's ``mode="clean"`` on the full image (float bicubic to 299, no crop).
- ``torchmetrics``: uint8 images straight into the extractor, which resizes with antialiased
  bilinear (torchmetrics >= 1.8).

Patch FID-T (DMD2's patch FID) takes one 299x299 centre crop of the FULL-resolution image
(no resize at all), whatever the protocol.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from senseflow.errors import UserError

INCEPTION_SIZE = 299
FID_PROTOCOLS = ("dmd2", "clean", "torchmetrics")
DMD2_EVAL_RES = 512
DMD2_CLIP_RES = 256
DMD2_CLIP_PREFIX = "A photo depicts "


def check_protocol(name: str) -> str:
    """``name`` if it is a known FID protocol, else a :class:`UserError` listing them."""
    if name not in FID_PROTOCOLS:
        raise UserError(f"unknown evaluation protocol {name!r}: use one of {', '.join(FID_PROTOCOLS)}")
    return name


def center_crop_square(image: Image.Image) -> Image.Image:
    """The largest centred square (DMD2 crops the long edge before resizing)."""
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.crop((left, top, left + s, top + s))


def dmd2_eval_image(image: Image.Image, size: int = DMD2_EVAL_RES) -> Image.Image:
    """DMD2's evaluation image: centre square, LANCZOS to ``size`` (uint8, as DMD2 saves it)."""
    return center_crop_square(image.convert("RGB")).resize((size, size), Image.LANCZOS)


def clean_resize_float(pixels: np.ndarray, size: int = INCEPTION_SIZE) -> np.ndarray:
    """clean-fid's ``mode="clean"`` resize: per-channel float32 PIL bicubic, clipped, not quantised.

    ``pixels``: (H, W, 3) uint8 or float; returns (size, size, 3) float32 in [0, 255].
    """
    channels = [
        np.asarray(Image.fromarray(pixels[:, :, c].astype(np.float32), mode="F").resize((size, size),
                                                                                      Image.BICUBIC))
        for c in range(3)
    ]  # fmt: skip
    return np.stack(channels, axis=2).clip(0, 255).astype(np.float32)


def center_patch(pixels: np.ndarray, size: int = INCEPTION_SIZE) -> np.ndarray:
    """One ``size`` x ``size`` centre crop of a full-resolution (H, W, 3) image (patch FID, DMD2)."""
    h, w = pixels.shape[:2]
    if h < size or w < size:
        raise UserError(
            f"patch FID needs images of at least {size}x{size}, got {w}x{h}: use whole-image FID-T"
        )
    top, left = (h - size) // 2, (w - size) // 2
    return pixels[top : top + size, left : left + size]


def patch_input(pixels: np.ndarray) -> np.ndarray:
    """The (3, 299, 299) float32 network input of patch FID: the centre crop, no resize."""
    return np.ascontiguousarray(center_patch(pixels).astype(np.float32).transpose(2, 0, 1))


def inception_input(pixels: np.ndarray, protocol: str) -> np.ndarray:
    """The (3, S, S) float32 array [0, 255] the Inception network gets under ``protocol``.

    ``torchmetrics`` returns the uint8 image unchanged (as float): the extractor resizes it.
    """
    check_protocol(protocol)
    if protocol == "dmd2":
        out = clean_resize_float(np.asarray(dmd2_eval_image(Image.fromarray(pixels))))
    elif protocol == "clean":
        out = clean_resize_float(pixels)
    else:
        out = pixels.astype(np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def describe_fid_protocol(protocol: str) -> str:
    """One line for the protocol card."""
    return {
        "dmd2": "dmd2: centre crop, PIL LANCZOS to 512, clean-fid float bicubic to 299",
        "clean": "clean: clean-fid float bicubic to 299 (no crop)",
        "torchmetrics": "torchmetrics: uint8 into the extractor, antialiased bilinear to 299",
    }[check_protocol(protocol)]


def clip_pre_resize(image: Image.Image, protocol: str) -> Image.Image:
    """CLIP score's pre-resize: DMD2 resizes to 256 with LANCZOS before the model's own transform."""
    if protocol == "dmd2":
        return image.convert("RGB").resize((DMD2_CLIP_RES, DMD2_CLIP_RES), Image.LANCZOS)
    return image
