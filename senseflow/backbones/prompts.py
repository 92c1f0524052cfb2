"""Prompt encoders of the real teachers, over the text side of their diffusers pipelines.

Each family combines its text encoders in its own way (SDXL: two CLIP penultimate states;
SD3: two CLIPs and T5 stacked on the sequence axis; FLUX: CLIP pooled + T5). The adapters
do not re-implement that: they call the pipeline's own ``encode_prompt`` on a pipeline that
holds only the text components, so the result is what the pipeline feeds its denoiser.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline

from senseflow.conditioning import PromptEmbeds


def text_only_pipeline(pipeline: DiffusionPipeline, names: tuple[str, ...]) -> DiffusionPipeline:
    """A pipeline of the same class sharing only the components ``names`` (the rest ``None``).

    The prompt encoder keeps no reference to the denoiser or the VAE, so swapping or freeing
    those does not depend on it.
    """
    parts = {name: (module if name in names else None) for name, module in pipeline.components.items()}
    return type(pipeline)(**parts)


class PipelinePromptEncoder:
    """:class:`~senseflow.backbones.base.PromptEncoder` base: frozen encoders, float32 embeddings.

    Subclasses list their ``TEXT_COMPONENTS`` and implement :meth:`embed` with the
    pipeline's ``encode_prompt``.
    """

    TEXT_COMPONENTS: tuple[str, ...] = ()

    def __init__(self, pipeline: DiffusionPipeline):
        self.pipeline = text_only_pipeline(pipeline, self.TEXT_COMPONENTS)
        for name in self.TEXT_COMPONENTS:
            module = getattr(self.pipeline, name)
            if isinstance(module, torch.nn.Module):
                module.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Where the text encoders are (token ids are sent there)."""
        return self.pipeline.device

    def embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, L, D), pooled (B, P)) in the encoders' dtype; implemented per family."""
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        """Embed a batch of prompts (``""`` is the unconditional prompt); float32, no gradient.

        float32 whatever the encoders' dtype: the embeddings are small, and the loss heads
        that read them (the discriminator's text projection) are float32 modules.
        """
        with torch.no_grad():
            hidden, pooled = self.embed(list(prompts))
        return PromptEmbeds(hidden.float(), pooled.float())
