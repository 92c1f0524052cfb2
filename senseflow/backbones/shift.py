"""The sigma shift a flow teacher's scheduler config implies, including FLUX's resolution-dependent one.

Every variant of ``FlowMatchEulerDiscreteScheduler`` these teachers use maps a uniform
sigma ``s`` to ``k s / (1 + (k - 1) s)`` (``senseflow.schedules.shift_sigma``) for one
constant ``k``: the config's ``shift`` (SD 3.5: 3.0), or with ``use_dynamic_shifting``
(FLUX) ``k = exp(mu)`` ("exponential") or ``k = mu`` ("linear"), where ``mu`` grows
linearly with the number of image tokens (diffusers' ``calculate_shift``).
"""

from __future__ import annotations

import math

from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from senseflow.errors import UserError


def resolution_mu(scheduler_config, image_seq_len: int) -> float:
    """FluxPipeline's ``mu`` for ``image_seq_len`` image tokens (4096 at 1024 px -> 1.15 for FLUX dev)."""
    return calculate_shift(
        image_seq_len,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", 1.15),
    )


def scheduler_shift(scheduler_config, image_seq_len: int) -> float:
    """The constant ``k`` the scheduler shifts sigmas by at ``image_seq_len`` image tokens."""
    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    mu = resolution_mu(scheduler_config, image_seq_len)
    # the scheduler's _time_shift_exponential / _time_shift_linear with exponent 1
    kind = scheduler_config.get("time_shift_type", "exponential")
    if kind == "exponential":
        return math.exp(mu)
    if kind == "linear":
        return mu
    raise UserError(f"unknown time_shift_type {kind!r} in the scheduler config")
