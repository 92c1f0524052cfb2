"""ImageReward (Xu et al. 2023), re-implemented for transformers 5, batched and offline.

ImageReward is BLIP: a ViT-L/16 image encoder at 224 px, a BERT text encoder whose layers
cross-attend to the image tokens, and an MLP on the [CLS] state; the output is normalised
with the training statistics (mean 0.16717362830052426, std 1.0333394966054072).

Why the ``image-reward`` package (1.5) is not used: under transformers 5 it breaks at four
points (its BERT imports ``apply_chunking_to_forward`` and the pruning helpers from
``transformers.modeling_utils``, where they no longer are; building and running its
``PreTrainedModel`` subclass and its tokenizer set-up rely on removed behaviour), it always
fetches the ``bert-base-uncased`` tokenizer from the hub, pins ``timm==0.6.13``, and scores
one image per call. This module holds the same network in plain torch with the same
parameter names, so the official ``ImageReward.pt`` loads unchanged, and reads the
architecture of the text encoder from the official ``med_config.json``. Preprocessing is
the package's: bicubic resize of the shorter side to 224 and centre crop on the PIL image,
CLIP mean and std; prompts are padded and truncated to 35 BERT tokens.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import transforms as T

from eval.metrics._preference import (
    BatchedScorer,
    autocast,
    check_precision,
    default_device,
    register_scorer_metric,
    require_any,
)
from eval.weights import require_path

# the manifest entries holding ImageReward.pt + med_config.json, and the BERT tokenizer
ARTEFACT, TOKENIZER_ARTEFACT = "imagereward", "bert_base_uncased"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_TOKENS = 35
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    """BLIP's ViT; the defaults are ImageReward's ViT-L/16 at 224 px."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    heads: int = 16


# ------------------------------------------------------------------ image encoder (BLIP ViT)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # softmax(q k^T / sqrt(d)) v in one fused kernel (same maths as BLIP's explicit product)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _ViTAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class BlipViT(nn.Module):
    """BLIP's vision transformer (pre-norm blocks, LayerNorm eps 1e-6): pixels -> token states."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = _PatchEmbed(cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.width))
        self.blocks = nn.ModuleList(_ViTBlock(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, 1 + patches, width)."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# ------------------------------------------------------------------ text encoder (BLIP's BERT)


class _BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key, self.value = nn.Linear(kv_width, hidden), nn.Linear(kv_width, hidden)

    def _split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, h, kv, additive_mask):
        q, k, v = self._split(self.query(h)), self._split(self.key(kv)), self._split(self.value(kv))
        # softmax(q k^T / sqrt(d) + mask) v, fused; the additive mask is BERT's -10000 on padding
        mask = None if additive_mask is None else additive_mask.to(q.dtype)
        ctx = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return ctx.transpose(1, 2).reshape(h.shape)


class _BertDenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's SelfOutput and Output."""

    def __init__(self, d_in: int, hidden: int, eps: float):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(d_in, hidden), nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float):
        super().__init__()
        self.self = _BertSelfAttention(hidden, heads, kv_width)
        self.output = _BertDenseNorm(hidden, hidden, eps)

    def forward(self, h, kv, additive_mask):
        return self.output(self.self(h, kv, additive_mask), h)


class _BertIntermediate(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x):
        # BERT's "gelu" is the exact (erf) GELU
        return nn.functional.gelu(self.dense(x))


class _BertLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("layer_norm_eps", 1e-12)
        self.attention = _BertAttention(hidden, heads, hidden, eps)
        self.crossattention = _BertAttention(hidden, heads, cfg["encoder_width"], eps)
        self.intermediate = _BertIntermediate(hidden, cfg["intermediate_size"])
        self.output = _BertDenseNorm(cfg["intermediate_size"], hidden, eps)

    def forward(self, h, text_mask, image_states):
        h = self.attention(h, h, text_mask)
        # every image token is attended to: the package's all-ones image mask adds zeros
        h = self.crossattention(h, image_states, None)
        return self.output(self.intermediate(h), h)


class _BertEmbeddings(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        hidden = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden, padding_idx=cfg.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=cfg.get("layer_norm_eps", 1e-12))

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos))


class _BertEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layer = nn.ModuleList(_BertLayer(cfg) for _ in range(cfg["num_hidden_layers"]))


class BlipTextEncoder(nn.Module):
    """BLIP's BERT in its multimodal mode (bidirectional self-attention, then cross-attention)."""

    def __init__(self, med_config: dict):
        super().__init__()
        if med_config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported (ImageReward's med_config)")
        self.embeddings = _BertEmbeddings(med_config)
        self.encoder = _BertEncoder(med_config)

    def forward(self, ids, attention_mask, image_states) -> torch.Tensor:
        """Last hidden states (B, L, hidden); padded tokens masked out of self-attention."""
        # the package's extended mask: 0 where attended, -10000 where padded
        mask = (1.0 - attention_mask[:, None, None, :].to(image_states.dtype)) * -10000.0
        h = self.embeddings(ids)
        for layer in self.encoder.layer:
            h = layer(h, mask, image_states)
        return h


class _Blip(nn.Module):
    def __init__(self, vision: VisionConfig, med_config: dict):
        super().__init__()
        self.visual_encoder = BlipViT(vision)
        self.text_encoder = BlipTextEncoder({**med_config, "encoder_width": vision.width})


class ImageRewardModel(nn.Module):
    """BLIP + MLP head with the package's parameter names; ``forward`` gives normalised rewards."""

    def __init__(self, med_config: dict, vision: VisionConfig | None = None):
        super().__init__()
        self.vision = vision or VisionConfig()
        self.blip = _Blip(self.vision, med_config)
        d = med_config["hidden_size"]
        # same layout as the package's MLP (dropouts at 1, 3, 5) so the checkpoint's indices match
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(
            nn.Linear(d, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, pixels, ids, attention_mask) -> torch.Tensor:
        """(B,) rewards, normalised by the training mean and std."""
        image_states = self.blip.visual_encoder(pixels)
        h = self.blip.text_encoder(ids, attention_mask, image_states)
        reward = self.mlp.layers(h[:, 0].float()).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD


def imagereward_pixels(images, image_size: int = 224) -> torch.Tensor:
    """(B, 3, S, S) normalised pixels: :func:`imagereward_preprocess` on a batch, faster.

    The PIL steps (bicubic resize of the shorter side, centre crop) are the package's, image
    by image; the conversion to float and the CLIP normalisation run once on the stacked
    uint8 batch instead of per image (``ToTensor`` + ``Normalize`` cost more than the resize
    at 224 px). Equal to the per-image transform up to float rounding (~1e-7).
    """
    geometry = T.Compose(
        [T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size)]
    )
    batch = np.empty((len(images), image_size, image_size, 3), np.uint8)
    for i, im in enumerate(images):
        batch[i] = np.asarray(geometry(im if im.mode == "RGB" else im.convert("RGB")))
    # (x / 255 - mean) / std as one in-place multiply-add per channel plane: transposing the
    # uint8 batch to NCHW first keeps the float passes contiguous (measured 2.4x faster)
    scale = (1.0 / (255.0 * torch.tensor(_CLIP_STD))).view(1, 3, 1, 1)
    shift = (-torch.tensor(_CLIP_MEAN) / torch.tensor(_CLIP_STD)).view(1, 3, 1, 1)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().float().mul_(scale).add_(shift)


def imagereward_preprocess(image_size: int = 224) -> T.Compose:
    """The package's transform: bicubic resize (PIL), centre crop, RGB, ToTensor, CLIP mean/std."""
    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(_CLIP_MEAN, _CLIP_STD),
        ]
    )


def load_blip_tokenizer(folder: str | os.PathLike):
    """bert-base-uncased from a LOCAL folder, with BLIP's extra tokens ([DEC] as BOS, [ENC])."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    # BLIP adds these two tokens (ids 30522, 30523 for bert-base-uncased); prompts never contain them
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageRewardScorer(BatchedScorer):
    """ImageReward per (image, prompt) pair, batched."""

    def __init__(
        self,
        model: ImageRewardModel,
        tokenizer,
        *,
        batch_size: int = 32,
        device=None,
        info=None,
        precision="fp32",
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = check_precision(precision)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer, self.batch_size = tokenizer, int(batch_size)
        self.preprocess = imagereward_preprocess(model.vision.image_size)
        self.info = dict(info or {})
        self._token_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def protocol(self) -> dict:
        """Model, weights and normalisation."""
        return {
            "metric": "imagereward",
            **self.info,
            "max_tokens": MAX_TOKENS,
            "normalisation": [REWARD_MEAN, REWARD_STD],
            "precision": self.precision,
            **self.weights_protocol(),
        }

    def tokens(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask) of the prompts, 35 BERT tokens each; each prompt tokenised once."""
        cache = self._token_cache
        new = [p for p in dict.fromkeys(prompts) if p not in cache]
        if new:
            tok = self.tokenizer(
                new, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            for i, p in enumerate(new):
                cache[p] = (tok["input_ids"][i], tok["attention_mask"][i])
        return torch.stack([cache[p][0] for p in prompts]), torch.stack([cache[p][1] for p in prompts])

    def score_batch(self, images, prompts) -> torch.Tensor:
        """Normalised rewards of one batch."""
        pixels = imagereward_pixels(images, self.model.vision.image_size).to(self.device)
        ids, mask = self.tokens(prompts)
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.model(pixels, ids.to(self.device), mask.to(self.device))


@functools.lru_cache(maxsize=2)
def _load_imagereward(
    checkpoint: str, med_config: str, tokenizer_dir: str, vision: VisionConfig, device: str
):
    cfg = json.loads(Path(med_config).read_text())
    model = ImageRewardModel(cfg, vision)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # the checkpoint also holds BLIP parts ImageReward never runs (projections, position-id buffer)
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{checkpoint} lacks {len(missing)} ImageReward parameters, e.g. {missing[:3]}")
    return model.to(device).eval(), load_blip_tokenizer(tokenizer_dir)


def load_imagereward_scorer(
    checkpoint: str | os.PathLike | None = None,
    med_config: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    *,
    vision: VisionConfig | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> ImageRewardScorer:
    """An ImageReward scorer from LOCAL files (loaded once, cached); ``vision`` exists for tiny tests.

    ``precision``: fp32 by default, as the image-reward package runs.
    """
    ckpt = require_path(checkpoint, ARTEFACT, file="ImageReward.pt")
    med = require_path(med_config, ARTEFACT, file="med_config.json")
    tok_dir = require_path(tokenizer_dir, TOKENIZER_ARTEFACT)
    require_any(tok_dir, ("vocab.txt", "tokenizer.json"), TOKENIZER_ARTEFACT)
    device = torch.device(device) if device is not None else default_device()
    model, tokenizer = _load_imagereward(
        str(ckpt), str(med), str(tok_dir), vision or VisionConfig(), str(device)
    )
    info = {"model": "THUDM/ImageReward", "weights": ckpt.name, "tokenizer": "bert-base-uncased"}
    scorer = ImageRewardScorer(
        model, tokenizer, batch_size=batch_size, device=device, info=info, precision=precision
    )
    scorer.weights_file = ckpt
    return scorer


def imagereward_scores(images, prompts, **kwargs) -> torch.Tensor:
    """Per-image ImageReward scores, shape (B,); ``kwargs`` go to :func:`load_imagereward_scorer`."""
    return load_imagereward_scorer(**kwargs)(images, prompts)


# the functional core under the common name, e.g. ``eval.metrics.hpsv2.score``
score = imagereward_scores


# `senseflow-eval evaluate --metrics imagereward`
register_scorer_metric("imagereward", load_imagereward_scorer, "imagereward-1.0/1")
