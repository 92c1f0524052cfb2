"""The VFM discriminator's text condition: CLIP ViT-L/14 text features of the prompt.

SenseFlow's released trainers (SDXL, SD 3.5, FLUX alike) condition every discriminator head
on ``open_clip`` ViT-L/14 (OpenAI) ``encode_text`` of the caption, L2-normalised, mapped
768 -> 64 per head; the paper says the same. Every real teacher already ships that text
tower as its ``text_encoder`` (with its ``tokenizer``):

- SD 3.5: ``CLIPTextModelWithProjection``: ``text_embeds`` is exactly the projected CLIP-L
  text feature that ``encode_text`` returns;
- SDXL and FLUX: ``CLIPTextModel`` (the same CLIP-L text transformer saved without its
  ``text_projection``): the pooled end-of-text state. It differs from the released feature
  by one fixed linear map before the normalisation, and each head's trainable 768 -> 64 map
  is linear too, so the condition carries the same information.

The embedded world has no CLIP ViT-L/14: its discriminator reads the world's own text
encoder's pooled embedding instead (``gan.text_condition`` is ignored there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from senseflow.errors import UserError


class ClipTextFeatures:
    """Frozen CLIP text tower + tokenizer: ``prompts -> (B, dim)`` unit-norm float32 features.

    Not an ``nn.Module`` on purpose: it is held by the discriminator as a plain attribute, so
    it is never part of the discriminator's state dict, checkpoints or DDP/FSDP wrapping.
    """

    def __init__(self, encoder: nn.Module, tokenizer):
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        cfg = encoder.config
        self.projected = hasattr(encoder, "text_projection")
        self.dim = int(cfg.projection_dim if self.projected else cfg.hidden_size)

    @classmethod
    def from_pipeline(cls, pipeline, where: str = "the teacher") -> ClipTextFeatures:
        """The CLIP-L text tower of a real teacher's pipeline (its ``text_encoder`` / ``tokenizer``)."""
        encoder = getattr(pipeline, "text_encoder", None)
        tokenizer = getattr(pipeline, "tokenizer", None)
        if encoder is None or tokenizer is None or not type(encoder).__name__.startswith("CLIPText"):
            raise UserError(
                f"{where} has no CLIP text encoder (text_encoder / tokenizer) for the discriminator's "
                "text condition; set distill.gan.text_condition: pooled to use the teacher's pooled embedding"
            )
        return cls(encoder, tokenizer)

    @property
    def device(self) -> torch.device:
        """Where the text tower is (token ids are sent there)."""
        return next(self.encoder.parameters()).device

    def to(self, device) -> ClipTextFeatures:
        """Move the text tower to ``device``; returns self."""
        self.encoder.to(device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text features of ``prompts``, (B, dim), float32, L2-normalised (as ``encode_text``)."""
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(self.device)  # fmt: skip
        out = self.encoder(tokens)
        features = out.text_embeds if self.projected else out.pooler_output
        return F.normalize(features.float(), dim=-1)
