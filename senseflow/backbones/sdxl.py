"""SDXL adapter: epsilon-prediction ``UNet2DConditionModel`` on the DDPM schedule, two CLIP encoders.

Time ``t`` in [0, 1] is the DDPM index divided by ``T - 1`` (method.md's anchors 999, 749,
499, 249 are ``t = k / 999``); every method rounds it back to the integer index the UNet
was trained on, so ``add_noise``, ``predict`` and ``x0`` always agree on ``alpha_bar``.
"""

from __future__ import annotations

import copy

import torch
from diffusers import DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

from senseflow.backbones.base import LatentCodec, PromptEncoder
from senseflow.backbones.conversions import eps_add_noise, eps_x0_from_eps
from senseflow.backbones.guidance import batched_cfg, per_sample
from senseflow.backbones.prompts import PipelinePromptEncoder
from senseflow.backbones.vae import VaeCodec
from senseflow.conditioning import PromptEmbeds
from senseflow.config import PretrainedConfig
from senseflow.errors import UserError


def ddpm_alphas_cumprod(scheduler_config) -> torch.Tensor:
    """``alpha_bar`` of every DDPM timestep (float64), from a scheduler config (SDXL: scaled_linear).

    diffusers' ``DDPMScheduler`` computes the betas, so any schedule it knows (and its
    zero-terminal-SNR rescale) comes out as the teacher was trained. Only epsilon
    prediction is supported.
    """
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise UserError(f"the SDXL adapter drives epsilon-prediction UNets; this one predicts {prediction!r}")
    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.to(torch.float64)


class SDXLTextEncoder(PipelinePromptEncoder):
    """SDXL's conditioning, via ``StableDiffusionXLPipeline.encode_prompt``.

    ``hidden`` is the concatenation of both encoders' penultimate hidden states (768 + 1280
    channels for the real ones), ``pooled`` CLIP-G's projected text embedding. With the
    pipeline's ``force_zeros_for_empty_prompt`` (SDXL base sets it) the empty prompt is
    all zeros, as the pipeline's unconditional branch is.
    """

    TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")

    def __init__(self, pipeline: StableDiffusionXLPipeline):
        super().__init__(pipeline)
        self.zero_empty = bool(pipeline.config.get("force_zeros_for_empty_prompt", False))

    def embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, 77, D1 + D2), pooled (B, P)); rows of ``""`` are zeros when so configured."""
        hidden, _, pooled, _ = self.pipeline.encode_prompt(
            prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        if self.zero_empty:
            empty = torch.tensor([p == "" for p in prompts], device=hidden.device)
            hidden = hidden.masked_fill(empty[:, None, None], 0.0)
            pooled = pooled.masked_fill(empty[:, None], 0.0)
        return hidden, pooled


class SDXLBackbone:
    """:class:`~senseflow.backbones.base.Backbone` for SDXL-style UNets (epsilon prediction).

    Extra attributes for the DDIM form of ISG (``senseflow.losses.isg_loss_ddim``):
    :attr:`alphas_cumprod` (float64, length ``T``), :meth:`timestep_index` and
    :meth:`index_to_t`.
    """

    prediction = "epsilon"
    guidance = "cfg"
    shift = 1.0  # flow-sigma shift: not used by a DDPM model

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text: PromptEncoder,
        codec: LatentCodec,
        alphas_cumprod: torch.Tensor,
    ):
        self.unet = unet
        self.text = text
        self.codec = codec
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)

    @property
    def network(self) -> UNet2DConditionModel:
        """The denoiser (what the distillation loop copies and trains)."""
        return self.unet

    @property
    def num_train_timesteps(self) -> int:
        """``T``: the number of DDPM timesteps (1000 for SDXL)."""
        return self.alphas_cumprod.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the UNet weights (inputs are cast to it)."""
        return next(self.unet.parameters()).dtype

    def timestep_index(self, t: torch.Tensor | float) -> torch.Tensor:
        """``round(t * (T - 1))`` as a LongTensor: the DDPM index of time ``t`` in [0, 1]."""
        t = torch.as_tensor(t)
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError("SDXL time t must lie in [0, 1]")
        # float64: t = k / 999 in float32 must come back to exactly k
        return (t.to(torch.float64) * (self.num_train_timesteps - 1)).round().long()

    def index_to_t(self, k: torch.Tensor | int) -> torch.Tensor:
        """``k / (T - 1)`` in float32, the inverse of :meth:`timestep_index` on integers."""
        return (torch.as_tensor(k, dtype=torch.float64) / (self.num_train_timesteps - 1)).float()

    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """``alpha_bar`` at the DDPM index of ``t`` (float64, on ``t``'s device)."""
        k = self.timestep_index(t)
        return self.alphas_cumprod.to(k.device)[k]

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(C, H, W) of the UNet's latents for square images of ``resolution`` px."""
        size = resolution // self.codec.scale_factor
        return (self.unet.config.in_channels, size, size)

    def trainable_copy(self) -> UNet2DConditionModel:
        """A deep copy of the UNet with gradients on, in train mode."""
        return copy.deepcopy(self.unet).train().requires_grad_(True)

    def with_network(self, network: UNet2DConditionModel) -> SDXLBackbone:
        """The same text encoders, VAE and schedule around another UNet."""
        return SDXLBackbone(network, self.text, self.codec, self.alphas_cumprod)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """DDPM forward process ``sqrt(ab) x0 + sqrt(1 - ab) eps`` at the index of ``t``."""
        return eps_add_noise(x0, eps, self.alpha_bar(t).to(x0.device))

    def x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)``."""
        return eps_x0_from_eps(x_t, eps, self.alpha_bar(t).to(x_t.device))

    def add_time_ids(self, x_t: torch.Tensor) -> torch.Tensor:
        """SDXL's micro-conditioning (original size, crop top-left (0, 0), target size), per sample.

        Sizes are in pixels, read off the latent (times the VAE factor), as the pipeline's
        defaults at that resolution.
        """
        height, width = (n * self.codec.scale_factor for n in x_t.shape[-2:])
        ids = torch.tensor([height, width, 0, 0, height, width], device=x_t.device, dtype=self.dtype)
        return ids.expand(x_t.shape[0], -1)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: PromptEmbeds) -> torch.Tensor:
        """One UNet call returning the predicted noise (float32); ``t`` is (B,) or a scalar."""
        k = self.timestep_index(per_sample(t, x_t))
        dt = self.dtype
        out = self.unet(
            x_t.to(dt),
            k,
            encoder_hidden_states=cond.hidden.to(dt),
            added_cond_kwargs={"text_embeds": cond.pooled.to(dt), "time_ids": self.add_time_ids(x_t)},
            return_dict=False,
        )[0]
        return out.float()

    def guided_predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None,
        scale: float | torch.Tensor,
    ) -> torch.Tensor:
        """CFG noise ``e_u + w (e_c - e_u)`` in one batched UNet call."""
        return batched_cfg(self.predict, x_t, t, cond, uncond, scale)


def sdxl_backbone(pipeline: StableDiffusionXLPipeline, cfg: PretrainedConfig) -> SDXLBackbone:
    """The SDXL adapter over a loaded pipeline (its UNet, both CLIP encoders, VAE and scheduler).

    ``cfg.max_sequence_length`` does not apply (CLIP reads its fixed 77 tokens); a
    ``cfg.shift`` is refused (there is no flow sigma to shift).
    """
    if cfg.shift is not None:
        raise UserError("teacher.pretrained.shift applies to flow models; SDXL follows its DDPM schedule")
    return SDXLBackbone(
        pipeline.unet,
        SDXLTextEncoder(pipeline),
        VaeCodec(pipeline.vae),
        ddpm_alphas_cumprod(pipeline.scheduler.config),
    )
