"""The SenseFlow distillation loop: DMD + IDA + ISG + adversarial terms, TTUR, resume, torchrun.

One function, :func:`distill`, whose keyword defaults document the recipe (EDM2 style).
Variants (``senseflow``, ``no_ida``, ``no_isg``, ``no_gan``, ``vanilla_dmd``, ``dmd2``,
``senseflow_1step``) are profile configs that set these keywords, never separate code paths.

Per iteration (method.md sections 1-5):

1. prompts and real images from the data source, seeded by (seed, iteration, rank);
2. generator inputs at uniformly drawn anchors (backward simulation or forward-noised real);
3. every ``ttur``-th iteration (the ttur-th, 2 ttur-th, ...), the generator step
   ``L_G = L_dmd + lambda_gan w(t) L_adv + lambda_isg L_isg``, clipped, then IDA
   ``phi <- lam phi + (1 - lam) theta``;
4. every iteration, the fake score model's denoising step on the detached samples (plus
   DMD2's classifier loss for the ``fake_features`` head) and the VFM discriminator's step.

A checkpoint (``torch.distributed.checkpoint``: generator, fake model, discriminator heads,
their optimisers, EMA, iteration) is written every ``checkpoint_every`` iterations;
rerunning the same command resumes (:mod:`senseflow.checkpoint`: one policy for every loop).
Data and noise come from generators seeded by the iteration, so a resumed run is
bit-identical to an uninterrupted one in deterministic mode.
A non-finite loss or gradient stops the run with the last good checkpoint kept.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from tqdm.auto import tqdm

from senseflow import distill as terms
from senseflow.backbones.base import Backbone
from senseflow.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    resume,
    run_fingerprint,
    save_checkpoint,
    write_run_state,
)
from senseflow.data import TrainData
from senseflow.discriminator.fake_head import FakeFeatureHead
from senseflow.distributed import (
    all_true,
    barrier,
    init_distributed,
    reshard,
    resolve_parallel,
    shard_frozen,
    unwrap,
    wrap,
)
from senseflow.errors import UserError
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
from senseflow.losses import gan_weight as gan_time_weight
from senseflow.losses import ida_update
from senseflow.optim import adamw
from senseflow.schedules import TimeDensity

log = logging.getLogger(__name__)


@dataclass
class DistillResult:
    """What a finished :func:`distill` run hands back."""

    generator_state: dict[str, torch.Tensor]  # full weights (EMA if enabled, LoRA merged), every rank
    iterations: int
    seconds: float
    out_dir: Path
    lora_state: dict[str, torch.Tensor] | None = None  # LoRA weights alone (peft names), LoRA runs


class _Schedules:
    """LambdaLR schedulers that step together, once per iteration; one ``last_epoch`` in checkpoints."""

    def __init__(self, schedulers: list[torch.optim.lr_scheduler.LambdaLR]):
        self.schedulers = schedulers

    def step(self) -> None:
        """Advance every scheduler by one iteration."""
        with warnings.catch_warnings():
            # The schedules count loop iterations (released), but the generator steps only every
            # `ttur` iterations, so its scheduler rightly advances before its optimiser's first
            # step; torch's "lr_scheduler.step() before optimizer.step()" warning does not apply.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for s in self.schedulers:
                s.step()

    @property
    def last_epoch(self) -> int:
        """Iterations stepped so far (the same for every scheduler)."""
        return self.schedulers[0].last_epoch

    @last_epoch.setter
    def last_epoch(self, value: int) -> None:
        # resume: stand each scheduler one iteration short of `value` and step it there, so the
        # LRs of iteration `value` (and get_last_lr) come from the scheduler itself
        for s in self.schedulers:
            s.last_epoch = value - 1
        self.step()


def distill(
    out_dir: str | Path,
    *,
    teacher: Backbone,  # frozen teacher (its network is not modified)
    data: TrainData,  # prompts + real images, deterministic in (iteration, rank)
    discriminator: nn.Module | None = None,  # VFM discriminator (gan_head="vfm"); frozen taps
    evaluator: Callable[[Backbone, int], dict] | None = None,  # (student, iteration) -> metrics
    init_from: str | Path | None = None,  # distill out_dir whose checkpoint seeds G, fake and D
    anchors: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25),  # student times, noisiest first
    iterations: int = 1000,  # loop iterations (the generator steps every `ttur`)
    global_batch: int = 8,  # samples per iteration over all ranks
    generator_lr: float = 1e-6,  # AdamW LR of the generator
    fake_lr: float = 1e-6,  # AdamW LR of the fake score model
    lr_warmup: int = 0,  # warm-up iterations (every optimiser, counted in loop iterations)
    lr_after_warmup: float | None = None,  # FLUX: LRs ramp by lr_after_warmup / generator_lr
    optimizer: str = "adamw",  # "adamw" | "adamw8bit" (bitsandbytes)
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,  # max gradient norm of each network
    ttur: int = 5,  # generator steps once every `ttur` iterations (two time-scale update rule)
    dmd_t: dict | None = None,  # DMD's re-noising time density (TimeDensity.from_dict; None: U(0.02, 0.98))
    teacher_cfg: tuple[float, float] = (3.0, 10.0),  # teacher guidance scale ~ U(low, high)
    backward_simulation_prob: float = 0.5,  # P(generator input made by the student itself)
    fake_t: dict | None = None,  # fake model's time density (None: logit-normal, shifted)
    ida: bool = True,  # Implicit Distribution Alignment after each generator step
    ida_lam: float = 0.97,  # phi <- lam phi + (1 - lam) theta
    isg: bool = True,  # Intra-Segment Guidance term
    isg_weight: float = 1.0,
    isg_margin: float = 0.05,  # t_mid ~ U(tau_prev + m, tau - m)
    isg_margin_units: str = "unshifted",  # ... in unshifted time (released SD 3.5) or "sigma" (FLUX)
    isg_distance: str = "l2",  # "l2" (paper) | "charbonnier" (released code)
    isg_cfg: tuple[float, float] | None = None,  # ISG teacher guidance ~ U(low, high); None: DMD's draw
    gan: bool = True,  # adversarial terms
    gan_head: str = "vfm",  # "vfm" (SenseFlow) | "fake_features" (DMD2)
    gan_loss: str = "hinge",  # "hinge" | "logistic"
    gan_weight: float = 1.0,  # lambda_gan in the generator loss
    gan_fake_weight: float = 1.0,  # weight of the discriminator's own loss
    gan_curve: str = "one_minus_sigma_sq",  # w(t) of the anchor
    gan_weight_discriminator: bool = True,  # D's loss weighted by w(t) too (released code)
    gan_lr: float = 1e-6,  # discriminator heads' LR
    lora_rank: int | None = None,  # train LoRA adapters (G and fake alike) instead of full weights
    lora_alpha: float | None = None,  # LoRA scale numerator (None: = rank)
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),  # attention projections
    ema_decay: float | None = None,  # generator EMA (exported instead of the raw weights)
    precision: str = "fp32",  # "fp32" | "bf16" autocast of forward passes (weights stay float32)
    grad_checkpointing: bool = False,
    seed: int = 0,
    checkpoint_every: int = 100,
    log_every: int = 10,
    eval_every: int = 0,  # 0: evaluate only at the end (when an evaluator is given)
    parallel: str = "auto",  # "auto" | "none" | "ddp" | "fsdp"
    device: str = "auto",
    deterministic: bool = False,  # torch deterministic algorithms (bit-exact resume on CPU)
    progress: bool = True,
    run_config: dict | None = None,  # extra settings a checkpoint must match to resume
) -> DistillResult:
    """Distil ``teacher`` into a few-step generator; return its final weights (on every rank).

    The generator and the fake score model start as float32 copies of the teacher's network
    (:func:`trainable_network`), or from ``init_from``'s checkpoint. Writes
    ``checkpoint/`` (DCP), ``state.json``, ``dvclive/`` and ``eval_curve.jsonl`` in ``out_dir``.
    """
    settings = {k: v for k, v in locals().items() if k not in _NOT_FINGERPRINTED}
    fingerprint = run_fingerprint({**settings, **(run_config or {})})
    if len(anchors) < 1 or list(anchors) != sorted(anchors, reverse=True) or len(set(anchors)) < len(anchors):
        raise UserError(f"anchors must be strictly decreasing, noisiest first; got {list(anchors)}")
    if gan and gan_head == "vfm" and discriminator is None:
        raise UserError("gan is on with the vfm head but no discriminator was given (build_discriminator)")
    if deterministic:
        torch.use_deterministic_algorithms(True)
    info = init_distributed(device)
    mode = resolve_parallel(parallel, info.world_size)
    if ema_decay is not None and mode == "fsdp":
        raise UserError("distill.ema_decay with FSDP is not supported: keep EMA off or use DDP")
    if global_batch % info.world_size:
        raise UserError(
            f"distill.global_batch {global_batch} is not divisible by {info.world_size} processes"
        )
    batch = global_batch // info.world_size
    out_dir = ensure_writable_dir(out_dir) if info.is_main else Path(out_dir)
    barrier()

    dmd_density = TimeDensity.from_dict(dmd_t or {"density": "uniform", "range": (0.02, 0.98)})
    fake_density = TimeDensity.from_dict(fake_t or {"density": "logit_normal", "shifted": True})
    # ---------------------------------------------------------------- networks
    teacher_dtype = next(teacher.network.parameters()).dtype
    if precision == "bf16" and teacher_dtype == torch.float16:
        # autocast cannot mix float16 tensors with its bfloat16 ones (SDXL's added embeddings)
        raise UserError(
            "distill.precision is bf16 but the teacher is loaded in float16: set "
            "teacher.pretrained.dtype: bfloat16 (as the released trainers do) or distill.precision: fp32"
        )
    teacher.network.requires_grad_(False).eval()
    g_net, f_net = trainable_network(teacher), trainable_network(teacher)
    if mode != "fsdp":  # FSDP2: wrap() moves the copies to the device shard by shard
        g_net, f_net = g_net.to(info.device), f_net.to(info.device)
    # the frozen teacher, once copied: FSDP2-sharded across ranks under fsdp, else moved whole.
    # Sharded in place, so after the loop its weights are whole on no rank (exports build
    # the student from its config, senseflow.export.student_network)
    shard_frozen(teacher.network, mode, info)
    if lora_rank:
        if mode == "fsdp":
            raise UserError("LoRA with FSDP is not supported: use DDP (runtime.parallel: ddp) for LoRA runs")
        for net in (g_net, f_net):  # same seed: identical adapters, so IDA matches them by name
            add_lora(net, lora_rank, lora_alpha, lora_targets, seed)
    if grad_checkpointing:
        for net in (g_net, f_net):
            if hasattr(net, "enable_gradient_checkpointing"):
                net.enable_gradient_checkpointing()
    head: FakeFeatureHead | None = None
    d_module: nn.Module | None = None
    if gan and gan_head == "fake_features":
        with torch.random.fork_rng(devices=[]):  # the head's init must not depend on earlier RNG use
            torch.manual_seed(seed)
            head = FakeFeatureHead(f_net).to(info.device)
        d_module = head
    elif gan:
        d_module = discriminator.to(info.device)
        d_module.train()
    g_train, f_train = wrap(g_net, mode, info), wrap(f_net, mode, info)
    d_train = wrap(d_module, "ddp" if mode != "none" else "none", info) if d_module is not None else None
    G, F = teacher.with_network(g_net), teacher.with_network(f_net)  # plain: no-grad / frozen use
    G_train, F_train = teacher.with_network(g_train), teacher.with_network(f_train)

    opt_g = make_optimizer(g_train.parameters(), optimizer, generator_lr, betas, weight_decay)
    opt_f = make_optimizer(f_train.parameters(), optimizer, fake_lr, betas, weight_decay)
    d_params = _d_parameters(d_module) if d_module is not None else []
    # weight decay as for G and fake (0 in every recipe), not AdamW's default 0.01
    opt_d = adamw(d_params, lr=gan_lr, betas=tuple(betas), weight_decay=weight_decay) if d_params else None
    # one LR multiplier per iteration for all three optimisers (the released trainers step the
    # generator's, the fake model's and D's schedulers every iteration, generator step or not)
    factor = lr_factor(generator_lr, lr_warmup, lr_after_warmup)
    sched_g = _Schedules([torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (opt_g, opt_f, opt_d) if o])
    ema = None
    if ema_decay is not None:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(g_net.parameters(), decay=ema_decay, foreach=True)

    # ---------------------------------------------------------------- resume
    ckpt = out_dir / CHECKPOINT
    start = 0
    nets = {"generator": (g_train, opt_g), "fake": (f_train, opt_f)}
    if d_module is not None:
        nets["discriminator"] = (d_train, opt_d)
    start = resume(out_dir, nets, ema, sched_g, fingerprint)
    if start:
        log.info("resuming distillation at iteration %d (%s)", start, ckpt)
    elif init_from is not None:
        load_checkpoint(Path(init_from) / CHECKPOINT, nets, None, None, models_only=True)

    live = None
    if info.is_main:
        from dvclive import Live

        live = Live(str(out_dir / "dvclive"), resume=start > 0, dvcyaml=None, save_dvc_exp=False)
    curve_path = out_dir / EVAL_CURVE
    curve = read_curve(curve_path) if start > 0 else []

    # ---------------------------------------------------------------- loop
    uncond_one = teacher.text.encode([""])
    amp = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    timer = PhaseTimer()
    acc: dict[str, float] = defaultdict(float)
    n_acc: dict[str, int] = defaultdict(int)
    t_start = time.perf_counter()
    if evaluator is not None and eval_every and start == 0 and info.is_main:
        # the curve's first point: the student as initialised (the teacher at the anchors)
        curve = [{"iteration": 0, **evaluator(teacher.with_network(g_net), 0)}]
        atomic_write_text(curve_path, json.dumps(curve[0]) + "\n")
    barrier()
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc="distill",
               disable=not (progress and info.is_main))  # fmt: skip
    last_good = start
    for it in bar:
        gen = torch.Generator().manual_seed(iteration_seed(seed, it, info.rank))
        prompts, images = data.batch(it, info.rank, batch)
        images = images.to(info.device)
        with torch.no_grad():
            x_real = teacher.codec.encode(images)
        cond = teacher.text.encode(prompts).to(info.device)
        uncond = uncond_one.index([0] * len(prompts)).to(info.device)
        cfg = _uniform_scales(teacher_cfg, batch, gen).to(info.device)
        # the VFM discriminator's text condition: CLIP ViT-L/14 features (real teachers) or the
        # pooled embedding (the embedded world); VFMDiscriminator.text_condition decides
        d_text = d_module.text_condition(prompts, cond) if (gan and head is None) else None
        # the generator steps at iterations ttur, 2 ttur, ... (1-based, as released): the
        # fake model has trained ttur - 1 times on the generator's samples before the first
        g_step = (it + 1) % ttur == 0
        with timer("inputs"), amp:
            inputs = terms.generator_inputs(
                G,
                x_real,
                cond,
                list(anchors),
                backward_simulation_prob=backward_simulation_prob,
                gen=gen,
                same_calls_on_every_rank=mode == "fsdp",
            )
        losses: dict[str, torch.Tensor] = {}
        fake_images = None
        # ------------------------------------------------------------ generator step
        # Freezing the fake model and D during the generator step saves their weight
        # gradients; FSDP2 fixes requires_grad at its lazy init, so there the (wasted)
        # gradients are computed and cleared by zero_grad before their own step instead.
        freeze_others = mode != "fsdp"
        if g_step:
            if freeze_others:
                # each parameter's own flag comes back after the generator's backward: a LoRA
                # fake model must keep its base weights frozen (issue 14, defect 3)
                restore = _freeze([f_net, *([d_module] if d_module is not None else [])])
            with timer("generator_forward"), amp:
                pred = G_train.predict(inputs.x, inputs.t, cond)
                x0_g = G_train.x0(inputs.x, pred, inputs.t)
            with timer("dmd"), amp:
                losses["dmd"] = terms.dmd_term(
                    teacher, F, x0_g, cond, uncond, t_density=dmd_density, cfg=cfg, gen=gen
                )
            total = losses["dmd"]
            if isg and isg_weight > 0:
                isg_scale = cfg if isg_cfg is None else _uniform_scales(isg_cfg, batch, gen)
                isg_scale = isg_scale.to(info.device)
                with timer("isg"), amp:
                    losses["isg"] = terms.isg_term(
                        teacher, G, inputs, pred, cond, uncond,
                        cfg=isg_scale, margin=isg_margin, distance=isg_distance, gen=gen,
                        margin_units=isg_margin_units,
                    )  # fmt: skip
                total = total + isg_weight * losses["isg"]
            if gan and gan_weight > 0:
                with timer("gan_generator"), amp:
                    if head is not None:
                        losses["gan_g"] = terms.fake_features_gan(
                            head,
                            F,
                            x0_g,
                            cond,
                            t_range=(dmd_density.low, dmd_density.high),
                            loss=gan_loss,
                            gen=gen,
                        )
                    else:
                        losses["gan_g"], fake_images = terms.vfm_generator_gan(
                            d_module, G, x0_g, d_text, images, inputs.t,
                            curve=gan_curve, loss=gan_loss, gen=gen,
                        )  # fmt: skip
                total = total + gan_weight * losses["gan_g"]
            if it % log_every == 0:
                # DMD2's term backpropagates through the (sharded) fake network: under FSDP a
                # second backward through it would find its parameters resharded, so skip it
                skip = {"gan_g"} if (mode == "fsdp" and head is not None) else set()
                _term_grad_norms({k: v for k, v in losses.items() if k not in skip}, pred, acc, n_acc)
            if freeze_others:
                restore()
            with timer("generator_backward"):
                opt_g.zero_grad(set_to_none=True)
                total.backward()
                g_norm = grad_norm(list(g_train.parameters()), grad_clip)
            if not all_true(is_finite(total, g_norm), info.device):
                diverged(it, {**losses, "generator_grad_norm": g_norm}, last_good, ckpt, live)
            opt_g.step()
            if ema is not None:
                ema.step(g_net.parameters())
            if mode == "fsdp":
                # FSDP2 leaves a root's weights gathered after a no-grad forward (the teacher's
                # and the fake model's DMD calls): shard them again (memory; IDA pairs shards)
                reshard(teacher.network, f_net, g_net)
            if ida:
                with timer("ida"):
                    ida_update(f_net, g_net, ida_lam)
            x0_detached = x0_g.detach()
            acc["generator_grad_norm"] += float(g_norm)
            n_acc["generator_grad_norm"] += 1
        else:
            with timer("generator_forward"), torch.no_grad(), amp:
                x0_detached = G.x0(inputs.x, G.predict(inputs.x, inputs.t, cond), inputs.t)
        # ------------------------------------------------------------ fake score step
        with timer("fake_step"), amp:
            losses["fake"] = terms.fake_term(F_train, x0_detached, cond, gen=gen, t_density=fake_density)
            fake_total = losses["fake"]
            if head is not None:
                losses["gan_d"] = terms.fake_features_discriminator_loss(
                    head,
                    F_train,
                    x0_detached,
                    x_real,
                    cond,
                    t_range=(dmd_density.low, dmd_density.high),
                    loss=gan_loss,
                    gen=gen,
                )
                fake_total = fake_total + gan_fake_weight * losses["gan_d"]
        with timer("fake_step"):
            opt_f.zero_grad(set_to_none=True)
            if opt_d is not None:
                opt_d.zero_grad(set_to_none=True)
            fake_total.backward()
            f_norm = grad_norm(list(f_train.parameters()), grad_clip)
        # ------------------------------------------------------------ VFM discriminator step
        d_norm = torch.zeros(())
        if gan and head is None:
            with timer("discriminator_step"), amp:
                if fake_images is None:
                    with torch.no_grad():
                        fake_images = G.codec.decode(x0_detached)
                losses["gan_d"] = terms.vfm_discriminator_step(
                    d_train, fake_images.detach(), images, d_text, loss=gan_loss, gen=gen,
                    scale=gan_fake_weight,
                    weight=gan_time_weight(inputs.t, gan_curve, G.shift, getattr(G, "alpha_bar", None))
                    if gan_weight_discriminator else None,
                )  # fmt: skip
        if opt_d is not None:
            d_norm = grad_norm(d_params, grad_clip)
        if not all_true(is_finite(*losses.values(), f_norm, d_norm), info.device):
            diverged(it, {**losses, "fake_grad_norm": f_norm, "d_grad_norm": d_norm}, last_good, ckpt, live)
        opt_f.step()
        if opt_d is not None:
            opt_d.step()
        sched_g.step()
        for k, v in losses.items():
            acc[k] += float(v.detach())
            n_acc[k] += 1
        acc["fake_grad_norm"] += float(f_norm)
        n_acc["fake_grad_norm"] += 1
        done = it + 1
        # ------------------------------------------------------------ bookkeeping
        if done % log_every == 0 or done == iterations:
            if live is not None:
                live.step = done
                for k in sorted(acc):
                    live.log_metric(f"train/{k}", acc[k] / max(n_acc[k], 1))
                live.log_metric("train/generator_lr", opt_g.param_groups[0]["lr"])
                live.log_metric("train/fake_lr", opt_f.param_groups[0]["lr"])
                if opt_d is not None:
                    live.log_metric("train/discriminator_lr", opt_d.param_groups[0]["lr"])
                elapsed = max(time.perf_counter() - t_start, 1e-9)
                live.log_metric("time/seconds_per_iteration", elapsed / (done - start))
                for k, v in timer.total.items():
                    live.log_metric(f"time/{k}", v / (done - start))
                live.make_summary()
                bar.set_postfix(dmd=f"{acc['dmd'] / max(n_acc['dmd'], 1):.4f}",
                                fake=f"{acc['fake'] / max(n_acc['fake'], 1):.4f}")  # fmt: skip
            acc.clear()
            n_acc.clear()
        if evaluator is not None and eval_every and (done % eval_every == 0 or done == iterations):
            if info.is_main:
                student = teacher.with_network(_ema_network(g_net, ema))
                row = {"iteration": done, **evaluator(student, done)}
                curve.append(row)
                atomic_write_text(curve_path, "".join(json.dumps(r) + "\n" for r in curve))
                if live is not None:
                    for k, v in row.items():
                        if k != "iteration" and isinstance(v, int | float):
                            live.log_metric(f"eval/{k}", v)
            barrier()
        if done % checkpoint_every == 0 or done == iterations:
            save_checkpoint(ckpt, nets, ema, sched_g, done, info)
            if info.is_main:
                write_run_state(out_dir, done, fingerprint)
            last_good = done
    if live is not None:
        live.end()
    seconds = time.perf_counter() - t_start
    if info.is_main:
        timing = {k: v / max(iterations - start, 1) for k, v in timer.total.items()}
        timing["seconds_per_iteration"] = seconds / max(iterations - start, 1)
        atomic_write_text(out_dir / "timing.json", json.dumps(timing, indent=2) + "\n")
    # full weights on every rank (a collective under FSDP), EMA weights when EMA is on
    if ema is not None:
        ema.copy_to(g_net.parameters())
    lora_state = None
    if lora_rank:
        state, lora_state = merge_lora(unwrap(g_net))
    else:  # (cpu_offload=True would leave the other ranks an empty dict)
        state = get_model_state_dict(g_train, options=StateDictOptions(full_state_dict=True))
        state = {k: v.detach().cpu() for k, v in state.items()}
    return DistillResult(
        generator_state=state,
        lora_state=lora_state,
        iterations=iterations,
        seconds=seconds,
        out_dir=out_dir,
    )


_NOT_FINGERPRINTED = {
    "out_dir", "teacher", "data", "discriminator", "evaluator", "progress", "checkpoint_every",
    "log_every", "eval_every", "device", "parallel", "run_config", "deterministic", "iterations",
}  # fmt: skip


def trainable_network(teacher: Backbone) -> nn.Module:
    """A trainable copy of the teacher's network in float32: the generator's or fake model's master weights.

    Real teachers load in 16 bits (SDXL float16, SD 3.5 / FLUX bfloat16). At the recipes'
    learning rate 1e-6 an AdamW step is below half an ulp of most 16-bit weights, so it would
    round away (in 10 steps only 2% of bf16 weights changed), and IDA's ``lerp`` by 0.03 would
    change 3.5% of them. The released SD 3.5 / SDXL trainers keep trainable networks (and so
    their EMA) in float32 and run forward passes under bf16 autocast (``distill.precision:
    bf16``); the frozen teacher and VAE stay in their load dtype.
    """
    return teacher.trainable_copy().float()


def add_lora(net: nn.Module, rank: int, alpha: float | None, targets, seed: int) -> None:
    """Freeze ``net`` and add peft LoRA adapters (rank ``rank``) on ``targets``, initialised from ``seed``."""
    from peft import LoraConfig

    net.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets)))


def merge_lora(net: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(merged full weights, LoRA weights)`` of a LoRA-trained network; ``net`` is left as it was."""
    import copy

    from peft.utils import get_peft_model_state_dict

    lora = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(net).items()}
    merged = copy.deepcopy(net)
    merged.fuse_lora()
    merged.unload_lora()
    return {k: v.detach().cpu() for k, v in merged.state_dict().items()}, lora


def _freeze(modules: list[nn.Module]) -> Callable[[], None]:
    """Turn off ``requires_grad`` on every parameter of ``modules``; return what restores each one's flag.

    Restoring the recorded flags (not switching everything back on) keeps frozen parts
    frozen: a LoRA model's base weights, a discriminator's VFM.
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)

    def restore() -> None:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)

    return restore


def _uniform_scales(bounds: tuple[float, float], n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` guidance scales ~ U(low, high), one per sample (a fixed scale when low == high)."""
    return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n, generator=gen)


def _d_parameters(module: nn.Module) -> list[nn.Parameter]:
    """What the discriminator optimiser updates (never the frozen VFM)."""
    if hasattr(module, "trainable_parameters"):
        return list(module.trainable_parameters())
    return [p for p in module.parameters() if p.requires_grad]


def _term_grad_norms(losses: dict, pred: torch.Tensor, acc: dict, n_acc: dict) -> None:
    """Norm of each generator term's gradient at the generator's output (cheap: no backprop into G)."""
    for name, value in losses.items():
        if value.requires_grad:
            (g,) = torch.autograd.grad(value, pred, retain_graph=True, allow_unused=True)
            if g is not None:
                acc[f"grad_norm/{name}"] += float(g.norm())
                n_acc[f"grad_norm/{name}"] += 1


def _ema_network(net: nn.Module, ema) -> nn.Module:
    if ema is None:
        return net
    import copy

    shadow = copy.deepcopy(unwrap(net))
    ema.copy_to(shadow.parameters())
    return shadow


def load_generator_state(run_dir: Path, teacher: Backbone) -> dict[str, torch.Tensor]:
    """The generator weights of a run's latest checkpoint (EMA not applied), as a plain state dict."""
    net = trainable_network(teacher)
    load_checkpoint(run_dir / CHECKPOINT, {"generator": (net, None)}, None, None, models_only=True)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
