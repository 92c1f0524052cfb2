"""CLIP score over open_clip backbones, batched, offline.

The field's protocol (SenseFlow, DMD2, ...) is open_clip ViT-g-14 ``laion2b_s12b_b42k`` and
the raw cosine between image and prompt embeddings (about 0.30-0.33). torchmetrics'
``CLIPScore`` instead reports ``100 * cosine`` with OpenAI ViT-L/14 and slices long captions,
so numbers from the two are not comparable: the scale and a prompt prefix are options here,
and :meth:`OpenClipScorer.protocol` records them with the backbone and the weights file.

The ``dmd2`` protocol (the registry metric's default, :mod:`eval.image_protocols`) is DMD2 /
SenseFlow's evaluator: images resized to 256 with LANCZOS before the model's own transform,
the prompt prefixed by "A photo depicts " at token level (the prefix's BPE tokens placed
after the start token, the caption's after them, truncated to the context with the end token
kept), fp32.

Any open_clip model object can be scored (the embedded world trains a tiny one): build an
:class:`OpenClipScorer` from the model, its tokenizer and its preprocessing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

from eval.image_protocols import DMD2_CLIP_PREFIX, DMD2_CLIP_RES, clip_pre_resize
from eval.metrics._preference import (
    BatchedScorer,
    autocast,
    check_precision,
    default_device,
    register_scorer_metric,
)
from eval.weights import require_path

DEFAULT_MODEL = "ViT-g-14"
DEFAULT_PRETRAINED = "laion2b_s12b_b42k"
# The manifest entry holding open_clip_pytorch_model.bin of laion/CLIP-ViT-g-14-laion2B-s12B-b42K.
ARTEFACT = "clip_vitg14"


class OpenClipScorer(BatchedScorer):
    """Scores (image, prompt) pairs with an open_clip model: ``scale * cos(image, prefix + prompt)``.

    ``preprocess`` maps one PIL image to a (3, S, S) tensor; ``tokenizer`` maps a list of
    strings to token ids. The model runs in eval mode, without gradients, in batches of
    ``batch_size``, at ``precision`` (fp32 unless told; autocast on CUDA only).
    ``pre_resize`` maps a PIL image before ``preprocess`` (DMD2: LANCZOS to 256); its
    description goes into the protocol. A model given here is not moved, frozen or
    left in eval mode (the embedded world scores a CLIP it is still training): without
    ``device`` the scorer runs where the model's parameters are, and restores its mode.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable,
        preprocess: Callable,
        *,
        scale: float = 1.0,
        prefix: str = "",
        batch_size: int = 32,
        device: torch.device | str | None = None,
        info: dict | None = None,
        precision: str = "fp32",
        pre_resize: Callable | None = None,
        pre_resize_name: str = "",
    ):
        if device is None:
            param = next(model.parameters(), None)
            self.device = param.device if param is not None else default_device()
        else:
            self.device = torch.device(device)
        self.model = model.to(self.device)
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.scale, self.prefix, self.batch_size = float(scale), prefix, int(batch_size)
        self.info = dict(info or {})
        self.precision = check_precision(precision)
        self.pre_resize, self.pre_resize_name = pre_resize, pre_resize_name

    def protocol(self) -> dict:
        """Backbone, weights, scale and prefix: what a CLIP-score number needs beside it."""
        return {
            "metric": "clip_scores",
            **self.info,
            "score": "cosine" if self.scale == 1.0 else f"{self.scale:g} * cosine",
            "scale": self.scale,
            "prefix": self.prefix,
            "prefix_level": "token" if self.prefix else "none",
            "precision": self.precision,
            **({"pre_resize": self.pre_resize_name} if self.pre_resize else {}),
            **self.weights_protocol(),
        }

    def tokens(self, prompts: list[str]) -> torch.Tensor:
        """Token ids of ``prefix + prompt`` with the prefix joined at token level.

        An open_clip ``SimpleTokenizer`` (``encode``, start / end ids, context length) gets
        ``[start] + encode(prefix) + encode(prompt)``, truncated to the context with the end
        token kept (DMD2's evaluator); any other tokenizer gets the joined strings.
        """
        tok = self.tokenizer
        if not self.prefix or not all(hasattr(tok, a) for a in ("encode", "sot_token_id", "context_length")):
            return tok([self.prefix + p for p in prompts])
        head = [tok.sot_token_id, *tok.encode(self.prefix)]
        out = torch.zeros(len(prompts), tok.context_length, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids = [*head, *tok.encode(p), tok.eot_token_id][: tok.context_length]
            ids[-1] = tok.eot_token_id
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def features(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised image and text embeddings, float32."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.precision):
                img = self.model.encode_image(pixels.to(self.device))
                txt = self.model.encode_text(tokens.to(self.device))
        finally:
            self.model.train(was_training)
        img, txt = img.float(), txt.float()
        return img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)

    def score_batch(self, images, prompts) -> torch.Tensor:
        """``scale * cosine`` of one batch."""
        if self.pre_resize is not None:
            images = [self.pre_resize(im) for im in images]
        pixels = torch.stack([self.preprocess(im) for im in images])
        img, txt = self.features(pixels, self.tokens(prompts))
        return (img * txt).sum(-1) * self.scale


@functools.lru_cache(maxsize=4)
def _load_open_clip(model_name: str, checkpoint: str, pretrained_tag: str, device: str):
    import open_clip

    # A file path carries no preprocessing config: take the published tag's (mean, std,
    # interpolation, resize mode) so that the local file is preprocessed as the hub one would be.
    pcfg = open_clip.get_pretrained_cfg(model_name, pretrained_tag) or {}
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name,
        pretrained=checkpoint,
        image_mean=pcfg.get("mean"),
        image_std=pcfg.get("std"),
        image_interpolation=pcfg.get("interpolation"),
        image_resize_mode=pcfg.get("resize_mode"),
    )
    return model.to(device).eval(), open_clip.get_tokenizer(model_name), preprocess


def load_clip_scorer(
    model_name: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike | None = None,
    *,
    pretrained_tag: str = DEFAULT_PRETRAINED,
    scale: float = 1.0,
    prefix: str | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    protocol: str | None = None,
    precision: str = "fp32",
) -> OpenClipScorer:
    """An :class:`OpenClipScorer` for an open_clip architecture and a LOCAL checkpoint file.

    The model is loaded once per (architecture, file, device) and shared by later calls.
    ``pretrained_tag`` only names the weights in the protocol. ``protocol="dmd2"`` sets DMD2's
    prefix (unless ``prefix`` is given) and LANCZOS 256 pre-resize; fp32 is DMD2's precision.
    """
    path = require_path(checkpoint, ARTEFACT)
    device = torch.device(device) if device is not None else default_device()
    model, tokenizer, preprocess = _load_open_clip(model_name, str(path), pretrained_tag, str(device))
    info = {"backbone": f"open_clip {model_name}", "pretrained": pretrained_tag, "weights": path.name}
    dmd2 = protocol == "dmd2"
    if prefix is None:
        prefix = DMD2_CLIP_PREFIX if dmd2 else ""
    scorer = OpenClipScorer(
        model,
        tokenizer,
        preprocess,
        scale=scale,
        prefix=prefix,
        batch_size=batch_size,
        device=device,
        info=info | ({"protocol": protocol} if protocol else {}),
        precision=precision,
        pre_resize=functools.partial(clip_pre_resize, protocol="dmd2") if dmd2 else None,
        pre_resize_name=f"LANCZOS to {DMD2_CLIP_RES}" if dmd2 else "",
    )
    scorer.weights_file = path
    return scorer


def clip_scores(images, prompts, **kwargs) -> torch.Tensor:
    """Per-image CLIP scores, shape (B,); ``kwargs`` go to :func:`load_clip_scorer` (cached model)."""
    return load_clip_scorer(**kwargs)(images, prompts)


# the functional core under the common name, e.g. ``eval.metrics.hpsv2.score``
score = clip_scores


# `senseflow-eval evaluate --metrics clip_score`
register_scorer_metric(
    "clip_score", load_clip_scorer, "clip-score/2", lambda protocol: {"protocol": protocol}
)
