"""Pre-training the world's text encoder, as real teachers' encoders are pre-trained.

Real text-to-image teachers condition on a *pretrained* text encoder (CLIP-L, OpenCLIP-G, T5):
its token states already name what a caption says. The world's encoder started as a frozen
random ``CLIPTextModel`` (``world/text.py``); a teacher reading it learned background and colour
only to about 80% and the digit hardly at all in its time budget (docs/embedded-lab.md, the
teacher sweep). This module trains that same ``CLIPTextModel`` as the text tower of a tiny
``transformers.CLIPModel`` against a small ViT on rendered scenes (symmetric InfoNCE, Radford et
al. 2021), then keeps the text tower only. The world stage then writes it like before, so every
consumer (teacher, students, cache) loads it unchanged; it stays frozen downstream.

Two objectives (``world.text.pretrain.objective``):

* ``contrastive``: the CLIP objective above.
* ``parse`` (the embedded profile's): the encoder learns to *read* a caption, as a language-model
  pretrained encoder (T5, SD 3.5's and FLUX's) does: linear heads on its EOS state predict every
  attribute of the scene the caption describes (per grid cell: digit or empty, colour; and the
  background), with cross-entropy, on training-split captions only. Measured cause: a teacher
  reading the scene itself as conditioning (an oracle, ``benchmarks/teacher_levers.py --text
  oracle``) got every attribute right on 88% of test prompts against 15% through the contrastive
  encoder, at equal training (docs/embedded-lab.md): the conditioning path, not the image model,
  was the bottleneck. The report's parse accuracy is measured on test-split captions, attribute
  combinations the encoder never saw.

It is not the world's metric CLIP (``world/clip.py``, open_clip, its own seed and stage): the
judge and the teacher's conditioning stay separate models, as CLIP-L (SDXL's encoder) and
CLIP ViT-g/14 (the CLIP score) are.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPVisionConfig, PreTrainedTokenizerFast

from senseflow.world.clip import contrastive_loss, optimise, scene_batch, temperature_clamp
from senseflow.world.probes import ProbeOutput, judge, probe_loss, scene_labels
from senseflow.world.scenes import (
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    POSITIONS,
    caption,
    sample_scene,
    to_tensor_range,
)

OBJECTIVES = ("contrastive", "parse")
IMAGE_TOWER_KEYS = ("resolution", "vision_width", "vision_layers", "patch_size")


def _batch(seed, n: int, **kw) -> tuple[torch.Tensor, list[str]]:
    images, captions = scene_batch(seed, n, **kw)
    return to_tensor_range(images), captions


def _tokens(tokenizer: PreTrainedTokenizerFast, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    )["input_ids"]


@torch.no_grad()
def _retrieval(model: CLIPModel, tokenizer, images: torch.Tensor, captions: list[str]) -> float:
    """Text -> image top-1 retrieval among the given pairs (a repeated caption counts as right)."""
    model.eval()
    # attention_mask=None everywhere: the world encoder is always called so (causal mask, EOS pooling)
    img = model.get_image_features(pixel_values=images).pooler_output
    txt = model.get_text_features(input_ids=_tokens(tokenizer, captions)).pooler_output
    best = (txt @ img.T).argmax(1).numpy()
    caps = np.array(captions, dtype=object)
    return float(np.mean(caps[best] == caps))


def pretrain_text_encoder(
    text_model: CLIPTextModel,
    tokenizer: PreTrainedTokenizerFast,
    *,
    objective: str = "contrastive",
    **kwargs,
) -> dict:
    """Train ``text_model`` in place with ``objective`` (``contrastive`` or ``parse``); return a report.

    The model is left in eval mode with gradients off (it is frozen from here on).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"world.text.pretrain.objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "parse":
        # the image tower's keys belong to the contrastive objective (one config section for both)
        kwargs = {k: v for k, v in kwargs.items() if k not in IMAGE_TOWER_KEYS}
        return pretrain_parse(text_model, tokenizer, **kwargs)
    return pretrain_contrastive(text_model, tokenizer, **kwargs)


class CaptionParser(torch.nn.Module):
    """Linear heads on the encoder's EOS state, laid out as the probe's heads.

    Per cell digit (10 = empty) and colour, and the background; so the probe's loss and judge
    apply to a caption unchanged.
    """

    def __init__(self, width: int):
        super().__init__()
        cells = len(POSITIONS)
        self.digit = torch.nn.Linear(width, cells * 11)
        self.colour = torch.nn.Linear(width, cells * len(COLOUR_NAMES))
        self.background = torch.nn.Linear(width, len(BACKGROUND_NAMES))

    def forward(self, pooled: torch.Tensor) -> ProbeOutput:
        """The heads' logits as a :class:`~senseflow.world.probes.ProbeOutput` (features: the EOS state)."""
        b, cells = pooled.shape[0], len(POSITIONS)
        return ProbeOutput(
            features=pooled,
            background=self.background(pooled),
            digit=self.digit(pooled).view(b, cells, 11),
            colour=self.colour(pooled).view(b, cells, len(COLOUR_NAMES)),
        )


def _scenes(seed, n: int, digit_counts: dict, split: str) -> tuple[list, list[str]]:
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, digit_counts=digit_counts, split=split) for _ in range(n)]
    return scenes, [caption(s) for s in scenes]


def _parse(text_model, parser, tokenizer, captions) -> ProbeOutput:
    return parser(text_model(input_ids=_tokens(tokenizer, captions)).pooler_output)


def pretrain_parse(
    text_model: CLIPTextModel,
    tokenizer: PreTrainedTokenizerFast,
    *,
    digit_counts: dict[int, float],
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    warmup_steps: int = 50,
    eval_scenes: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train ``text_model`` to read captions: heads on its EOS state predict the scene's attributes.

    Training captions come from the train split, a pure function of ``(seed, step)``; the report's
    ``parse_accuracy`` (every attribute of a caption right) uses test-split captions.
    """
    with torch.random.fork_rng(devices=[]):  # the heads' init depends on the seed alone
        torch.manual_seed(seed)
        parser = CaptionParser(text_model.config.hidden_size)
    held = _scenes([seed, 10**6], eval_scenes, digit_counts, "test")
    text_model.requires_grad_(True).train()

    def step_loss(step: int) -> torch.Tensor:
        scenes, captions = _scenes([seed, step], batch_size, digit_counts, "train")
        return probe_loss(_parse(text_model, parser, tokenizer, captions), scene_labels(scenes))

    final_loss, seconds = optimise(
        [*text_model.parameters(), *parser.parameters()], step_loss, steps=steps, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, desc="text encoder (parse)",
        progress=progress,
    )  # fmt: skip
    text_model.eval()
    with torch.no_grad():
        hits = judge(_parse(text_model, parser, tokenizer, held[1]), held[0])["all"]
    text_model.requires_grad_(False)
    return {
        "objective": "parse",
        "steps": steps,
        "final_loss": final_loss,
        "parse_accuracy": float(hits.mean()),
        "eval_scenes": eval_scenes,
        "train_seconds": round(seconds, 1),
    }


def pretrain_contrastive(
    text_model: CLIPTextModel,
    tokenizer: PreTrainedTokenizerFast,
    *,
    resolution: int,
    digit_counts: dict[int, float],
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    warmup_steps: int = 50,
    vision_width: int = 64,
    vision_layers: int = 2,
    patch_size: int = 4,
    eval_scenes: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train ``text_model`` in place as a CLIP text tower on fresh real scenes; return a report.

    Scenes are train-split captions drawn with training handwriting, a pure function of
    ``(seed, step)``; the report's retrieval uses test-split captions with held-out handwriting.
    The model is left in eval mode with gradients off (it is frozen from here on).
    """
    tcfg = text_model.config
    vcfg = CLIPVisionConfig(
        hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=vision_layers,
        num_attention_heads=tcfg.num_attention_heads, image_size=resolution, patch_size=patch_size,
        num_channels=3, projection_dim=tcfg.projection_dim,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # the image tower's init depends on the seed alone
        torch.manual_seed(seed)
        config = CLIPConfig(
            text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(), projection_dim=tcfg.projection_dim
        )
        clip = CLIPModel(config)
    clip.text_model.load_state_dict(text_model.state_dict())  # start from the seeded encoder
    held = _batch([seed, 10**6], eval_scenes, resolution=resolution, digit_counts=digit_counts,
                  instances="heldout", split="test")  # fmt: skip
    before = _retrieval(clip, tokenizer, *held)
    clip.train()

    def step_loss(step: int) -> torch.Tensor:
        images, captions = _batch([seed, step], batch_size, resolution=resolution, digit_counts=digit_counts,
                                  instances="train", split="train")  # fmt: skip
        img = clip.get_image_features(pixel_values=images).pooler_output
        txt = clip.get_text_features(input_ids=_tokens(tokenizer, captions)).pooler_output
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        return contrastive_loss(img, txt, clip.logit_scale.exp(), captions)

    final_loss, seconds = optimise(
        clip.parameters(), step_loss, steps=steps, lr=lr, weight_decay=weight_decay,
        warmup_steps=warmup_steps, desc="text encoder", progress=progress,
        after_step=temperature_clamp(clip.logit_scale),
    )  # fmt: skip
    after = _retrieval(clip, tokenizer, *held)
    text_model.load_state_dict(clip.text_model.state_dict())
    text_model.eval().requires_grad_(False)
    return {
        "objective": "contrastive",
        "steps": steps,
        "final_loss": final_loss,
        "text_to_image_retrieval": after,
        "text_to_image_retrieval_untrained": before,
        "eval_scenes": eval_scenes,
        "train_seconds": round(seconds, 1),
    }
