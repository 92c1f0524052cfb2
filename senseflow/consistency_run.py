"""From a profile to a consistency-baseline run (LCM, Hyper-SD) in the embedded world, and its export.

``senseflow distill --variant lcm`` / ``--variant hyper_sd`` land here: the profile's
``baselines.lcm`` / ``baselines.hyper_sd`` section maps onto
:func:`senseflow.consistency.consistency_distill`, the teacher, data, prompt cache and
FID-T / adherence evaluator are the SenseFlow run's (:mod:`senseflow.distill_run`), and the
student is exported in the same folder format (``OUT/student``, loadable by
:func:`senseflow.student.load_student` at 1, 2 and 4 steps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from senseflow.config import ConsistencyBaselineConfig, HyperSDConfig, LCMConfig, ProfileConfig, dump_profile
from senseflow.consistency import consistency_distill
from senseflow.distill_run import EmbeddedEvaluator, embedded_teacher_and_data
from senseflow.errors import UserError
from senseflow.export import anchors_for_steps, export_student
from senseflow.io import atomic_write_text


def baseline_section(cfg: ProfileConfig, variant: str) -> LCMConfig | HyperSDConfig:
    """The profile's ``baselines.<variant>`` section; a missing one is a clear error."""
    section = getattr(cfg.baselines, variant, None)
    if section is None:
        raise UserError(
            f"profile {cfg.name!r} has no baselines.{variant} section: "
            f"add one to experiments/{cfg.name}.yaml "
            "(see experiments/embedded.yaml)"
        )
    return section


def consistency_kwargs(variant: str, b: ConsistencyBaselineConfig) -> dict:
    """The loop's keyword arguments for a ``baselines.lcm`` / ``baselines.hyper_sd`` section."""
    kw = {
        "method": variant,
        "iterations": b.iterations,
        "global_batch": b.global_batch,
        "lr": b.lr,
        "lr_warmup": b.lr_warmup,
        "betas": tuple(b.betas),
        "weight_decay": b.weight_decay,
        "grad_clip": b.grad_clip,
        "target_ema": b.target_ema,
        "teacher_steps": b.teacher_steps,
        "skip": b.skip,
        "guidance": tuple(b.guidance),
        "export_guidance": b.export_w(),
        "distance": b.distance,
        "huber_c": b.huber_c,
        "seed": b.seed,
        "checkpoint_every": b.checkpoint_every,
        "log_every": b.log_every,
        "eval_every": b.eval_every,
    }
    if isinstance(b, LCMConfig):
        kw.update(guidance_embedding=b.guidance_embedding, embedding_dim=b.embedding_dim, boundary=b.boundary)
    else:
        kw.update(guidance_embedding=False, segments=tuple(b.segments))
    return kw


def consistency_embedded(
    cfg: ProfileConfig,
    out_dir: str | Path,
    *,
    variant: str,
    world_dir: str | Path,
    teacher_dir: str | Path,
    probe_path: str | Path | None = None,
    reference_dir: str | Path | None = None,
    eval_prompts: int = 256,
    cache_dir: str | Path | None = None,
    deterministic: bool = False,
    progress: bool = True,
) -> dict:
    """Train the ``variant`` baseline on the embedded teacher; export ``out_dir/student``, ``summary.json``.

    With ``reference_dir`` (teacher samples) the FID-T / adherence curve is measured every
    ``eval_every`` iterations and the summary holds the final student's metrics at 4, 2 and 1
    steps (``probe_path`` is then required).
    """
    if cfg.family != "embedded":
        raise UserError(
            f"profile {cfg.name!r} is family {cfg.family!r}; the consistency baselines run the embedded world"
        )
    b = baseline_section(cfg, variant)
    teacher, exportable, data = embedded_teacher_and_data(cfg, teacher_dir, world_dir, cache_dir, seed=b.seed)
    anchors = cfg.distill.anchor_times()
    evaluator = None
    if reference_dir is not None:
        if probe_path is None:
            raise UserError("--reference needs --probe (FID-T features and adherence judge)")
        from senseflow.world.probes import load_probe

        evaluator = EmbeddedEvaluator(
            load_probe(probe_path), reference_dir, n=eval_prompts, anchors=anchors, sampler=b.sampler
        )
    kwargs = consistency_kwargs(variant, b)
    result = consistency_distill(
        out_dir, teacher=teacher, data=data, evaluator=evaluator, device=cfg.runtime.device,
        deterministic=deterministic, progress=progress,
        run_config={"variant": variant, "teacher": str(teacher_dir), "cached_text": cache_dir is not None},
        **kwargs,
    )  # fmt: skip
    w = b.export_w()
    network = result.student.bake(w)
    recipe = {
        "anchors": anchors,
        "sampler": b.sampler,
        "resolution": cfg.world.scenes.resolution,
        "variant": variant,
        "method": variant,
        "profile": cfg.name,
        "iterations": b.iterations,
        # the student was trained for w in `guidance_range`; the export fixes w (embedding baked in)
        "distilled_guidance": w,
        "guidance_range": list(b.guidance),
        "guidance_embedding": "baked into time_text_embed.text_embedder.linear_2.bias"
        if kwargs["guidance_embedding"] else None,
        **({"segments": list(b.segments)} if variant == "hyper_sd" else {"boundary": b.boundary}),
    }  # fmt: skip
    config_yaml = dump_profile(cfg)
    export_student(
        Path(out_dir) / "student", network.state_dict(), exportable, recipe, config_yaml=config_yaml
    )
    summary: dict = {
        "variant": variant,
        "iterations": result.iterations,
        "seconds": round(result.seconds, 1),
        "seconds_per_iteration": json.loads((Path(out_dir) / "timing.json").read_text())[
            "seconds_per_iteration"
        ],
        "sampler": b.sampler,
        "distilled_guidance": w,
    }
    if evaluator is not None:
        student = teacher.with_network(network)
        finals = {}
        for steps in (len(anchors), *[k for k in (2, 1) if k < len(anchors) and len(anchors) % k == 0]):
            finals[f"{steps}_step"] = evaluator(
                student, result.iterations, anchors=anchors_for_steps(anchors, steps)
            )
        summary["final"] = finals
        t_s = time.perf_counter()
        evaluator.images(student, anchors)
        summary["seconds_per_image"] = (time.perf_counter() - t_s) / len(evaluator.records)
    atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
