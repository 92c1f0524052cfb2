"""Samplers as plain functions with one shared signature, and an NFE counter.

A sampler takes a velocity function ``v(x, sigma) -> velocity``, initial noise and a
decreasing sigma schedule ending at 0, and returns the clean sample. Guidance lives in
the velocity function (see :func:`guided`), so every sampler works with or without it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from senseflow.backbones.conversions import flow_euler_step
from senseflow.schedules import euler_sigmas

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NFECounter:
    """Wraps a velocity function and counts network evaluations per image.

    A CFG call costs ``2`` evaluations (conditional and unconditional), as the field counts
    it (e.g. SDXL at 40 steps = 80 NFE).
    """

    def __init__(self, fn: VelocityFn, evals_per_call: int = 1):
        self.fn = fn
        self.evals_per_call = evals_per_call
        self.nfe = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Evaluate the wrapped function and count it."""
        self.nfe += self.evals_per_call
        return self.fn(x, sigma)


def guided(backbone, cond, uncond, scale: float) -> NFECounter:
    """Velocity function of ``backbone`` with CFG ``scale`` on fixed prompts, NFE-counted."""

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return backbone.guided_predict(x, sigma.expand(x.shape[0]), cond, uncond, scale)

    return NFECounter(fn, evals_per_call=1 if (uncond is None or scale == 1.0) else 2)


@torch.no_grad()
def euler_flow(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Euler integration of the flow ODE ``dx/ds = v(x, s)`` along ``sigmas`` (Liu et al. 2023)."""
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D schedule with at least two entries")
    x = noise.float()
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = flow_euler_step(x, velocity(x, s.reshape(1)), s, s_next)
    return x


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """Noise seed of one prompt: a hash of (base seed, prompt id), the same for every candidate."""
    digest = hashlib.blake2b(f"{base_seed}:{prompt_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def prompt_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal tensor of ``shape`` per seed, stacked: batch-size independent."""
    out = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        out.append(torch.randn(shape, generator=g))
    return torch.stack(out)


@torch.no_grad()
def sample_prompts(
    backbone,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int,
    cfg: float,
    shape: tuple[int, int, int],
    batch_size: int = 64,
) -> tuple[torch.Tensor, int]:
    """Euler-sample one image per prompt with its own noise seed; return (images, NFE per image).

    Images come back in the backbone's latent space (pixels in [-1, 1] for the embedded world).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    sigmas = euler_sigmas(steps, backbone.shift)
    uncond_all = backbone.text.encode([""]) if cfg != 1.0 else None
    outs, nfe = [], 0
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        cond = backbone.text.encode(chunk)
        uncond = None
        if uncond_all is not None:
            uncond = uncond_all.index([0] * len(chunk))
        fn = guided(backbone, cond, uncond, cfg)
        outs.append(euler_flow(fn, prompt_noise(seeds[i : i + batch_size], shape), sigmas))
        nfe = fn.nfe
    return torch.cat(outs), nfe
