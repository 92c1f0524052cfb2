"""The VFM discriminator: frozen taps + one trainable head per map (SenseFlow, method.md section 4).

SenseFlow (Ge et al., ICLR 2026, arXiv 2506.00523) judges the generator's decoded images
with a frozen vision foundation model and light trainable heads, conditioned on the prompt's
text embedding and on the paired real image's features, with DiffAugment on the input and
hinge losses (:mod:`senseflow.losses.adversarial`), in the DMD2 manner (Yin et al. 2024).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Model

from senseflow.config import GANConfig
from senseflow.discriminator.diffaug import DIFFAUG_POLICIES, check_policy, diffaugment
from senseflow.discriminator.head import DiscriminatorHead
from senseflow.discriminator.taps import Dinov2Taps, FeatureTaps, ProbeTaps, dinov2_hidden_state_indices
from senseflow.errors import UserError
from senseflow.world.probes import AttributeProbe


class VFMDiscriminator(nn.Module):
    """Frozen feature taps, one :class:`DiscriminatorHead` per tapped map, a text projection.

    The maps' shapes are found by one dry run of ``taps`` at ``image_size``. Each head's
    condition is ``[text_proj(text_embedding), pooled real features of its map]``
    (``text_projection_dim + C_i`` wide). ``forward`` returns one (B, N) tensor: every head's
    logit map flattened and concatenated (projected GAN / StyleGAN-T), so the hinge losses
    average over all logits of all heads, a large map weighing more than a small one;
    :meth:`logit_maps` gives the maps. In training mode the input (not the conditioning
    image) goes through ``diffaug`` first; in eval mode it is scored as it is.
    """

    def __init__(
        self,
        taps: FeatureTaps,
        text_dim: int,
        *,
        image_size: int,
        text_projection_dim: int = 64,
        diffaug: Sequence[str] = DIFFAUG_POLICIES,
        width: int = 64,
    ):
        super().__init__()
        if not isinstance(taps, nn.Module):
            raise TypeError(f"taps must be an nn.Module (ProbeTaps, Dinov2Taps), got {type(taps).__name__}")
        self.taps = taps
        self.diffaug = check_policy(diffaug)
        self.text_dim = text_dim
        self.text_proj = nn.Linear(text_dim, text_projection_dim)
        ref = next(taps.parameters(), None)
        dummy = torch.zeros(1, 3, image_size, image_size, device=ref.device if ref is not None else None)
        with torch.no_grad():  # the heads' depth depends on the map sizes, known only by running the taps
            shapes = [tuple(m.shape[1:]) for m in taps(dummy)]
        self.heads = nn.ModuleList(
            DiscriminatorHead(c, text_projection_dim + c, width, in_size=(h, w)) for c, h, w in shapes
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The heads' and the text projection's parameters: all that the D optimiser may update."""
        return [*self.heads.parameters(), *self.text_proj.parameters()]

    @torch.no_grad()
    def reference_features(self, real_images: torch.Tensor) -> list[torch.Tensor]:
        """Per tap, the paired real images' features pooled over space and L2-normalised, (B, C_i).

        No gradient: the real image is a condition, not something D or G optimise. Unit norm
        because the backbones' activation scale differs by orders of magnitude between layers.
        """
        return [F.normalize(m.float().mean(dim=(2, 3)), dim=1) for m in self.taps(real_images)]

    def logit_maps(
        self,
        images: torch.Tensor,
        text_embedding: torch.Tensor,
        real_images_for_conditioning: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """One logit map (B, 1, h_i, w_i) per head, h_i, w_i <= 10.

        ``images`` (B, 3, H, W) in [-1, 1]; ``text_embedding`` (B, text_dim), the prompt's
        pooled embedding; ``real_images_for_conditioning`` (B, 3, H, W), the real image paired
        with each prompt (None: that part of the condition is zero); ``generator`` drives
        DiffAugment.
        """
        b = images.shape[0]
        if text_embedding.shape != (b, self.text_dim):
            raise ValueError(
                f"text_embedding must be ({b}, {self.text_dim}), got {tuple(text_embedding.shape)}"
            )
        if real_images_for_conditioning is not None and real_images_for_conditioning.shape[0] != b:
            raise ValueError(f"{real_images_for_conditioning.shape[0]} conditioning images for {b} images")
        dtype = self.text_proj.weight.dtype
        text = self.text_proj(text_embedding.to(dtype))
        if self.training and self.diffaug:
            images = diffaugment(images, self.diffaug, generator)
        maps = self.taps(images)
        if real_images_for_conditioning is not None:
            refs = self.reference_features(real_images_for_conditioning)
        else:
            refs = [text.new_zeros(b, m.shape[1]) for m in maps]
        return [
            head(m.to(dtype), torch.cat([text, r.to(dtype)], dim=1))
            for head, m, r in zip(self.heads, maps, refs, strict=True)
        ]

    def forward(
        self,
        images: torch.Tensor,
        text_embedding: torch.Tensor,
        real_images_for_conditioning: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """All heads' logits flattened and concatenated, (B, N); arguments as :meth:`logit_maps`."""
        maps = self.logit_maps(images, text_embedding, real_images_for_conditioning, generator)
        return torch.cat([m.flatten(1) for m in maps], dim=1)


def build_taps(gan_config: GANConfig, backbone: nn.Module, image_size: int) -> FeatureTaps:
    """The taps of ``gan_config.blocks`` on ``backbone``, checked against ``gan_config.backbone``.

    ``embedded_probe``: an :class:`AttributeProbe`, blocks index ``probe.trunk``.
    ``dinov2_*``: a :class:`Dinov2Model`, blocks are the paper's 0-based transformer blocks,
    tapped with the patch embedding (:func:`dinov2_hidden_state_indices`).
    """
    name = gan_config.backbone
    try:
        if name == "embedded_probe" and isinstance(backbone, AttributeProbe):
            return ProbeTaps(backbone, gan_config.blocks)
        if name.startswith("dinov2") and isinstance(backbone, Dinov2Model):
            return Dinov2Taps(backbone, dinov2_hidden_state_indices(gan_config.blocks), image_size)
    except ValueError as exc:
        raise UserError(f"gan.blocks {gan_config.blocks} do not fit the {name} backbone: {exc}") from exc
    raise UserError(
        f"gan.backbone is {name!r} but the model given is a {type(backbone).__name__}; "
        "expected embedded_probe with an AttributeProbe or dinov2_* with a Dinov2Model"
    )


def build_discriminator(
    gan_config: GANConfig, backbone: nn.Module, text_dim: int, *, image_size: int, width: int = 64
) -> VFMDiscriminator:
    """The profile's VFM discriminator: taps of ``gan.blocks`` on the frozen ``backbone``.

    Reads ``gan.backbone`` and ``gan.blocks`` (via :func:`build_taps`),
    ``gan.text_projection_dim`` and ``gan.diffaug``. ``image_size`` is the generator's
    decoded image side (the taps' dry run and DINOv2's input size).
    """
    return VFMDiscriminator(
        build_taps(gan_config, backbone, image_size),
        text_dim,
        image_size=image_size,
        text_projection_dim=gan_config.text_projection_dim,
        diffaug=gan_config.diffaug,
        width=width,
    )
