"""Training batches for distillation: prompts and the paired real images.

A source is deterministic in ``(iteration, rank)``, so the loop needs no data-loader state
to resume: the data position of a checkpoint is its iteration number.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from senseflow.errors import UserError
from senseflow.world.prompts import PromptRecord
from senseflow.world.scenes import caption, render, sample_batch, to_tensor_range, with_fresh_handwriting


@runtime_checkable
class TrainData(Protocol):
    """Where the distillation loop gets its prompts and real images."""

    def batch(self, iteration: int, rank: int, batch_size: int) -> tuple[list[str], torch.Tensor]:
        """``(prompts, real images)`` of one rank at one iteration; images (B, 3, H, W) in [-1, 1]."""
        ...


class WorldData:
    """Embedded world: training scenes rendered on the fly (train captions, train handwriting).

    Without ``prompts`` every batch draws fresh scenes whose captions are in the train split;
    with ``prompts`` (e.g. the world's ``prompts/train.jsonl``, the list a prompt cache
    holds) it draws from that fixed list and renders each scene with fresh train
    handwriting, like a real dataset of captioned images.
    """

    def __init__(
        self,
        *,
        resolution: int,
        digit_counts: dict[int, float],
        seed: int = 0,
        prompts: list[PromptRecord] | None = None,
    ):
        self.resolution = resolution
        self.digit_counts = dict(digit_counts)
        self.seed = seed
        self.scenes = None
        if prompts is not None:
            missing = [r.id for r in prompts if r.scene is None]
            if missing or not prompts:
                raise UserError(
                    f"WorldData needs embedded-world prompt records with scenes (e.g. {missing[:1]})"
                )
            self.scenes = [r.scene for r in prompts]

    def batch(self, iteration: int, rank: int, batch_size: int) -> tuple[list[str], torch.Tensor]:
        """Scenes drawn from a generator seeded by (seed, iteration, rank)."""
        rng = np.random.default_rng([self.seed, 1, iteration, rank])
        if self.scenes is not None:
            picks = rng.integers(len(self.scenes), size=batch_size)
            scenes = [with_fresh_handwriting(self.scenes[int(i)], rng) for i in picks]
            images = np.stack([render(s, self.resolution) for s in scenes])
            return [caption(s) for s in scenes], to_tensor_range(images)
        images, scenes = sample_batch(
            rng, batch_size, resolution=self.resolution, digit_counts=self.digit_counts,
            instances="train", split="train",
        )  # fmt: skip
        return [caption(s) for s in scenes], to_tensor_range(images)
