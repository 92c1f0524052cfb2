"""Pre-training the world's text encoder contrastively, as real teachers' encoders are pre-trained.

Real text-to-image teachers condition on a *pretrained* text encoder (CLIP-L, OpenCLIP-G, T5):
its token states already name what a caption says. The world's encoder started as a frozen
random ``CLIPTextModel`` (``world/text.py``); a teacher reading it learned background and colour
only to about 80% and the digit hardly at all in its time budget (docs/embedded-lab.md, the
teacher sweep). This module trains that same ``CLIPTextModel`` as the text tower of a tiny
``transformers.CLIPModel`` against a small ViT on rendered scenes (symmetric InfoNCE, Radford et
al. 2021), then keeps the text tower only. The world stage then writes it like before, so every
consumer (teacher, students, cache) loads it unchanged; it stays frozen downstream.

It is not the world's metric CLIP (``world/clip.py``, open_clip, its own seed and stage): the
judge and the teacher's conditioning stay separate models, as CLIP-L (SDXL's encoder) and
CLIP ViT-g/14 (the CLIP score) are.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPVisionConfig, PreTrainedTokenizerFast

from senseflow.optim import adamw
from senseflow.world.clip import contrastive_loss, scene_batch, warmup_cosine
from senseflow.world.scenes import to_tensor_range


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
    opt = adamw(clip.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_steps))
    losses, t0 = [], time.perf_counter()
    clip.train()
    for step in tqdm(range(steps), desc="text encoder", disable=not progress, mininterval=2.0):
        images, captions = _batch([seed, step], batch_size, resolution=resolution, digit_counts=digit_counts,
                                  instances="train", split="train")  # fmt: skip
        img = clip.get_image_features(pixel_values=images).pooler_output
        txt = clip.get_text_features(input_ids=_tokens(tokenizer, captions)).pooler_output
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        loss = contrastive_loss(img, txt, clip.logit_scale.exp(), captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP clamps the learned temperature at 100
            clip.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    after = _retrieval(clip, tokenizer, *held)
    text_model.load_state_dict(clip.text_model.state_dict())
    text_model.eval().requires_grad_(False)
    return {
        "steps": steps,
        "final_loss": float(np.mean(losses[-max(1, steps // 10) :])),
        "text_to_image_retrieval": after,
        "text_to_image_retrieval_untrained": before,
        "eval_scenes": eval_scenes,
        "train_seconds": round(seconds, 1),
    }
