"""The consistency-distillation loop of the LCM and Hyper-SD baselines, over the Backbone protocol.

One function, :func:`consistency_distill`, for both methods (the loss is the only difference):

1. prompts and real images from the data source, seeded by (seed, iteration);
2. noise, guidance weights ``w ~ U(w_lo, w_hi)`` and time pairs on the teacher's grid from a
   generator seeded by the iteration (:func:`senseflow.losses.sample_skip_pairs` for LCM,
   :func:`senseflow.losses.sample_segment_pairs` with the stage's ``S`` for Hyper-SD);
3. the loss (:func:`senseflow.losses.lcm_loss` / :func:`senseflow.losses.tscd_loss`): teacher
   Euler step with CFG ``w``, target = EMA network, gradient only through the online student;
4. clip, AdamW step, then ``theta- <- mu theta- + (1 - mu) theta`` (the EMA target).

The student is a :class:`~senseflow.guidance_embedding.GuidanceConditioned` copy of the
teacher's network (LCM: with the ``w`` embedding; Hyper-SD: without, the teacher's ``w`` is
fixed). Checkpoints, resume-by-rerun and the run fingerprint are :mod:`senseflow.checkpoint`, the
NaN guard, optimiser and timer :mod:`senseflow.loop_tools`, as for the SenseFlow loop: a
checkpoint holds the student, its optimiser and LR schedule, and the target network, so a
rerun resumes bit-identically.
Single process (the baselines are embedded-world runs).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from senseflow.backbones.base import Backbone
from senseflow.checkpoint import CHECKPOINT, resume, run_fingerprint, save_checkpoint, write_run_state
from senseflow.data import TrainData
from senseflow.distributed import init_distributed
from senseflow.errors import UserError
from senseflow.guidance_embedding import GuidanceConditioned
from senseflow.io import atomic_write_text, ensure_writable_dir
from senseflow.loop_tools import (
    EVAL_CURVE,
    PhaseTimer,
    diverged,
    grad_norm,
    is_finite,
    iteration_seed,
    lr_factor,
    make_optimizer,
    read_curve,
)
from senseflow.losses import (
    ema_update,
    lcm_loss,
    sample_segment_pairs,
    sample_skip_pairs,
    stage_segments,
    tscd_loss,
)

log = logging.getLogger(__name__)

METHODS = ("lcm", "hyper_sd")


@dataclass
class ConsistencyResult:
    """What a finished :func:`consistency_distill` run hands back."""

    student: GuidanceConditioned  # the online student (call .bake(w) for a plain network)
    target: GuidanceConditioned  # the EMA target network theta-
    iterations: int
    seconds: float
    out_dir: Path


def consistency_distill(
    out_dir: str | Path,
    *,
    teacher: Backbone,  # frozen flow teacher (its network is not modified)
    data: TrainData,  # prompts + real images, deterministic in (iteration, rank)
    method: str = "lcm",  # "lcm" | "hyper_sd"
    evaluator: Callable[[Backbone, int], dict]
    | None = None,  # (plain student backbone, iteration) -> metrics
    iterations: int = 1000,
    global_batch: int = 64,
    lr: float = 1e-4,
    lr_warmup: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    target_ema: float = 0.95,  # mu of the EMA target network (LCM: 0.95)
    teacher_steps: int = 32,  # N: the solver's grid
    skip: int = 1,  # k: teacher step from t_{n+k} to t_n
    guidance: tuple[float, float] = (4.0, 4.0),  # w ~ U(lo, hi) (teacher CFG; LCM's student condition)
    export_guidance: float = 4.0,  # w the evaluator's (and the export's) baked student uses
    guidance_embedding: bool = True,  # LCM: condition the student on w
    embedding_dim: int = 256,
    boundary: str = "flow",  # LCM: c_skip / c_out ("flow" | "lcm")
    segments: tuple[int, ...] = (8, 4, 2, 1),  # Hyper-SD: S per stage
    distance: str = "l2",  # "l2" | "pseudo_huber"
    huber_c: float | None = None,
    seed: int = 0,
    checkpoint_every: int = 100,
    log_every: int = 10,
    eval_every: int = 0,
    device: str = "auto",
    deterministic: bool = False,
    progress: bool = True,
    run_config: dict | None = None,  # extra settings a checkpoint must match to resume
) -> ConsistencyResult:
    """Distil ``teacher`` by consistency distillation (``method``); return the trained student.

    Writes ``checkpoint/`` (DCP), ``state.json``, ``dvclive/``, ``timing.json`` and (with an
    evaluator) ``eval_curve.jsonl`` in ``out_dir``; rerunning the same call resumes.
    """
    settings = {k: v for k, v in locals().items() if k not in _NOT_FINGERPRINTED}
    fingerprint = run_fingerprint({**settings, **(run_config or {})})
    if method not in METHODS:
        raise UserError(f"unknown consistency method {method!r}; expected one of {', '.join(METHODS)}")
    if teacher.prediction != "flow":
        raise UserError(
            f"the consistency baselines need a flow teacher, got prediction {teacher.prediction!r}"
        )
    if deterministic:
        torch.use_deterministic_algorithms(True)
    info = init_distributed(device)
    if info.world_size > 1:
        raise UserError("the consistency baselines run in one process: launch without torchrun")
    out_dir = ensure_writable_dir(out_dir)
    dev = info.device

    # ---------------------------------------------------------------- networks
    teacher.network.requires_grad_(False).eval()
    teacher.network.to(dev)
    embed = guidance_embedding and method == "lcm"
    student = GuidanceConditioned(teacher.trainable_copy(), embed=embed, dim=embedding_dim, seed=seed).to(dev)
    student.train().requires_grad_(True)
    target = student.fresh_copy().to(dev).eval().requires_grad_(False)
    S_train, S_target = teacher.with_network(student), teacher.with_network(target)
    opt = make_optimizer(student.parameters(), "adamw", lr, betas, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(lr, lr_warmup, None))

    # ---------------------------------------------------------------- resume
    ckpt = out_dir / CHECKPOINT
    nets = {"student": (student, opt), "target": (target, None)}
    start = resume(out_dir, nets, None, sched, fingerprint)
    if start:
        log.info("resuming %s at iteration %d (%s)", method, start, ckpt)
    from dvclive import Live

    live = Live(str(out_dir / "dvclive"), resume=start > 0, dvcyaml=None, save_dvc_exp=False)
    curve_path = out_dir / EVAL_CURVE
    curve = read_curve(curve_path) if start > 0 else []
    if evaluator is not None and eval_every and start == 0:
        curve = [{"iteration": 0, **evaluator(teacher.with_network(student.bake(export_guidance)), 0)}]
        atomic_write_text(curve_path, json.dumps(curve[0]) + "\n")

    # ---------------------------------------------------------------- loop
    uncond_one = teacher.text.encode([""])
    timer = PhaseTimer()
    acc: dict[str, float] = defaultdict(float)
    t_start = time.perf_counter()
    last_good = start
    w_lo, w_hi = guidance
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=method, disable=not progress)
    for it in bar:
        gen = torch.Generator().manual_seed(iteration_seed(seed, it, 0))
        with timer("data"):
            prompts, images = data.batch(it, 0, global_batch)
            with torch.no_grad():
                x0 = teacher.codec.encode(images.to(dev))
            cond = teacher.text.encode(prompts).to(dev)
            uncond = uncond_one.index([0] * len(prompts)).to(dev)
        w = (w_lo + (w_hi - w_lo) * torch.rand(global_batch, generator=gen)).to(dev)
        eps = torch.randn(x0.shape, generator=gen).to(dev)

        def teacher_v(x, t, cond=cond, uncond=uncond, w=w):
            return teacher.guided_predict(x, t, cond, uncond, w)

        def student_v(x, t, cond=cond, w=w):
            with student.at(w):
                return S_train.predict(x, t, cond)

        def target_v(x, t, cond=cond, w=w):
            with target.at(w):
                return S_target.predict(x, t, cond)

        with timer("loss"):
            if method == "lcm":
                t_hi, t_lo = sample_skip_pairs(
                    teacher_steps, skip, global_batch, shift=teacher.shift, generator=gen
                )
                loss = lcm_loss(student_v, target_v, teacher_v, x0, eps, t_hi.to(dev), t_lo.to(dev),
                                boundary=boundary, distance=distance, huber_c=huber_c)  # fmt: skip
                n_seg = None
            else:
                n_seg = stage_segments(list(segments), it, iterations)
                t_hi, t_lo, t_b = sample_segment_pairs(
                    teacher_steps, skip, n_seg, global_batch, shift=teacher.shift, generator=gen
                )
                loss = tscd_loss(student_v, target_v, teacher_v, x0, eps, t_hi.to(dev), t_lo.to(dev),
                                 t_b.to(dev), distance=distance, huber_c=huber_c)  # fmt: skip
        with timer("backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = grad_norm(list(student.parameters()), grad_clip)
        if not is_finite(loss, norm):
            diverged(it, {"loss": loss, "grad_norm": norm}, last_good, ckpt, live)
        opt.step()
        sched.step()
        with timer("target_ema"):
            ema_update(target, student, target_ema)  # theta- <- mu theta- + (1 - mu) theta
        acc["loss"] += float(loss.detach())
        acc["grad_norm"] += float(norm)
        acc["n"] += 1
        done = it + 1
        # ------------------------------------------------------------ bookkeeping
        if done % log_every == 0 or done == iterations:
            live.step = done
            n = max(acc.pop("n"), 1)
            for k in sorted(acc):
                live.log_metric(f"train/{k}", acc[k] / n)
            live.log_metric("train/lr", sched.get_last_lr()[0])
            if n_seg is not None:
                live.log_metric("train/segments", n_seg)
            live.log_metric("time/seconds_per_iteration", (time.perf_counter() - t_start) / (done - start))
            for k, v in timer.total.items():
                live.log_metric(f"time/{k}", v / (done - start))
            live.make_summary()
            bar.set_postfix(loss=f"{acc['loss'] / n:.4f}")
            acc.clear()
        if evaluator is not None and eval_every and (done % eval_every == 0 or done == iterations):
            row = {"iteration": done, **evaluator(teacher.with_network(student.bake(export_guidance)), done)}
            curve.append(row)
            atomic_write_text(curve_path, "".join(json.dumps(r) + "\n" for r in curve))
            for k, v in row.items():
                if k != "iteration" and isinstance(v, int | float):
                    live.log_metric(f"eval/{k}", v)
        if done % checkpoint_every == 0 or done == iterations:
            save_checkpoint(ckpt, nets, None, sched, done, info)
            write_run_state(out_dir, done, fingerprint)
            last_good = done
    live.end()
    seconds = time.perf_counter() - t_start
    if iterations > start:  # a rerun of a finished run keeps the timing of the run that trained
        timing = {k: v / (iterations - start) for k, v in timer.total.items()}
        timing["seconds_per_iteration"] = seconds / (iterations - start)
        timing["iterations_timed"] = iterations - start
        atomic_write_text(out_dir / "timing.json", json.dumps(timing, indent=2) + "\n")
    return ConsistencyResult(
        student=student.eval(), target=target, iterations=iterations, seconds=seconds, out_dir=out_dir
    )


# iterations IS fingerprinted: Hyper-SD's stages are fractions of it, so a longer run is another run
_NOT_FINGERPRINTED = {
    "out_dir", "teacher", "data", "evaluator", "progress", "checkpoint_every", "log_every",
    "eval_every", "device", "run_config", "deterministic",
}  # fmt: skip
