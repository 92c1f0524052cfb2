"""Pure conversions between the parameterisations of a diffusion / flow sample.

Flow matching (rectified flow; SD3, FLUX): ``x_t = (1 - s) x0 + s eps``, the model predicts
the velocity ``v = dx_t/ds = eps - x0``. Hence ``x0 = x_t - s v`` and ``eps = x_t + (1 - s) v``
(method.md section 1). Epsilon (DDPM / SDXL): ``x_t = a x0 + b eps`` with ``a = sqrt(alpha_bar)``,
``b = sqrt(1 - alpha_bar)``. All functions broadcast a per-sample ``sigma`` of shape (B,) over
the remaining dimensions and compute in float32 at least (conversions near s = 0 or 1 lose
precision in half precision).
"""

from __future__ import annotations

import torch


def _bcast(s: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Per-sample scalar -> tensor broadcastable against ``like``, in float32 or better."""
    s = torch.as_tensor(s, device=like.device)
    dtype = torch.promote_types(like.dtype, torch.float32)
    s = s.to(dtype)
    return s.reshape(s.shape + (1,) * (like.ndim - s.ndim)) if s.ndim else s


def _up(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def flow_add_noise(x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Forward process ``x_t = (1 - s) x0 + s eps``."""
    s = _bcast(sigma, x0)
    return (1 - s) * _up(x0) + s * _up(eps)


def flow_velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Target velocity ``v = eps - x0`` (independent of sigma)."""
    return _up(eps) - _up(x0)


def flow_x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """``x0 = x_t - s v``."""
    return _up(x_t) - _bcast(sigma, x_t) * _up(v)


def flow_eps_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """``eps = x_t + (1 - s) v``."""
    return _up(x_t) + (1 - _bcast(sigma, x_t)) * _up(v)


def flow_velocity_from_x0(x_t: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    """``v = (x_t - x0) / s``; undefined at s = 0 (raises)."""
    s = _bcast(sigma, x_t)
    if bool((s <= 0).any()):
        raise ValueError("velocity from x0 is undefined at sigma = 0")
    return (_up(x_t) - _up(x0)) / s


def flow_velocity_from_eps(x_t: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """``v = (eps - x_t) / (1 - s)``; undefined at s = 1 (raises)."""
    s = _bcast(sigma, x_t)
    if bool((s >= 1).any()):
        raise ValueError("velocity from eps is undefined at sigma = 1")
    return (_up(eps) - _up(x_t)) / (1 - s)


def flow_euler_step(x_t: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One Euler step of the flow ODE ``dx/ds = v`` from ``sigma`` to ``sigma_next``."""
    return _up(x_t) + (_bcast(sigma_next, x_t) - _bcast(sigma, x_t)) * _up(v)


def eps_add_noise(x0: torch.Tensor, eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """DDPM forward process ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``."""
    ab = _bcast(alpha_bar, x0)
    return ab.sqrt() * _up(x0) + (1 - ab).sqrt() * _up(eps)


def eps_x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)``."""
    ab = _bcast(alpha_bar, x_t)
    return (_up(x_t) - (1 - ab).sqrt() * _up(eps)) / ab.sqrt()


def eps_eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar) -> torch.Tensor:
    """``eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)``."""
    ab = _bcast(alpha_bar, x_t)
    return (_up(x_t) - ab.sqrt() * _up(x0)) / (1 - ab).sqrt()


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale) -> torch.Tensor:
    """Classifier-free guidance ``u + w (c - u)`` (Ho & Salimans 2022); ``w = 1`` is no guidance.

    DMD2 writes ``c + w' (c - u)``, the same thing with ``w = w' + 1``.
    """
    return uncond + _bcast(scale, cond) * (cond - uncond)
