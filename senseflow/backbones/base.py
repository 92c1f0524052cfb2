"""The one protocol every model family implements.

The distillation loop, the samplers and the generation code only talk to a
:class:`Backbone`; family differences (flow vs epsilon prediction, text
encoders, latent packing, guidance embeddings) live in the adapters.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

from senseflow.conditioning import PromptEmbeds

Prediction = Literal["flow", "epsilon"]
Guidance = Literal["cfg", "embedded"]


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

    Time ``t`` is a float in [0, 1] everywhere, 1 = pure noise: the flow sigma for flow
    models; for epsilon (DDPM) models the discrete index divided by ``T - 1`` (the adapter
    maps it back to its integer timestep, so DDPM anchors 999, 749, 499, 249 are
    ``t = index / 999``). Predictions come back in the family's native parameterisation
    (flow: velocity ``eps - x0``; epsilon: the noise) and in float32.

    The distillation loop only talks to this protocol: it copies :attr:`network` into a
    generator and a fake score model with :meth:`trainable_copy`, wraps each copy with
    :meth:`with_network`, and calls :meth:`predict` / :meth:`guided_predict`.
    """

    prediction: Prediction
    shift: float
    text: PromptEncoder
    codec: LatentCodec
    network: nn.Module
    guidance: Guidance  # "cfg": two-pass classifier-free; "embedded": FLUX-dev guidance input

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(C, H, W) of the space the backbone denoises for square images of ``resolution`` px."""
        ...

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process of this family at time ``t`` (per sample, shape (B,))."""
        ...

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: PromptEmbeds) -> torch.Tensor:
        """One network evaluation, native parameterisation, float32."""
        ...

    def guided_predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None,
        scale: float | torch.Tensor,
    ) -> torch.Tensor:
        """Prediction with guidance ``scale`` (CFG batched in one call, or the guidance embedding)."""
        ...

    def x0(self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Clean estimate from a native prediction."""
        ...

    def trainable_copy(self) -> nn.Module:
        """A deep copy of :attr:`network` to train (generator, fake score model).

        Families with a guidance embedding (FLUX dev) drop it here: the student and the fake
        model are unguided networks.
        """
        ...

    def with_network(self, network: nn.Module) -> Backbone:
        """The same backbone (text, codec, schedule) driving another network of this family."""
        ...
