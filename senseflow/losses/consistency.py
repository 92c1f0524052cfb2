"""Consistency distillation on a flow teacher: LCM and Hyper-SD's trajectory-segmented variant.

Flow convention (method.md section 1): ``x_t = (1 - t) x0 + t eps``, the networks predict the
velocity ``v = eps - x0``, so the probability-flow ODE is ``dx/dt = v(x, t)`` and one Euler
step from ``t`` to ``s`` is ``x_s = x_t + (s - t) v``.

**LCM** (Luo et al. 2023, arXiv 2310.04378, eq. 8-9; consistency models, Song et al. 2023).
On a grid of ``N`` teacher steps ``0 = t_0 < ... < t_N = 1`` a pair ``(t_{n+k}, t_n)`` is
drawn (skipping-step ``k``). With ``x_{t_{n+k}} = (1 - t_{n+k}) x0 + t_{n+k} eps``:

* the teacher's solver (one Euler step of the CFG velocity, weight ``w``)
  ``x^_{t_n} = x_{t_{n+k}} + (t_n - t_{n+k}) v_teacher^w(x_{t_{n+k}}, t_{n+k})``;
* the consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0^(x, t)`` with
  ``x0^ = x - t v`` and the boundary condition ``f(x, 0) = x`` (:func:`consistency_fn`);
* ``L_LCM = d( f_theta(x_{t_{n+k}}, t_{n+k}, w),  sg f_theta-(x^_{t_n}, t_n, w) )`` with
  ``theta-`` the EMA target network and ``d`` L2 or pseudo-Huber (:func:`consistency_distance`).

**TSCD** (Hyper-SD, Ren et al. 2024, arXiv 2404.13686, section 3.1). The trajectory is cut
into ``S`` equal segments with edges ``b_0 = 0 < b_1 < ... < b_S = 1`` (in unshifted time,
then shifted like the teacher's grid). A sample at ``t_{n+k}`` inside segment ``(b_j, b_{j+1}]``
is mapped by the student to that segment's lower edge ``b_j`` (one Euler jump, i.e. DDIM):
``y_theta = x_{t_{n+k}} + (b_j - t_{n+k}) v_theta``. The target is the teacher's step to
``t_n' = max(t_n, b_j)`` followed by the target network's jump to the same edge:
``y_target = x^_{t_n'} + (b_j - t_n') v_theta-(x^_{t_n'}, t_n')``, so ``L_TSCD = d(y_theta,
sg y_target)``. Training goes through a schedule of ``S`` (e.g. 8, 4, 2, 1); with ``S = 1``
the edge is 0 and TSCD is LCM with the flow boundary (tested).

Model arguments are callables ``(x, t) -> velocity`` with a per-sample ``t`` of shape (B,):
the teacher callable applies its own CFG, the student callable its guidance embedding. The
teacher and the target are called without gradient; only the online student gets one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from senseflow.backbones.conversions import flow_add_noise, flow_euler_step, flow_x0_from_velocity
from senseflow.schedules import NUM_TRAIN_TIMESTEPS, euler_sigmas

# (x, per-sample flow time of shape (B,)) -> velocity shaped like x
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CONSISTENCY_DISTANCES: tuple[str, ...] = ("l2", "pseudo_huber")
CONSISTENCY_BOUNDARIES: tuple[str, ...] = ("flow", "lcm")
LCM_SIGMA_DATA = 0.5  # LCM's c_skip / c_out constants (Song et al. 2023, appendix C)
LCM_TIMESTEP_SCALING = 10.0


def consistency_distance(x: torch.Tensor, target: torch.Tensor, distance: str = "l2",
                         huber_c: float | None = None) -> torch.Tensor:  # fmt: skip
    """``d(x, target)`` averaged over the batch, in float32 or better.

    ``"l2"``: mean squared error over all elements (LCM). ``"pseudo_huber"``: mean over samples
    of ``sqrt(||x - y||^2 + c^2) - c`` (improved consistency training, Song & Dhariwal 2023,
    eq. 7) with ``c = 0.00054 sqrt(d)`` for ``d`` elements per sample unless ``huber_c`` is given;
    L2-like for small residuals, L1-like for large ones.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, target.dtype), torch.float32)
    x, target = x.to(dtype), target.to(dtype)
    if x.shape != target.shape:
        raise ValueError(f"consistency distance of shapes {tuple(x.shape)} and {tuple(target.shape)}")
    if distance == "l2":
        return (x - target).square().mean()
    if distance == "pseudo_huber":
        d = x[0].numel()
        c = 0.00054 * math.sqrt(d) if huber_c is None else float(huber_c)
        sq = (x - target).square().reshape(x.shape[0], -1).sum(dim=1)
        return ((sq + c * c).sqrt() - c).mean()
    raise ValueError(
        f"unknown consistency distance {distance!r}; expected one of {', '.join(CONSISTENCY_DISTANCES)}"
    )


def boundary_coefficients(t: torch.Tensor, boundary: str = "flow") -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip(t), c_out(t))`` of the consistency function; both satisfy ``c_skip(0) = 1, c_out(0) = 0``.

    ``"flow"``: ``c_skip = 0, c_out = 1`` for ``t > 0``: ``f = x0^ = x - t v``, which is already
    ``x`` at ``t = 0``, so the boundary condition holds exactly with no extra coefficients.
    ``"lcm"``: LCM's ``c_skip = s_d^2 / ((10 T t)^2 + s_d^2)``, ``c_out = 10 T t / sqrt((10 T t)^2 +
    s_d^2)`` on the discrete timestep ``T t`` (T = 1000, s_d = 0.5); at ``t >= 0.01`` c_skip < 3e-6.
    """
    t = torch.as_tensor(t, dtype=torch.float32)
    if boundary == "flow":
        zero = t == 0
        return zero.float(), (~zero).float()
    if boundary == "lcm":
        s = LCM_TIMESTEP_SCALING * NUM_TRAIN_TIMESTEPS * t.double()
        c_skip = LCM_SIGMA_DATA**2 / (s.square() + LCM_SIGMA_DATA**2)
        c_out = s / (s.square() + LCM_SIGMA_DATA**2).sqrt()
        return c_skip.float(), c_out.float()
    raise ValueError(
        f"unknown consistency boundary {boundary!r}; expected one of {', '.join(CONSISTENCY_BOUNDARIES)}"
    )


def consistency_fn(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, boundary: str = "flow") -> torch.Tensor:
    """``f(x, t) = c_skip(t) x + c_out(t) (x - t v)`` (LCM eq. 9, flow x0 prediction); ``f(x, 0) = x``."""
    c_skip, c_out = boundary_coefficients(t, boundary)
    x0 = flow_x0_from_velocity(x, v, t)
    shape = (-1,) + (1,) * (x.ndim - 1)
    c_skip, c_out = c_skip.to(x0.device).reshape(shape), c_out.to(x0.device).reshape(shape)
    return c_skip * x.to(x0.dtype) + c_out * x0


def teacher_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """The teacher solver's ``steps + 1`` times, increasing: ``0 = t_0 < ... < t_N = 1`` (shifted)."""
    return euler_sigmas(steps, shift).flip(0)


def _draw_indices(low: int, high: int, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(low, high + 1, (batch,), generator=generator)


def sample_skip_pairs(
    steps: int, skip: int, batch: int, *, shift: float = 1.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's skipping-step pairs ``(t_{n+k}, t_n)``, n uniform over ``0..N-k`` on :func:`teacher_grid`."""
    if not 1 <= skip <= steps:
        raise ValueError(f"skip must be in [1, {steps}] for {steps} teacher steps, got {skip}")
    grid = teacher_grid(steps, shift)
    hi = _draw_indices(skip, steps, batch, generator)
    return grid[hi], grid[hi - skip]


def sample_segment_pairs(
    steps: int,
    skip: int,
    segments: int,
    batch: int,
    *,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TSCD's ``(t_{n+k}, t_n', b_j)``: a grid time, the teacher step clipped at the segment edge, the edge.

    ``segments`` must divide ``steps`` so the edges lie on the grid (``b_j = t_{j N / S}``).
    """
    if segments < 1 or steps % segments:
        raise ValueError(f"{segments} segments must divide the {steps} teacher steps")
    if not 1 <= skip <= steps:
        raise ValueError(f"skip must be in [1, {steps}] for {steps} teacher steps, got {skip}")
    grid = teacher_grid(steps, shift)
    per = steps // segments
    hi = _draw_indices(1, steps, batch, generator)
    edge = torch.div(hi - 1, per, rounding_mode="floor") * per  # lower edge of (b_j, b_{j+1}]
    lo = torch.maximum(hi - skip, edge)
    return grid[hi], grid[lo], grid[edge]


def segment_edges(segments: int, shift: float = 1.0) -> list[float]:
    """The ``S + 1`` segment edges, noisiest first (also the times a TSCD student samples at)."""
    return [float(s) for s in euler_sigmas(segments, shift)]


@torch.no_grad()
def teacher_step(teacher: VelocityFn, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The solver ``Psi``: one Euler step of the teacher's (guided) ODE from ``t`` to ``s`` (no grad)."""
    return flow_euler_step(x, teacher(x, t), t, s)


def lcm_loss(
    student: VelocityFn,
    target: VelocityFn,
    teacher: VelocityFn,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t_hi: torch.Tensor,
    t_lo: torch.Tensor,
    *,
    boundary: str = "flow",
    distance: str = "l2",
    huber_c: float | None = None,
) -> torch.Tensor:
    """LCM's latent consistency distillation loss (Luo et al. 2023, eq. 9) on a flow teacher.

    ``d(f_theta(x_{t_hi}, t_hi), sg f_target(Psi_teacher(x_{t_hi}, t_hi -> t_lo), t_lo))`` with
    ``x_{t_hi} = (1 - t_hi) x0 + t_hi eps``. ``student`` / ``target`` carry the guidance
    condition ``w``; ``teacher`` is the CFG velocity at the same ``w``.
    """
    x_hi = flow_add_noise(x0, eps, t_hi)
    with torch.no_grad():
        x_lo = teacher_step(teacher, x_hi, t_hi, t_lo)
        goal = consistency_fn(x_lo, target(x_lo, t_lo), t_lo, boundary)
    pred = consistency_fn(x_hi, student(x_hi, t_hi), t_hi, boundary)
    return consistency_distance(pred, goal, distance, huber_c)


def tscd_loss(
    student: VelocityFn,
    target: VelocityFn,
    teacher: VelocityFn,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t_hi: torch.Tensor,
    t_lo: torch.Tensor,
    t_edge: torch.Tensor,
    *,
    distance: str = "l2",
    huber_c: float | None = None,
) -> torch.Tensor:
    """Hyper-SD's trajectory-segmented consistency loss (Ren et al. 2024, section 3.1) on a flow teacher.

    ``d(x_{t_hi} + (b - t_hi) v_theta,  sg [x^ + (b - t_lo) v_target(x^, t_lo)])`` with
    ``x^ = Psi_teacher(x_{t_hi}, t_hi -> t_lo)``, ``b = t_edge <= t_lo < t_hi`` the lower edge of
    the segment. Where ``t_lo = b`` the target is the teacher's point itself (a zero-length jump).
    """
    if bool((t_edge > t_lo).any()) or bool((t_lo >= t_hi).any()):
        raise ValueError("TSCD needs t_edge <= t_lo < t_hi for every sample")
    x_hi = flow_add_noise(x0, eps, t_hi)
    with torch.no_grad():
        x_lo = teacher_step(teacher, x_hi, t_hi, t_lo)
        goal = flow_euler_step(x_lo, target(x_lo, t_lo), t_lo, t_edge)
    pred = flow_euler_step(x_hi, student(x_hi, t_hi), t_hi, t_edge)
    return consistency_distance(pred, goal, distance, huber_c)


def stage_segments(schedule: list[int], iteration: int, iterations: int) -> int:
    """The segment count ``S`` at ``iteration``: the stages share ``iterations`` equally, in order."""
    if not schedule:
        raise ValueError("the segment schedule is empty")
    stage = min(len(schedule) - 1, iteration * len(schedule) // max(iterations, 1))
    return int(schedule[stage])


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, mu: float) -> int:
    """In place ``theta- <- mu theta- + (1 - mu) theta`` over every parameter; returns the count.

    The EMA target network of consistency distillation (LCM, Luo et al. 2023, arXiv
    2310.04378, Algorithm 1; consistency models, Song et al. 2023, eq. 8). Unlike
    :func:`senseflow.losses.ida_update` this does not look at ``requires_grad``: the target is
    frozen by design (no gradient ever reaches it), so every parameter is blended. Parameters
    are matched by name; a missing or differently shaped one raises before anything changes.
    """
    mu = float(mu)
    if not 0.0 <= mu <= 1.0:  # also rejects NaN
        raise ValueError(f"EMA target: mu must be in [0, 1], got {mu}")
    theta = dict(online.named_parameters())
    pairs = []
    for name, p in target.named_parameters():
        q = theta.pop(name, None)
        if q is None or q.shape != p.shape:
            got = "missing" if q is None else f"shape {tuple(q.shape)}"
            raise ValueError(f"EMA target: parameter {name!r} {tuple(p.shape)} is {got} in the online network")
        pairs.append((p, q.to(device=p.device, dtype=p.dtype)))
    if theta:
        raise ValueError(f"EMA target: online parameter {next(iter(theta))!r} is missing in the target")
    if pairs:
        # lerp(phi, theta, 1 - mu) == mu * phi + (1 - mu) * theta; one foreach call per step
        torch._foreach_lerp_([p for p, _ in pairs], [q for _, q in pairs], 1.0 - mu)
    return len(pairs)
