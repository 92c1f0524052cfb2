"""BLIP-VQA's P(yes) as T2I-CompBench asks it (B-VQA: colour, shape, texture), through transformers.

The benchmark (BLIPvqa_eval/, models/blip_vqa.py ``vqa_prob``) runs BLIP ViT-B/16
``model_base_vqa_capfilt_large.pth`` on 480x480 images (bicubic, aspect ratio not kept, CLIP
mean/std), encodes the question with its first token replaced by ``[ENC]``, starts the
answer decoder at ``[DEC]`` and takes one softmax at the first answer token:
``p(yes) / (p(yes) + p(no))``, rounded to 4 decimals (:func:`eval.compbench.vqa_answer_probability`).

The Hub port ``Salesforce/blip-vqa-capfilt-large`` (``BlipForQuestionAnswering``) is that
checkpoint converted at 384 px (position embeddings resampled) and fed ``[CLS]`` instead of
``[ENC]``. Two modes:

- ``benchmark`` (default): the transcription above on the port: 480 px with its position
  embeddings interpolated back (``interpolate_pos_encoding``), ``[ENC]`` (the token after
  ``[DEC]``, as the original tokenizer adds them) as the question's first token;
- ``hub``: the port as published: its processor (384 px) and ``[CLS]``.

The question's padding mask is passed to the answer decoder in both modes, as ``vqa_prob``
does (transformers' ``generate`` attends to padding). The two modes' difference on tiny
random weights is measured by tests/test_compbench_metrics.py and stated in
docs/evaluation.md; every card records the mode.
"""

from __future__ import annotations

import functools
import os

import torch
from PIL import Image

from eval.compbench import vqa_answer_probability
from eval.metrics import _preference as pref
from eval.weights import require_path

ARTEFACT = "blip_vqa_capfilt_large"  # Salesforce/blip-vqa-capfilt-large, a snapshot folder
REPO = "Salesforce/blip-vqa-capfilt-large"
BENCHMARK_RES = 480
MAX_QUESTION_TOKENS = 35  # BLIP's question tokenizer: padding='longest', truncation at 35
MODES = ("benchmark", "hub")
# BLIP's data/__init__.py normalisation (OpenAI CLIP mean / std)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
DEVIATION = (
    "Hub port of model_base_vqa_capfilt_large.pth: converted at 384 px (position embeddings "
    "resampled), fed [CLS] not [ENC]. mode=benchmark runs it at 480 px with interpolated position "
    "embeddings and [ENC]; mode=hub at 384 px with [CLS]. Measured on tiny random weights "
    "(tests/test_compbench_metrics.py, init std 0.02): mean |dP(yes)| 0.0001, max 0.0002 per question "
    "between the modes; the gap on the real checkpoint and against the original .pth is unmeasured: "
    "treat B-VQA values as approximate."
)


def benchmark_pixels(images: list[Image.Image], size: int = BENCHMARK_RES) -> torch.Tensor:
    """BLIP's VQA transform: bicubic resize to ``size`` x ``size``, [0, 1], CLIP mean / std."""
    out = []
    for im in images:
        x = torch.frombuffer(bytearray(im.convert("RGB").resize((size, size), Image.BICUBIC).tobytes()),
                             dtype=torch.uint8)  # fmt: skip
        x = x.view(size, size, 3).permute(2, 0, 1).float() / 255.0
        out.append((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    return torch.stack(out)


class BlipVqaScorer:
    """``P(yes)`` of (image, question) pairs with a transformers ``BlipForQuestionAnswering``."""

    def __init__(self, model, processor, *, mode: str = "benchmark", batch_size: int = 16, device=None,
                 precision: str = "fp32"):  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"unknown BLIP-VQA mode {mode!r}: use one of {', '.join(MODES)}")
        self.device = torch.device(device) if device is not None else pref.default_device()
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.processor, self.mode, self.batch_size = processor, mode, int(batch_size)
        self.precision = pref.check_precision(precision)
        tok = processor.tokenizer
        self.yes_id, self.no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        text = model.config.text_config
        self.dec_id = text.bos_token_id
        # the original tokenizer adds [DEC] then [ENC]: [ENC] is the id after [DEC] (30522, 30523)
        self.enc_id = self.dec_id + 1
        if self.enc_id >= text.vocab_size:
            raise ValueError(f"vocabulary of {text.vocab_size} has no [ENC] after [DEC] = {self.dec_id}")
        self.weights_file = None

    @property
    def resolution(self) -> int:
        """Side of the square input: 480 (benchmark) or the processor's (hub: 384)."""
        if self.mode == "benchmark":
            return BENCHMARK_RES
        size = self.processor.image_processor.size
        height = getattr(size, "height", None)  # a SizeDict (transformers 5) or a dict
        return int(height if height is not None else size["height"])

    def protocol(self) -> dict:
        """Mode, resolution, first question token, answer ids: what a B-VQA number needs beside it."""
        return {
            "model": REPO, "mode": self.mode, "resolution": self.resolution,
            "first_question_token": "[ENC]" if self.mode == "benchmark" else "[CLS]",
            "answer_ids": {"yes": self.yes_id, "no": self.no_id, "decoder_start": self.dec_id},
            "precision": self.precision, "deviation": DEVIATION,
        }  # fmt: skip

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The model's input of a batch of images under this mode."""
        if self.mode == "benchmark":
            return benchmark_pixels(images)
        return self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        """Vision features of a batch (computed once per image, reused for every question)."""
        pix = self.pixels(images).to(self.device)
        native = self.model.config.vision_config.image_size
        with torch.no_grad(), pref.autocast(self.device, self.precision):
            return self.model.vision_model(
                pixel_values=pix, interpolate_pos_encoding=pix.shape[-1] != native
            ).last_hidden_state

    def p_yes(self, image_embeds: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """``p(yes) / (p(yes) + p(no))`` at the first answer token, one per (image, question) row."""
        tok = self.processor.tokenizer(
            questions, padding="longest", truncation=True, max_length=MAX_QUESTION_TOKENS, return_tensors="pt"
        )
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        if self.mode == "benchmark":
            ids = ids.clone()
            ids[:, 0] = self.enc_id
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        with torch.no_grad(), pref.autocast(self.device, self.precision):
            q = self.model.text_encoder(
                input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask, return_dict=True,
            ).last_hidden_state  # fmt: skip
            start = torch.full((len(questions), 1), self.dec_id, dtype=torch.long, device=self.device)
            logits = self.model.text_decoder(
                input_ids=start, encoder_hidden_states=q, encoder_attention_mask=mask, return_dict=True
            ).logits[:, 0, :]
        probs = logits.float().softmax(-1)
        pairs = zip(probs[:, self.yes_id].tolist(), probs[:, self.no_id].tolist(), strict=True)
        return torch.tensor(
            [vqa_answer_probability(y, n) for y, n in pairs]
        )  # fmt: skip

    def question_scores(self, images, questions: list[list[str]]) -> list[list[float]]:
        """Every image's per-question scores (``questions[i]`` are image ``i``'s, possibly none)."""
        pil = pref.to_pil_images(images)
        if len(questions) != len(pil):
            raise ValueError(f"{len(pil)} images but {len(questions)} question lists")
        out: list[list[float]] = [[] for _ in pil]
        for sl in pref.batched(len(pil), self.batch_size):
            emb = self.image_embeds(pil[sl])
            rows = list(range(sl.start, sl.stop))
            for k in range(max((len(questions[i]) for i in rows), default=0)):
                have = [j for j, i in enumerate(rows) if k < len(questions[i])]
                scores = self.p_yes(emb[have], [questions[rows[j]][k] for j in have])
                for j, s in zip(have, scores.tolist(), strict=True):
                    out[rows[j]].append(s)
        return out


@functools.lru_cache(maxsize=2)
def _load(folder: str, device: str):
    from transformers import BlipForQuestionAnswering, BlipProcessor

    model = BlipForQuestionAnswering.from_pretrained(folder, local_files_only=True)
    return model.to(device).eval(), BlipProcessor.from_pretrained(folder, local_files_only=True)


def load_blip_vqa(
    folder: str | os.PathLike | None = None, *, mode: str = "benchmark", batch_size: int = 16, device=None,
    precision: str = "fp32",
) -> BlipVqaScorer:  # fmt: skip
    """The scorer from a LOCAL snapshot of the Hub port (default: artefact ``blip_vqa_capfilt_large``)."""
    folder = require_path(folder, ARTEFACT)
    weights = pref.require_any(folder, ("model.safetensors", "pytorch_model.bin"), ARTEFACT)
    device = torch.device(device) if device is not None else pref.default_device()
    model, processor = _load(str(folder), str(device))
    scorer = BlipVqaScorer(
        model, processor, mode=mode, batch_size=batch_size, device=device, precision=precision
    )
    scorer.weights_file = weights
    return scorer
