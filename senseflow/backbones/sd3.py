"""SD 3 / 3.5 adapter: :class:`~senseflow.backbones.flow.SD3FlowBackbone` with the real text side and VAE.

The flow maths (velocity, sigma time, CFG) is the embedded teacher's; what SD 3.5 adds is
three text encoders, a VAE with scaling and shift factors, and the scheduler's shift (3.0).
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusion3Pipeline

from senseflow.backbones.flow import SD3FlowBackbone
from senseflow.backbones.prompts import PipelinePromptEncoder
from senseflow.backbones.shift import scheduler_shift
from senseflow.backbones.vae import VaeCodec
from senseflow.config import PretrainedConfig


class SD3TextEncoder(PipelinePromptEncoder):
    """SD3's conditioning, via ``StableDiffusion3Pipeline.encode_prompt``.

    ``hidden``: both CLIP penultimate states concatenated on the channel axis, zero-padded
    to T5's width, followed on the sequence axis by ``max_sequence_length`` T5 tokens
    (77 + 256 tokens of 4096 channels for SD 3.5). ``pooled``: both CLIP projections
    concatenated (768 + 1280). The empty prompt is encoded like any other, as the pipeline
    does for its unconditional branch.
    """

    TEXT_COMPONENTS = (
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
    )

    def __init__(self, pipeline: StableDiffusion3Pipeline, max_sequence_length: int = 256):
        super().__init__(pipeline)
        self.max_sequence_length = max_sequence_length

    def embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, 77 + L, D_t5), pooled (B, P1 + P2))."""
        hidden, _, pooled, _ = self.pipeline.encode_prompt(
            prompts,
            None,
            None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return hidden, pooled


def sd3_backbone(pipeline: StableDiffusion3Pipeline, cfg: PretrainedConfig) -> SD3FlowBackbone:
    """The SD 3.5 adapter over a loaded pipeline (transformer, three text encoders, VAE, scheduler).

    The shift is ``cfg.shift`` if set, else the scheduler config's at ``cfg.resolution``
    (3.0 for SD 3.5, whose scheduler has no resolution-dependent shift).
    """
    codec = VaeCodec(pipeline.vae)
    shift = cfg.shift
    if shift is None:
        tokens = (cfg.resolution // codec.scale_factor // pipeline.transformer.config.patch_size) ** 2
        shift = scheduler_shift(pipeline.scheduler.config, tokens)
    return SD3FlowBackbone(
        pipeline.transformer,
        SD3TextEncoder(pipeline, cfg.max_sequence_length),
        codec=codec,
        shift=shift,
    )
