"""The ``world`` stage: text encoder, tokenizer and fixed prompt splits written once to disk."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from senseflow.io import atomic_write_text, ensure_writable_dir
from senseflow.world.scenes import caption, sample_scene
from senseflow.world.text import WorldTextEncoder, build_text_encoder
from senseflow.world.vocab import build_tokenizer

log = logging.getLogger(__name__)


def prompt_records(split: str, n: int, *, digit_counts: dict[int, float], seed: int) -> list[dict]:
    """``n`` distinct prompts of ``split`` with their scenes, in a fixed order.

    Test and validation scenes draw held-out handwriting, so their real images (FID
    references) are handwriting no model was trained on.
    """
    rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split]])
    instances = "train" if split == "train" else "heldout"
    seen: set[str] = set()
    out = []
    while len(out) < n:
        scene = sample_scene(rng, digit_counts=digit_counts, instances=instances, split=split)
        text = caption(scene)
        if text in seen:
            continue
        seen.add(text)
        out.append({"id": f"{split}-{len(out):05d}", "prompt": text, "scene": scene.to_dict()})
    return out


def build_world(
    out_dir: str | Path,
    *,
    digit_counts: dict[int, float],
    prompts_per_split: dict[str, int],
    text_hidden_size: int,
    text_num_layers: int,
    text_num_heads: int,
    text_max_length: int,
    text_seed: int,
    text_pooling: str = "tokens",
    text_pretrain: dict | None = None,
    resolution: int = 16,
    seed: int,
    progress: bool = True,
) -> dict:
    """Write ``tokenizer/``, ``text_encoder/`` and ``prompts/{split}.jsonl`` under ``out_dir``.

    With ``text_pretrain`` (keywords of :func:`~senseflow.world.text_pretrain.pretrain_text_encoder`,
    ``steps`` > 0) the encoder is first trained contrastively on scenes of ``resolution`` px and its
    report written to ``text_encoder_report.json`` (no wall clock: the folder is a dependency of
    the teacher; the seconds go to the log).
    """
    out_dir = ensure_writable_dir(out_dir)
    tokenizer = build_tokenizer(text_max_length)
    model = build_text_encoder(
        hidden_size=text_hidden_size,
        num_layers=text_num_layers,
        num_heads=text_num_heads,
        max_length=text_max_length,
        seed=text_seed,
    )
    summary = {}
    if text_pretrain and text_pretrain.get("steps", 0) > 0:
        from senseflow.world.text_pretrain import pretrain_text_encoder

        report = pretrain_text_encoder(
            model, tokenizer, resolution=resolution, digit_counts=digit_counts, progress=progress,
            **text_pretrain,
        )  # fmt: skip
        log.info("text encoder pre-trained in %.1f s", report.pop("train_seconds"))
        atomic_write_text(out_dir / "text_encoder_report.json", json.dumps(report, indent=2) + "\n")
        summary["text_encoder"] = report
    else:
        (out_dir / "text_encoder_report.json").unlink(missing_ok=True)
    encoder = WorldTextEncoder(tokenizer, model, pooling=text_pooling)
    encoder.save(out_dir)
    for split, n in prompts_per_split.items():
        records = prompt_records(split, n, digit_counts=digit_counts, seed=seed)
        encoder.check([r["prompt"] for r in records])
        lines = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write_text(out_dir / "prompts" / f"{split}.jsonl", lines)
        summary[split] = len(records)
    return summary
