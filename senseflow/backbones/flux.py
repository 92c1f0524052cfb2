"""FLUX.1 dev adapter: ``FluxTransformer2DModel`` (flow prediction, guidance embedding), CLIP-L + T5.

At the protocol the latents stay unpacked ``(B, C, H, W)``; the adapter packs 2x2 patches
into tokens, builds the rotary position ids and unpacks the output, with FluxPipeline's own
helpers. FLUX dev is guidance-distilled: the teacher's guidance is an input of the network
(``guidance = "embedded"``), not a second pass. The student and the fake score model are
unguided: :meth:`FluxBackbone.trainable_copy` removes the guidance embedder.

Timesteps: FluxPipeline passes ``timestep / 1000``, i.e. the sigma itself, and the
transformer multiplies it (and the guidance) by 1000 inside; so does this adapter.
"""

from __future__ import annotations

import copy

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings

from senseflow.backbones.base import LatentCodec, PromptEncoder
from senseflow.backbones.conversions import flow_add_noise, flow_x0_from_velocity
from senseflow.backbones.guidance import is_unit_scale, per_sample
from senseflow.backbones.prompts import PipelinePromptEncoder
from senseflow.backbones.shift import resolution_mu, scheduler_shift
from senseflow.backbones.vae import VaeCodec
from senseflow.conditioning import PromptEmbeds
from senseflow.config import PretrainedConfig
from senseflow.errors import UserError

GUIDANCE_PREFIX = "time_text_embed.guidance_embedder."


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): one token per 2x2 patch (FluxPipeline's packing)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX packs 2x2 patches: latent size {h}x{w} must be even")
    return FluxPipeline._pack_latents(latents.contiguous(), b, c, h, w)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a ``height`` x ``width`` latent."""
    # FluxPipeline's helper takes pixel sizes and the VAE factor; latent sizes with factor 1
    return FluxPipeline._unpack_latents(tokens, height, width, 1)


def image_seq_len(resolution: int, vae_factor: int) -> int:
    """Number of packed image tokens for square images of ``resolution`` px (4096 at 1024 px)."""
    return (resolution // vae_factor // 2) ** 2


def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """Rotary position ids (row, column) of the packed tokens of a ``height`` x ``width`` latent."""
    return FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, device, dtype)


def drop_guidance_embedding(transformer: FluxTransformer2DModel) -> FluxTransformer2DModel:
    """Turn a guidance-embedded transformer into an unguided one, in place, keeping every other weight.

    The time-text embedding becomes diffusers' unguided ``CombinedTimestepTextProjEmbeddings``
    holding the same timestep and text tensors, and the config says ``guidance_embeds=False``,
    so ``save_pretrained`` / ``from_pretrained`` give back the same unguided model. Raises
    if anything other than the guidance embedder's keys would change.
    """
    before = set(transformer.state_dict())
    old = transformer.time_text_embed
    kept = {k: v for k, v in old.state_dict().items() if not k.startswith("guidance_embedder.")}
    with torch.device("meta"):
        new = CombinedTimestepTextProjEmbeddings(
            embedding_dim=transformer.inner_dim,
            pooled_projection_dim=transformer.config.pooled_projection_dim,
        )
    # strict: the unguided embedding must take exactly the kept tensors (assign: no new memory)
    new.load_state_dict(kept, strict=True, assign=True)
    transformer.time_text_embed = new
    transformer.register_to_config(guidance_embeds=False)
    after = set(transformer.state_dict())
    dropped, added = before - after, after - before
    if added or not dropped or any(not k.startswith(GUIDANCE_PREFIX) for k in dropped):
        changed = f"-{sorted(dropped)} +{sorted(added)}"
        raise RuntimeError(f"dropping the guidance embedding changed other keys: {changed}")
    return transformer


class FluxTextEncoder(PipelinePromptEncoder):
    """FLUX's conditioning, via ``FluxPipeline.encode_prompt``.

    ``hidden``: the T5 encoder's ``max_sequence_length`` token states (4096 channels for
    FLUX); ``pooled``: CLIP-L's pooled output (768).
    """

    TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")

    def __init__(self, pipeline: FluxPipeline, max_sequence_length: int = 512):
        super().__init__(pipeline)
        self.max_sequence_length = max_sequence_length

    def embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, L, D_t5), pooled (B, D_clip))."""
        hidden, pooled, _ = self.pipeline.encode_prompt(
            prompts,
            None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        return hidden, pooled


class FluxBackbone:
    """:class:`~senseflow.backbones.base.Backbone` for FLUX transformers (velocity, sigma time).

    ``shift`` is the sigma shift FluxPipeline's scheduler applies at the configured
    resolution (``exp(mu)``); :meth:`mu` and :meth:`shift_at` give it for another
    resolution. A guidance-embedded network evaluated by :meth:`predict` (no scale given)
    gets ``default_guidance``, 1.0 unless set: the counterpart of CFG scale 1.
    """

    prediction = "flow"
    guidance = "embedded"

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        text: PromptEncoder,
        codec: LatentCodec,
        *,
        scheduler_config,
        shift: float,
        default_guidance: float = 1.0,
    ):
        self.transformer = transformer
        self.text = text
        self.codec = codec
        self.scheduler_config = scheduler_config
        self.shift = shift
        self.default_guidance = default_guidance

    @property
    def network(self) -> FluxTransformer2DModel:
        """The denoiser (what the distillation loop copies and trains)."""
        return self.transformer

    @property
    def embeds_guidance(self) -> bool:
        """Whether the network takes a guidance input (the teacher) or not (trainable copies)."""
        return bool(self.transformer.config.guidance_embeds)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the network weights (inputs are cast to it)."""
        return next(self.transformer.parameters()).dtype

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(C, H, W) of the unpacked latents for square images of ``resolution`` px (H, W even)."""
        size = resolution // self.codec.scale_factor
        if size % 2:
            raise ValueError(f"FLUX needs an even latent size: {resolution} px gives {size}")
        return (self.transformer.config.in_channels // 4, size, size)

    def mu(self, resolution: int) -> float:
        """FluxPipeline's ``mu`` at ``resolution`` px (pass it to the scheduler's ``set_timesteps``)."""
        return resolution_mu(self.scheduler_config, image_seq_len(resolution, self.codec.scale_factor))

    def shift_at(self, resolution: int) -> float:
        """The constant sigma shift the scheduler applies at ``resolution`` px (``exp(mu)``)."""
        return scheduler_shift(self.scheduler_config, image_seq_len(resolution, self.codec.scale_factor))

    def trainable_copy(self) -> FluxTransformer2DModel:
        """A deep copy of the transformer without the guidance embedder, gradients on, train mode."""
        net = copy.deepcopy(self.transformer)
        if net.config.guidance_embeds:
            net = drop_guidance_embedding(net)
        return net.train().requires_grad_(True)

    def with_network(self, network: FluxTransformer2DModel) -> FluxBackbone:
        """The same text encoders, VAE and schedule around another transformer."""
        return FluxBackbone(
            network,
            self.text,
            self.codec,
            scheduler_config=self.scheduler_config,
            shift=self.shift,
            default_guidance=self.default_guidance,
        )

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``x_t = (1 - s) x0 + s eps``."""
        return flow_add_noise(x0, eps, sigma)

    def x0(self, x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``x0 = x_t - s v``."""
        return flow_x0_from_velocity(x_t, v, sigma)

    def _forward(
        self, x_t: torch.Tensor, sigma, cond: PromptEmbeds, guidance: float | torch.Tensor | None
    ) -> torch.Tensor:
        """One transformer call on unpacked latents; velocity, unpacked, float32."""
        height, width = x_t.shape[-2:]
        dt = self.dtype
        out = self.transformer(
            hidden_states=pack_latents(x_t).to(dt),
            encoder_hidden_states=cond.hidden.to(dt),
            pooled_projections=cond.pooled.to(dt),
            timestep=per_sample(sigma, x_t),
            guidance=None if guidance is None else per_sample(guidance, x_t),
            # ids in the network dtype, as FluxPipeline builds them; text tokens all sit at 0
            img_ids=image_ids(height, width, x_t.device, dt),
            txt_ids=torch.zeros(cond.hidden.shape[1], 3, device=x_t.device, dtype=dt),
            return_dict=False,
        )[0]
        return unpack_latents(out.float(), height, width)

    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds) -> torch.Tensor:
        """Velocity of one call; a guidance-embedded network gets ``default_guidance``."""
        return self._forward(x_t, sigma, cond, self.default_guidance if self.embeds_guidance else None)

    def guided_predict(
        self,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None,
        scale: float | torch.Tensor,
    ) -> torch.Tensor:
        """Velocity at guidance ``scale`` (scalar or per sample) through the guidance embedding.

        One call; ``uncond`` is ignored (FLUX dev was distilled to take guidance as an input).
        An unguided network (a trainable copy) only accepts ``scale == 1``.
        """
        if not self.embeds_guidance:
            if is_unit_scale(scale):
                return self.predict(x_t, sigma, cond)
            raise ValueError("this FLUX network has no guidance embedding (a trainable copy): use scale 1")
        return self._forward(x_t, sigma, cond, scale)


def flux_backbone(pipeline: FluxPipeline, cfg: PretrainedConfig) -> FluxBackbone:
    """The FLUX.1 dev adapter over a loaded pipeline; shift from ``cfg.shift`` or at ``cfg.resolution``."""
    if cfg.max_sequence_length > 512:
        raise UserError(f"FLUX's T5 reads at most 512 tokens, not {cfg.max_sequence_length}")
    codec = VaeCodec(pipeline.vae)
    shift = cfg.shift
    if shift is None:
        shift = scheduler_shift(pipeline.scheduler.config, image_seq_len(cfg.resolution, codec.scale_factor))
    return FluxBackbone(
        pipeline.transformer,
        FluxTextEncoder(pipeline, cfg.max_sequence_length),
        codec,
        scheduler_config=pipeline.scheduler.config,
        shift=shift,
    )
