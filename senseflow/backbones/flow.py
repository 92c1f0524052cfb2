"""Flow-matching adapter over diffusers' ``SD3Transformer2DModel`` (SD 3 / 3.5 and the embedded teacher).

The transformer predicts the velocity ``eps - x0`` given ``timestep = 1000 * sigma``; the
adapter adds the forward process, CFG batching and x0 conversion around it, always in
float32 for the conversions whatever the network's dtype.
"""

from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel

from senseflow.backbones.base import IdentityCodec, LatentCodec, PromptEncoder
from senseflow.backbones.conversions import flow_add_noise, flow_x0_from_velocity
from senseflow.backbones.guidance import batched_cfg, per_sample
from senseflow.conditioning import PromptEmbeds
from senseflow.schedules import NUM_TRAIN_TIMESTEPS


class SD3FlowBackbone:
    """:class:`~senseflow.backbones.base.Backbone` for SD3-family flow transformers.

    The prediction is the velocity; time is the flow sigma. ``network`` is the transformer.
    """

    prediction = "flow"
    guidance = "cfg"

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        text: PromptEncoder,
        *,
        codec: LatentCodec | None = None,
        shift: float = 1.0,
    ):
        self.transformer = transformer
        self.text = text
        self.codec = codec or IdentityCodec()
        self.shift = shift

    @property
    def network(self) -> SD3Transformer2DModel:
        """The denoiser (what the distillation loop copies and trains)."""
        return self.transformer

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(C, H, W): the transformer's input channels at ``resolution`` (pixel space: no VAE factor)."""
        factor = getattr(self.codec, "scale_factor", 1)
        return (self.transformer.config.in_channels, resolution // factor, resolution // factor)

    def trainable_copy(self) -> SD3Transformer2DModel:
        """A deep copy of the transformer with gradients on, in train mode."""
        import copy

        net = copy.deepcopy(self.transformer)
        return net.train().requires_grad_(True)

    def with_network(self, network: SD3Transformer2DModel) -> SD3FlowBackbone:
        """The same text encoder, codec and shift around another transformer."""
        return SD3FlowBackbone(network, self.text, codec=self.codec, shift=self.shift)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the network weights (inputs are cast to it)."""
        return next(self.transformer.parameters()).dtype

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``x_t = (1 - s) x0 + s eps``."""
        return flow_add_noise(x0, eps, sigma)

    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: PromptEmbeds) -> torch.Tensor:
        """One transformer call returning the velocity; ``sigma`` is (B,) or a scalar."""
        sigma = per_sample(sigma, x_t)
        dt = self.dtype
        out = self.transformer(
            hidden_states=x_t.to(dt),
            encoder_hidden_states=cond.hidden.to(dt),
            pooled_projections=cond.pooled.to(dt),
            timestep=sigma * NUM_TRAIN_TIMESTEPS,
            return_dict=False,
        )[0]
        return out.float()

    def guided_predict(
        self,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None,
        scale: float | torch.Tensor,
    ) -> torch.Tensor:
        """CFG velocity ``v_u + w (v_c - v_u)``, one batched call (plain without ``uncond`` or at w = 1)."""
        return batched_cfg(self.predict, x_t, sigma, cond, uncond, scale)

    def x0(self, x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``x0 = x_t - s v``."""
        return flow_x0_from_velocity(x_t, v, sigma)


def tiny_sd3_transformer(
    *,
    resolution: int,
    in_channels: int,
    patch_size: int,
    num_layers: int,
    num_attention_heads: int,
    attention_head_dim: int,
    text_dim: int,
    pooled_dim: int | None = None,
    qk_norm: str | None = "rms_norm",
    seed: int = 0,
) -> SD3Transformer2DModel:
    """An ``SD3Transformer2DModel`` of small config (the embedded teacher), initialised from ``seed``."""
    if resolution % patch_size:
        raise ValueError(f"resolution {resolution} is not a multiple of patch_size {patch_size}")
    inner = num_attention_heads * attention_head_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SD3Transformer2DModel(
            sample_size=resolution,
            patch_size=patch_size,
            in_channels=in_channels,
            out_channels=in_channels,
            num_layers=num_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=text_dim,
            caption_projection_dim=inner,
            pooled_projection_dim=pooled_dim or text_dim,
            pos_embed_max_size=resolution // patch_size,
            qk_norm=qk_norm,
        )
    return model
