"""The one protocol every model family implements.

The distillation loop, the samplers and the generation code only talk to a
:class:`Backbone`; family differences (flow vs epsilon prediction, text
encoders, latent packing, guidance embeddings) live in the adapters.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch

from senseflow.world.text import PromptEmbeds

Prediction = Literal["flow", "epsilon"]


@runtime_checkable
class PromptEncoder(Protocol):
    """Turns prompts into the conditioning a backbone expects."""

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        """Embed a batch of prompts (``""`` is the unconditional prompt)."""
        ...


@runtime_checkable
class LatentCodec(Protocol):
    """Maps images in [-1, 1] to the space the backbone denoises, and back."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [-1, 1]."""
        ...


class IdentityCodec:
    """Pixel-space models (the embedded world): latents are the images."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Return ``images`` unchanged."""
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Return ``latents`` unchanged."""
        return latents


@runtime_checkable
class Backbone(Protocol):
    """A denoiser with its noise schedule, conditioning and guidance.

    Time is always given as the flow sigma in [0, 1] (1 = pure noise); epsilon
    adapters map it to their discrete DDPM index internally.
    """

    prediction: Prediction
    shift: float
    text: PromptEncoder
    codec: LatentCodec

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Forward process of this family at noise level ``sigma``."""
        ...

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds) -> torch.Tensor:
        """One network evaluation, returned as a flow velocity (float32)."""
        ...

    def guided_velocity(
        self,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None,
        scale: float | torch.Tensor,
    ) -> torch.Tensor:
        """Velocity with classifier-free guidance (one batched call of cond and uncond)."""
        ...

    def x0(self, x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Clean estimate from a velocity."""
        ...
