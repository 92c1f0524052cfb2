"""A tiny embedded distillation run as a script, for the kill/resume and torchrun tests.

``python -m tests.distill_script WORLD OUT ITERATIONS [--sleep S] [--parallel MODE]``
trains a 2-layer teacher-initialised student for ``ITERATIONS`` with a checkpoint every 2
iterations and writes the final generator weights to ``OUT/final-rank{R}.pt``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from senseflow.backbones.flow import SD3FlowBackbone, tiny_sd3_transformer
from senseflow.data import WorldData
from senseflow.train import distill
from senseflow.world.text import WorldTextEncoder


class SlowData(WorldData):
    """World data that waits before each batch, so a test can kill the run mid-way."""

    def __init__(self, sleep: float, **kw):
        super().__init__(**kw)
        self.sleep = sleep

    def batch(self, iteration, rank, batch_size):
        """Sleep, then the world's batch."""
        time.sleep(self.sleep)
        return super().batch(iteration, rank, batch_size)


def tiny_teacher(world: str) -> SD3FlowBackbone:
    """A random 2-layer embedded teacher (fixed seed) on the world's text encoder."""
    text = WorldTextEncoder.load(world)
    net = tiny_sd3_transformer(
        resolution=16, in_channels=3, patch_size=4, num_layers=2, num_attention_heads=2,
        attention_head_dim=16, text_dim=text.hidden_size, pooled_dim=text.pooled_size, seed=0,
    )  # fmt: skip
    return SD3FlowBackbone(net, text)


def main() -> None:
    """Parse, run, save the final weights of this rank."""
    ap = argparse.ArgumentParser()
    ap.add_argument("world")
    ap.add_argument("out")
    ap.add_argument("iterations", type=int)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--parallel", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = distill(
        args.out, teacher=tiny_teacher(args.world),
        data=SlowData(args.sleep, resolution=16, digit_counts={1: 0.5, 2: 0.5}),
        gan_head="fake_features", gan_loss="logistic", iterations=args.iterations, global_batch=4,
        ttur=2, generator_lr=1e-3, fake_lr=1e-3, gan_lr=1e-3, checkpoint_every=2, log_every=1,
        parallel=args.parallel, deterministic=True, progress=False,
    )  # fmt: skip
    rank = int(os.environ.get("RANK", "0"))
    state = {k: v.detach().cpu() for k, v in result.generator_state.items()}
    torch.save(state, f"{args.out}/final-rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
