"""A real profile's distillation run (sdxl, sd3, flux): teacher from the weights, real images, VFM D.

The counterpart of :func:`senseflow.distill_run.distill_embedded` for pretrained teachers:
the teacher comes from ``teacher.pretrained`` (offline), the data from the profile's
``data:`` section (:mod:`senseflow.real_data`), the discriminator's frozen VFM from the
weights directory (``gan.backbone`` is an artefact of ``eval/weights_manifest.yaml``), and
the same :func:`senseflow.train.distill` loop trains the student, which is exported with
its base model recorded (text encoders and VAE come from the teacher's weights).

Text conditioning: when ``build/cache`` (the ``cache`` stage) holds every training caption
of this teacher's encoders, the loop reads the cache and the live text encoders are dropped
after loading (T5-XXL alone is ~9 GB); otherwise they stay on the device and encode each
batch. The summary records which (``"text": "cached" | "live"``). Latents are always encoded
live by the VAE: its decoder is needed anyway for the discriminator, and the encoder is small.

No in-loop evaluator: FID-T on a real teacher needs its samples, which the pipeline
measures after training (``generate@teacher_full`` and ``evaluate@<candidate>``); pass
``evaluator`` to get curves.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from senseflow.config import ProfileConfig
from senseflow.errors import UserError
from senseflow.io import atomic_write_text

log = logging.getLogger(__name__)


def load_vfm(cfg: ProfileConfig, weights_dir: str | Path | None = None) -> torch.nn.Module:
    """The discriminator's frozen VFM (``gan.backbone``, e.g. ``dinov2_vitl14``) from the weights dir."""
    from transformers import Dinov2Model

    from eval.weights import require

    name = cfg.distill.gan.backbone
    if not name.startswith("dinov2"):
        raise UserError(f"profile {cfg.name!r}: gan.backbone {name!r}: real profiles use a dinov2_* VFM")
    path = require(name, weights_dir)  # never downloads; names `senseflow weights fetch` otherwise
    return Dinov2Model.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)


def use_cached_text(cfg: ProfileConfig, teacher, captions: list[str], cache_dir: str | Path | None) -> str:
    """Swap ``teacher.text`` for the prompt cache if it holds every caption; return ``cached`` / ``live``."""
    from senseflow.cache import MANIFEST, PROMPTS, CachedPromptEncoder, pretrained_encoder_id

    if cache_dir is None or not (Path(cache_dir) / PROMPTS / MANIFEST).is_file():
        log.info("no prompt cache at %s: the text encoders run live", cache_dir)
        return "live"
    encoder_id = pretrained_encoder_id(cfg.family, cfg.teacher.pretrained)
    cached = CachedPromptEncoder(cache_dir)
    if cached.encoder_id != encoder_id:
        log.warning("%s was written by other text encoders: the text encoders run live", cache_dir)
        return "live"
    missing = sum(c not in cached for c in ["", *captions])
    if missing:
        log.warning("%s lacks %d training captions (rerun the cache stage): the text encoders run live",
                    cache_dir, missing)  # fmt: skip
        return "live"
    teacher.text = cached  # the live encoders lose their last reference here and are freed
    return "cached"


def discriminator_text_features(cfg: ProfileConfig, d, teacher):
    """The CLIP ViT-L/14 text tower of the VFM discriminator's condition, or None.

    ``gan.text_condition: clip_l`` (released): the teacher's own CLIP-L ``text_encoder``
    (SDXL, SD 3.5 and FLUX all ship it) with its tokenizer; ``pooled`` or no VFM
    discriminator: None (the teacher's pooled embedding conditions the heads).
    """
    from senseflow.discriminator.text import ClipTextFeatures

    if not (d.gan.enabled and d.gan.head == "vfm" and d.gan.text_condition == "clip_l"):
        return None
    pipe = getattr(teacher.text, "pipeline", None)
    return ClipTextFeatures.from_pipeline(pipe, where=f"profile {cfg.name!r}'s teacher")


def place_frozen_parts(teacher, device: str, clip_text=None) -> None:
    """Move the VAE, live text encoders and the discriminator's CLIP-L tower where the loop runs.

    The loop moves only the denoiser.
    """
    from senseflow.distributed import init_distributed

    target = init_distributed(device).device  # the device train.distill picks for this rank
    vae = getattr(teacher.codec, "vae", None)
    if vae is not None:
        vae.to(target)
    pipe = getattr(teacher.text, "pipeline", None)  # live encoders; a cache has none
    if pipe is not None:
        pipe.to(target)
    if clip_text is not None:
        clip_text.to(target)


def student_sampler(family: str) -> str:
    """The sampler a real family's student is exported with, agreeing with its exported scheduler.

    SDXL students carry LCM's scheduler, which re-noises the x0 estimate with fresh noise, and
    the paper samples SDXL that way (``x0``); flow students carry an Euler scheduler (``euler``).
    """
    return "x0" if family == "sdxl" else "euler"


def export_real(
    cfg: ProfileConfig, variant: str, folder: Path, state: dict, teacher, lora_state=None
) -> Path:
    """Write the student folder of a real-family run (base model recorded, no text encoder copied)."""
    from senseflow.distill_run import export_variant, student_recipe

    d = cfg.variant(variant)
    sampler = student_sampler(cfg.family)
    recipe = student_recipe(cfg, d, variant, sampler, cfg.teacher.pretrained.resolution, family=cfg.family)
    base = cfg.teacher.pretrained.model_dump(mode="json")
    return export_variant(cfg, d, folder, state, teacher, recipe, base=base, lora_state=lora_state)


def distill_real(
    cfg: ProfileConfig,
    out_dir: str | Path,
    *,
    variant: str = "senseflow",
    cache_dir: str | Path | None = None,
    weights_dir: str | Path | None = None,
    evaluator=None,
    progress: bool = True,
) -> dict:
    """Distil the real teacher of ``cfg`` with ``variant``; write ``out_dir/student`` and ``summary.json``."""
    from senseflow.backbones.loading import load_backbone
    from senseflow.discriminator.model import build_discriminator
    from senseflow.distill_run import distill_kwargs, is_main_process
    from senseflow.real_data import data_from_profile
    from senseflow.train import distill

    if cfg.family == "embedded":
        raise UserError(f"profile {cfg.name!r} is embedded: distill_embedded runs it")
    d = cfg.variant(variant)
    data = data_from_profile(cfg, seed=d.seed)
    data.check(max(1, d.global_batch // int(os.environ.get("WORLD_SIZE", "1"))))  # before any model loads
    teacher = load_backbone(cfg.family, cfg.teacher.pretrained)
    # taken before the prompt cache may replace the live encoders: the discriminator keeps the
    # (small, ~0.25 GB) CLIP-L text tower even when T5 and CLIP-G are dropped
    clip_text = discriminator_text_features(cfg, d, teacher)
    text = use_cached_text(cfg, teacher, data.captions(), cache_dir)
    place_frozen_parts(teacher, cfg.runtime.device, clip_text)
    discriminator = None
    if d.gan.enabled and d.gan.head == "vfm":
        pooled = teacher.text.encode([""]).pooled.shape[1] if clip_text is None else None
        with torch.random.fork_rng(devices=[]):  # heads' init independent of earlier RNG use
            torch.manual_seed(d.seed)
            discriminator = build_discriminator(
                d.gan, load_vfm(cfg, weights_dir), pooled, image_size=cfg.teacher.pretrained.resolution,
                text_features=clip_text,
            )  # fmt: skip
    kwargs = distill_kwargs(d)
    if kwargs["init_from"]:
        kwargs["init_from"] = Path(kwargs["init_from"])
    result = distill(
        out_dir, teacher=teacher, data=data, discriminator=discriminator, evaluator=evaluator,
        progress=progress, parallel=cfg.runtime.parallel, device=cfg.runtime.device,
        run_config={"variant": variant, "teacher": cfg.teacher.pretrained.model_dump(mode="json"),
                    "data": cfg.data.model_dump(mode="json"), "text": text,
                    # the heads' shape and inputs: a checkpoint of other heads must not resume
                    "gan_conditioning": [d.gan.text_condition, d.gan.reference_condition]},
        **kwargs,
    )  # fmt: skip
    summary = {"variant": variant, "iterations": result.iterations, "seconds": round(result.seconds, 1),
               "text": text, "images": len(data)}  # fmt: skip
    if is_main_process():
        export_real(cfg, variant, Path(out_dir) / "student", result.generator_state, teacher,
                    lora_state=result.lora_state)  # fmt: skip
        atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def export_real_from_run(cfg: ProfileConfig, run_dir: str | Path, out: str | Path, variant: str) -> Path:
    """Export the generator of an unfinished real-family run's latest checkpoint to ``out``."""
    from senseflow.backbones.loading import load_backbone
    from senseflow.train import load_generator_state

    teacher = load_backbone(cfg.family, cfg.teacher.pretrained)
    state = load_generator_state(Path(run_dir), teacher)
    return export_real(cfg, variant, Path(out), state, teacher)


def teacher_registry(cfg: ProfileConfig, steps: int) -> tuple[str, dict]:
    """The real teacher at ``steps`` steps as a one-row candidate registry: ``(name, {name: recipe})``.

    The teacher candidates of a real profile (``teacher_full``, ``teacher_4``, ...) sample its
    own diffusers pipeline (``teacher.pretrained``, offline) with the profile's CFG scale and
    the pipeline's own scheduler, through :func:`senseflow.generate.generate` like any
    registry candidate.
    """
    from senseflow.baselines import FAMILY_OF_PIPELINE, Recipe, WeightRef

    p = cfg.teacher.pretrained
    pipeline = next(cls for cls, family in FAMILY_OF_PIPELINE.items() if family == cfg.family)
    name = f"{cfg.name}_teacher_{steps}"
    recipe = Recipe(
        name=name, label=f"{cfg.name} teacher, {steps} steps", kind="teacher", pipeline=pipeline,
        base=WeightRef(repo=p.model_id, revision=p.revision), steps=steps, guidance=cfg.teacher.sample.cfg,
        dtype=p.dtype, resolution=p.resolution, licence=p.licence,
        # SDXL's pipeline call takes no max_sequence_length (its CLIP encoders read 77 tokens)
        max_sequence_length=None if cfg.family == "sdxl" else p.max_sequence_length,
    )  # fmt: skip
    return name, {name: recipe}
