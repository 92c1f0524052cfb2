"""Noise schedules, sigma shifts and timestep densities (pure functions over tensors).

Flow matching convention throughout (SD3 / FLUX, diffusers): ``x_t = (1 - sigma) x0 + sigma eps``
with sigma in [0, 1], sigma = 1 pure noise. The model's "timestep" input is ``1000 * sigma``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift of SD3 (Esser et al. 2024, eq. 23): ``s' = k s / (1 + (k - 1) s)``."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def unshift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of :func:`shift_sigma`: ``s = s' / (k - (k - 1) s')``."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return sigma / (shift - (shift - 1) * sigma)


def euler_sigmas(steps: int, shift: float = 1.0) -> torch.Tensor:
    """``steps + 1`` decreasing sigmas from 1 to 0: uniform in unshifted time, then shifted.

    This is the schedule of diffusers' ``FlowMatchEulerDiscreteScheduler`` (without its
    ``1/1000`` floor), applied once: callers pass unshifted steps, never shifted sigmas.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def sample_train_sigmas(
    batch_size: int,
    *,
    density: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training sigmas from SD3's densities (diffusers ``compute_density_for_timestep_sampling``).

    ``density`` is one of ``logit_normal`` (SD3 default, Esser et al. 2024 eq. 19),
    ``mode`` or ``uniform``; the draw is then resolution-shifted by ``shift``.
    """
    # imported here: diffusers.training_utils pulls in every UNet module (~3 s), and sampling and
    # evaluation import this module for the inference schedules only
    from diffusers.training_utils import compute_density_for_timestep_sampling

    # diffusers calls the uniform density "none"
    scheme = "none" if density == "uniform" else density
    u = compute_density_for_timestep_sampling(
        weighting_scheme=scheme,
        batch_size=batch_size,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        generator=generator,
    )
    return shift_sigma(u.clamp(0.0, 1.0), shift)


TIME_DENSITIES: tuple[str, ...] = ("uniform", "logit_normal")


@dataclass(frozen=True)
class TimeDensity:
    """A density of noise times ``t`` in [0, 1] for one term of the distillation loss.

    ``uniform``: ``U(low, high)``; ``logit_normal``: ``sigmoid(N(logit_mean, logit_std))``
    (Esser et al. 2024, eq. 19) clamped into ``[low, high]``. With ``shifted`` the draw is then
    resolution-shifted by the backbone's shift (:func:`shift_sigma`; 1 for DDPM families).
    Released recipes: DMD's t on SD 3.5 is shift-3 of U(0.02, 0.98), on FLUX an unshifted
    logit-normal; the fake model's t on SD 3.5 a shifted logit-normal, on FLUX unshifted.
    """

    density: str = "uniform"
    low: float = 0.0
    high: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shifted: bool = False

    def __post_init__(self):
        if self.density not in TIME_DENSITIES:
            known = ", ".join(TIME_DENSITIES)
            raise ValueError(f"unknown time density {self.density!r}; expected one of {known}")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"time range must satisfy 0 <= low <= high <= 1, got ({self.low}, {self.high})")

    @classmethod
    def from_dict(cls, d: dict | None) -> TimeDensity:
        """From a config section's dump (``range`` as ``[low, high]``); None gives the defaults."""
        if d is None:
            return cls()
        d = dict(d)
        low, high = d.pop("range", (0.0, 1.0))
        return cls(low=float(low), high=float(high), **d)

    def sample(self, n: int, *, shift: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` times (float32, on the generator's device: CPU by default)."""
        if self.density == "uniform":
            u = self.low + (self.high - self.low) * torch.rand(n, generator=generator)
        else:
            z = self.logit_mean + self.logit_std * torch.randn(n, generator=generator)
            u = torch.sigmoid(z).clamp(self.low, self.high)
        return shift_sigma(u, shift) if self.shifted and shift != 1.0 else u
