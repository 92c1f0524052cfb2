"""Load a real teacher offline: a local diffusers folder or the Hugging Face cache, never the network.

:func:`load_backbone` resolves ``teacher.pretrained.model_id`` (a folder, or a repository
already in the cache with ``local_files_only=True``), checks that every component the
family needs is on disk, then loads the family's diffusers pipeline and wraps it in its
adapter. Anything missing fails before loading with a :class:`MissingArtefactError` that
names the component, the path where it was expected and how to get it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

from senseflow.backbones.base import Backbone
from senseflow.backbones.flux import FluxTextEncoder, flux_backbone
from senseflow.backbones.sd3 import SD3TextEncoder, sd3_backbone
from senseflow.backbones.sdxl import SDXLTextEncoder, sdxl_backbone
from senseflow.config import PretrainedConfig
from senseflow.errors import MissingArtefactError, UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class Family:
    """What a model family needs: its pipeline class, the components on disk, its adapter."""

    pipeline: type[DiffusionPipeline]
    components: tuple[str, ...]
    adapter: Callable[[DiffusionPipeline, PretrainedConfig], Backbone]


FAMILIES: dict[str, Family] = {
    "sdxl": Family(
        StableDiffusionXLPipeline,
        ("unet", "vae", "scheduler", *SDXLTextEncoder.TEXT_COMPONENTS),
        sdxl_backbone,
    ),
    "sd3": Family(
        StableDiffusion3Pipeline,
        ("transformer", "vae", "scheduler", *SD3TextEncoder.TEXT_COMPONENTS),
        sd3_backbone,
    ),
    "flux": Family(
        FluxPipeline,
        ("transformer", "vae", "scheduler", *FluxTextEncoder.TEXT_COMPONENTS),
        flux_backbone,
    ),
}


def family_of(name: str) -> Family:
    """The registered family ``name`` (``sdxl``, ``sd3``, ``flux``), or a :class:`UserError`."""
    if name not in FAMILIES:
        raise UserError(f"no pretrained adapter for family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _is_repo_id(model_id: str) -> bool:
    """``owner/name`` (or ``name``) rather than a filesystem path."""
    return not model_id.startswith(("/", ".", "~")) and model_id.count("/") <= 1


def fix_hint(model_id: str, revision: str) -> str:
    """How to provide a missing artefact, for error messages."""
    if _is_repo_id(model_id):
        return (
            f"download it on a connected machine with `hf download {model_id} --revision {revision}` "
            "or point teacher.pretrained.model_id at a local diffusers folder"
        )
    return "point teacher.pretrained.model_id at a complete diffusers folder (`save_pretrained` layout)"


def resolve_folder(model_id: str, revision: str = "main") -> Path:
    """A local diffusers folder, or the cached snapshot of a repository (no download, ever)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if not _is_repo_id(model_id):
        raise MissingArtefactError(f"teacher folder {path} does not exist: {fix_hint(model_id, revision)}")
    try:
        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError):
        raise MissingArtefactError(
            f"{model_id} (revision {revision}) is neither a local folder nor in the Hugging Face cache: "
            f"{fix_hint(model_id, revision)}"
        ) from None


def _missing_files(sub: Path, name: str) -> str | None:
    """What is missing in the component folder ``sub`` (None when it looks complete)."""
    if not sub.is_dir():
        return "the folder"
    files = [p for p in sub.iterdir() if p.is_file()]
    if name.startswith("tokenizer"):
        return None if files else "its tokenizer files"
    if name == "scheduler":
        return None if (sub / "scheduler_config.json").is_file() else "scheduler_config.json"
    if not (sub / "config.json").is_file():
        return "config.json"
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in files):
        return "its weights (*.safetensors)"
    for index in sub.glob("*.index.json"):  # sharded weights: every shard must be there
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        absent = sorted(s for s in shards if not (sub / s).is_file())
        if absent:
            return f"weight shard {absent[0]}" + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
    return None


def check_components(folder: Path, family: str, hint: str) -> None:
    """Raise :class:`MissingArtefactError` naming the first component of ``family`` missing in ``folder``."""
    spec = family_of(family)
    index = folder / "model_index.json"
    if not index.is_file():
        raise MissingArtefactError(f"{index} is missing: {folder} is not a diffusers pipeline folder; {hint}")
    declared = json.loads(index.read_text()).get("_class_name")
    expected = spec.pipeline.__name__
    if declared and declared != expected:
        raise UserError(f"{folder} holds a {declared}, but family {family!r} expects a {expected}")
    for name in spec.components:
        what = _missing_files(folder / name, name)
        if what is not None:
            raise MissingArtefactError(
                f"{family} teacher component '{name}' is missing ({what} of {folder / name}): {hint}"
            )


def backbone_from_pipeline(family: str, pipeline: DiffusionPipeline, cfg: PretrainedConfig) -> Backbone:
    """Wrap an already loaded (or in-memory) pipeline of ``family`` in its adapter; the teacher is frozen."""
    spec = family_of(family)
    if not isinstance(pipeline, spec.pipeline):
        got = type(pipeline).__name__
        raise UserError(f"family {family!r} expects a {spec.pipeline.__name__}, got a {got}")
    backbone = spec.adapter(pipeline, cfg)
    # the teacher only ever runs without gradient; trainable_copy turns gradients on for copies
    backbone.network.eval().requires_grad_(False)
    return backbone


def load_pipeline(family: str, cfg: PretrainedConfig) -> DiffusionPipeline:
    """Load the pipeline of ``family`` from ``cfg.model_id`` offline in ``cfg.dtype`` (the VAE in float32)."""
    spec = family_of(family)
    hint = fix_hint(cfg.model_id, cfg.revision)
    folder = resolve_folder(cfg.model_id, cfg.revision)
    check_components(folder, family, hint)
    # the VAE is read in float32 straight from disk: upcasting a bfloat16 copy would not
    # bring back the precision (see VaeCodec)
    dtype = {"default": DTYPES[cfg.dtype], "vae": torch.float32}
    return spec.pipeline.from_pretrained(folder, dtype=dtype, local_files_only=True)


def load_backbone(
    family: str,
    cfg: PretrainedConfig,
    *,
    pipeline: DiffusionPipeline | None = None,
    device: torch.device | str | None = None,
) -> Backbone:
    """The teacher backbone of ``family`` (``sdxl``, ``sd3``, ``flux``) described by ``cfg``.

    Loads from ``cfg.model_id`` (local folder or HF cache, ``local_files_only``) unless a
    ``pipeline`` is given (tests, notebooks), which is used as it is. ``device`` moves every
    component there before wrapping.
    """
    if pipeline is None:
        pipeline = load_pipeline(family, cfg)
    if device is not None:
        pipeline.to(device)
    return backbone_from_pipeline(family, pipeline, cfg)
