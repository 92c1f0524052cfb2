"""PickScore (Kirstain et al. 2023), batched and offline, under transformers 5.

The published recipe: processor ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, model
``yuvalkirstain/PickScore_v1`` (a transformers ``CLIPModel``), prompts padded and truncated
to 77 tokens, score = ``logit_scale.exp() * cosine(image, prompt)`` (about 22-23). The recipe
scores one prompt against its images per call; here every (image, prompt) pair of a batch
goes through the processor and the model at once. Under transformers 5
``get_image_features`` / ``get_text_features`` return output objects whose
``pooler_output`` holds the projected embedding (a tensor in transformers 4): both are
accepted.
"""

from __future__ import annotations

import functools
import os

import torch

from eval.metrics import _preference as pref
from eval.weights import require_path

MODEL_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
# the manifest entries holding the model and the processor folders
MODEL_ARTEFACT, PROCESSOR_ARTEFACT = "pickscore", "pickscore_processor"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _embeds(out) -> torch.Tensor:
    """The projected embedding, whether transformers returned a tensor (4.x) or an output (5.x)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class PickScoreScorer(pref.BatchedScorer):
    """``logit_scale.exp() * cos(image, prompt)`` per pair, with a transformers CLIPModel + CLIPProcessor."""

    def __init__(
        self,
        model,
        processor,
        *,
        batch_size: int = 32,
        device=None,
        info: dict | None = None,
        precision="fp32",
    ):
        self.device = torch.device(device) if device is not None else pref.default_device()
        self.precision = pref.check_precision(precision)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.processor, self.batch_size = processor, int(batch_size)
        self.info = dict(info or {})

    def protocol(self) -> dict:
        """Model, processor and score definition."""
        return {
            "metric": "pickscores",
            **self.info,
            "score": "logit_scale.exp() * cosine",
            "max_length": 77,
            "precision": self.precision,
            **self.weights_protocol(),
        }

    def score_batch(self, images, prompts) -> torch.Tensor:
        """``logit_scale.exp() * cosine`` of one batch."""
        pix = self.processor(images=images, return_tensors="pt")["pixel_values"]
        txt = self.processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad(), pref.autocast(self.device, self.precision):
            img = _embeds(self.model.get_image_features(pixel_values=pix.to(self.device))).float()
            tok = _embeds(
                self.model.get_text_features(
                    input_ids=txt["input_ids"].to(self.device),
                    attention_mask=txt["attention_mask"].to(self.device),
                )
            ).float()
        img = img / img.norm(dim=-1, keepdim=True)
        tok = tok / tok.norm(dim=-1, keepdim=True)
        return self.model.logit_scale.exp().float() * (img * tok).sum(-1)


@functools.lru_cache(maxsize=2)
def _load_pickscore(model_dir: str, processor_dir: str, device: str):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir, local_files_only=True)
    processor = CLIPProcessor.from_pretrained(processor_dir, local_files_only=True)
    return model.to(device).eval(), processor


def load_pickscore_scorer(
    model_dir: str | os.PathLike | None = None,
    processor_dir: str | os.PathLike | None = None,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> PickScoreScorer:
    """A PickScore scorer from LOCAL folders of the model and the processor (loaded once, cached).

    ``precision``: fp32 by default, as the published recipe runs.
    """
    model_dir = require_path(model_dir, MODEL_ARTEFACT)
    require_path(model_dir / "config.json", MODEL_ARTEFACT)
    weights = pref.require_any(model_dir, _WEIGHT_FILES, MODEL_ARTEFACT)
    processor_dir = require_path(processor_dir, PROCESSOR_ARTEFACT)
    # the hub repository has preprocessor_config.json; transformers 5 saves processor_config.json
    pref.require_any(processor_dir, ("preprocessor_config.json", "processor_config.json"), PROCESSOR_ARTEFACT)
    device = torch.device(device) if device is not None else pref.default_device()
    model, processor = _load_pickscore(str(model_dir), str(processor_dir), str(device))
    info = {"model": MODEL_REPO, "processor": PROCESSOR_REPO, "model_dir": str(model_dir)}
    scorer = PickScoreScorer(
        model, processor, batch_size=batch_size, device=device, info=info, precision=precision
    )
    scorer.weights_file = weights
    return scorer


def pickscores(images, prompts, **kwargs) -> torch.Tensor:
    """Per-image PickScores, shape (B,); ``kwargs`` go to :func:`load_pickscore_scorer`."""
    return load_pickscore_scorer(**kwargs)(images, prompts)


# the functional core under the common name, e.g. ``eval.metrics.hpsv2.score``
score = pickscores


# `senseflow-eval evaluate --metrics pickscore`
pref.register_scorer_metric("pickscore", load_pickscore_scorer, "pickscore-v1/1")
