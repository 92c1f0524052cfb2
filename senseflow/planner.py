"""Memory planner: parameter counts and per-GPU memory of a distillation run, without weights.

``senseflow plan`` builds every network of a real profile on the meta device (shapes, no
storage) from the published ``config.json`` files shipped under
``experiments/architectures/<profile>/``, counts their parameters and turns the counts
into per-GPU bytes for the chosen sharding, precision and optimiser, plus an activation
estimate. Folder layout, as in the models' Hugging Face repositories::

    transformer/ or unet/   the denoiser: teacher, generator and fake score model
    text_encoder*/          the frozen text encoders
    vae/                    the frozen VAE (the generator's x0 is decoded with gradient)
    <gan.backbone>/         the frozen VFM of the discriminator (dinov2_vitl14)

Memory model (per GPU, bytes):

- weights: every network at the run's precision. ``fsdp`` (FSDP2 ``fully_shard``) divides
  the trainable networks' parameters by the number of GPUs, and the frozen teacher's with
  ``shard_frozen`` (what the loop does: :func:`senseflow.distributed.shard_frozen`); the
  other frozen networks (VFM, text encoders, VAE) and buffers (SD3's stored positional
  table) are replicated. ``ddp`` replicates everything.
- master weights: 4 bytes per trainable parameter, and the gradients are then fp32 too. On
  by default: the loop trains float32 weights under bf16 autocast (a conservative model: it
  also counts a 16-bit copy of the trainable weights).
- gradients: one per trainable parameter, at the precision of the trainable weights.
- optimiser states: AdamW's two moments in fp32 (8 bytes per trainable parameter; fp32
  moments are what a bf16 run should keep), 8-bit AdamW's two 1-byte moments (2 bytes;
  its block-wise scales, under 2%, are left out).
- FSDP all-gather buffers: two unsharded blocks (one computing, one prefetched) of the
  largest repeated block of any network.
- activations: an estimate, see :func:`activation_bytes`.
- a fixed runtime reserve for the CUDA context, NCCL buffers and allocator fragmentation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from senseflow.config import ProfileConfig, find_profiles_dir
from senseflow.discriminator.head import DiscriminatorHead
from senseflow.discriminator.taps import dinov2_hidden_state_indices
from senseflow.errors import UserError

ARCHITECTURES_DIR = "architectures"
DENOISER_FOLDERS = ("transformer", "unet")
TEXT_ENCODER_PREFIX = "text_encoder"
VAE_FOLDER = "vae"
CLIP_L_FOLDER = "text_encoder"  # every family's first text encoder is CLIP ViT-L (768 wide)

Sharding = Literal["fsdp", "ddp"]
Precision = Literal["bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw8bit"]

GIB = 2**30
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}
MASTER_WEIGHT_BYTES = 4
RUNTIME_RESERVE_BYTES = 2 * GIB
# Activation bytes per token and channel at 16 bit, per block kept for backward.
# Transformer block: Korthikanti et al. 2022 ("Reducing activation recomputation in large
# transformer models", eq. 1): s*h*(34 + 5*a*s/h); fused attention (SDPA, flash) keeps no
# s x s score matrix, so the second term is dropped.
TRANSFORMER_BLOCK_BYTES = 34
# ResNet block: two GroupNorm -> SiLU -> conv units, each keeping its three inputs.
RESNET_BLOCK_BYTES = 12
# With gradient checkpointing a block keeps only its 16-bit input.
CHECKPOINTED_BLOCK_BYTES = 2
CLIP_TOKENS = 77  # the CLIP context SD3 pipelines prepend to the T5 tokens
FLUX_PACK = 2  # FluxPipeline packs 2x2 latent pixels into one token (in_channels 64 = 16 x 4)
DTYPE_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


# ----------------------------------------------------------------------------- networks
@dataclass(frozen=True)
class NetworkCount:
    """One network of the run: what it is and how many numbers it holds.

    ``parameters`` counts each tensor once (tied weights once); ``buffers`` are the
    persistent buffers a checkpoint stores besides them (SD3's positional table);
    ``largest_block`` is the parameter count of its largest repeated block, the unit that
    FSDP2 gathers at once.
    """

    role: str
    model: str
    parameters: int
    trainable: int = 0
    buffers: int = 0
    largest_block: int = 0

    @property
    def stored(self) -> int:
        """Parameters plus persistent buffers: what the published figures count."""
        return self.parameters + self.buffers


def architectures_dir(profile: str, profiles_dir: Path | None = None) -> Path:
    """``experiments/architectures/<profile>/``; UserError naming the profiles that have one."""
    root = (profiles_dir or find_profiles_dir()) / ARCHITECTURES_DIR
    folder = root / profile
    if not folder.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise UserError(
            f"profile {profile!r} has no architecture configs: no folder {folder} "
            f"(profiles with one: {', '.join(have) or 'none'})"
        )
    return folder


def load_architecture_config(folder: Path) -> dict:
    """The ``config.json`` of one component folder; UserError if it is missing or malformed."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"missing architecture config {path}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def build_on_meta(config: dict) -> nn.Module:
    """The model a published ``config.json`` describes, on the meta device (no storage).

    A diffusers config names its class in ``_class_name``, a transformers config in
    ``architectures[0]`` (with ``model_type`` for the config class).
    """
    import diffusers
    import transformers

    with torch.device("meta"):
        if "_class_name" in config:
            return getattr(diffusers, config["_class_name"]).from_config(config)
        fields = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}
        model_config = transformers.AutoConfig.for_model(**fields)
        return getattr(transformers, config["architectures"][0])(model_config)


def _is_stack(module: nn.Module) -> bool:
    """A non-empty ModuleList of one class: a stack of repeated blocks."""
    return isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def largest_block(model: nn.Module) -> int:
    """Parameters of the largest innermost repeated block (the whole model if none).

    Innermost: a UNet's stage holds a stack of transformer models, each a stack of
    transformer blocks; FSDP2 is applied per transformer block, so that is the unit.
    """
    sizes = [
        _n_params(block)
        for stack in model.modules()
        if _is_stack(stack)
        for block in stack
        if not any(_is_stack(m) for m in block.modules())
    ]
    return max(sizes, default=_n_params(model))


def count_network(role: str, model: nn.Module, *, trainable: bool) -> NetworkCount:
    """Parameter, buffer and largest-block counts of ``model`` in the given role."""
    parameters = _n_params(model)
    # state_dict lists tied parameters under every name: remove them all by name
    names = {k for k, _ in model.named_parameters(remove_duplicate=False)}
    buffers = sum(t.numel() for k, t in model.state_dict().items() if k not in names)
    return NetworkCount(
        role=role,
        model=type(model).__name__,
        parameters=parameters,
        trainable=parameters if trainable else 0,
        buffers=buffers,
        largest_block=largest_block(model),
    )


def count_discriminator_heads(
    blocks: Sequence[int],
    *,
    channels: int,
    text_dim: int,
    text_projection_dim: int,
    grid: int,
    reference: str = "per_location",
) -> NetworkCount:
    """The VFM discriminator's trainable part: one head per tapped map.

    As in :class:`senseflow.discriminator.VFMDiscriminator`: one :class:`DiscriminatorHead`
    per DINOv2 map (the patch embedding and each of ``blocks``), each over ``channels`` x
    ``grid`` x ``grid`` features, with its ``text_dim -> text_projection_dim`` text map and
    its reference map (``per_location``: a second conv trunk, the released ``refmapper``).
    Every DINOv2 map has the same shape, so one head is built (on the meta device) and
    counted once per map: spectral norm's power iterations make each build slow.
    """
    taps = len(dinov2_hidden_state_indices(blocks))
    with torch.device("meta"):
        head = DiscriminatorHead(
            channels, text_dim, in_size=grid, cmap_dim=text_projection_dim, reference=reference
        )
    one = count_network("", head, trainable=True)
    parameters = taps * one.parameters
    return NetworkCount(
        role="discriminator heads",
        model=f"{taps} x DiscriminatorHead",
        parameters=parameters,
        trainable=parameters,
        buffers=taps * one.buffers,
        largest_block=one.parameters,
    )


def _vfm_grid(vfm_config: dict, resolution: int) -> tuple[int, int]:
    """(input side, patch grid side) of the VFM on decoded images of ``resolution``, as Dinov2Taps."""
    patch = int(vfm_config["patch_size"])
    side = max(patch, resolution // patch * patch)
    return side, side // patch


def profile_networks(cfg: ProfileConfig, arch_dir: Path, *, cache_text: bool = False) -> list[NetworkCount]:
    """Every network a distillation run of ``cfg`` holds, counted from the configs in ``arch_dir``.

    Teacher (frozen), generator and fake score model (trainable copies of the denoiser;
    with ``distill.guidance_embed`` they lose the guidance embedding, as the FLUX student
    is not guidance-distilled), discriminator heads (trainable) and the frozen VFM when
    ``distill.gan.enabled``, the frozen text encoders unless ``cache_text`` (prompt
    embeddings computed ahead), the frozen VAE.
    """
    folders = {p.name: p for p in sorted(arch_dir.iterdir()) if p.is_dir()}
    denoiser = next((folders[n] for n in DENOISER_FOLDERS if n in folders), None)
    if denoiser is None:
        raise UserError(f"{arch_dir}: no denoiser folder (one of {', '.join(DENOISER_FOLDERS)})")
    teacher_config = load_architecture_config(denoiser)
    teacher = count_network("teacher", build_on_meta(teacher_config), trainable=False)
    student_config = dict(teacher_config)
    if cfg.distill.guidance_embed and "guidance_embeds" in student_config:
        student_config["guidance_embeds"] = False
    student = count_network("generator", build_on_meta(student_config), trainable=True)
    networks = [teacher, student, replace(student, role="fake score")]

    gan = cfg.distill.gan
    if gan.enabled:
        vfm_config = load_architecture_config(arch_dir / gan.backbone)
        networks.append(count_network(f"VFM {gan.backbone}", build_on_meta(vfm_config), trainable=False))
        networks.append(
            count_discriminator_heads(
                gan.blocks,
                channels=int(vfm_config["hidden_size"]),
                text_dim=int(load_architecture_config(arch_dir / CLIP_L_FOLDER)["hidden_size"]),
                text_projection_dim=gan.text_projection_dim,
                grid=_vfm_grid(vfm_config, cfg.teacher.pretrained.resolution)[1],
                reference=gan.reference_condition,
            )
        )

    if not cache_text:
        for name, folder in folders.items():
            if name.startswith(TEXT_ENCODER_PREFIX):
                model = build_on_meta(load_architecture_config(folder))
                networks.append(count_network(name, model, trainable=False))
    vae = build_on_meta(load_architecture_config(arch_dir / VAE_FOLDER))
    networks.append(count_network(VAE_FOLDER, vae, trainable=False))
    return networks


# ----------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class ActivationSegment:
    """``blocks`` alike blocks over ``tokens`` positions of ``width`` channels.

    ``bytes_per_element``: bytes kept for backward per token and channel by one block at
    16 bit without checkpointing.
    """

    name: str
    tokens: int
    width: int
    blocks: int
    bytes_per_element: int = TRANSFORMER_BLOCK_BYTES


def denoiser_segments(config: dict, *, latent_side: int, max_sequence_length: int) -> list[ActivationSegment]:
    """Blocks of the generator's forward at one latent side, from its published config.

    FLUX: packed 2x2 latent tokens plus the T5 tokens through double and single blocks.
    SD3: patch tokens plus 77 CLIP and the T5 tokens through the joint blocks (MMDiT-X's
    extra image attention in SD3.5 Medium's first blocks is not counted). UNet: per stage,
    ResNet blocks and, in cross-attention stages, transformer blocks over its pixels (the
    prompt enters as keys and values only).
    """
    name = config["_class_name"]
    if name == "FluxTransformer2DModel":
        tokens = (latent_side // FLUX_PACK) ** 2 + max_sequence_length
        width = config["num_attention_heads"] * config["attention_head_dim"]
        blocks = config["num_layers"] + config["num_single_layers"]
        return [ActivationSegment("denoiser blocks", tokens, width, blocks)]
    if name == "SD3Transformer2DModel":
        tokens = (latent_side // config["patch_size"]) ** 2 + CLIP_TOKENS + max_sequence_length
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return [ActivationSegment("denoiser blocks", tokens, width, config["num_layers"])]
    if name == "UNet2DConditionModel":
        return _unet_segments(config, latent_side)
    raise UserError(
        f"no activation estimate for {name}: "
        "known denoisers are FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel"
    )


def _unet_segments(config: dict, latent_side: int) -> list[ActivationSegment]:
    """ResNet and transformer blocks of each UNet stage (down, up and, for the last, mid)."""
    channels = config["block_out_channels"]
    depth = config.get("transformer_layers_per_block", 1)
    depths = depth if isinstance(depth, list) else [depth] * len(channels)
    per_stage = 2 * config["layers_per_block"] + 1  # layers_per_block down, one more up
    segments = []
    for i, (c, kind) in enumerate(zip(channels, config["down_block_types"], strict=True)):
        tokens = (latent_side // 2**i) ** 2
        last = i == len(channels) - 1
        resnets = per_stage + (2 if last else 0)  # the mid block has two ResNets
        segments.append(ActivationSegment(f"stage {i} resnets", tokens, c, resnets, RESNET_BLOCK_BYTES))
        if "CrossAttn" in kind:
            n = depths[i] * per_stage + (depths[i] if last else 0)
            segments.append(ActivationSegment(f"stage {i} transformer blocks", tokens, c, n))
    return segments


def vae_decoder_segments(config: dict, *, latent_side: int) -> list[ActivationSegment]:
    """The VAE decoder's blocks: mid (two ResNets, one attention) then each up stage's ResNets."""
    channels = list(reversed(config["block_out_channels"]))
    tokens = latent_side**2
    segments = [
        ActivationSegment("decoder mid resnets", tokens, channels[0], 2, RESNET_BLOCK_BYTES),
        ActivationSegment("decoder mid attention", tokens, channels[0], 1),
    ]
    for i, c in enumerate(channels):
        side = latent_side * 2**i
        n = config["layers_per_block"] + 1
        segments.append(ActivationSegment(f"decoder stage {i}", side * side, c, n, RESNET_BLOCK_BYTES))
    return segments


def vfm_segments(config: dict, *, resolution: int, blocks: Sequence[int]) -> list[ActivationSegment]:
    """DINOv2 blocks up to the last tapped one, over the patch grid plus the CLS token."""
    grid = _vfm_grid(config, resolution)[1]
    n = min(max(blocks) + 1, int(config["num_hidden_layers"]))
    return [ActivationSegment("VFM blocks", grid * grid + 1, int(config["hidden_size"]), n)]


def activation_bytes(
    segments: Sequence[ActivationSegment], *, batch: int, checkpointing: bool, precision: Precision
) -> int:
    """An ESTIMATE of the activation bytes kept for backward, tokens x width x blocks x batch.

    Without checkpointing every block keeps ``bytes_per_element`` per token and channel
    (Korthikanti et al. 2022 for transformer blocks; see the module constants). With
    checkpointing every block keeps only its 16-bit input, plus one block recomputed in
    full during backward. Constants are for 16-bit activations and doubled for fp32.
    Not counted: embeddings, norms and convolutions outside the blocks, attention kernels'
    workspaces, the allocator's fragmentation. Measure on the target GPU before trusting
    a narrow margin.
    """
    scale = PRECISION_BYTES[precision] / 2
    if not segments:
        return 0
    if checkpointing:
        kept = sum(CHECKPOINTED_BLOCK_BYTES * s.tokens * s.width * s.blocks for s in segments)
        kept += max(s.bytes_per_element * s.tokens * s.width for s in segments)
    else:
        kept = sum(s.bytes_per_element * s.tokens * s.width * s.blocks for s in segments)
    return int(kept * batch * scale)


# ----------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class MemoryRow:
    """One line of the per-GPU memory bill: what, how many bytes, how it was computed."""

    item: str
    bytes: int
    detail: str


def _human(n: float) -> str:
    """12_000_000_000 -> '12.00 B', 3_500_000 -> '3.50 M'."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def memory_rows(
    networks: Sequence[NetworkCount],
    *,
    gpus: int,
    sharding: Sharding,
    precision: Precision,
    optimizer: Optimizer,
    master_weights: bool = False,
    activations: Sequence[tuple[str, int, str]] = (),
    reserve_bytes: int = RUNTIME_RESERVE_BYTES,
    shard_frozen: bool = True,
) -> list[MemoryRow]:
    """The per-GPU memory bill of ``networks`` (model in the module docstring).

    ``activations`` are ``(name, bytes, detail)`` rows already estimated per GPU.
    ``shard_frozen``: under FSDP the frozen teacher is sharded too (what
    :func:`senseflow.train.distill` does); False replicates it. The other frozen networks
    (VFM, text encoders, VAE) are always replicated: the loop does not shard them.
    """
    if gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {gpus}")
    shards = gpus if sharding == "fsdp" else 1
    where = f" / {shards} GPUs" if shards > 1 else (" (replicated)" if gpus > 1 else "")
    width = PRECISION_BYTES[precision]
    master = master_weights and precision != "fp32"
    trainable = sum(n.trainable for n in networks)
    parameters = sum(n.parameters for n in networks)
    buffers = sum(n.buffers for n in networks)
    teacher_shards = shards if shard_frozen else 1
    teacher = sum(n.parameters - n.trainable for n in networks if n.role == "teacher")
    frozen = parameters - trainable - teacher  # VFM, text encoders, VAE: replicated by the loop
    teacher_where = f" / {teacher_shards} GPUs" if teacher_shards > 1 else " (replicated)"

    rows = [
        MemoryRow(
            "weights",
            trainable * width // shards
            + teacher * width // teacher_shards
            + frozen * width
            + buffers * width,
            f"{_human(trainable)} trainable params x {width} B{where}, {_human(teacher)} frozen teacher "
            f"x {width} B{teacher_where}, {_human(frozen)} other frozen x {width} B (replicated)"
            + (f" + {_human(buffers)} buffers x {width} B" if buffers else ""),
        )
    ]
    if master:
        rows.append(
            MemoryRow(
                "master weights (fp32)",
                trainable * MASTER_WEIGHT_BYTES // shards,
                f"{_human(trainable)} trainable x {MASTER_WEIGHT_BYTES} B{where}",
            )
        )
    grad_width = MASTER_WEIGHT_BYTES if master else width
    state = OPTIMIZER_STATE_BYTES[optimizer]
    rows += [
        MemoryRow(
            "gradients",
            trainable * grad_width // shards,
            f"{_human(trainable)} trainable x {grad_width} B{where}",
        ),
        MemoryRow(
            f"optimiser states ({optimizer})",
            trainable * state // shards,
            f"{_human(trainable)} trainable x {state} B{where}",
        ),
    ]
    if shards > 1:
        block = max((n.largest_block for n in networks), default=0)
        rows.append(
            MemoryRow(
                "FSDP all-gather buffers",
                2 * block * width,
                f"2 x largest block ({_human(block)} params) x {width} B",
            )
        )
    rows += [MemoryRow(f"activations: {name} (estimate)", n, detail) for name, n, detail in activations]
    if reserve_bytes:
        rows.append(MemoryRow("runtime reserve", reserve_bytes, "CUDA context, NCCL buffers, fragmentation"))
    return rows


@dataclass(frozen=True)
class PlanReport:
    """A memory plan: the run's settings, its networks and the per-GPU memory bill."""

    profile: str
    gpus: int
    gpu_mem_gib: float
    sharding: Sharding
    precision: Precision
    optimizer: Optimizer
    batch_per_gpu: int
    grad_checkpointing: bool
    cache_text: bool
    master_weights: bool
    resolution: int
    networks: tuple[NetworkCount, ...]
    memory: tuple[MemoryRow, ...]
    shard_frozen: bool = False  # the frozen teacher sharded under FSDP (the loop's shard_frozen)

    @property
    def total_bytes(self) -> int:
        """Bytes needed per GPU."""
        return sum(r.bytes for r in self.memory)

    @property
    def headroom_bytes(self) -> int:
        """Bytes left per GPU (negative: missing)."""
        return int(self.gpu_mem_gib * GIB) - self.total_bytes

    @property
    def fits(self) -> bool:
        """Whether the bill fits in one GPU's memory."""
        return self.headroom_bytes >= 0


def _activation_rows(
    cfg: ProfileConfig, arch_dir: Path, *, batch: int, checkpointing: bool, precision: Precision
) -> list[tuple[str, int, str]]:
    """Activation rows of a generator step, the iteration that keeps the most for backward.

    The generator's forward, the VAE decoding its x0 and the VFM scoring the decoded image
    all keep activations (the adversarial gradient flows back through them); the teacher,
    the fake model's DMD evaluation and the text encoders run without gradient. The fake
    model's own step keeps no more than the generator's forward alone.
    """
    pretrained = cfg.teacher.pretrained
    vae_config = load_architecture_config(arch_dir / VAE_FOLDER)
    latent_side = pretrained.resolution // 2 ** (len(vae_config["block_out_channels"]) - 1)
    denoiser = next(arch_dir / n for n in DENOISER_FOLDERS if (arch_dir / n).is_dir())
    parts = [
        (
            "generator",
            denoiser_segments(
                load_architecture_config(denoiser),
                latent_side=latent_side,
                max_sequence_length=pretrained.max_sequence_length,
            ),
        ),
        ("VAE decode", vae_decoder_segments(vae_config, latent_side=latent_side)),
    ]
    if cfg.distill.gan.enabled:
        gan = cfg.distill.gan
        vfm = load_architecture_config(arch_dir / gan.backbone)
        parts.append((gan.backbone, vfm_segments(vfm, resolution=pretrained.resolution, blocks=gan.blocks)))
    rows = []
    for name, segments in parts:
        n = activation_bytes(segments, batch=batch, checkpointing=checkpointing, precision=precision)
        tokens = max(s.tokens for s in segments)
        blocks = sum(s.blocks for s in segments)
        how = "checkpointed" if checkpointing else "all kept"
        rows.append((name, n, f"{blocks} blocks, up to {tokens:,} tokens, batch {batch}, {how}"))
    return rows


def run_settings(cfg: ProfileConfig) -> dict:
    """The settings of ``cfg``'s run that decide its memory, read where the loop reads them.

    One source for ``senseflow plan`` and :func:`senseflow.real_run.distill_real`:
    ``runtime.parallel`` (fsdp: FSDP2 on the generator and fake model; anything else
    replicates), ``distill.grad_checkpointing``, the teacher's load dtype (frozen networks),
    float32 master weights of every trainable network (always, :func:`senseflow.train.trainable_network`),
    and the frozen teacher sharded with them under FSDP (:func:`senseflow.distributed.shard_frozen`;
    the VFM, text encoders and VAE stay replicated).
    """
    return {
        "sharding": "fsdp" if cfg.runtime.parallel == "fsdp" else "ddp",
        "grad_checkpointing": cfg.distill.grad_checkpointing,
        "precision": DTYPE_PRECISION[cfg.teacher.pretrained.dtype],
        "master_weights": True,
        "shard_frozen": cfg.runtime.parallel == "fsdp",
    }


def plan_profile(
    cfg: ProfileConfig,
    arch_dir: Path,
    *,
    gpus: int,
    gpu_mem_gib: float,
    sharding: Sharding | None = None,
    precision: Precision | None = None,
    optimizer: Optimizer | None = None,
    batch_per_gpu: int | None = None,
    grad_checkpointing: bool | None = None,
    cache_text: bool = False,
    master_weights: bool | None = None,
    reserve_bytes: int = RUNTIME_RESERVE_BYTES,
    shard_frozen: bool | None = None,
) -> PlanReport:
    """The memory plan of distilling ``cfg`` on ``gpus`` GPUs of ``gpu_mem_gib`` GiB each.

    Every setting left None is the run's own (:func:`run_settings`): sharding, gradient
    checkpointing, precision, master weights, frozen sharding; ``optimizer`` defaults to
    ``distill.optimizer``, ``batch_per_gpu`` to ``distill.global_batch // gpus`` (at least 1).
    Activations are an estimate (:func:`activation_bytes`).
    """
    if cfg.teacher.pretrained is None:
        raise UserError(f"profile {cfg.name!r} has no pretrained teacher to plan for")
    if gpu_mem_gib <= 0:
        raise UserError(f"--gpu-mem-gb must be positive, got {gpu_mem_gib}")
    own = run_settings(cfg)
    sharding = sharding or own["sharding"]
    grad_checkpointing = own["grad_checkpointing"] if grad_checkpointing is None else grad_checkpointing
    master_weights = own["master_weights"] if master_weights is None else master_weights
    shard_frozen = own["shard_frozen"] if shard_frozen is None else shard_frozen
    precision = precision or own["precision"]
    optimizer = optimizer or cfg.distill.optimizer
    batch = batch_per_gpu or max(1, cfg.distill.global_batch // gpus)
    networks = profile_networks(cfg, arch_dir, cache_text=cache_text)
    activations = _activation_rows(
        cfg, arch_dir, batch=batch, checkpointing=grad_checkpointing, precision=precision
    )
    memory = memory_rows(
        networks,
        gpus=gpus,
        sharding=sharding,
        precision=precision,
        optimizer=optimizer,
        master_weights=master_weights,
        activations=activations,
        reserve_bytes=reserve_bytes,
        shard_frozen=shard_frozen,
    )
    return PlanReport(
        profile=cfg.name,
        gpus=gpus,
        gpu_mem_gib=gpu_mem_gib,
        sharding=sharding,
        precision=precision,
        optimizer=optimizer,
        batch_per_gpu=batch,
        grad_checkpointing=grad_checkpointing,
        cache_text=cache_text,
        master_weights=master_weights,
        resolution=cfg.teacher.pretrained.resolution,
        networks=tuple(networks),
        memory=tuple(memory),
        shard_frozen=shard_frozen,
    )


# ----------------------------------------------------------------------------- rendering
def _gib(n: float) -> str:
    return f"{n / GIB:8.2f}"


def render_plan(report: PlanReport) -> str:
    """The plan as text: settings, a table of networks, the memory bill and the verdict."""
    r = report
    shards = r.gpus if r.sharding == "fsdp" else 1
    lines = [
        f"memory plan: {r.profile} on {r.gpus} x {r.gpu_mem_gib:g} GiB, {r.sharding}, {r.precision}"
        + (" + fp32 master weights" if r.master_weights and r.precision != "fp32" else "")
        + f", {r.optimizer}, batch {r.batch_per_gpu} per GPU at {r.resolution}px, gradient checkpointing "
        + ("on" if r.grad_checkpointing else "off")
        + (", text encoders cached (not loaded)" if r.cache_text else ", text encoders loaded"),
        "",
        f"{'network':22s} {'model':30s} {'parameters':>12s} {'trainable':>12s} {'weights/GPU GiB':>16s}",
    ]
    width = PRECISION_BYTES[r.precision]
    item_width = max(len(m.item) for m in r.memory)
    for n in r.networks:
        # FSDP shards the trainable networks and (shard_frozen) the teacher; the rest is replicated
        sharded = n.trainable > 0 or (n.role == "teacher" and r.shard_frozen)
        per_gpu = n.parameters * width // (shards if sharded else 1) + n.buffers * width
        buffers = f" (+{_human(n.buffers)} buffers)" if n.buffers else ""
        lines.append(
            f"{n.role:22s} {n.model:30s} {_human(n.parameters):>12s} {_human(n.trainable):>12s} "
            f"{_gib(per_gpu):>16s}{buffers}"
        )
    total = sum(n.parameters for n in r.networks)
    trainable = sum(n.trainable for n in r.networks)
    lines += [
        f"{'total':22s} {'':30s} {_human(total):>12s} {_human(trainable):>12s}",
        "",
        f"{'memory per GPU':{item_width}s} {'GiB':>8s}  how",
    ]
    lines += [f"{m.item:{item_width}s} {_gib(m.bytes)}  {m.detail}" for m in r.memory]
    lines.append(f"{'total':{item_width}s} {_gib(r.total_bytes)}")
    lines.append("")
    if r.fits:
        lines.append(
            f"fits: {r.total_bytes / GIB:.1f} of {r.gpu_mem_gib:g} GiB per GPU, "
            f"{r.headroom_bytes / GIB:.1f} GiB headroom"
        )
    else:
        lines.append(
            f"does not fit: needs {r.total_bytes / GIB:.1f} GiB per GPU, "
            f"{-r.headroom_bytes / GIB:.1f} GiB more than the {r.gpu_mem_gib:g} GiB available"
        )
    return "\n".join(lines)
