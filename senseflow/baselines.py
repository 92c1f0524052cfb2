"""The baseline registry (``experiments/baselines.yaml``) and building a pipeline from one recipe.

Every row of the paper's tables is a public inference recipe stored as data: pipeline class,
base model, extra weights (UNet / transformer / LoRA with its fuse scale), scheduler class and
kwargs, steps or explicit timesteps / sigmas, guidance, dtype, max sequence length,
resolution and licence. :func:`load_registry` validates the file with pydantic and checks
that every pipeline and scheduler class exists in the installed diffusers, so a typo fails
when the registry is read, not hours into a run. :func:`build_pipeline` loads a recipe's
weights offline (local folders or the Hugging Face cache, ``local_files_only``; never a
download) and applies it verbatim.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from senseflow.errors import MissingArtefactError, UserError

REGISTRY = Path(__file__).resolve().parent.parent / "experiments" / "baselines.yaml"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the pipeline class decides the family (its adapter, components and denoising network)
FAMILY_OF_PIPELINE = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}


class RegistryError(UserError, ValueError):
    """The registry file is invalid, or a name is not in it; the message names the entry and fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WeightRef(_Strict):
    """Weights on the Hub (or a local path): a single ``file``, or a diffusers folder (``subfolder``)."""

    repo: str
    revision: str = "main"
    file: str | None = None
    subfolder: str | None = None
    artefact: str | None = None  # name in eval/weights_manifest.yaml (`senseflow weights fetch`)


class LoraRef(WeightRef):
    """A LoRA file and the scale it is fused at (``fuse_lora(lora_scale=scale)``)."""

    file: str
    scale: Annotated[float, Field(gt=0)] = 1.0


class SchedulerSpec(_Strict):
    """A diffusers scheduler class built ``from_config(base scheduler config, **kwargs)``."""

    class_name: str = Field(alias="class")
    kwargs: dict[str, Any] = {}

    @model_validator(mode="after")
    def _exists(self) -> SchedulerSpec:
        import diffusers
        from diffusers import SchedulerMixin

        cls = getattr(diffusers, self.class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, SchedulerMixin)):
            raise ValueError(
                f"scheduler class {self.class_name!r} does not exist in diffusers {diffusers.__version__}"
            )
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(self.kwargs) - accepted)
        if unknown:
            raise ValueError(f"{self.class_name} takes no argument {unknown[0]!r}")
        return self


class Recipe(_Strict):
    """One candidate's inference recipe, exactly as the model card gives it."""

    name: str = ""
    label: str
    kind: Literal["teacher", "baseline", "senseflow"]
    paper_row: str | None = None
    pipeline: str
    base: WeightRef
    unet: WeightRef | None = None
    transformer: WeightRef | None = None
    lora: LoraRef | None = None
    scheduler: SchedulerSpec | None = None
    steps: Annotated[int, Field(gt=0)]
    timesteps: list[int] | None = None
    sigmas: list[float] | None = None
    eta: Annotated[float, Field(ge=0)] | None = None
    guidance: Annotated[float, Field(ge=0)]
    sampler: Literal["pipeline", "x0", "euler"] = "pipeline"
    dtype: Literal["float32", "bfloat16", "float16"]
    max_sequence_length: Annotated[int, Field(gt=0)] | None = None
    resolution: Annotated[int, Field(gt=0)]
    licence: str

    @field_validator("pipeline")
    @classmethod
    def _pipeline_exists(cls, value: str) -> str:
        import diffusers
        from diffusers import DiffusionPipeline

        klass = getattr(diffusers, value, None)
        if not (inspect.isclass(klass) and issubclass(klass, DiffusionPipeline)):
            raise ValueError(f"pipeline class {value!r} does not exist in diffusers {diffusers.__version__}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.timesteps is not None and self.sigmas is not None:
            raise ValueError("give timesteps or sigmas, not both")
        explicit = self.timesteps if self.timesteps is not None else self.sigmas
        if explicit is not None and len(explicit) != self.steps:
            raise ValueError(f"steps is {self.steps} but the explicit schedule has {len(explicit)} entries")
        if self.unet is not None and self.transformer is not None:
            raise ValueError("replace the unet or the transformer, not both")
        if self.scheduler is not None:
            import diffusers

            cls = getattr(diffusers, self.scheduler.class_name)
            takes = set(inspect.signature(cls.set_timesteps).parameters)
            for key in ("timesteps", "sigmas"):
                if getattr(self, key) is not None and key not in takes:
                    raise ValueError(f"{self.scheduler.class_name} cannot run explicit {key}")
            if self.eta is not None and "eta" not in inspect.signature(cls.step).parameters:
                raise ValueError(f"{self.scheduler.class_name}.step takes no eta")
        if self.sampler != "pipeline" and self.sigmas is None:
            raise ValueError(f"sampler {self.sampler!r} needs `sigmas` (the trained anchors)")
        if self.sampler != "pipeline" and self.pipeline not in FAMILY_OF_PIPELINE:
            raise ValueError(f"sampler {self.sampler!r} runs only on {', '.join(FAMILY_OF_PIPELINE)}")
        return self

    @property
    def family(self) -> str | None:
        """``sdxl``, ``sd3`` or ``flux`` for the three families with adapters (None otherwise)."""
        return FAMILY_OF_PIPELINE.get(self.pipeline)

    def summary(self) -> str:
        """One line: name, steps, scheduler, guidance, extra weights."""
        sched = self.scheduler.class_name if self.scheduler else "default"
        extra = (
            f"LoRA {self.lora.file} x{self.lora.scale}"
            if self.lora
            else (f"UNet {self.unet.repo}" if self.unet else "")
        )
        if self.transformer:
            extra = f"transformer {self.transformer.repo}"
        return (
            f"{self.name:24s} {self.kind:9s} {self.pipeline:26s} {self.steps:3d} steps  "
            f"{sched:24s} guidance {self.guidance:<4g} {extra}"
        ).rstrip()


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def load_registry(path: str | Path | None = None) -> dict[str, Recipe]:
    """Read and validate the registry; any bad entry is a :class:`RegistryError` naming it."""
    path = Path(path) if path else REGISTRY
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RegistryError(f"cannot read the baseline registry {path} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("candidates"), dict):
        raise RegistryError(f"{path}: expected a mapping `candidates: {{NAME: recipe}}`")
    out = {}
    for name, entry in raw["candidates"].items():
        if not re.fullmatch(r"[a-z0-9_]+", str(name)):
            raise RegistryError(f"{path}: candidate name {name!r} must be lower-case letters, digits and _")
        try:
            out[name] = Recipe(name=name, **(entry or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = _where(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise RegistryError(f"{path}: candidates.{name}{'.' + loc if loc else ''}: {msg}") from None
        except TypeError as exc:
            raise RegistryError(f"{path}: candidates.{name}: {exc}") from None
    return out


# diffusers pipeline class -> profile family (senseflow.config.ProfileConfig.family)
PIPELINE_FAMILIES = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}


def recipe_family(recipe: Recipe) -> str:
    """The model family a recipe samples (``sdxl``, ``sd3``, ``flux``), from its pipeline class."""
    return PIPELINE_FAMILIES.get(recipe.pipeline, recipe.pipeline)


def missing_recipe_weights(
    recipe: Recipe, weights_dir: str | Path | None = None, *, skip_manifest: bool = False
) -> list[str]:
    """What ``recipe`` cannot find on this machine (base, replaced network, LoRA), one line each.

    The lookups :func:`build_pipeline` does, without loading anything, so ``preflight`` stops
    before any sampling; a manifest artefact whose sha256 differs (from the manifest's pin or
    from the hash recorded at its first fetch) is reported the same way. ``skip_manifest``
    leaves manifest artefacts out (the caller checked them already).
    """
    from eval.weights import check, load_manifest

    manifest = load_manifest()
    out = []
    for attr, ref in recipe_refs(recipe):
        if ref.artefact and ref.artefact in manifest.artefacts:
            if skip_manifest:
                continue  # checked with the profile's whole selection (senseflow.stages.preflight)
            # presence and the pinned sha256 of every file (a swapped LoRA is caught here)
            bad = [
                r for r in check(artefacts=[ref.artefact], root=weights_dir, manifest=manifest) if r.failed
            ]
            out += [f"{recipe.name}: {attr} {r.artefact}/{r.path.name}: {r.status} ({r.detail})" for r in bad]
            if bad:
                continue
        try:
            resolve_weight(ref, weights_dir, f"{recipe.name}: {attr}")
        except MissingArtefactError as exc:
            out.append(str(exc))
    return out


def recipe_refs(recipe: Recipe) -> list[tuple[str, WeightRef]]:
    """The weights a recipe loads, ``(role, ref)``: its base, then the replaced network and LoRA."""
    refs = [("base", recipe.base), ("unet", recipe.unet), ("transformer", recipe.transformer),
            ("lora", recipe.lora)]  # fmt: skip
    return [(role, ref) for role, ref in refs if ref is not None]


def profile_artefacts(cfg, manifest=None) -> dict[str, list[str]]:
    """Every manifest artefact profile ``cfg`` loads, each with who needs it (``{artefact: [users]}``).

    The teacher and discriminator backbone (the manifest's ``profiles`` entry), the weights of
    every recipe in ``pipeline.registry_baselines`` (its base, UNet / transformer and LoRA that
    name an ``artefact``) and the models of each metric in ``pipeline.metrics`` and of each
    T2I-CompBench category in ``pipeline.compbench`` (the manifest's ``metric_sets``; a metric
    without an entry loads no pretrained file). This is exactly what
    ``senseflow weights fetch PROFILE`` downloads and what ``preflight`` checks. Embedded
    profiles build everything themselves and need nothing.
    """
    from eval.weights import WeightsError, load_manifest

    if cfg.family == "embedded":
        return {}
    manifest = manifest or load_manifest()
    if cfg.name not in manifest.profiles:
        raise WeightsError(
            f"profile {cfg.name!r} has no entry under `profiles:` in eval/weights_manifest.yaml; add "
            f"`{cfg.name}: [<teacher artefact>, ...]` there (known: {', '.join(sorted(manifest.profiles))})"
        )
    out: dict[str, list[str]] = {}
    for name in manifest.profiles[cfg.name]:
        out.setdefault(name, []).append(cfg.name)
    registry = load_registry()
    for cand in cfg.pipeline.registry_baselines:
        for role, ref in recipe_refs(get_recipe(cand, registry)):
            if ref.artefact:
                if ref.artefact not in manifest.artefacts:
                    where = f"experiments/baselines.yaml: candidates.{cand}.{role}.artefact"
                    raise RegistryError(
                        f"{where} {ref.artefact!r} is not in eval/weights_manifest.yaml; add it there "
                        "(repo, files, licence) or remove the key"
                    )
                out.setdefault(ref.artefact, []).append(cand)
    metrics = list(cfg.pipeline.metrics)
    if cfg.pipeline.compbench is not None:  # the T2I-CompBench judges of the profile's categories
        metrics += [f"t2i_compbench_{c}" for c in cfg.pipeline.compbench.categories]
    for metric in metrics:
        for name in manifest.metric_sets.get(metric, ()):
            out.setdefault(name, []).append(metric)
    return out


def get_recipe(name: str, registry: dict[str, Recipe] | None = None) -> Recipe:
    """The recipe ``name``; an unknown name lists the known ones."""
    registry = load_registry() if registry is None else registry
    if name not in registry:
        raise RegistryError(f"unknown candidate {name!r}; known: teacher, {', '.join(registry)}")
    return registry[name]


def show_recipe(recipe: Recipe) -> str:
    """The recipe as YAML (aliases as written in the registry)."""
    data = recipe.model_dump(by_alias=True, exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)


# ----------------------------------------------------------------------------- weights, offline
def _fetch_command(ref: WeightRef, weights_dir: Path) -> str:
    """`senseflow weights fetch --artefact NAME` for artefacts of the weights manifest, else `hf download`."""
    target = f" {ref.file}" if ref.file else ""
    sub = f" --include '{ref.subfolder}/*'" if ref.subfolder and not ref.file else ""
    dest = weights_dir / ref.repo
    hf = f"`hf download {ref.repo}{target}{sub} --revision {ref.revision} --local-dir {dest}`"
    if ref.artefact:
        from eval.weights import fetch_command, load_manifest

        if ref.artefact in load_manifest().artefacts:
            return f"{fetch_command(ref.artefact, weights_dir)} or {hf}"
    return hf


def _rel(ref: WeightRef) -> Path:
    return Path(ref.subfolder or "") / (ref.file or "")


def resolve_weight(ref: WeightRef, weights_dir: str | Path | None, what: str) -> Path:
    """Local path of ``ref`` (its file, or its folder): weights dir first, then the HF cache; no download.

    Looked up in order: ``ref.repo`` as a local path; the manifest artefact ``ref.artefact``
    through :func:`eval.weights.require` (the layout ``senseflow weights fetch`` writes);
    ``<weights_dir>/<repo>/``; the Hugging Face cache (``local_files_only``). ``weights_dir``
    defaults as in :func:`eval.weights.weights_dir` (``$SENSEFLOW_WEIGHTS``, else
    ``~/.cache/senseflow/weights``).
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    from eval.weights import load_manifest, require
    from eval.weights import weights_dir as default_weights_dir

    weights_dir = default_weights_dir(weights_dir)
    rel = _rel(ref)
    local = ref.repo.startswith(("/", ".", "~"))
    roots = [Path(ref.repo).expanduser()] if local else []
    if not local and ref.artefact and ref.artefact in load_manifest().artefacts:
        try:
            # the one lookup of manifest artefacts; a partial download (a listed file absent) is missing
            found = require(ref.artefact, weights_dir, file=str(rel) if rel != Path() else None)
            if found.is_file() or (ref.file is None and found.is_dir()):
                return found
        except MissingArtefactError:
            pass  # the repo folder and the Hugging Face cache below
    roots += ([weights_dir / ref.artefact] if ref.artefact else []) + [weights_dir / ref.repo]
    for root in roots:
        path = root / rel
        if path.is_file() or (ref.file is None and path.is_dir()):
            return path
    if not local:
        try:
            if ref.file:
                found = hf_hub_download(
                    ref.repo, ref.file, subfolder=ref.subfolder, revision=ref.revision, local_files_only=True
                )
                return Path(found)
            snap = Path(snapshot_download(ref.repo, revision=ref.revision, local_files_only=True))
            if (snap / rel).is_dir():
                return snap / rel
        except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError):
            pass
    tried = ", ".join(str(r / rel) for r in roots)
    cache = "" if local else f" nor in the Hugging Face cache ({ref.repo}, revision {ref.revision})"
    raise MissingArtefactError(
        f"{what} is missing: not found at {tried}{cache}; it is never downloaded here, provide it with "
        f"{_fetch_command(ref, weights_dir)} on a connected machine"
    )


def runtime_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    """The recipe's dtype on CUDA; float32 on CPU (half-precision CPU kernels are slow or missing)."""
    return DTYPES[recipe.dtype] if device.type == "cuda" else torch.float32


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _replace_network(pipe, attr: str, ref: WeightRef, weights_dir, dtype, name: str) -> None:
    """Swap the pipeline's UNet / transformer for the recipe's (a state dict file or a model folder)."""
    current = getattr(pipe, attr)
    path = resolve_weight(ref, weights_dir, f"{name}: {attr}")
    if ref.file:
        state = _load_state_dict(path)
        missing, unexpected = current.load_state_dict(state, strict=False)
        if missing or unexpected:
            bad = (unexpected or missing)[0]
            raise UserError(
                f"{path}: its {attr} weights do not fit the base {type(current).__name__} "
                f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {bad!r}); "
                f"check candidates.{name}.{attr} and base in the registry"
            )
        return
    net = type(current).from_pretrained(path, dtype=dtype, local_files_only=True)
    setattr(pipe, attr, net)
    pipe.register_modules(**{attr: net})


# ----------------------------------------------------------------------------- LoRA
LORA_SUFFIXES = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora.down.weight",
    ".lora.up.weight",
    ".lora_linear_layer.down.weight",
    ".lora_linear_layer.up.weight",
    ".alpha",
)


def lora_targets(state: dict[str, torch.Tensor], pipe) -> dict[str, list[tuple[str, str, torch.Tensor]]]:
    """Group a diffusers-format LoRA state dict: ``{component: [(module, suffix, tensor)]}``."""
    out: dict[str, list] = {}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        suffix = next((s for s in LORA_SUFFIXES if rest.endswith(s)), None)
        if not rest or suffix is None or getattr(pipe, component, None) is None:
            raise ValueError(key)
        out.setdefault(component, []).append((rest[: -len(suffix)], suffix, value))
    return out


def check_lora_fits(state: dict[str, torch.Tensor], pipe, path: Path) -> int:
    """Every LoRA key must name an existing layer of the right shape; return the number of layers.

    diffusers only warns (and then does nothing) when no key matches its component, and a
    LoRA made for another base would load partially or fail deep inside peft: check first.
    """
    where = f"LoRA file {path}"
    try:
        groups = lora_targets(state, pipe)
    except ValueError as exc:
        comps = [c for c in ("unet", "transformer", "text_encoder", "text_encoder_2") if hasattr(pipe, c)]
        raise UserError(
            f"{where}: key {exc.args[0]!r} is not a LoRA weight of a component of {type(pipe).__name__} "
            f"(expected '<{'|'.join(comps)}>.<module>.lora_A.weight'); it was made for another model"
        ) from None
    layers = set()
    for component, items in groups.items():
        modules = dict(getattr(pipe, component).named_modules())
        for module, suffix, t in items:
            layer = modules.get(module)
            if layer is None:
                raise UserError(
                    f"{where}: {component} has no layer {module!r}; the LoRA was made for another "
                    f"model than {type(getattr(pipe, component)).__name__} of this base"
                )
            if suffix == ".alpha":
                continue
            fan_in = getattr(layer, "in_features", getattr(layer, "in_channels", None))
            fan_out = getattr(layer, "out_features", getattr(layer, "out_channels", None))
            down = suffix in (".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")
            want, got = (fan_in, t.shape[1]) if down else (fan_out, t.shape[0])
            if want is not None and want != got:
                raise UserError(
                    f"{where}: {component}.{module}{suffix} has shape {tuple(t.shape)}, but the layer has "
                    f"{'input' if down else 'output'} width {want}; the LoRA was made for another model"
                )
            layers.add((component, module))
    return len(layers)


def apply_lora(pipe, lora: LoraRef, weights_dir, name: str) -> int:
    """Load, check and fuse the recipe's LoRA at its scale; the adapter layers are then removed."""
    path = resolve_weight(lora, weights_dir, f"{name}: LoRA")
    loaded = pipe.lora_state_dict(str(path))
    state = loaded[0] if isinstance(loaded, tuple) else loaded
    n = check_lora_fits(state, pipe, path)
    pipe.load_lora_weights(str(path), adapter_name="baseline")
    pipe.fuse_lora(lora_scale=lora.scale, adapter_names=["baseline"])
    pipe.unload_lora_weights()  # keeps the fused weights, drops the per-layer adapter overhead
    return n


# ----------------------------------------------------------------------------- the pipeline
def network_of(pipe) -> torch.nn.Module:
    """The denoising network of a pipeline (its UNet or transformer)."""
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if net is None:
        raise UserError(f"{type(pipe).__name__} has neither a unet nor a transformer")
    return net


def build_pipeline(recipe: Recipe, *, weights_dir=None, device: torch.device | str = "cpu"):
    """Load the recipe's base pipeline offline, swap in its network, fuse its LoRA, set its scheduler."""
    import diffusers

    device = torch.device(device)
    dtype = runtime_dtype(recipe, device)
    folder = resolve_weight(recipe.base, weights_dir, f"{recipe.name}: base model")
    if recipe.family is not None:
        from eval.weights import weights_dir as default_weights_dir
        from senseflow.backbones.loading import check_components

        hint = f"provide it with {_fetch_command(recipe.base, default_weights_dir(weights_dir))}"
        check_components(folder, recipe.family, hint)
    cls = getattr(diffusers, recipe.pipeline)
    pipe = cls.from_pretrained(folder, dtype=dtype, local_files_only=True)
    if recipe.unet is not None:
        _replace_network(pipe, "unet", recipe.unet, weights_dir, dtype, recipe.name)
    if recipe.transformer is not None:
        _replace_network(pipe, "transformer", recipe.transformer, weights_dir, dtype, recipe.name)
    if recipe.lora is not None:
        apply_lora(pipe, recipe.lora, weights_dir, recipe.name)
    if recipe.scheduler is not None:
        sched_cls = getattr(diffusers, recipe.scheduler.class_name)
        pipe.scheduler = sched_cls.from_config(pipe.scheduler.config, **recipe.scheduler.kwargs)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(recipe: Recipe) -> dict[str, Any]:
    """Keyword arguments of the pipeline call that the recipe fixes (prompts, seeds and size aside)."""
    kw: dict[str, Any] = {"num_inference_steps": recipe.steps, "guidance_scale": recipe.guidance}
    if recipe.timesteps is not None:
        kw["timesteps"] = list(recipe.timesteps)
    if recipe.sigmas is not None:
        kw["sigmas"] = list(recipe.sigmas)
    if recipe.eta is not None:
        kw["eta"] = recipe.eta
    if recipe.max_sequence_length is not None:
        kw["max_sequence_length"] = recipe.max_sequence_length
    return kw
