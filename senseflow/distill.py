"""The terms of one SenseFlow iteration over the :class:`~senseflow.backbones.base.Backbone` protocol.

Each function takes backbones (teacher, generator, fake score model), tensors and a
``torch.Generator`` and returns a loss or the inputs of one; the loop in
:mod:`senseflow.train` owns the networks, optimisers and bookkeeping. The maths are the
pure losses of :mod:`senseflow.losses`; here they meet the models (method.md sections 1-5).
Time ``t`` is the backbone's time in [0, 1] (flow sigma; DDPM index / 999).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from senseflow.backbones.base import Backbone
from senseflow.conditioning import PromptEmbeds
from senseflow.discriminator.fake_head import FakeFeatureHead
from senseflow.losses import (
    d_loss_parts,
    dmd_loss,
    fake_score_loss,
    gan_losses,
    gan_weight,
    isg_loss,
    isg_loss_ddim,
    sample_isg_mid,
)
from senseflow.schedules import TimeDensity


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _randn(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    # draw on the generator's device (CPU) so a run is reproducible whatever the accelerator
    return torch.randn(shape, generator=gen).to(like.device)


def noise_coefficients(backbone: Backbone, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``add_noise(x0, eps, t) = a x0 + b eps``, read off the backbone's own forward process.

    Flow: ``(1 - s, s)``; DDPM: ``(sqrt(ab), sqrt(1 - ab))``. Reading them through
    :meth:`add_noise` keeps one definition of each family's process.
    """
    shape = (t.shape[0],) + (1,) * (ndim - 1)
    one, zero = torch.ones(shape, device=t.device), torch.zeros(shape, device=t.device)
    return backbone.add_noise(one, zero, t), backbone.add_noise(zero, one, t)


def eps_from_x0(backbone: Backbone, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The noise implied by ``x_t`` and a clean estimate: ``(x_t - a x0) / b`` (undefined at t = 0)."""
    a, b = noise_coefficients(backbone, t, x_t.ndim)
    return (x_t.float() - a * x0.float()) / b


def renoise_step(
    backbone: Backbone,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    *,
    sampler: str,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move a sample from ``t`` to ``t_next`` given its clean estimate ``x0`` (method.md section 6).

    ``"euler"``: deterministic, re-noise with the implied noise; for flow models this is
    exactly the Euler step of the ODE, for DDPM models the DDIM (eta = 0) step.
    ``"x0"``: DMD2's sampler, re-noise ``x0`` with fresh ``noise``.
    """
    if sampler == "euler":
        eps = eps_from_x0(backbone, x_t, x0, t)
    elif sampler == "x0":
        if noise is None:
            raise ValueError("the x0 sampler needs fresh noise")
        eps = noise
    else:
        raise ValueError(f"unknown student sampler {sampler!r}; expected 'euler' or 'x0'")
    return backbone.add_noise(x0, eps, t_next)


@dataclass
class GeneratorInputs:
    """What the generator denoises in one iteration (one row per sample)."""

    x: torch.Tensor  # noisy input at the anchor
    t: torch.Tensor  # (B,) anchor time
    t_next: torch.Tensor  # (B,) next anchor, 0 after the last
    k: torch.Tensor  # (B,) anchor index
    simulated: torch.Tensor  # (B,) bool: input made by backward simulation


@torch.no_grad()
def generator_inputs(
    generator: Backbone,
    x_real: torch.Tensor,
    cond: PromptEmbeds,
    anchors: list[float],
    *,
    backward_simulation_prob: float,
    gen: torch.Generator,
    same_calls_on_every_rank: bool = False,
) -> GeneratorInputs:
    """Inputs of the generator: each sample at a uniformly drawn anchor (DMD2 / SenseFlow).

    With probability ``backward_simulation_prob`` a sample is made by *backward simulation*:
    the student itself runs from pure noise through the anchors before its own, re-noising
    its x0 estimate to the next anchor with fresh noise each time, so it trains on the inputs
    it will see at inference; otherwise the real latent ``x_real`` is forward-noised to the
    anchor. At the first anchor the input is pure noise either way.

    ``same_calls_on_every_rank``: under FSDP every forward is a collective, so the number
    of simulation calls must not depend on this rank's draws: the whole batch then runs
    through all ``len(anchors) - 1`` simulation steps (the mask picks the results).
    """
    b = x_real.shape[0]
    times = torch.tensor([*anchors, 0.0], dtype=torch.float32, device=x_real.device)
    k = torch.randint(len(anchors), (b,), generator=gen).to(x_real.device)
    simulated = (torch.rand(b, generator=gen) < backward_simulation_prob).to(x_real.device) & (k > 0)
    eps = _randn(x_real.shape, gen, x_real)
    x = generator.add_noise(x_real, eps, times[k])
    x = torch.where((k == 0).view(-1, *[1] * (x.ndim - 1)), eps, x)
    if same_calls_on_every_rank and len(anchors) > 1:
        idx = torch.arange(b, device=x.device)
        ks = torch.where(simulated, k, torch.zeros_like(k))
        x_sim = _simulate(generator, cond, times, ks, _randn(x.shape, gen, x), len(anchors) - 1, gen)
        x = torch.where(simulated.view(-1, *[1] * (x.ndim - 1)), x_sim.to(x.dtype), x)
    elif bool(simulated.any()):
        idx = simulated.nonzero().squeeze(1)
        ks = k[idx]
        xs = _randn((len(idx), *x.shape[1:]), gen, x)
        x[idx] = _simulate(generator, cond.index(idx), times, ks, xs, int(ks.max()), gen).to(x.dtype)
    return GeneratorInputs(x=x, t=times[k], t_next=times[k + 1], k=k, simulated=simulated)


def _simulate(generator, cond, times, ks, xs, steps: int, gen) -> torch.Tensor:
    """Run the student from noise ``xs`` through ``steps`` anchors; row i stops at anchor ``ks[i]``."""
    n = xs.shape[0]
    for j in range(steps):
        t = times[j].expand(n)
        x0 = generator.x0(xs, generator.predict(xs, t, cond), t)
        nxt = generator.add_noise(x0, _randn(xs.shape, gen, xs), times[j + 1].expand(n))
        xs = torch.where((ks > j).view(-1, *[1] * (xs.ndim - 1)), nxt, xs)
    return xs


def dmd_term(
    teacher: Backbone,
    fake: Backbone,
    x0_g: torch.Tensor,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None,
    *,
    t_density: TimeDensity,
    cfg: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """DMD loss of the generator's clean samples ``x0_g`` (Yin et al. 2024; method.md section 1).

    Re-noise ``x0_g`` at ``t ~ t_density`` (shifted by the teacher's shift if the density
    says so); the guided teacher (scale ``cfg`` per sample) and the unguided fake model each
    give an x0 estimate without gradient; the gradient on ``x0_g`` is their normalised
    difference (:func:`senseflow.losses.dmd_loss`).
    """
    b = x0_g.shape[0]
    t = t_density.sample(b, shift=teacher.shift, generator=gen).to(x0_g.device)
    x_t = teacher.add_noise(x0_g.detach(), _randn(x0_g.shape, gen, x0_g), t)
    with torch.no_grad():
        x0_real = teacher.x0(x_t, teacher.guided_predict(x_t, t, cond, uncond, cfg), t)
        x0_fake = fake.x0(x_t, fake.predict(x_t, t, cond), t)
    return dmd_loss(x0_g, x0_real, x0_fake)


def fake_term(
    fake: Backbone,
    x0: torch.Tensor,
    cond: PromptEmbeds,
    *,
    gen: torch.Generator,
    t_density: TimeDensity | None = None,
) -> torch.Tensor:
    """Denoising loss of the fake score model on detached generator samples (method.md section 1).

    Times ``t ~ t_density`` (default: logit-normal shifted by the backbone's shift); flow
    families regress the velocity, epsilon families the noise.
    """
    b = x0.shape[0]
    density = t_density or TimeDensity(density="logit_normal", shifted=True)
    t = density.sample(b, shift=fake.shift, generator=gen).to(x0.device)
    eps = _randn(x0.shape, gen, x0)
    x_t = fake.add_noise(x0.detach(), eps, t)
    return fake_score_loss(fake.prediction, fake.predict(x_t, t, cond), x0.detach(), eps)


def _reuse_first(x_anchor: torch.Tensor, pred_anchor: torch.Tensor, fn: Callable) -> Callable:
    """A model callable answering the call on ``x_anchor`` with the already computed prediction.

    ISG's direct generator step ``tau -> tau_prev`` needs the generator's prediction at the
    anchor input, which the DMD term computed already (with gradient): reusing it is why
    ISG costs only a teacher call and a no-grad generator call (paper: 3-6%).
    """

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return pred_anchor if x is x_anchor else fn(x, t)

    return call


def isg_term(
    teacher: Backbone,
    generator: Backbone,
    inputs: GeneratorInputs,
    pred_g: torch.Tensor,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None,
    *,
    cfg: torch.Tensor,
    margin: float,
    distance: str,
    gen: torch.Generator,
    margin_units: str = "unshifted",
) -> torch.Tensor:
    """Intra-Segment Guidance loss for the iteration's anchor inputs (method.md section 3).

    ``t_mid`` is drawn ``margin`` inside the segment in ``margin_units``: ``"unshifted"``
    time of the backbone's shift (released SD 3.5) or raw ``"sigma"`` (released FLUX).

    Flow backbones: :func:`senseflow.losses.isg_loss` (Euler). Epsilon backbones:
    :func:`senseflow.losses.isg_loss_ddim` on the adapter's integer timesteps (the last
    segment ends at the clean image, index -1). ``pred_g`` is the generator's prediction at
    ``inputs.x`` with gradient.
    """
    x, t, t_next = inputs.x, inputs.t, inputs.t_next
    if margin_units not in ("unshifted", "sigma"):
        raise ValueError(f"ISG margin_units must be 'unshifted' or 'sigma', got {margin_units!r}")
    shift = generator.shift if margin_units == "unshifted" and generator.prediction == "flow" else 1.0
    mid = sample_isg_mid(t, t_next, margin, generator=gen, shift=shift)

    def teacher_fn(xx: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return teacher.guided_predict(xx, tt, cond, uncond, cfg)

    def generator_fn(xx: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return generator.predict(xx, tt, cond)

    if generator.prediction == "flow":
        return isg_loss(x, t, t_next, mid, teacher_fn, _reuse_first(x, pred_g, generator_fn), distance)
    index = generator.timestep_index  # epsilon adapters map t <-> DDPM index
    k, k_prev = index(t), torch.where(t_next > 0, index(t_next), torch.full_like(index(t), -1))
    k_mid = torch.minimum(torch.maximum(index(mid), k_prev + 1), k)

    def by_index(fn: Callable) -> Callable:
        return lambda xx, kk: fn(xx, generator.index_to_t(kk))

    return isg_loss_ddim(
        x, k, k_prev, k_mid, generator.alphas_cumprod,
        by_index(teacher_fn), _reuse_first(x, pred_g, by_index(generator_fn)), distance,
    )  # fmt: skip


# ----------------------------------------------------------------------------- adversarial
def vfm_generator_gan(
    discriminator: nn.Module,
    generator: Backbone,
    x0_g: torch.Tensor,
    text: torch.Tensor,
    real_images: torch.Tensor,
    t_anchor: torch.Tensor,
    *,
    curve: str,
    loss: str,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator's adversarial term against the VFM discriminator, ``w(t) * L_adv`` (method.md section 4).

    The clean latent is decoded with gradient (the VAE for latent models), scored with the
    discriminator's text condition ``text`` (``VFMDiscriminator.text_condition``: CLIP
    ViT-L/14 features of the prompt) and the paired real image as conditions, weighted per
    sample by the GAN curve of the anchor the sample came from. Returns ``(loss, decoded images)``.
    """
    images = generator.codec.decode(x0_g)
    logits = discriminator(images, text, real_images, gen)
    g_loss, _ = gan_losses(loss)
    w = gan_weight(t_anchor, curve, generator.shift, alpha_bar=getattr(generator, "alpha_bar", None))
    return g_loss(logits, w.to(logits.device)), images


def vfm_discriminator_step(
    discriminator: nn.Module,
    fake_images: torch.Tensor,
    real_images: torch.Tensor,
    text: torch.Tensor,
    *,
    loss: str,
    gen: torch.Generator,
    scale: float = 1.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Backpropagate ``scale`` times the discriminator loss on real vs detached generated images.

    ``weight`` (B,): per-sample w(t) of the anchor each generated image came from, applied to
    both parts (the released code weights D's real and fake terms by the generator's w(t)).

    Real and generated images go through the discriminator in two forward passes, each
    followed by its backward (the released code's order): the heads' BatchNorm sees a
    fake-only batch here just as in the generator's step, so a fake's logit never depends
    on the real images beside it. Both are conditioned on ``text`` (the discriminator's text
    condition of the prompts) and on the paired real image. Returns the
    loss (detached); the gradients are accumulated in the discriminator's parameters.
    """
    real_part, fake_part = d_loss_parts(loss)
    real_logits = discriminator(real_images, text, real_images, gen)
    w = None if weight is None else weight.to(real_logits.device)
    real = real_part(real_logits, w)
    (scale * real).backward()
    fake = fake_part(discriminator(fake_images.detach(), text, real_images, gen), w)
    (scale * fake).backward()
    return (real + fake).detach()


def fake_features_gan(
    head: FakeFeatureHead,
    fake: Backbone,
    x0: torch.Tensor,
    cond: PromptEmbeds,
    *,
    t_range: tuple[float, float],
    loss: str,
    gen: torch.Generator,
) -> torch.Tensor:
    """Generator's adversarial term through DMD2's head: noise ``x0`` (with gradient) and score it."""
    t = _uniform(x0.shape[0], *t_range, gen).to(x0.device)
    x_t = fake.add_noise(x0, _randn(x0.shape, gen, x0), t)
    g_loss, _ = gan_losses(loss)
    return g_loss(head.logits(fake, x_t, t, cond))


def fake_features_discriminator_loss(
    head: FakeFeatureHead,
    fake: Backbone,
    x0_fake: torch.Tensor,
    x0_real: torch.Tensor,
    cond: PromptEmbeds,
    *,
    t_range: tuple[float, float],
    loss: str,
    gen: torch.Generator,
) -> torch.Tensor:
    """DMD2's classifier loss: real and generated latents noised to one t, scored via the fake model."""
    b = x0_fake.shape[0]
    t = _uniform(b, *t_range, gen).to(x0_fake.device)
    eps = _randn(x0_fake.shape, gen, x0_fake)
    _, d_loss = gan_losses(loss)
    real = head.logits(fake, fake.add_noise(x0_real, eps, t), t, cond)
    fake_logits = head.logits(fake, fake.add_noise(x0_fake.detach(), eps, t), t, cond)
    return d_loss(real, fake_logits)
