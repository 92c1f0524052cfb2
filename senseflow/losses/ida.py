"""Implicit Distribution Alignment (SenseFlow, Ge et al. 2026, arXiv 2506.00523; method.md section 2).

Right after each generator step the fake model is pulled towards the generator,
``phi <- lam * phi + (1 - lam) * theta``. The fake model is the inner maximiser of the DMD
game and lags the moving generator; this proximal step keeps ``p_f`` near ``p_g`` so the
DMD gradient stays informative.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor


class IDAMismatchError(ValueError):
    """The fake model and the generator do not have matching trainable parameters."""


def _local(p: torch.Tensor) -> torch.Tensor:
    # FSDP2 shards parameters as DTensors: each rank updates its own shard, no communication.
    # Under no_grad, to_local() returns the shard itself, so in-place ops reach the parameter.
    return p.to_local() if isinstance(p, DTensor) else p


def _mismatch(name: str, p: torch.Tensor, q: torch.Tensor) -> str | None:
    """Why ``p`` (fake) and ``q`` (generator) cannot be blended, or None if they can."""
    if isinstance(p, DTensor) != isinstance(q, DTensor):
        return f"parameter {name!r} is a DTensor in only one of the two models (wrap both alike)"
    if isinstance(p, DTensor) and tuple(p.placements) != tuple(q.placements):
        return f"parameter {name!r} has placements {p.placements} (fake) vs {q.placements} (generator)"
    if p.shape != q.shape or _local(p).shape != _local(q).shape:
        return (
            f"parameter {name!r} has shape {tuple(_local(p).shape)} (fake) vs "
            f"{tuple(_local(q).shape)} (generator)"
        )
    return None


def _pairs(fake: nn.Module, generator: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """Matched (name, fake param, generator param) for every trainable fake parameter; raises first."""
    theta = dict(generator.named_parameters())
    phi = dict(fake.named_parameters())
    pairs = []
    for name, p in phi.items():
        if not p.requires_grad:
            continue  # frozen in the fake model (e.g. a removed or fixed embedding): leave it
        if name not in theta:
            raise IDAMismatchError(f"IDA: parameter {name!r} of the fake model is missing in the generator")
        reason = _mismatch(name, p, theta[name])
        if reason:
            raise IDAMismatchError(f"IDA: {reason}")
        pairs.append((name, p, theta[name]))
    for name, q in theta.items():
        # a trainable generator parameter with no counterpart means the architectures differ
        if q.requires_grad and name not in phi:
            raise IDAMismatchError(f"IDA: parameter {name!r} of the generator is missing in the fake model")
    return pairs


def ida_update(fake: nn.Module, generator: nn.Module, lam: float) -> int:
    """In place ``phi <- lam * phi + (1 - lam) * theta``; returns how many parameters were updated.

    SenseFlow (Ge et al. 2026, arXiv 2506.00523), IDA update; lam = 0.97 (SD3.5 Large, FLUX),
    0.98 (SD3.5 Medium). Every ``requires_grad`` parameter of ``fake`` is matched by name to
    ``generator``'s; buffers (e.g. BatchNorm statistics) are untouched. All pairs are checked
    before any is modified, so an :class:`IDAMismatchError` naming the first bad parameter
    leaves both models unchanged. DTensor (FSDP2) parameters are blended shard by shard and
    need identical placements and local shapes, i.e. both models wrapped the same way.
    ``theta`` is cast to ``phi``'s dtype and device.
    """
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:  # also rejects NaN
        raise ValueError(f"IDA: lam must be in [0, 1], got {lam}")
    pairs = _pairs(fake, generator)
    with torch.no_grad():
        for _, p, q in pairs:
            phi, theta = _local(p), _local(q)
            # lerp(phi, theta, 1 - lam) == lam * phi + (1 - lam) * theta, exact at lam = 0 and 1
            phi.lerp_(theta.to(device=phi.device, dtype=phi.dtype), 1.0 - lam)
    return len(pairs)
