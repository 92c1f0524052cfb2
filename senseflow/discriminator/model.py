"""The VFM discriminator: frozen taps + one trainable head per map (SenseFlow, method.md section 4).

SenseFlow (Ge et al., ICLR 2026, arXiv 2506.00523) judges the generator's decoded images
with a frozen vision foundation model and light trainable heads, conditioned on the prompt's
CLIP ViT-L/14 text features and, per location, on the paired real image's features, with
DiffAugment on the input and hinge losses (:mod:`senseflow.losses.adversarial`), in the
DMD2 manner (Yin et al. 2024).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import Dinov2Model

from senseflow.conditioning import PromptEmbeds
from senseflow.config import GANConfig
from senseflow.discriminator.diffaug import DIFFAUG_POLICIES, check_policy, diffaugment
from senseflow.discriminator.head import DiscriminatorHead, ReferenceMode
from senseflow.discriminator.taps import Dinov2Taps, FeatureTaps, ProbeTaps, dinov2_hidden_state_indices
from senseflow.discriminator.text import ClipTextFeatures
from senseflow.errors import UserError
from senseflow.world.probes import AttributeProbe


class VFMDiscriminator(nn.Module):
    """Frozen feature taps and one :class:`DiscriminatorHead` per tapped map.

    The maps' shapes are found by one dry run of ``taps`` at ``image_size``. Each head is
    conditioned on the prompt's text features (``text_dim`` wide, mapped to
    ``text_projection_dim`` inside the head, 768 -> 64 in the released code) and on the
    paired real image's map of the same tap (``reference``: ``per_location``, the released
    ``refmapper``, or ``pooled`` over space). ``text_features``: the CLIP ViT-L/14 text tower
    that turns prompts into the text condition (:meth:`text_condition`); None: the caller's
    pooled prompt embedding is the text condition (the embedded world, which has no CLIP-L,
    or ``gan.text_condition: pooled``). ``forward`` returns one (B, N) tensor: every head's
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
        reference: ReferenceMode = "per_location",
        text_features: ClipTextFeatures | None = None,
    ):
        super().__init__()
        if not isinstance(taps, nn.Module):
            raise TypeError(f"taps must be an nn.Module (ProbeTaps, Dinov2Taps), got {type(taps).__name__}")
        if text_features is not None and text_features.dim != text_dim:
            raise ValueError(f"text_dim {text_dim} but the CLIP text features are {text_features.dim} wide")
        self.taps = taps
        self.diffaug = check_policy(diffaug)
        self.text_dim = text_dim
        self.reference = reference
        # a plain attribute, not a submodule: the frozen text tower is no part of D's state
        self.text_features = text_features
        ref = next(taps.parameters(), None)
        dummy = torch.zeros(1, 3, image_size, image_size, device=ref.device if ref is not None else None)
        with torch.no_grad():  # the heads' depth depends on the map sizes, known only by running the taps
            shapes = [tuple(m.shape[1:]) for m in taps(dummy)]
        self.heads = nn.ModuleList(
            DiscriminatorHead(
                c, text_dim, width, in_size=(h, w), cmap_dim=text_projection_dim, reference=reference
            )
            for c, h, w in shapes
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters (text and reference maps included): all that the D optimiser may update."""
        return list(self.heads.parameters())

    def text_condition(self, prompts: list[str], cond: PromptEmbeds) -> torch.Tensor:
        """The heads' text condition for ``prompts`` (B, text_dim), on ``cond``'s device.

        CLIP ViT-L/14 text features when the discriminator holds a CLIP text tower (the
        released conditioning); otherwise ``cond.pooled``, the prompt's pooled embedding from
        the teacher's own encoders (the embedded world's only option).
        """
        if self.text_features is None:
            return cond.pooled
        return self.text_features(prompts).to(cond.pooled.device)

    @torch.no_grad()
    def reference_maps(self, real_images: torch.Tensor) -> list[torch.Tensor]:
        """Per tap, the paired real images' feature maps (B, C_i, H_i, W_i), without gradient.

        No gradient into the taps or the image: the real image is a condition, not something D
        or G optimise (the heads' reference maps still train on these features).
        """
        return [m.float() for m in self.taps(real_images)]

    def logit_maps(
        self,
        images: torch.Tensor,
        text_embedding: torch.Tensor,
        real_images_for_conditioning: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """One logit map (B, 1, h_i, w_i) per head, h_i, w_i <= 10.

        ``images`` (B, 3, H, W) in [-1, 1]; ``text_embedding`` (B, text_dim), the text
        condition (:meth:`text_condition`); ``real_images_for_conditioning`` (B, 3, H, W),
        the real image paired with each prompt, the same size as ``images`` (None: no image
        condition); ``generator`` drives DiffAugment.
        """
        b = images.shape[0]
        if text_embedding.shape != (b, self.text_dim):
            raise ValueError(
                f"text_embedding must be ({b}, {self.text_dim}), got {tuple(text_embedding.shape)}"
            )
        if real_images_for_conditioning is not None and real_images_for_conditioning.shape[0] != b:
            raise ValueError(f"{real_images_for_conditioning.shape[0]} conditioning images for {b} images")
        dtype = next(self.heads.parameters()).dtype
        text = text_embedding.to(dtype)
        if self.training and self.diffaug:
            images = diffaugment(images, self.diffaug, generator)
        maps = self.taps(images)
        refs: list[torch.Tensor | None] = [None] * len(maps)
        if real_images_for_conditioning is not None:
            refs = [r.to(dtype) for r in self.reference_maps(real_images_for_conditioning)]
        return [head(m.to(dtype), text, r) for head, m, r in zip(self.heads, maps, refs, strict=True)]

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
    gan_config: GANConfig,
    backbone: nn.Module,
    text_dim: int | None = None,
    *,
    image_size: int,
    width: int = 64,
    text_features: ClipTextFeatures | None = None,
) -> VFMDiscriminator:
    """The profile's VFM discriminator: taps of ``gan.blocks`` on the frozen ``backbone``.

    Reads ``gan.backbone`` and ``gan.blocks`` (via :func:`build_taps`),
    ``gan.text_projection_dim``, ``gan.reference_condition`` and ``gan.diffaug``.
    ``image_size`` is the generator's decoded image side (the taps' dry run and DINOv2's
    input size). ``text_features``: the CLIP ViT-L/14 text tower of the text condition
    (real teachers with ``gan.text_condition: clip_l``; ``text_dim`` then defaults to its
    width); without it ``text_dim`` is the width of the pooled prompt embedding.
    """
    if text_dim is None:
        if text_features is None:
            raise ValueError("give text_dim (pooled embedding width) or text_features (CLIP text tower)")
        text_dim = text_features.dim
    return VFMDiscriminator(
        build_taps(gan_config, backbone, image_size),
        text_dim,
        image_size=image_size,
        text_projection_dim=gan_config.text_projection_dim,
        diffaug=gan_config.diffaug,
        width=width,
        reference=gan_config.reference_condition,
        text_features=text_features,
    )
