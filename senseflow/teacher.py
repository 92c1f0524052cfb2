"""Training the embedded world's teacher: rectified flow on rendered scenes.

One plain loop function whose keyword defaults document themselves (EDM2 style).
Rerunning the same command resumes from ``checkpoint.pt``; the finished teacher is
exported as a diffusers folder (EMA weights) plus ``recipe.json`` with its sampler.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from senseflow.backbones.conversions import flow_add_noise, flow_velocity
from senseflow.backbones.flow import SD3FlowBackbone, tiny_sd3_transformer
from senseflow.cache import files_fingerprint
from senseflow.checkpoint import ResumeError, resume_file, run_fingerprint
from senseflow.errors import MissingArtefactError
from senseflow.io import atomic_folder, atomic_torch_save, atomic_write_text, ensure_writable_dir
from senseflow.optim import adamw
from senseflow.schedules import sample_train_sigmas
from senseflow.world.scenes import caption, sample_batch, to_tensor_range
from senseflow.world.text import POOLING_FILE, WorldTextEncoder

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
EXPORT = "teacher"


def train_teacher(
    out_dir: str | Path,
    *,
    world_dir: str | Path,  # holds tokenizer/ and text_encoder/ (world stage)
    resolution: int = 16,  # image side in pixels
    digit_counts: dict[int, float] | None = None,  # P(number of digits); default {1: .5, 2: .5}
    patch_size: int = 2,  # transformer patch size
    num_layers: int = 4,  # joint transformer blocks
    num_attention_heads: int = 4,  # heads per block
    attention_head_dim: int = 32,  # width per head
    qk_norm: str | None = "rms_norm",  # QK normalisation (SD3.5), stabilises high LR
    steps: int = 2000,  # optimiser steps
    batch_size: int = 64,  # images per step
    lr: float = 1e-3,  # peak AdamW learning rate
    warmup_steps: int = 200,  # linear warm-up, then cosine decay to 0
    weight_decay: float = 0.0,  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.99),  # AdamW betas
    grad_clip: float = 1.0,  # max global gradient norm
    ema_decay: float = 0.999,  # EMA decay cap (warm-up power 2/3)
    caption_dropout: float = 0.1,  # P(empty caption): trains the unconditional branch for CFG
    density: str = "logit_normal",  # training sigma density (SD3)
    logit_mean: float = 0.0,  # logit-normal location
    logit_std: float = 1.0,  # logit-normal scale
    shift: float = 1.0,  # resolution shift of sigma (1 = none at 16 px)
    seed: int = 0,  # model init, data and noise
    checkpoint_every: int = 250,  # steps between resumable checkpoints
    log_every: int = 25,  # steps between dvclive records
    sample_steps: int = 32,  # recipe: Euler steps at "full" quality
    sample_cfg: float = 4.0,  # recipe: CFG scale
    progress: bool = True,  # tqdm progress bar
    restart_stale: bool = False,  # dvc stages: a foreign checkpoint restarts, a finished one re-exports
) -> Path:
    """Train the teacher by rectified flow with CFG dropout and EMA; return the export folder.

    Loss (Liu et al. 2023; Esser et al. 2024 eq. 3 with the logit-normal density):
    ``E_{x0, eps, s} || v_theta((1 - s) x0 + s eps, s, c) - (eps - x0) ||^2``.
    """
    # everything that shapes the trained weights (settings, code, the world's text encoder, library
    # versions); a checkpoint resumes, or a finished one is re-exported, only under the same values.
    # The sampling recipe (steps, CFG) is not among them: changing it re-exports, never retrains.
    recipe_only = ("sample_steps", "sample_cfg")
    bookkeeping = ("out_dir", "world_dir", "progress", "checkpoint_every", "log_every", "restart_stale")
    run_config = run_fingerprint(
        {
            **{k: v for k, v in locals().items() if k not in bookkeeping + recipe_only},
            "sources": files_fingerprint(teacher_sources(world_dir)),
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        }
    )
    out_dir = ensure_writable_dir(out_dir)
    digit_counts = digit_counts or {1: 0.5, 2: 0.5}
    assert batch_size > 0 and steps > 0 and 0 <= caption_dropout < 1
    text = WorldTextEncoder.load(world_dir)
    model = tiny_sd3_transformer(
        resolution=resolution,
        in_channels=3,
        patch_size=patch_size,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        text_dim=text.hidden_size,
        pooled_dim=text.pooled_size,
        qk_norm=qk_norm,
        seed=seed,
    )
    backbone = SD3FlowBackbone(model, text, shift=shift)
    opt = adamw(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, warmup_steps, steps)
    ema = EMAModel(model.parameters(), decay=ema_decay, use_ema_warmup=True, power=2 / 3, foreach=True)

    start = 0
    ckpt_path = out_dir / CHECKPOINT
    # a checkpoint of other settings or code is refused, or with restart_stale (dvc reruns this
    # stage when its code, world or params changed) trained again from scratch; a finished one of
    # the same run is exported again (the loop below has nothing left to do)
    state = resume_file(ckpt_path, run_config, restart_stale=restart_stale)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            ema.load_state_dict(state["ema"])
            start = int(state["step"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ResumeError(
                f"checkpoint {ckpt_path} does not match this configuration ({exc}); "
                "delete it to restart, or rerun with the configuration that wrote it"
            ) from exc
        if start >= steps:
            log.info("%s is a finished run of these settings and code: exporting it again", ckpt_path)
        else:
            log.info("resuming teacher training from step %d (%s)", start, ckpt_path)

    from dvclive import Live

    live = Live(str(out_dir / "dvclive"), resume=start > 0, dvcyaml=None, save_dvc_exp=False)
    null = text.encode([""])
    t0 = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="teacher", disable=not progress)
    loss_acc, n_acc = 0.0, 0
    for step in bar:
        rng = np.random.default_rng([seed, step])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        images, scenes = sample_batch(
            rng, batch_size, resolution=resolution, digit_counts=digit_counts,
            instances="train", split="train",
        )  # fmt: skip
        captions = [caption(s) for s in scenes]
        cond = text.encode(captions)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        if drop.any():
            cond.hidden[drop] = null.hidden
            cond.pooled[drop] = null.pooled
        x0 = to_tensor_range(images)
        eps = torch.randn(x0.shape, generator=gen)
        sigma = sample_train_sigmas(
            batch_size, density=density, logit_mean=logit_mean, logit_std=logit_std,
            shift=shift, generator=gen,
        )  # fmt: skip
        model.train()
        v = backbone.predict(flow_add_noise(x0, eps, sigma), sigma, cond)
        loss = F.mse_loss(v, flow_velocity(x0, eps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        ema.step(model.parameters())
        loss_acc += loss.item()
        n_acc += 1
        done = step + 1
        if done % log_every == 0 or done == steps:
            live.step = done
            live.log_metric("train/loss", loss_acc / n_acc)
            live.log_metric("train/grad_norm", float(grad_norm))
            live.log_metric("train/lr", sched.get_last_lr()[0])
            live.make_summary()
            bar.set_postfix(loss=f"{loss_acc / n_acc:.4f}")
            loss_acc, n_acc = 0.0, 0
        if done % checkpoint_every == 0 or done == steps:
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "ema": ema.state_dict(),
                    "step": done,
                    "config": run_config,
                },
                ckpt_path,
            )
    live.end()
    # wall clock goes to a metrics file nothing depends on, never into the export (its hash is a
    # dep of every student: a re-export must not retrain them)
    timing = {"train_seconds_this_run": round(time.perf_counter() - t0, 1), "train_steps": steps}
    atomic_write_text(out_dir / "timing.json", json.dumps(timing, indent=2) + "\n")
    return export_teacher(
        model, ema, out_dir / EXPORT,
        recipe={
            "family": "sd3_flow",
            "prediction": "flow",
            "resolution": resolution,
            "channels": 3,
            "shift": shift,
            "sampler": "euler_flow",
            "steps": sample_steps,
            "cfg": sample_cfg,
            "train_steps": steps,
        },
    )  # fmt: skip


def teacher_sources(world_dir: str | Path) -> list[Path]:
    """The code and world files whose contents shape the teacher's weights.

    The import closure of this module (what dvc.yaml's teacher stage tracks, less the CLI
    dispatch files, whose edits cannot change the weights and so re-export rather than retrain),
    plus the world's text encoder files.
    """
    from senseflow.code_deps import closure

    world = Path(world_dir)
    return [
        *closure(["senseflow.teacher"]),
        world / "tokenizer",
        world / "text_encoder",
        world / POOLING_FILE,
    ]


def export_teacher(model: SD3Transformer2DModel, ema: EMAModel, folder: Path, recipe: dict) -> Path:
    """Write the EMA weights as a diffusers folder plus ``recipe.json``; atomic via a temp folder."""
    ema_model = SD3Transformer2DModel.from_config(model.config)
    ema_model.load_state_dict(model.state_dict())
    ema.copy_to(ema_model.parameters())
    with atomic_folder(folder) as tmp:
        ema_model.save_pretrained(tmp / "transformer")
        atomic_write_text(tmp / "recipe.json", json.dumps(recipe, indent=2) + "\n")
    return folder


def load_teacher(folder: str | Path, world_dir: str | Path) -> tuple[SD3FlowBackbone, dict]:
    """Load an exported teacher (or any flow model folder with ``recipe.json``) as a backbone."""
    folder = Path(folder)
    recipe_path = folder / "recipe.json"
    if not recipe_path.is_file():
        raise MissingArtefactError(
            f"{recipe_path} is missing: {folder} is not an exported model "
            "(train one with `senseflow train-teacher`)"
        )
    recipe = json.loads(recipe_path.read_text())
    model = SD3Transformer2DModel.from_pretrained(folder / "transformer").eval()
    model.requires_grad_(False)
    text = WorldTextEncoder.load(world_dir)
    return SD3FlowBackbone(model, text, shift=float(recipe.get("shift", 1.0))), recipe
