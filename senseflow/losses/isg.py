"""Intra-Segment Guidance (SenseFlow, Ge et al. 2026, arXiv 2506.00523; method.md section 3).

The student's anchors split the trajectory into segments ``(tau_prev, tau]``. The teacher's
one-step quality is not monotonic in t, so instead of trusting it only at the anchors, ISG
lets the teacher walk from ``tau`` to a random point ``t_mid`` inside the segment, lets the
generator finish from ``t_mid`` to ``tau_prev`` (no grad), and asks the generator's direct
jump ``tau -> tau_prev`` to land on that target. Flow models use Euler steps, epsilon (DDPM)
models deterministic DDIM steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from senseflow.backbones.conversions import eps_add_noise, eps_x0_from_eps, flow_euler_step
from senseflow.schedules import shift_sigma, unshift_sigma

# (x, per-sample sigma or integer timestep of shape (B,)) -> velocity or epsilon, shaped like x
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ISG_DISTANCES: tuple[str, ...] = ("l2", "charbonnier")
CHARBONNIER_C = 1e-3  # the released code's constant


def isg_distance(x: torch.Tensor, target: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """``d(x, target)`` averaged over all elements, in float32 or better.

    ``"l2"``: mean squared error (the paper's squared L2). ``"charbonnier"``: mean of
    ``sqrt(d^2 + c^2) - c`` with ``c = 1e-3`` (the released code; Charbonnier 1994), which
    is L2-like near 0 and L1-like for large residuals.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, target.dtype), torch.float32)
    x, target = x.to(dtype), target.to(dtype)
    if distance == "l2":
        return F.mse_loss(x, target)
    if distance == "charbonnier":
        return ((x - target).square() + CHARBONNIER_C**2).sqrt().sub(CHARBONNIER_C).mean()
    raise ValueError(f"unknown ISG distance {distance!r}; expected one of {', '.join(ISG_DISTANCES)}")


def _per_sample(value: torch.Tensor | float, x: torch.Tensor, name: str) -> torch.Tensor:
    """A scalar or (B,) time -> a (B,) tensor on x's device: the model callables get one per sample."""
    t = torch.as_tensor(value, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"{name} must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def sample_isg_mid(
    sigma_tau: torch.Tensor,
    sigma_prev: torch.Tensor | float,
    margin: float,
    generator: torch.Generator | None = None,
    *,
    shift: float = 1.0,
) -> torch.Tensor:
    """Per-sample ``sigma_mid`` between two anchors, ``margin`` away from both (ISG, method.md section 3).

    The draw is uniform in *unshifted* time ``u = unshift(sigma, shift)``,
    ``u_mid ~ U(u_prev + margin, u_tau - margin)``, then shifted back, as the released SD 3.5
    code draws its integer index in ``[idx_prev + 50, idx_tau - 50]`` of the unshifted 1000-step
    grid before reading the shifted sigma (SD 3.5, shift 3, anchors 1 / 0.9 / 0.75 / 0.5:
    mid ranges [0.923, 0.983], [0.786, 0.875], [0.563, 0.711], [0.136, 0.429]). ``shift = 1``
    draws in sigma itself (the released FLUX code: margin 0.02 in sigma). Raises if a segment
    is narrower than ``2 * margin`` in the drawing units. ``generator`` draws on its own
    device (CPU by default); the result is on ``sigma_tau``'s. For integer DDPM timesteps pass
    them as floats and round the draw: with integer bounds the rounded value stays inside
    ``[t_prev + margin, t - margin]``.
    """
    if margin < 0:
        raise ValueError(f"ISG margin must be >= 0, got {margin}")
    if shift != 1.0:
        u_tau = unshift_sigma(torch.as_tensor(sigma_tau).double(), shift)
        u_prev = unshift_sigma(torch.as_tensor(sigma_prev, dtype=torch.float64), shift)
        u_mid = sample_isg_mid(u_tau, u_prev, margin, generator)
        dtype = torch.promote_types(torch.as_tensor(sigma_tau).dtype, torch.float32)
        return shift_sigma(u_mid, shift).to(dtype)
    sigma_tau = torch.as_tensor(sigma_tau)
    dtype = torch.promote_types(sigma_tau.dtype, torch.float32)
    lo = torch.as_tensor(sigma_prev, dtype=dtype, device=sigma_tau.device) + margin
    hi = sigma_tau.to(dtype) - margin
    lo, hi = torch.broadcast_tensors(lo, hi)
    narrow = (hi < lo).reshape(-1).nonzero()
    if narrow.numel():
        i = int(narrow[0, 0])
        prev, tau = lo.reshape(-1)[i].item() - margin, hi.reshape(-1)[i].item() + margin
        raise ValueError(
            f"ISG segment narrower than 2 * margin = {2 * margin:g} (sample {i}): "
            f"sigma_prev {prev:g}, sigma_tau {tau:g}"
        )
    gen_device = generator.device if generator is not None else lo.device
    u = torch.rand(lo.shape, generator=generator, device=gen_device, dtype=dtype).to(lo.device)
    return lo + u * (hi - lo)


def isg_loss(
    x_tau: torch.Tensor,
    sigma_tau: torch.Tensor | float,
    sigma_prev: torch.Tensor | float,
    sigma_mid: torch.Tensor | float,
    teacher_velocity: ModelFn,
    generator_velocity: ModelFn,
    distance: str = "l2",
) -> torch.Tensor:
    """ISG loss for flow models, ``d(x_dir, stopgrad(x_tar))`` (SenseFlow, L_ISG; method.md section 3).

    No grad: ``x_mid = euler(x_tau, tau -> mid, teacher)``, ``x_tar = euler(x_mid, mid -> prev,
    generator)``. With grad: ``x_dir = euler(x_tau, tau -> prev, generator)``. The teacher
    callable owns its guidance (CFG). Times are per-sample sigmas (scalars are broadcast) with
    ``sigma_prev <= sigma_mid <= sigma_tau``; the callables receive (B,) tensors and, for the
    second leg, the float32 ``x_mid``.
    """
    s_tau = _per_sample(sigma_tau, x_tau, "sigma_tau")
    s_prev = _per_sample(sigma_prev, x_tau, "sigma_prev")
    s_mid = _per_sample(sigma_mid, x_tau, "sigma_mid")
    if bool(((s_mid < s_prev) | (s_mid > s_tau)).any()):
        raise ValueError("ISG needs sigma_prev <= sigma_mid <= sigma_tau for every sample")
    with torch.no_grad():
        x_mid = flow_euler_step(x_tau, teacher_velocity(x_tau, s_tau), s_tau, s_mid)
        x_tar = flow_euler_step(x_mid, generator_velocity(x_mid, s_mid), s_mid, s_prev)
    x_dir = flow_euler_step(x_tau, generator_velocity(x_tau, s_tau), s_tau, s_prev)
    return isg_distance(x_dir, x_tar.detach(), distance)


def _ddim_step(
    x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_next: torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM step (Song et al. 2021, eta = 0): predict x0, re-noise with the same eps."""
    return eps_add_noise(eps_x0_from_eps(x_t, eps, alpha_bar), eps, alpha_bar_next)


def isg_loss_ddim(
    x_t: torch.Tensor,
    t: torch.Tensor | int,
    t_prev: torch.Tensor | int,
    t_mid: torch.Tensor | int,
    alphas_cumprod: torch.Tensor,
    teacher_eps: ModelFn,
    generator_eps: ModelFn,
    distance: str = "l2",
) -> torch.Tensor:
    """ISG loss for epsilon (DDPM) models with DDIM steps (SenseFlow L_ISG; method.md section 3).

    Same construction as :func:`isg_loss` with integer timesteps: the teacher goes
    ``t -> t_mid``, the generator ``t_mid -> t_prev`` (no grad, the target); the generator's
    direct ``t -> t_prev`` step carries the gradient. ``t_prev = -1`` means ``alpha_bar = 1``,
    the clean image. Unlike the released SDXL path (an x0 regression at the anchor in which
    t_mid has no effect), the target really passes through ``t_mid``. Needs
    ``-1 <= t_prev < t_mid <= t < len(alphas_cumprod)``.
    """
    ts = [_per_sample(v, x_t, n) for v, n in ((t, "t"), (t_prev, "t_prev"), (t_mid, "t_mid"))]
    if any(v.is_floating_point() for v in ts):
        raise TypeError("DDPM timesteps t, t_prev, t_mid must be integers")
    t, t_prev, t_mid = (v.long() for v in ts)
    n = alphas_cumprod.shape[0]
    if bool(((t_prev < -1) | (t_mid <= t_prev) | (t < t_mid) | (t >= n)).any()):
        raise ValueError(f"ISG (DDIM) needs -1 <= t_prev < t_mid <= t < {n} for every sample")
    acp = alphas_cumprod.to(x_t.device, torch.float64)

    def alpha_bar(k: torch.Tensor) -> torch.Tensor:
        # index -1 stands for the clean image, alpha_bar = 1
        return torch.where(k >= 0, acp[k.clamp_min(0)], torch.ones_like(acp[:1]))

    ab_t, ab_prev, ab_mid = alpha_bar(t), alpha_bar(t_prev), alpha_bar(t_mid)
    with torch.no_grad():
        x_mid = _ddim_step(x_t, teacher_eps(x_t, t), ab_t, ab_mid)
        x_tar = _ddim_step(x_mid, generator_eps(x_mid, t_mid), ab_mid, ab_prev)
    x_dir = _ddim_step(x_t, generator_eps(x_t, t), ab_t, ab_prev)
    return isg_distance(x_dir, x_tar.detach(), distance)
