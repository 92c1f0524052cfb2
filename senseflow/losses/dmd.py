"""Distribution matching loss of the generator (DMD, Yin et al. 2024; SenseFlow method.md section 1).

The DMD gradient of ``KL(p_g || p_r)`` with respect to the generator's sample ``x`` is the
difference of the fake and real scores at a noised copy of ``x``; written in x0 space it is
``x0_fake - x0_real`` (Yin et al. 2024, DMD, "distribution matching loss"), divided by the
per-sample normaliser ``mean |x - x0_real|`` (DMD's weighting of that gradient). It is applied
through a surrogate MSE whose gradient is exactly that vector, so any optimiser and gradient
clipping see it like an ordinary loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Floor of the per-sample normaliser: a sample already equal to the teacher's estimate would
# otherwise divide by zero. Small enough never to bind on real latents (|x - x0| ~ 1e-2..1).
NORMALISER_EPS = 1e-6


def dmd_gradient(
    x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, eps: float = NORMALISER_EPS
) -> torch.Tensor:
    """The normalised DMD gradient ``(x0_fake - x0_real) / mean_{C,H,W} |x - x0_real|`` (no grad).

    DMD (Yin et al. 2024): the distribution matching gradient with its per-sample weighting,
    as used by DMD2 and SenseFlow (Ge et al. 2026, arXiv 2506.00523; method.md section 1).
    Computed in float32 or better whatever the input dtype. Guards, chosen so that a bad
    sample contributes nothing rather than poisoning the whole batch:

    - the normaliser is clamped below at ``eps`` (a zero normaliser would give inf);
    - any non-finite entry of the result (NaN/inf in the normaliser or in the estimates)
      is replaced by 0, i.e. that element receives no DMD gradient.
    """
    if x.ndim < 2:
        raise ValueError(f"x must be batched (B, ...), got shape {tuple(x.shape)}")
    if x0_real.shape != x.shape or x0_fake.shape != x.shape:
        raise ValueError(
            f"shapes differ: x {tuple(x.shape)}, x0_real {tuple(x0_real.shape)}, "
            f"x0_fake {tuple(x0_fake.shape)}"
        )
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.no_grad():
        xf, real, fake = (t.detach().to(dtype) for t in (x, x0_real, x0_fake))
        dims = tuple(range(1, x.ndim))
        # clamp_min keeps NaN as NaN; the nan_to_num below catches it
        w = (xf - real).abs().mean(dim=dims, keepdim=True).clamp_min(eps)
        grad = (fake - real) / w
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(
    x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, eps: float = NORMALISER_EPS
) -> torch.Tensor:
    """DMD generator loss ``0.5 * mse(x, stopgrad(x - grad))``, a float32 (or better) scalar.

    DMD2 (Yin et al. 2024) / SenseFlow (Ge et al. 2026, arXiv 2506.00523), L_DMD: with
    ``grad`` from :func:`dmd_gradient`, ``d loss / d x == grad / x.numel()``, so gradient
    descent moves ``x`` towards the teacher's x0 estimate and away from the fake model's.
    ``x0_real`` and ``x0_fake`` are treated as constants (they come from no-grad passes).
    Half-precision inputs are promoted: the surrogate's residual ``x - (x - grad)`` would
    lose most of ``grad``'s bits in bf16.
    """
    grad = dmd_gradient(x, x0_real, x0_fake, eps)
    xf = x.to(grad.dtype)  # differentiable cast: the gradient flows back in x's own dtype
    target = (xf - grad).detach()
    return 0.5 * F.mse_loss(xf, target, reduction="mean")
