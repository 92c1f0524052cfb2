"""Cost of one optimiser / EMA step on the embedded teacher's parameters, per implementation.

Usage::

    python benchmarks/optimizer_step.py [--profile embedded] [--threads 1] [--n 30]

Builds the profile's teacher transformer (random weights), fills every gradient, and times
``AdamW.step`` (default per-tensor loop, ``foreach``, ``fused``), the diffusers EMA update
(``foreach`` off/on) and gradient clipping. ``senseflow.optim.adamw`` picks the fused kernel.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers.training_utils import EMAModel

from senseflow.backbones.flow import tiny_sd3_transformer
from senseflow.config import load_profile


def _time(fn, n: int) -> float:
    fn()  # warm-up (allocates the optimiser state)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    """Print milliseconds per step for each implementation."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_profile(args.profile)
    m, w = cfg.teacher.model, cfg.world
    net = tiny_sd3_transformer(
        resolution=w.scenes.resolution, in_channels=3, patch_size=m.patch_size, num_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads, attention_head_dim=m.attention_head_dim,
        text_dim=w.text.hidden_size, pooled_dim=w.text.hidden_size * w.text.max_length,
    )  # fmt: skip
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    n_params = sum(p.numel() for p in params) / 1e6
    what = f"{len(params)} tensors, {n_params:.1f} M parameters, {args.threads} thread(s)"
    print(f"{args.profile} teacher: {what}", flush=True)
    for kw in ({}, {"foreach": True}, {"fused": True}):
        opt = torch.optim.AdamW(params, lr=1e-4, **kw)
        print(f"AdamW {kw or 'default'}: {_time(opt.step, args.n):.1f} ms")
    for foreach in (False, True):
        ema = EMAModel(params, decay=0.999, foreach=foreach)
        print(f"EMA foreach={foreach}: {_time(lambda e=ema: e.step(params), args.n):.1f} ms")
    print(f"clip_grad_norm_: {_time(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0), args.n):.1f} ms")


if __name__ == "__main__":
    main()
