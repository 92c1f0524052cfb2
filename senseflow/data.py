"""Training batches for distillation: prompts and the paired real images.

A source is deterministic in ``(iteration, rank)``, so the loop needs no data-loader state
to resume: the data position of a checkpoint is its iteration number.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from senseflow.world.scenes import caption, sample_batch, to_tensor_range


@runtime_checkable
class TrainData(Protocol):
    """Where the distillation loop gets its prompts and real images."""

    def batch(self, iteration: int, rank: int, batch_size: int) -> tuple[list[str], torch.Tensor]:
        """``(prompts, real images)`` of one rank at one iteration; images (B, 3, H, W) in [-1, 1]."""
        ...


class WorldData:
    """Embedded world: fresh training scenes rendered on the fly (train captions, train handwriting)."""

    def __init__(self, *, resolution: int, digit_counts: dict[int, float], seed: int = 0):
        self.resolution = resolution
        self.digit_counts = dict(digit_counts)
        self.seed = seed

    def batch(self, iteration: int, rank: int, batch_size: int) -> tuple[list[str], torch.Tensor]:
        """Scenes drawn from a generator seeded by (seed, iteration, rank)."""
        rng = np.random.default_rng([self.seed, 1, iteration, rank])
        images, scenes = sample_batch(
            rng, batch_size, resolution=self.resolution, digit_counts=self.digit_counts,
            instances="train", split="train",
        )  # fmt: skip
        return [caption(s) for s in scenes], to_tensor_range(images)
