"""The latent codec of the real teachers: a diffusers ``AutoencoderKL`` with its latent normalisation."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


class VaeCodec:
    """:class:`~senseflow.backbones.base.LatentCodec` over an ``AutoencoderKL``.

    Latents are ``(z - shift_factor) * scaling_factor`` (SD3 and FLUX have a shift, SDXL
    none), which is what the denoisers were trained on. The VAE is frozen and kept in
    float32 whatever the teacher's dtype: SDXL's VAE overflows in float16 (its config says
    ``force_upcast``), and the generator's images are decoded *with* gradient for the GAN,
    where half precision would also cost the gradient its accuracy. It is small (84 M
    parameters), so the memory this costs is minor.
    """

    def __init__(self, vae: AutoencoderKL):
        # converted in place: a pipeline that shares this VAE sees it in float32 too
        self.vae = vae.to(torch.float32).eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.shift_factor or 0.0)
        # each encoder block but the last halves the resolution
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> normalised latents, float32.

        Uses the posterior mean rather than a sample: deterministic, so cached latents do
        not depend on a seed (the posterior's spread is tiny for these VAEs).
        """
        z = self.vae.encode(images.to(torch.float32)).latent_dist.mode()
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images (B, 3, H, W), float32, nominally in [-1, 1].

        Differentiable in ``latents`` and not clamped (clamping would zero the gradient of
        saturated pixels); clamp before saving.
        """
        z = latents.to(torch.float32) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample
