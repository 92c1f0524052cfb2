"""Typed configuration: one YAML recipe per profile under ``experiments/``, validated by pydantic.

A profile file is complete (no inheritance), so every knob a run used is visible in one
place and DVC can track exactly the keys each stage reads. Errors name the file, the key
path and what was expected::

    experiments/embedded.yaml: teacher.train.lr: expected a number, got 'fast'

Overrides (``--set teacher.train.lr=3e-4`` on the CLI, ``-S`` with ``dvc exp run``) are
applied to the raw YAML before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from senseflow.errors import UserError

PROFILES_DIR = "experiments"
NOT_PROFILES = frozenset({"baselines"})  # experiments/baselines.yaml is the baseline registry


class ConfigError(UserError, ValueError):
    """A profile is missing, unreadable or invalid; the message is one line naming the fix."""


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


# ----------------------------------------------------------------------------- world
class SceneConfig(Strict):
    """How scenes of the embedded world are drawn."""

    resolution: PositiveInt = 16
    digit_counts: dict[Literal[1, 2], Annotated[float, Field(ge=0)]] = {1: 0.5, 2: 0.5}

    @field_validator("resolution")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2 or v < 8:
            raise ValueError("must be even and at least 8")
        return v

    @field_validator("digit_counts", mode="before")
    @classmethod
    def _int_keys(cls, v: Any) -> Any:
        # YAML/JSON round trips turn the keys into strings ("1"); accept them back
        if isinstance(v, dict):
            return {int(k) if isinstance(k, str) and k.strip().isdigit() else k: x for k, x in v.items()}
        return v

    @field_validator("digit_counts")
    @classmethod
    def _some_mass(cls, v: dict) -> dict:
        if not v or sum(v.values()) <= 0:
            raise ValueError("needs a positive probability for 1 and/or 2 digits")
        return v


class TextPretrainConfig(Strict):
    """Pre-training of the world's text encoder (``world/text_pretrain.py``).

    ``objective``: ``contrastive`` (a CLIP text tower against a small ViT; the ``vision_*`` and
    ``patch_size`` keys) or ``parse`` (heads on the EOS state predict the caption's scene
    attributes, as a language-pretrained encoder reads a caption).

    ``steps: 0`` keeps the encoder random and frozen (the smoke profile). Real teachers read a
    pretrained encoder; the embedded teacher learns its scenes several times better from one.
    """

    steps: Annotated[int, Field(ge=0)] = 0
    objective: Literal["contrastive", "parse"] = "contrastive"
    batch_size: PositiveInt = 128
    lr: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 50
    vision_width: PositiveInt = 64  # the image tower, discarded after training
    vision_layers: PositiveInt = 2
    patch_size: PositiveInt = 4
    eval_scenes: PositiveInt = 256
    seed: int = 0


class TextEncoderConfig(Strict):
    """The tiny CLIP text encoder (frozen downstream) and its word-level tokenizer."""

    hidden_size: PositiveInt = 64
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 2
    max_length: PositiveInt = 24
    pooling: Literal["eos", "tokens"] = "tokens"  # global conditioning (see world/text.py)
    seed: int = 0
    pretrain: TextPretrainConfig = TextPretrainConfig()

    @model_validator(mode="after")
    def _heads_divide(self) -> TextEncoderConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide hidden_size {self.hidden_size}")
        if self.pretrain.steps and self.pretrain.vision_width % self.num_heads:
            raise ValueError(
                f"pretrain.vision_width {self.pretrain.vision_width} must be a multiple of num_heads "
                f"{self.num_heads} (the image tower uses the encoder's head count)"
            )
        return self


class PromptSplitsConfig(Strict):
    """Sizes of the fixed prompt lists written by the world stage."""

    train: PositiveInt = 2000
    val: PositiveInt = 256
    test: PositiveInt = 512


class WorldConfig(Strict):
    """The embedded text-to-image world."""

    # None only in real profiles' placeholder `world: {scenes: null}` (the key dvc tracks)
    scenes: SceneConfig | None = SceneConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    prompts: PromptSplitsConfig = PromptSplitsConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _pretrain_patches_tile(self) -> WorldConfig:
        pre = self.text.pretrain
        if self.scenes is not None and pre.steps and self.scenes.resolution % pre.patch_size:
            raise ValueError(
                f"text.pretrain.patch_size {pre.patch_size} does not divide scenes.resolution "
                f"{self.scenes.resolution}; use a divisor (e.g. 4)"
            )
        return self


class ProbeConfig(Strict):
    """Attribute probe: judge of adherence and FID feature space."""

    steps: PositiveInt = 2500
    batch_size: PositiveInt = 128
    lr: Annotated[float, Field(gt=0)] = 2e-3
    width: PositiveInt = 32
    feature_dim: PositiveInt = 256
    noise: Annotated[float, Field(ge=0)] = 0.15
    eval_scenes: PositiveInt = 2000
    seed: int = 0


class ClipConfig(Strict):
    """The embedded world's tiny CLIP (``senseflow world train-clip``, metric ``clip_score_embedded``)."""

    steps: PositiveInt = 800
    batch_size: PositiveInt = 128
    lr: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 50
    embed_dim: PositiveInt = 64
    vision_width: PositiveInt = 64
    vision_layers: PositiveInt = 2
    patch_size: PositiveInt = 4
    text_width: PositiveInt = 64
    text_layers: PositiveInt = 2
    heads: PositiveInt = 2
    eval_scenes: PositiveInt = 256
    seed: int = 0


# ----------------------------------------------------------------------------- teacher
class TinyTransformerConfig(Strict):
    """Shape of the embedded teacher (an ``SD3Transformer2DModel`` of tiny config)."""

    patch_size: PositiveInt = 2
    num_layers: PositiveInt = 4
    num_attention_heads: PositiveInt = 4
    attention_head_dim: PositiveInt = 32
    qk_norm: Literal["rms_norm", "layer_norm"] | None = "rms_norm"


class TeacherTrainConfig(Strict):
    """Rectified-flow training of the embedded teacher (see ``senseflow.teacher.train_teacher``)."""

    steps: PositiveInt = 2000
    batch_size: PositiveInt = 64
    lr: Annotated[float, Field(gt=0)] = 1e-3
    warmup_steps: Annotated[int, Field(ge=0)] = 200
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999
    caption_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    density: Literal["logit_normal", "mode", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: Annotated[float, Field(gt=0)] = 1.0
    shift: Annotated[float, Field(gt=0)] = 1.0
    seed: int = 0
    checkpoint_every: PositiveInt = 250
    log_every: PositiveInt = 25


class SampleConfig(Strict):
    """Sampling recipe: Euler flow steps and CFG scale, plus the evaluation prompt budget."""

    steps: PositiveInt = 32
    cfg: Annotated[float, Field(ge=1.0)] = 4.0
    n_prompts: PositiveInt = 512
    batch_size: PositiveInt = 256
    seed: int = 0
    step_curve: list[PositiveInt] = [1, 2, 4, 8, 16, 32]


class PretrainedConfig(Strict):
    """A real teacher resolved offline from a local folder or the HF cache (never downloaded)."""

    model_id: str
    revision: str = "main"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    resolution: PositiveInt = 1024
    max_sequence_length: PositiveInt = 256
    shift: Annotated[float, Field(gt=0)] | None = None  # None: the scheduler config's own
    licence: str


class TeacherConfig(Strict):
    """Either trained here (embedded world) or a pretrained checkpoint (real profiles)."""

    source: Literal["train", "pretrained"]
    model: TinyTransformerConfig | None = None
    train: TeacherTrainConfig | None = None
    pretrained: PretrainedConfig | None = None
    sample: SampleConfig = SampleConfig()

    @model_validator(mode="after")
    def _sections_match_source(self) -> TeacherConfig:
        if self.source == "train" and (self.model is None or self.train is None):
            raise ValueError("source 'train' needs the 'model' and 'train' sections")
        if self.source == "pretrained" and self.pretrained is None:
            raise ValueError("source 'pretrained' needs the 'pretrained' section")
        return self


# ----------------------------------------------------------------------------- distillation
class IDAConfig(Strict):
    """Implicit Distribution Alignment (method.md section 2): ``phi <- lam phi + (1 - lam) theta``."""

    enabled: bool = True
    lam: Annotated[float, Field(ge=0, le=1)] = 0.97


class ISGConfig(Strict):
    """Intra-Segment Guidance (method.md section 3)."""

    enabled: bool = True
    weight: Annotated[float, Field(ge=0)] = 1.0
    # t_mid ~ U(prev + margin, tau - margin) in `margin_units`: "unshifted" time (the released
    # SD 3.5 code: 50 of its 1000 unshifted grid steps = 0.05, then shifted) or raw "sigma"
    # (the released FLUX code: 20 of 1000 = 0.02); DDPM families: t = index / 999 either way
    margin: Annotated[float, Field(ge=0)] = 0.05
    margin_units: Literal["unshifted", "sigma"] = "unshifted"
    distance: Literal["l2", "charbonnier"] = "l2"  # paper: l2; released code: charbonnier (real profiles)
    # teacher guidance of ISG's teacher leg, (low, high) drawn per sample; None: reuse DMD's draw
    # (released: SD 3.5 L fixed 5.0, SD 3.5 M U(2, 4), SDXL U(3, 15), FLUX U(1, 8))
    cfg: tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _cfg_range(self) -> ISGConfig:
        if self.cfg is not None and self.cfg[0] > self.cfg[1]:
            raise ValueError("cfg is a (low, high) range")
        return self


class GANConfig(Strict):
    """VFM discriminator (method.md section 4)."""

    enabled: bool = True
    weight: Annotated[float, Field(ge=0)] = 1.0
    backbone: str = "dinov2_vitl14"
    blocks: list[Annotated[int, Field(ge=0)]] = [2, 5, 8, 10, 14, 19, 23]
    text_projection_dim: PositiveInt = 64
    # the heads' text condition: "clip_l" (released code and paper: the prompt's CLIP ViT-L/14
    # text features from the teacher's own CLIP-L text_encoder) or "pooled" (the teacher's
    # pooled prompt embedding, this suite's earlier choice). The embedded world has no CLIP-L:
    # it always uses its own pooled embedding (discriminator/text.py).
    text_condition: Literal["clip_l", "pooled"] = "clip_l"
    # the paired real image's condition: "per_location" (released refmapper: its feature map
    # mapped location by location) or "pooled" (averaged over space, this suite's earlier choice)
    reference_condition: Literal["per_location", "pooled"] = "per_location"
    # w(t) of the anchor (losses/adversarial.py gan_weight); released SD 3.5: mirrored_sigma_sq;
    # released SDXL: sqrt_alpha_bar (DDPM backbones only)
    weight_curve: Literal[
        "one_minus_sigma_sq", "mirrored_sigma_sq", "sqrt_alpha_bar", "constant", "sigma", "one_minus_sigma"
    ] = "one_minus_sigma_sq"
    weight_discriminator: bool = True  # D's real and fake terms weighted by w(t) too (released code)
    diffaug: list[Literal["color", "translation", "cutout"]] = ["color", "translation", "cutout"]
    lr: Annotated[float, Field(gt=0)] = 1e-6
    # "vfm": SenseFlow's frozen-VFM discriminator on decoded images; "fake_features": DMD2's
    # classifier head on the fake score model's middle features at a noised input
    head: Literal["vfm", "fake_features"] = "vfm"
    loss: Literal["hinge", "logistic"] = "hinge"  # SenseFlow: hinge; DMD2: logistic (softplus)
    fake_weight: Annotated[float, Field(ge=0)] = 1.0  # weight of D's loss ("fake_features": in the fake step)


class TimeDensityConfig(Strict):
    """Noise times of one loss term (``senseflow.schedules.TimeDensity``)."""

    density: Literal["uniform", "logit_normal"] = "uniform"
    range: tuple[Probability, Probability] = (0.0, 1.0)  # uniform: U(range); logit_normal: clamped into it
    logit_mean: float = 0.0
    logit_std: Annotated[float, Field(gt=0)] = 1.0
    shifted: bool = False  # shift the draw by the teacher's shift (SD 3.5: 3; FLUX: exp(mu); SDXL: none)

    @model_validator(mode="after")
    def _ordered(self) -> TimeDensityConfig:
        if self.range[0] > self.range[1]:
            raise ValueError("range is a (low, high) range")
        return self


class DistillConfig(Strict):
    """SenseFlow distillation hyper-parameters (method.md sections 1-6)."""

    steps_student: PositiveInt = 4
    anchors: list[Annotated[float, Field(ge=0)]]
    anchor_units: Literal["sigma", "ddpm_index"] = "sigma"
    iterations: PositiveInt
    global_batch: PositiveInt = 8
    generator_lr: Annotated[float, Field(gt=0)] = 1e-6
    fake_lr: Annotated[float, Field(gt=0)] = 1e-6
    # warm-up in loop iterations, of all three optimisers (G, fake, D): linear from 0, or with
    # lr_after_warmup from each LR to lr_after_warmup / generator_lr times it (released FLUX)
    lr_warmup: Annotated[int, Field(ge=0)] = 0
    lr_after_warmup: Annotated[float, Field(gt=0)] | None = None
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    ttur: PositiveInt = 5  # generator steps once every `ttur` iterations
    # DMD's re-noising time (released SD 3.5: shift-3 of U(0.02, 0.98); FLUX: unshifted logit-normal)
    dmd_t: TimeDensityConfig = TimeDensityConfig(density="uniform", range=(0.02, 0.98), shifted=False)
    teacher_cfg: tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]] = (3.0, 10.0)
    guidance_embed: bool = False  # FLUX: teacher guidance comes in through an embedding
    backward_simulation_prob: Probability = 0.5
    # the fake model's training time (released SD 3.5: shifted logit-normal; FLUX: unshifted)
    fake_t: TimeDensityConfig = TimeDensityConfig(density="logit_normal", shifted=True)
    init_from: str | None = None  # exported student to start G and the fake model from (1-step fine-tune)
    ema_decay: Annotated[float, Field(ge=0, lt=1)] | None = None  # generator EMA (None: off)
    lora_rank: PositiveInt | None = None  # train LoRA adapters on the attention projections (None: full)
    lora_alpha: Annotated[float, Field(gt=0)] | None = None
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast for the networks' forward passes
    grad_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    eval_every: Annotated[int, Field(ge=0)] = 0  # iterations between in-loop evaluations (0: off)
    ida: IDAConfig = IDAConfig()
    isg: ISGConfig = ISGConfig()
    gan: GANConfig = GANConfig()

    @model_validator(mode="after")
    def _anchors_match_steps(self) -> DistillConfig:
        if len(self.anchors) != self.steps_student:
            raise ValueError(f"{len(self.anchors)} anchors for {self.steps_student} student steps")
        if list(self.anchors) != sorted(self.anchors, reverse=True):
            raise ValueError("anchors must be strictly decreasing (noisiest first)")
        if self.teacher_cfg[0] > self.teacher_cfg[1]:
            raise ValueError("teacher_cfg is a (low, high) range")
        if self.isg.enabled and (self.isg.margin_units == "sigma" or self.anchor_units == "ddpm_index"):
            self.check_isg_segments(1.0)  # unshifted flow margins: checked by the profile (shift)
        return self

    def check_isg_segments(self, shift: float) -> None:
        """Raise unless every segment ``(tau_prev, tau]`` leaves room for ``t_mid`` after the margins.

        Measured in the units ``t_mid`` is drawn in: unshifted time for ``isg.margin_units:
        unshifted`` with the teacher's ``shift``, the anchors' own time otherwise.
        """
        use_shift = shift if self.isg.margin_units == "unshifted" and self.anchor_units == "sigma" else 1.0
        # unshift_sigma of senseflow.schedules, on floats (this module does not import torch)
        bounds = [a / (use_shift - (use_shift - 1) * a) for a in self.anchor_times()] + [0.0]
        for hi, lo in zip(bounds[:-1], bounds[1:], strict=True):
            if hi - lo < 2 * self.isg.margin - 1e-9:
                units = f"unshifted time (shift {use_shift:g})" if use_shift != 1.0 else "time"
                raise ValueError(
                    f"ISG segment ({lo:g}, {hi:g}] in {units} is narrower than 2 * isg.margin = "
                    f"{2 * self.isg.margin:g}: lower isg.margin or space the anchors"
                )

    def anchor_times(self) -> list[float]:
        """Anchors as backbone times ``t`` in [0, 1] (DDPM indices are divided by 999)."""
        scale = 999.0 if self.anchor_units == "ddpm_index" else 1.0
        return [a / scale for a in self.anchors]


# ----------------------------------------------------------------------------- consistency baselines
class ConsistencyBaselineConfig(Strict):
    """What LCM and Hyper-SD share (senseflow/consistency.py): teacher solver, EMA target, AdamW, sampler."""

    iterations: PositiveInt
    global_batch: PositiveInt = 64
    lr: Annotated[float, Field(gt=0)] = 1e-4
    lr_warmup: Annotated[int, Field(ge=0)] = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    target_ema: Annotated[float, Field(ge=0, lt=1)] = 0.95  # EMA target network theta- (LCM: 0.95)
    teacher_steps: PositiveInt = 32  # N: the teacher solver's grid (shifted like the teacher)
    skip: PositiveInt = 1  # k: teacher Euler step from t_{n+k} to t_n, in grid steps
    guidance: tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]] = (4.0, 4.0)  # w ~ U
    export_guidance: Annotated[float, Field(ge=0)] | None = None  # w baked into the export (None: midpoint)
    distance: Literal["l2", "pseudo_huber"] = "l2"
    huber_c: Annotated[float, Field(gt=0)] | None = None  # pseudo-Huber c (None: 0.00054 sqrt(d))
    sampler: Literal["euler", "x0"] = "euler"  # the exported student's sampler (recipe.json)
    seed: int = 0
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    eval_every: Annotated[int, Field(ge=0)] = 0  # with --reference: curve points (0: end only)

    @model_validator(mode="after")
    def _check_solver(self) -> ConsistencyBaselineConfig:
        if self.skip > self.teacher_steps:
            raise ValueError(f"skip {self.skip} is larger than teacher_steps {self.teacher_steps}")
        lo, hi = self.guidance
        if lo > hi:
            raise ValueError("guidance is a (low, high) range")
        if self.export_guidance is not None and not lo <= self.export_guidance <= hi:
            raise ValueError(f"export_guidance {self.export_guidance} lies outside guidance [{lo}, {hi}]")
        return self

    def export_w(self) -> float:
        """The guidance weight the exported student is fixed at."""
        lo, hi = self.guidance
        return float(self.export_guidance if self.export_guidance is not None else (lo + hi) / 2)


class LCMConfig(ConsistencyBaselineConfig):
    """Latent consistency distillation (Luo et al. 2023): guided student, skipping-step solver."""

    guidance_embedding: bool = True  # w enters the student (zero-initialised embedding, baked at export)
    embedding_dim: PositiveInt = 256
    boundary: Literal["flow", "lcm"] = "flow"  # c_skip / c_out of the consistency function
    sampler: Literal["euler", "x0"] = "x0"  # LCM's multistep sampler: x0 prediction, fresh re-noise


class HyperSDConfig(ConsistencyBaselineConfig):
    """Hyper-SD trajectory-segmented consistency distillation (Ren et al. 2024): S segments per stage."""

    segments: list[PositiveInt] = [8, 4, 2, 1]  # stages share the iterations equally, in order

    @model_validator(mode="after")
    def _check_segments(self) -> HyperSDConfig:
        if list(self.segments) != sorted(set(self.segments), reverse=True):
            raise ValueError(f"segments must be strictly decreasing, got {list(self.segments)}")
        bad = [s for s in self.segments if self.teacher_steps % s]
        if bad:
            raise ValueError(f"segments {bad} do not divide teacher_steps {self.teacher_steps}")
        return self


class BaselinesConfig(Strict):
    """Baselines distilled in this world with their own loops (`senseflow distill --variant NAME`)."""

    lcm: LCMConfig | None = None
    hyper_sd: HyperSDConfig | None = None


class RuntimeConfig(Strict):
    """Where and how processes run."""

    nproc_per_node: PositiveInt = 1
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: Annotated[int, Field(ge=0)] = 0  # torch intra-op threads, 0 = library default
    # data parallelism under torchrun: auto = DDP with several processes; fsdp = FSDP2 full shard
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"


class DataConfig(Strict):
    """Real training images of a real profile (senseflow/real_data.py; README "Training data").

    ``folder``: ``path`` holds ``captions`` (JSONL of ``{"id", "file", "caption"}``) and the
    images; ``webdataset``: ``path`` holds ``*.tar`` shards (``KEY.jpg`` + ``KEY.txt`` /
    ``KEY.json``). Records whose metadata is below a filter are dropped; ``None`` turns a
    filter off (method.md: LAION aesthetic >= 5, short side >= 1024).
    """

    path: str
    format: Literal["folder", "webdataset"] = "folder"
    captions: str = "captions.jsonl"
    min_aesthetic: float | None = 5.0
    min_side: PositiveInt | None = 1024


class PromptSourceConfig(Strict):
    """The prompt set a real profile's candidates are sampled on (eval/prompts.py).

    ``set``: ``coco5k``, ``coco10k``, ``hpsv2``, ``parti`` (read from the local ``source``:
    captions_val2014.json, the HPSv2 folder, PartiPrompts.tsv), or a ``.txt`` / ``.jsonl``
    prompt file (``source`` unused).
    """

    set: str
    source: str | None = None


CompBenchCategory = Literal["color", "shape", "texture", "spatial", "non_spatial", "complex"]


class CompBenchConfig(Strict):
    """T2I-CompBench of a real profile: the paper's second table (eval/metrics/t2i_compbench.py).

    ``source``: the ``examples/dataset`` folder of a local T2I-CompBench checkout (prompt files
    are read there, never downloaded). Every 4-step candidate samples 10 images per prompt at
    seeds 42-51 for each category; ``n_prompts`` keeps the first N prompts of each (300: all).
    """

    source: str
    categories: list[CompBenchCategory] = ["color", "shape", "texture", "spatial", "non_spatial", "complex"]
    n_prompts: PositiveInt | None = None


class PipelineConfig(Strict):
    """What ``dvc repro`` produces for a profile: methods trained, candidates sampled, metrics.

    Candidate names are fixed (``senseflow.pipeline.CANDIDATES``) so ``dvc.yaml`` can list them;
    this section decides which of them a profile actually runs (the others are skipped).
    """

    # trained by every `dvc repro` (embedded: SenseFlow and the in-world baselines)
    methods: list[str] = ["senseflow", "dmd2", "senseflow_1step"]
    # trained only with `dvc exp run -S ablations=true` (params.yaml)
    ablations: list[str] = ["no_ida", "no_isg", "no_gan", "vanilla_dmd"]
    student_steps: list[PositiveInt] = [4, 2, 1]  # every student is sampled at these step counts
    teacher_steps: list[PositiveInt] = [4, 2, 1]  # plus teacher.sample.steps ("teacher_full", the reference)
    metrics: list[str] = ["fid_t_probe", "adherence"]
    # image protocol of FID / CLIP score (eval.image_protocols): dmd2 is the paper's evaluator
    eval_protocol: Literal["dmd2", "clean", "torchmetrics"] = "dmd2"
    noise_floor: bool = True  # also sample the teacher with other seeds: FID-T's noise floor
    registry_baselines: list[str] = []  # real profiles: names in experiments/baselines.yaml
    prompts: PromptSourceConfig | None = None  # real profiles; embedded: the world's test prompts
    # real profiles: T2I-CompBench's own sample folders and metrics (embedded: compbench_* of the probe)
    compbench: CompBenchConfig | None = None
    # code defaults: eval.stats.N_BOOT / N_BOOT_SET, equal to these (tests/test_defaults.py)
    n_boot: PositiveInt = 1000  # bootstrap resamples of the per-image metrics
    n_boot_set: PositiveInt = 200  # subsamples of the set metrics (FID-T)
    eval_seed: int = 0


class ProfileConfig(Strict):
    """A whole profile: the recipe of one row of the product (embedded, smoke, sdxl, ...)."""

    name: str
    description: str
    family: Literal["embedded", "sdxl", "sd3", "flux"]
    world: WorldConfig | None = None
    probe: ProbeConfig | None = None
    clip: ClipConfig | None = None  # embedded world's tiny CLIP (defaults when absent)
    teacher: TeacherConfig
    distill: DistillConfig
    # named variants of the distillation recipe: overrides of keys under `distill`
    # (e.g. no_ida: ["ida.enabled=false"]); `senseflow distill --variant NAME`
    variants: dict[str, list[str]] = {}
    # consistency baselines (LCM, Hyper-SD): own sections, own loop (senseflow.consistency)
    baselines: BaselinesConfig = BaselinesConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    pipeline: PipelineConfig = PipelineConfig()
    data: DataConfig | None = None  # real profiles: the training images (embedded: rendered)

    @model_validator(mode="after")
    def _embedded_needs_world(self) -> ProfileConfig:
        if self.family == "embedded":
            if self.world is None or self.world.scenes is None or self.probe is None:
                raise ValueError("the embedded family needs the 'world' (with 'scenes') and 'probe' sections")
            if self.teacher.source != "train":
                raise ValueError("the embedded teacher is trained here: teacher.source must be 'train'")
            _check_world_fits_teacher(self.world.scenes, self.teacher.model)
        elif self.teacher.source != "pretrained":
            raise ValueError(f"family {self.family!r} distils a pretrained teacher")
        for name, assignments in self.variants.items():
            variant = variant_distill(self, name, assignments)  # raises naming the variant and the key
            if variant == self.distill and name in self.pipeline.ablations:
                raise ValueError(
                    f"ablation {name!r} ({', '.join(assignments)}) changes nothing in the distill "
                    f"section: it would train a copy of the main run; drop it from pipeline.ablations"
                )
        if self.distill.isg.enabled and self.distill.isg.margin_units == "unshifted":
            shift = self.teacher_shift()
            if shift is not None:
                try:
                    self.distill.check_isg_segments(shift)
                except ValueError as exc:
                    raise ValueError(f"distill.isg: {exc}") from None
        return self

    @model_validator(mode="after")
    def _gan_curve_fits_family(self) -> ProfileConfig:
        # sqrt(alpha_bar) exists for DDPM (epsilon) teachers only: SDXL among the families
        if self.family != "sdxl" and self.distill.gan.weight_curve == "sqrt_alpha_bar":
            raise ValueError(
                f"distill.gan.weight_curve sqrt_alpha_bar needs a DDPM teacher (sdxl), not {self.family!r}: "
                "use one_minus_sigma_sq or mirrored_sigma_sq"
            )
        return self

    def teacher_shift(self) -> float | None:
        """The teacher's constant sigma shift (None: resolution-dependent, FLUX's dynamic shift)."""
        if self.teacher.source == "pretrained":
            if self.family == "sdxl":
                return 1.0
            return self.teacher.pretrained.shift
        return self.teacher.train.shift

    def variant(self, name: str) -> DistillConfig:
        """The ``distill`` section with variant ``name``'s overrides applied (``senseflow``: as is)."""
        if name in ("senseflow", "default") and name not in self.variants:
            return self.distill
        if name not in self.variants:
            known = ", ".join(["senseflow", *sorted(self.variants)])
            raise ConfigError(f"profile {self.name!r} has no variant {name!r} (known: {known})")
        return variant_distill(self, name, self.variants[name])


def _check_world_fits_teacher(scenes: SceneConfig, model: TinyTransformerConfig) -> None:
    """The embedded teacher's patches must tile the scene (else the transformer cannot be built)."""
    res, patch = scenes.resolution, model.patch_size
    if res % patch:
        fits = [p for p in range(1, res + 1) if res % p == 0 and p <= res // 2]
        raise ValueError(
            f"teacher.model.patch_size {patch} does not divide world.scenes.resolution {res}: "
            f"use a patch size among {fits}, or a resolution that is a multiple of {patch}"
        )


def variant_distill(profile: ProfileConfig, name: str, assignments: list[str]) -> DistillConfig:
    """Apply a variant's ``key=value`` overrides (keys relative to ``distill``) and validate."""
    raw = profile.distill.model_dump(mode="json")
    for assignment in assignments:
        apply_override(raw, assignment, source=f"variants.{name}")
    try:
        return DistillConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"variant {name!r}: distill.{_describe(exc.errors()[0])}") from None


# ----------------------------------------------------------------------------- loading
def find_profiles_dir(start: Path | None = None) -> Path:
    """``experiments/`` of the current directory or of the checkout this package lives in."""
    for root in (start or Path.cwd(), Path(__file__).resolve().parent.parent):
        if (root / PROFILES_DIR).is_dir():
            return root / PROFILES_DIR
    raise ConfigError(
        f"no {PROFILES_DIR}/ folder in {Path.cwd()}: run from the repository root or pass a profile path"
    )


def known_profiles(profiles_dir: Path) -> list[str]:
    """Profile names defined in ``profiles_dir`` (each ``NAME.yaml``)."""
    return sorted(p.stem for p in profiles_dir.glob("*.yaml") if p.stem not in NOT_PROFILES)


def resolve_profile_path(profile: str) -> Path:
    """A profile name (``embedded``) or a path to a YAML file -> the file."""
    if profile.endswith((".yaml", ".yml")) or "/" in profile:
        path = Path(profile)
        if not path.is_file():
            raise ConfigError(f"profile file {path} does not exist")
        return path
    folder = find_profiles_dir()
    path = folder / f"{profile}.yaml"
    if not path.is_file():
        names = ", ".join(known_profiles(folder)) or "none"
        raise ConfigError(f"unknown profile {profile!r}: no {path} (known profiles: {names})")
    return path


def apply_override(raw: dict, assignment: str, source: str = "--set") -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to the nested mapping ``raw`` in place."""
    if "=" not in assignment:
        raise ConfigError(f"{source} {assignment!r}: expected KEY.PATH=VALUE")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source} {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value)


def _describe(error: dict) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind, msg, got = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (remove it or check its spelling)"
    if kind == "missing":
        return f"{loc}: required value is missing"
    expected = {
        "float_parsing": "a number",
        "float_type": "a number",
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "tuple_type": "a list of two values",
    }.get(kind)
    if expected:
        return f"{loc}: expected {expected}, got {got!r}"
    return f"{loc}: {msg}" + (f" (got {got!r})" if kind != "value_error" else "")


def validate_profile(raw: Any, source: str) -> ProfileConfig:
    """Validate a raw mapping; raise :class:`ConfigError` naming ``source`` and the key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return ProfileConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{source}: {_describe(first)}{tail}") from None


def load_profile(profile: str, overrides: list[str] | None = None) -> ProfileConfig:
    """Load, override and validate a profile by name or path."""
    path = resolve_profile_path(profile)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if raw is None:
        raise ConfigError(f"{path}: file is empty")
    for assignment in overrides or []:
        if not isinstance(raw, dict):
            break
        apply_override(raw, assignment)
    cfg = validate_profile(raw, str(path))
    if cfg.pipeline.registry_baselines:
        # names of experiments/baselines.yaml and of the profile's family: checked when the profile
        # is read, not when the first generate stage starts (the registry imports diffusers: lazily)
        from senseflow.pipeline import validate_pipeline

        validate_pipeline(cfg)
    return cfg


def dump_profile(cfg: ProfileConfig) -> str:
    """The resolved profile as YAML (what ``senseflow config show`` prints and runs save)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
