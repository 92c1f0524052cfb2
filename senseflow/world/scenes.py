"""Scenes of the embedded world: coloured handwritten digits on a coloured background.

A scene is a background colour plus one or two digits, each drawn from
``sklearn.datasets.load_digits`` (8x8, 17 grey levels) with its own colour and
its own cell of a 2x2 grid. Everything is a pure function of a
``numpy.random.Generator`` so a seed fixes the images byte for byte.

Two fixed splits keep evaluation honest:

* digit *instances* (which of the 1,797 handwritten samples is drawn): every
  fifth sample is held out, so probes and FID are measured on handwriting no
  model trained on;
* *captions* (train / val / test by a hash of the caption text): test prompts
  are attribute combinations the teacher never saw as a whole.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DIGIT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 200, 20),
    "magenta": (200, 40, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "gray": (120, 120, 120),
    "white": (245, 245, 245),
}
# Grid cells in reading order; the caption lists objects in this order.
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
DIGIT_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
COLOUR_NAMES: tuple[str, ...] = tuple(DIGIT_COLOURS)
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
SPLITS: tuple[str, ...] = ("train", "val", "test")
INSTANCE_SPLITS: tuple[str, ...] = ("train", "heldout")


@dataclass(frozen=True)
class DigitObject:
    """One digit in a scene: its class, colour, grid cell and handwriting sample."""

    digit: int
    colour: str
    position: str
    instance: int  # index into sklearn's load_digits arrays


@dataclass(frozen=True)
class Scene:
    """A whole scene: background colour and its digits in reading order."""

    background: str
    objects: tuple[DigitObject, ...]

    def to_dict(self) -> dict:
        """Plain-JSON form (stored in captions.jsonl and prompt files)."""
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    @staticmethod
    def from_dict(data: dict) -> Scene:
        """Inverse of :meth:`to_dict`."""
        return Scene(
            background=data["background"],
            objects=tuple(DigitObject(**o) for o in data["objects"]),
        )


def caption(scene: Scene) -> str:
    """The caption grammar: every attribute of every object, then the background.

    Each object phrase names its position first: text encoders of the CLIP family are
    causal, so the digit's token then carries its position and colour with it (the
    binding a two-digit scene needs), instead of relying on tokens that come later.

    >>> caption(Scene("black", (DigitObject(3, "red", "top left", 0),)))
    'at the top left a red 3 on a black background'
    """
    parts = [f"at the {o.position} a {o.colour} {o.digit}" for o in scene.objects]
    return " and ".join(parts) + f" on a {scene.background} background"


def caption_split(text: str) -> str:
    """Fixed train/val/test split of a caption (80/10/10 by a content hash).

    The split depends on the caption text alone, so it is the same for every
    seed, every profile and every machine.
    """
    bucket = int(hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def _digits_file() -> Path | None:
    """The CSV that ``load_digits`` parses (64 pixels then the label per row).

    Found without importing scikit-learn; None where the package lays its data out differently.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Sklearn's handwritten digits as (images float32 in [0, 1], labels).

    Read straight from the CSV that ``sklearn.datasets.load_digits`` parses: importing
    ``sklearn.datasets`` costs 0.5-1.5 s on 2 cores, paid by every pipeline stage that draws a
    scene (world, probes, CLIP, teacher, each distillation). The result equals ``load_digits``
    (tests/test_world.py checks it); where the file is not found, ``load_digits`` itself runs.
    """
    path = _digits_file()
    if path is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        images, labels = data.images, data.target
    else:
        table = np.loadtxt(path, delimiter=",")
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    return (images / 16.0).astype(np.float32), labels.astype(np.int64)


def instance_split(index: int) -> str:
    """Every fifth handwriting sample is held out from all training."""
    return "heldout" if index % 5 == 4 else "train"


@lru_cache(maxsize=4)
def _instances_by_class(split: str) -> tuple[np.ndarray, ...]:
    _, labels = _digits()
    idx = np.arange(len(labels))
    keep = np.array([instance_split(int(i)) == split for i in idx])
    return tuple(idx[keep & (labels == d)] for d in range(10))


def sample_scene(
    rng: np.random.Generator,
    *,
    digit_counts: dict[int, float],
    instances: str = "train",
    split: str | None = None,
    max_tries: int = 1000,
) -> Scene:
    """Draw one scene; if ``split`` is given, only scenes whose caption is in it.

    Args:
        rng: source of randomness (the only one).
        digit_counts: probability of each number of digits, e.g. ``{1: 0.5, 2: 0.5}``.
        instances: which handwriting samples to draw from (``train`` or ``heldout``).
        split: caption split to restrict to (rejection sampling), or ``None``.
        max_tries: guard for impossible restrictions.

    """
    if instances not in INSTANCE_SPLITS:
        raise ValueError(f"instances must be one of {INSTANCE_SPLITS}, got {instances!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    counts = sorted(digit_counts)
    if not counts or any(c not in (1, 2) for c in counts):
        raise ValueError(f"digit_counts keys must be 1 and/or 2, got {counts}")
    probs = np.array([digit_counts[c] for c in counts], dtype=np.float64)
    probs = probs / probs.sum()
    pools = _instances_by_class(instances)
    for _ in range(max_tries):
        n = int(counts[rng.choice(len(counts), p=probs)])
        cells = sorted(rng.choice(len(POSITIONS), size=n, replace=False).tolist())
        objects = []
        for cell in cells:
            digit = int(rng.integers(10))
            objects.append(
                DigitObject(
                    digit=digit,
                    colour=COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))],
                    position=POSITIONS[cell],
                    instance=int(rng.choice(pools[digit])),
                )
            )
        scene = Scene(BACKGROUND_NAMES[int(rng.integers(len(BACKGROUNDS)))], tuple(objects))
        if split is None or caption_split(caption(scene)) == split:
            return scene
    raise RuntimeError(f"no scene in split {split!r} after {max_tries} tries")


def with_fresh_handwriting(scene: Scene, rng: np.random.Generator, instances: str = "train") -> Scene:
    """The same scene (caption unchanged) drawn with new handwriting samples from ``instances``."""
    pools = _instances_by_class(instances)
    objects = tuple(
        DigitObject(o.digit, o.colour, o.position, int(rng.choice(pools[o.digit]))) for o in scene.objects
    )
    return Scene(scene.background, objects)


def render(scene: Scene, resolution: int) -> np.ndarray:
    """Render a scene to an RGB uint8 array of shape (resolution, resolution, 3).

    Each grid cell is ``resolution // 2`` pixels; the 8x8 digit is resized to
    the cell (nearest neighbour at integer scales keeps it exact) and used as
    the alpha of its colour over the background.
    """
    if resolution % 2 or resolution < 8:
        raise ValueError(f"resolution must be even and >= 8, got {resolution}")
    images, _ = _digits()
    cell = resolution // 2
    canvas = np.empty((resolution, resolution, 3), np.float32)
    canvas[:] = np.array(BACKGROUNDS[scene.background], np.float32)
    for obj in scene.objects:
        alpha = _resize_alpha(images[obj.instance], cell)[..., None]
        row, col = divmod(POSITIONS.index(obj.position), 2)
        window = canvas[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
        window[:] = window * (1 - alpha) + np.array(DIGIT_COLOURS[obj.colour], np.float32) * alpha
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _resize_alpha(alpha: np.ndarray, size: int) -> np.ndarray:
    if size == alpha.shape[0]:
        return alpha
    if size % alpha.shape[0] == 0:
        k = size // alpha.shape[0]
        return np.kron(alpha, np.ones((k, k), np.float32))
    from PIL import Image

    img = Image.fromarray(alpha.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(img, np.float32)


def sample_batch(
    rng: np.random.Generator,
    n: int,
    *,
    resolution: int,
    digit_counts: dict[int, float],
    instances: str = "train",
    split: str | None = None,
) -> tuple[np.ndarray, list[Scene]]:
    """``n`` scenes and their renders as a uint8 array (n, resolution, resolution, 3)."""
    scenes = [
        sample_scene(rng, digit_counts=digit_counts, instances=instances, split=split) for _ in range(n)
    ]
    return np.stack([render(s, resolution) for s in scenes]), scenes


def to_tensor_range(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC images -> float32 NCHW torch tensor in [-1, 1] (the model's pixel space)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor_range`: NCHW [-1, 1] tensor -> uint8 NHWC array."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
