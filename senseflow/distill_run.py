"""From a profile to a distillation run: glue between the typed config and :func:`senseflow.train.distill`.

``distill_kwargs`` maps a ``distill`` section (or one of the profile's variants) onto the
loop's keywords; ``distill_embedded`` assembles the embedded world's run (teacher, data,
probe discriminator, FID-T / adherence evaluator) and exports the student.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from senseflow.config import DistillConfig, ProfileConfig, dump_profile
from senseflow.data import WorldData
from senseflow.discriminator.model import build_discriminator
from senseflow.errors import UserError
from senseflow.export import export_student
from senseflow.io import atomic_write_text
from senseflow.samplers import prompt_noise
from senseflow.samples import load_folder_images, scenes_of
from senseflow.student_sampler import student_sample
from senseflow.teacher import load_teacher
from senseflow.train import distill
from senseflow.world.adherence import adherence
from senseflow.world.probes import load_probe, run_probe
from senseflow.world.scenes import to_tensor_range, to_uint8

DISCRIMINATOR_WIDTH = 32  # heads' width on the embedded probe (its taps are 32-128 channels)


def distill_kwargs(d: DistillConfig) -> dict:
    """The loop's keyword arguments for a ``distill`` section (method.md sections 1-5)."""
    return {
        "anchors": tuple(d.anchor_times()),
        "iterations": d.iterations,
        "global_batch": d.global_batch,
        "generator_lr": d.generator_lr,
        "fake_lr": d.fake_lr,
        "lr_warmup": d.lr_warmup,
        "lr_after_warmup": d.lr_after_warmup,
        "optimizer": d.optimizer,
        "betas": tuple(d.betas),
        "weight_decay": d.weight_decay,
        "grad_clip": d.grad_clip,
        "ttur": d.ttur,
        "dmd_t": d.dmd_t.model_dump(mode="json"),
        "teacher_cfg": tuple(d.teacher_cfg),
        "backward_simulation_prob": d.backward_simulation_prob,
        "fake_t": d.fake_t.model_dump(mode="json"),
        "ida": d.ida.enabled,
        "ida_lam": d.ida.lam,
        "isg": d.isg.enabled,
        "isg_weight": d.isg.weight,
        "isg_margin": d.isg.margin,
        "isg_margin_units": d.isg.margin_units,
        "isg_distance": d.isg.distance,
        "isg_cfg": None if d.isg.cfg is None else tuple(d.isg.cfg),
        "gan": d.gan.enabled,
        "gan_head": d.gan.head,
        "gan_loss": d.gan.loss,
        "gan_weight": d.gan.weight,
        "gan_fake_weight": d.gan.fake_weight,
        "gan_curve": d.gan.weight_curve,
        "gan_weight_discriminator": d.gan.weight_discriminator,
        "gan_lr": d.gan.lr,
        "init_from": d.init_from,
        "ema_decay": d.ema_decay,
        "lora_rank": d.lora_rank,
        "lora_alpha": d.lora_alpha,
        "precision": d.precision,
        "grad_checkpointing": d.grad_checkpointing,
        "seed": d.seed,
        "checkpoint_every": d.checkpoint_every,
        "log_every": d.log_every,
        "eval_every": d.eval_every,
    }


class EmbeddedEvaluator:
    """FID-T (probe features, against teacher samples for the same prompts and seeds) and adherence.

    The reference is a teacher sample folder (PNG + manifest with prompts, seeds and
    scenes; the ``teacher_samples`` stage). The student samples the same prompts from the
    same per-prompt seeds, so FID-T compares like with like.
    """

    def __init__(
        self, probe, reference_dir: str | Path, *, n: int, anchors: list[float], sampler: str = "euler"
    ):
        images, records = load_folder_images(reference_dir)
        if len(records) < 2:
            raise UserError(f"{reference_dir}: FID-T needs at least 2 teacher samples, found {len(records)}")
        self.records = records[:n]
        self.probe = probe
        self.anchors = list(anchors)
        self.sampler = sampler
        self.scenes = scenes_of(self.records)
        from eval.metrics import feature_statistics

        self.ref_stats = feature_statistics(run_probe(probe, images[: len(self.records)]).features)

    def images(self, student, anchors: list[float]) -> torch.Tensor:
        """The student's samples for the reference prompts and seeds, in [-1, 1], rounded to 8 bits.

        Rounded like a saved PNG, so the curve's numbers equal what ``senseflow-eval`` measures
        on the same samples written to a folder (the reference is read from PNGs too).
        """
        # the student may sit on an accelerator mid-training; prompts, noise and the probe are on CPU
        device = next(student.network.parameters()).device
        cond = student.text.encode([r["prompt"] for r in self.records]).to(device)
        seeds = [int(r["seed"]) for r in self.records]
        shape = tuple(student.latent_shape(student_resolution(student)))
        noise = prompt_noise(seeds, shape).to(device)
        x, _ = student_sample(student, cond, noise, anchors, sampler=self.sampler, seeds=seeds)
        return to_tensor_range(to_uint8(student.codec.decode(x).cpu()))

    def __call__(self, student, iteration: int, anchors: list[float] | None = None) -> dict:
        """Metrics of ``student`` (a backbone) sampled at its anchors."""
        from eval.metrics import feature_statistics, frechet_distance

        images = self.images(student, anchors or self.anchors)
        stats = feature_statistics(run_probe(self.probe, images).features)
        out = {"fid_t": frechet_distance(*stats, *self.ref_stats)}
        out.update({f"adherence_{k}": v for k, v in adherence(self.probe, images, self.scenes).items()
                    if k != "n"})  # fmt: skip
        return out


def student_resolution(backbone) -> int:
    """Image side of a pixel-space backbone (the embedded transformer's sample size)."""
    return int(backbone.network.config.sample_size)


def embedded_teacher_and_data(cfg: ProfileConfig, teacher_dir, world_dir, cache_dir, *, seed: int):
    """The embedded teacher, the backbone to export students from, and the training data.

    With ``cache_dir`` (``senseflow cache``) the teacher reads its text conditioning from the
    cache and the data draws prompts from the world's fixed train list, so no text encoder runs
    while training; the returned exportable backbone still carries the world's text encoder.
    """
    teacher, _ = load_teacher(teacher_dir, world_dir)
    exportable = teacher
    res = cfg.world.scenes.resolution
    counts = dict(cfg.world.scenes.digit_counts)
    data = WorldData(resolution=res, digit_counts=counts, seed=seed)
    if cache_dir is not None:
        from senseflow.backbones.flow import SD3FlowBackbone
        from senseflow.cache import CachedPromptEncoder
        from senseflow.world.prompts import load_prompt_file

        teacher = SD3FlowBackbone(teacher.transformer, CachedPromptEncoder(cache_dir), shift=teacher.shift)
        records = load_prompt_file(Path(world_dir) / "prompts" / "train.jsonl")
        data = WorldData(resolution=res, digit_counts=counts, seed=seed, prompts=records)
    return teacher, exportable, data


def distill_embedded(
    cfg: ProfileConfig,
    out_dir: str | Path,
    *,
    variant: str = "senseflow",
    world_dir: str | Path,
    teacher_dir: str | Path,
    probe_path: str | Path,
    reference_dir: str | Path | None = None,
    eval_prompts: int = 256,
    sampler: str = "euler",
    cache_dir: str | Path | None = None,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Distil the embedded teacher with ``variant`` of the profile; export ``out_dir/student``.

    ``cache_dir`` (written by ``senseflow cache``): prompt embeddings come from the cache and
    training prompts from the world's fixed train list, so the text encoder is not run
    during training. ``init_from`` overrides the variant's ``init_from``.

    Returns a summary (iterations, seconds, final metrics when ``reference_dir`` is given)
    that is also written to ``out_dir/summary.json``.
    """
    if cfg.family != "embedded":
        raise UserError(
            f"profile {cfg.name!r} is family {cfg.family!r}; distill_embedded runs the embedded world"
        )
    d = cfg.variant(variant)
    teacher, exportable, data = embedded_teacher_and_data(cfg, teacher_dir, world_dir, cache_dir, seed=d.seed)
    res = cfg.world.scenes.resolution
    probe = load_probe(probe_path)
    discriminator = None
    if d.gan.enabled and d.gan.head == "vfm":
        with torch.random.fork_rng(devices=[]):  # heads' init independent of earlier RNG use
            torch.manual_seed(d.seed)
            # the embedded world has no CLIP ViT-L/14: the heads read its own text encoder's
            # pooled embedding whatever gan.text_condition says (discriminator/text.py)
            discriminator = build_discriminator(
                d.gan, probe, teacher.text.pooled_size, image_size=res, width=DISCRIMINATOR_WIDTH
            )
    evaluator = None
    if reference_dir is not None:
        evaluator = EmbeddedEvaluator(
            probe, reference_dir, n=eval_prompts, anchors=d.anchor_times(), sampler=sampler
        )
    kwargs = distill_kwargs(d)
    if init_from is not None:
        kwargs["init_from"] = init_from
    if kwargs["init_from"]:
        kwargs["init_from"] = Path(kwargs["init_from"])
    result = distill(
        out_dir,
        teacher=teacher,
        data=data,
        discriminator=discriminator,
        evaluator=evaluator,
        progress=progress,
        parallel=cfg.runtime.parallel,
        device=cfg.runtime.device,
        run_config={"variant": variant, "teacher": str(teacher_dir), "cached_text": cache_dir is not None},
        **kwargs,
    )
    summary: dict = {"variant": variant, "iterations": result.iterations, "seconds": round(result.seconds, 1)}
    if is_main_process():
        _export(cfg, d, variant, sampler, Path(out_dir) / "student", result.generator_state, exportable,
                lora_state=result.lora_state)  # fmt: skip
        if evaluator is not None:
            student = teacher.with_network(_state_network(teacher, result.generator_state))
            summary["final"] = evaluator(student, result.iterations)
            t_s = time.perf_counter()
            evaluator.images(student, d.anchor_times())
            summary["seconds_per_image"] = (time.perf_counter() - t_s) / len(evaluator.records)
        atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def is_main_process() -> bool:
    """Rank 0 under torchrun (or the only process): the one that exports and reports."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def student_recipe(cfg: ProfileConfig, d: DistillConfig, variant: str, sampler: str, resolution: int,
                   **extra) -> dict:  # fmt: skip
    """An exported student's ``recipe.json``: anchors, sampler, resolution, variant, profile (+ ``extra``)."""
    return {"anchors": d.anchor_times(), "sampler": sampler, "resolution": resolution, "variant": variant,
            "profile": cfg.name, "iterations": d.iterations, **extra}  # fmt: skip


def export_variant(
    cfg: ProfileConfig, d: DistillConfig, folder: Path, state: dict, teacher, recipe: dict, *,
    base: dict | None = None, lora_state=None,
) -> Path:  # fmt: skip
    """Write the student folder of a run of variant ``d`` (its profile with ``d`` as ``distill``)."""
    config_yaml = dump_profile(cfg.model_copy(update={"distill": d}))
    return export_student(
        folder, state, teacher, recipe, config_yaml=config_yaml, base=base, lora_state=lora_state
    )


def _export(
    cfg, d: DistillConfig, variant: str, sampler: str, folder: Path, state: dict, teacher, lora_state=None
) -> Path:
    recipe = student_recipe(cfg, d, variant, sampler, cfg.world.scenes.resolution)
    return export_variant(cfg, d, folder, state, teacher, recipe, lora_state=lora_state)


def export_from_run(
    cfg: ProfileConfig,
    run_dir: str | Path,
    out: str | Path,
    *,
    variant: str = "senseflow",
    world_dir: str | Path,
    teacher_dir: str | Path,
    sampler: str = "euler",
) -> Path:
    """Export the generator of a distillation run's latest checkpoint as a student folder."""
    from senseflow.train import load_generator_state

    d = cfg.variant(variant)
    teacher, _ = load_teacher(teacher_dir, world_dir)
    state = load_generator_state(Path(run_dir), teacher)
    return _export(cfg, d, variant, sampler, Path(out), state, teacher)


def _state_network(teacher, state: dict) -> torch.nn.Module:
    from senseflow.export import student_network  # from the config: the teacher may be sharded

    return student_network(teacher, state).eval().requires_grad_(False)
