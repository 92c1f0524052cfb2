"""The few-step student sampler (method.md section 6): predict x0 at each anchor, re-noise to the next.

Both the generate stages (through :class:`senseflow.student.Student`) and the distillation
loops' in-loop FID-T curve sample with it, so an edit here reruns both, as it should.
"""

from __future__ import annotations

import torch

from senseflow.distill import renoise_step
from senseflow.errors import UserError
from senseflow.samplers import prompt_noise, prompt_seed

SAMPLERS = ("euler", "x0")


@torch.no_grad()
def student_sample(
    backbone,
    cond,
    noise: torch.Tensor,
    times: list[float],
    *,
    sampler: str = "euler",
    seeds: list[int] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Run the student from ``noise`` through ``times``; return (clean samples, times really used).

    At each time the generator predicts x0; the sample moves to the next time by
    :func:`senseflow.distill.renoise_step` (``euler``: deterministic; ``x0``: fresh noise from
    per-prompt ``seeds``, so batch composition never changes an image). The last step
    returns the x0 estimate.
    """
    if sampler not in SAMPLERS:
        raise UserError(f"unknown student sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if sampler == "x0" and seeds is None:
        raise ValueError("the x0 sampler needs per-prompt seeds for its fresh noise")
    x, used = noise.float(), []
    b = x.shape[0]
    for i, t in enumerate(times):
        tt = torch.full((b,), float(t), device=x.device)
        used.append(float(t))
        x0 = backbone.x0(x, backbone.predict(x, tt, cond), tt)
        if i == len(times) - 1:
            return x0, used
        fresh = None
        if sampler == "x0":
            step_seeds = [prompt_seed(s, f"renoise-{i}") for s in seeds]
            fresh = prompt_noise(step_seeds, tuple(x.shape[1:])).to(x.device)
        nxt = torch.full((b,), float(times[i + 1]), device=x.device)
        x = renoise_step(backbone, x, x0, tt, nxt, sampler=sampler, noise=fresh)
    return x, used
