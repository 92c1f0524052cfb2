"""Small pieces both distillation loops share: optimiser, LR warm-up, seeds, NaN guard, timer, curve.

The loops are SenseFlow's (:mod:`senseflow.train`) and the LCM / Hyper-SD baselines'
(:mod:`senseflow.consistency`).

Checkpoints, resume and the run fingerprint are :mod:`senseflow.checkpoint`.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from senseflow.errors import UserError
from senseflow.optim import adamw

EVAL_CURVE = "eval_curve.jsonl"  # one JSON row per evaluated iteration (the in-loop FID-T curve)


class TrainingDivergedError(UserError, RuntimeError):
    """A loss or gradient became NaN/inf; the last good checkpoint is kept."""


def make_optimizer(params, kind: str, lr: float, betas, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (fused where possible) or bitsandbytes' 8-bit AdamW over the trainable ``params``."""
    params = [p for p in params if p.requires_grad]
    if kind == "adamw":
        return adamw(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise UserError(
                "distill.optimizer is 'adamw8bit' but bitsandbytes is not installed: "
                "`pip install bitsandbytes` (CUDA only) or set distill.optimizer: adamw"
            ) from exc
        return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise UserError(f"distill.optimizer must be adamw or adamw8bit, got {kind!r}")


def lr_factor(lr: float, warmup: int, lr_after_warmup: float | None) -> Callable[[int], float]:
    """LR multiplier at iteration n: linear warm-up from 0, or from ``lr`` to ``lr_after_warmup`` (FLUX).

    Applied to the generator's, the fake model's and the discriminator's LRs alike (released
    FLUX: all three 5e-6 -> 1e-5 over 500 iterations).
    """

    def factor(step: int) -> float:
        if warmup <= 0:
            return (lr_after_warmup / lr) if lr_after_warmup else 1.0
        frac = min(1.0, step / warmup)
        if lr_after_warmup is None:
            return frac
        return 1.0 + frac * (lr_after_warmup / lr - 1.0)

    return factor


def grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the gradients of ``params`` to ``max_norm``; return the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def is_finite(*values: torch.Tensor) -> bool:
    """Whether every element of every tensor is finite (the NaN guard's test)."""
    return all(bool(torch.isfinite(v.detach()).all()) for v in values)


class PhaseTimer:
    """Accumulates wall-clock seconds per phase (the overhead figures of IDA and ISG)."""

    def __init__(self):
        self.total: dict[str, float] = defaultdict(float)

    def __call__(self, name: str):
        """A context manager adding its span's seconds to ``total[name]``."""
        timer = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.total[name] += time.perf_counter() - self.t0

        return _Span()


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    """One 62-bit seed per (run seed, iteration, rank): resumable without saving RNG states."""
    import numpy as np

    return int(np.random.default_rng([seed, 2, iteration, rank]).integers(2**62))


def diverged(it: int, values: dict, last_good: int, ckpt: Path, live) -> None:
    """Stop the run: end the dvclive log, raise naming the non-finite values and the last good checkpoint."""
    bad = [k for k, v in values.items() if not bool(torch.isfinite(torch.as_tensor(v).detach()).all())]
    if live is not None:
        live.end()
    where = f"{ckpt} (iteration {last_good})" if last_good else "none written yet"
    raise TrainingDivergedError(
        f"iteration {it + 1}: non-finite {', '.join(bad) or 'values'}; stopped without saving. "
        f"Last good checkpoint: {where}. Lower the learning rates or raise precision, then rerun"
    )


def read_curve(path: Path) -> list[dict]:
    """The rows of an evaluation curve file (empty when the run has none yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
