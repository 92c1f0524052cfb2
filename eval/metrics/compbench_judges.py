"""T2I-CompBench's other two judges over local transformers weights: CLIP ViT-B/32 and a detector.

- :class:`ClipB32Scorer` (non-spatial, and C of 3-in-1): raw cosine of the L2-normalised
  image and prompt embeddings of OpenAI CLIP ViT-B/32 (``openai/clip-vit-base-patch32``, the
  weights of ``clip.load("ViT-B/32")``): no x100, no x2.5, no clamp (CLIPScore_eval/). Its
  processor resizes the short side to 224 (bicubic) and centre-crops 224, as ``clip.load``'s
  transform does. The reference runs fp16 on CUDA: so does this (autocast), fp32 on the CPU.
- :class:`OwlDetector` (spatial, and S of 3-in-1): the benchmark's detector is UniDet
  (722 labels, cascade R-CNN on detectron2), which no package provides. OWLv2
  (``google/owlv2-base-patch16-ensemble``, open vocabulary) stands in: it is queried with
  the prompt's two object words, each box takes its best query, detections under the
  benchmark's 0.5 cut are dropped and the first of each label is used; boxes are mapped into
  UniDet's input frame (short side 479) so that the rule's pixel thresholds mean the same.
  The geometry rule is the benchmark's (:func:`eval.compbench.spatial_image_score`); the
  vocabulary, the confidences and so the 0.5 cut are not: spatial numbers are approximate.
"""

from __future__ import annotations

import functools
import os

import torch

from eval.compbench import DETECTION_THRESHOLD, benchmark_scale, first_detections
from eval.metrics import _preference as pref
from eval.weights import require_path

CLIP_ARTEFACT, CLIP_REPO = "clip_vitb32", "openai/clip-vit-base-patch32"
DETECTOR_ARTEFACT, DETECTOR_REPO = "owlv2_base", "google/owlv2-base-patch16-ensemble"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
DETECTOR_DEVIATION = (
    "UniDet (Unified_learned_OCIM_RS200_6x+2x, 722 labels) is not packaged: OWLv2 base (open "
    "vocabulary, queried with the two object words) stands in. Same geometry rule, same 0.5 "
    "confidence cut and 0.25/0.25/0.5 mix, boxes mapped to UniDet's 479-px frame; other "
    "vocabulary and confidences: spatial values are approximate, not comparable to the paper's."
)


def _embeds(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipB32Scorer(pref.BatchedScorer):
    """Raw cosine of CLIP image and text embeddings (transformers ``CLIPModel`` + ``CLIPProcessor``)."""

    def __init__(self, model, processor, *, batch_size: int = 32, device=None, precision: str = "fp16"):
        self.device = torch.device(device) if device is not None else pref.default_device()
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.processor, self.batch_size = processor, int(batch_size)
        self.precision = pref.check_precision(precision)

    def protocol(self) -> dict:
        """Backbone, score definition and precision."""
        return {
            "model": CLIP_REPO,
            "score": "raw cosine",
            "precision": self.precision,
            **self.weights_protocol(),
        }

    def score_batch(self, images, prompts) -> torch.Tensor:
        """Cosine of one batch."""
        pix = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        txt = self.processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad(), pref.autocast(self.device, self.precision):
            img = _embeds(self.model.get_image_features(pixel_values=pix)).float()
            tok = _embeds(
                self.model.get_text_features(
                    input_ids=txt["input_ids"].to(self.device),
                    attention_mask=txt["attention_mask"].to(self.device),
                )
            ).float()
        return (img / img.norm(dim=-1, keepdim=True) * (tok / tok.norm(dim=-1, keepdim=True))).sum(-1)


class OwlDetector:
    """``{label: (confidence, box)}`` per image from OWLv2 queried with that image's labels."""

    def __init__(self, model, processor, *, batch_size: int = 8, device=None,
                 threshold: float = DETECTION_THRESHOLD, precision: str = "fp32"):  # fmt: skip
        self.device = torch.device(device) if device is not None else pref.default_device()
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.processor, self.batch_size, self.threshold = processor, int(batch_size), float(threshold)
        self.precision = pref.check_precision(precision)
        self.weights_file = None

    def protocol(self) -> dict:
        """Detector, cut, frame and the deviation from the benchmark's UniDet."""
        return {"detector": DETECTOR_REPO, "threshold": self.threshold, "frame": "short side 479, max 480",
                "precision": self.precision, "deviation": DETECTOR_DEVIATION}  # fmt: skip

    def detect(self, images, labels: list[list[str]]) -> list[dict]:
        """Detections of each image among its own labels (``labels[i]``, a non-empty list, equal lengths)."""
        pil = pref.to_pil_images(images)
        out = []
        for sl in pref.batched(len(pil), self.batch_size):
            batch, queries = pil[sl], labels[sl]
            inputs = self.processor(text=queries, images=batch, return_tensors="pt")
            with torch.no_grad(), pref.autocast(self.device, self.precision):
                res = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
            scores = res.logits.float().sigmoid().cpu()  # (B, boxes, queries)
            boxes = res.pred_boxes.float().cpu()  # (B, boxes, 4): cx, cy, w, h of the padded square
            for im, q, s, b in zip(batch, queries, scores, boxes, strict=True):
                out.append(first_detections(s.tolist(), _to_frame(b, im.height, im.width), q, self.threshold))
        return out


def _to_frame(boxes: torch.Tensor, height: int, width: int) -> list[tuple[float, ...]]:
    """OWLv2's normalised boxes (of the image padded to a square at bottom right) in UniDet's frame."""
    side = max(height, width) * benchmark_scale(height, width)
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * side
    return [tuple(r) for r in xyxy.tolist()]


@functools.lru_cache(maxsize=4)
def _load_pretrained(model_cls: str, processor_cls: str, folder: str, device: str):
    """A local folder's transformers ``model_cls`` (eval mode, on ``device``) and ``processor_cls``."""
    import transformers

    model = getattr(transformers, model_cls).from_pretrained(folder, local_files_only=True)
    processor = getattr(transformers, processor_cls).from_pretrained(folder, local_files_only=True)
    return model.to(device).eval(), processor


def _load_judge(judge_cls, classes: tuple[str, str], artefact: str, folder, device, **kw):
    """``judge_cls`` over the model and processor of a LOCAL snapshot (default: manifest ``artefact``)."""
    folder = require_path(folder, artefact)
    weights = pref.require_any(folder, _WEIGHTS, artefact)
    device = torch.device(device) if device is not None else pref.default_device()
    judge = judge_cls(*_load_pretrained(*classes, str(folder), str(device)), device=device, **kw)
    judge.weights_file = weights
    return judge


def load_clip_b32(folder: str | os.PathLike | None = None, *, batch_size: int = 32, device=None,
                  precision: str = "fp16") -> ClipB32Scorer:  # fmt: skip
    """CLIP ViT-B/32 from a LOCAL snapshot (default: manifest artefact ``clip_vitb32``)."""
    return _load_judge(ClipB32Scorer, ("CLIPModel", "CLIPProcessor"), CLIP_ARTEFACT, folder, device,
                       batch_size=batch_size, precision=precision)  # fmt: skip


def load_detector(folder: str | os.PathLike | None = None, *, batch_size: int = 8, device=None,
                  precision: str = "fp32") -> OwlDetector:  # fmt: skip
    """OWLv2 from a LOCAL snapshot (default: manifest artefact ``owlv2_base``)."""
    return _load_judge(OwlDetector, ("Owlv2ForObjectDetection", "Owlv2Processor"), DETECTOR_ARTEFACT, folder,
                       device, batch_size=batch_size, precision=precision)  # fmt: skip
