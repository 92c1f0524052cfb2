"""The ``dvc repro`` pipeline's plan: which stages a profile runs, what each reads and writes.

``dvc.yaml`` is rendered from this plan (``senseflow pipeline render``; never edit it by hand)
for the profile named in ``params.yaml``, so it holds exactly the stages that profile needs
(a real profile has no embedded-world stages) and each stage tracks exactly what it reads:

- code: the import closure of the modules the stage runs (:mod:`senseflow.code_deps`);
- params: the profile keys its recipe reads (a SenseFlow variant without IDA does not track
  ``distill.ida.lam``; a consistency baseline tracks its own ``baselines.<name>`` section);
- data: every folder it reads, including other stages' outputs (``init_from`` of a variant).

Layout (fixed paths, so DVC can track them)::

    build/distill/<method>/      training run: checkpoint/ (persisted), dvclive/, summary.json
    build/students/<method>/     exported student folder (load_student)
    build/samples/<candidate>/   PNGs + manifest.jsonl + generation.json + speed.json
    build/eval/<candidate>/      summary.json + scores.parquet
    results/                     summary.json, tables/<profile>/, gate.json

One ``generate-<source>`` and one ``evaluate-<source>`` stage per source model (the teacher,
each method): a source's step counts are written by one process. The ablations of
``pipeline.ablations`` are stages of their own that write ``skipped.json`` unless
``params.yaml`` says ``ablations: true`` (``dvc exp run -S ablations=true``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from senseflow.config import ConfigError, ProfileConfig
from senseflow.errors import UserError
from senseflow.io import atomic_write_text, ensure_writable_dir

SKIPPED = "skipped.json"
# Seed scheme (issue 13): the reference is drawn from other seeds than every candidate, so each
# set metric compares independent noise; teacher_reseed is the full-step teacher on the
# candidates' seeds, i.e. the floor: what a perfect candidate would score.
REFERENCE = "teacher_full"  # the teacher at its full step count, seeds offset 1: FID-T/KID-T's reference
NOISE_FLOOR = "teacher_reseed"  # the same teacher on the candidates' seeds (offset 0): the noise floor

# Every method and candidate name the pipeline knows; a profile runs a subset (PipelineConfig).
METHODS: tuple[str, ...] = (
    "senseflow", "dmd2", "lcm", "hyper_sd", "senseflow_1step",
    "no_ida", "no_isg", "no_gan", "vanilla_dmd",
)  # fmt: skip
STUDENT_METHODS = ("senseflow", "dmd2", "lcm", "hyper_sd")
ABLATION_METHODS = ("no_ida", "no_isg", "no_gan", "vanilla_dmd")
CANDIDATES: tuple[str, ...] = (
    REFERENCE, NOISE_FLOOR, "teacher_4", "teacher_2", "teacher_1",
    *(f"{m}_{s}" for m in STUDENT_METHODS for s in (4, 2, 1)),
    *(f"{m}_4" for m in ABLATION_METHODS),
)  # fmt: skip

Kind = Literal["teacher", "student", "baseline", "ablation", "registry"]
LABELS = {
    "senseflow": "SenseFlow",
    "dmd2": "DMD2",
    "lcm": "LCM",
    "hyper_sd": "Hyper-SD (TSCD)",
    "no_ida": "SenseFlow w/o IDA",
    "no_isg": "SenseFlow w/o ISG",
    "no_gan": "SenseFlow w/o GAN",
    "vanilla_dmd": "DMD (no IDA, ISG, GAN)",
    "teacher": "Teacher",
}


@dataclass(frozen=True)
class Candidate:
    """One generated sample set: who made it (method), with how many steps, and from what."""

    name: str
    kind: Kind
    method: str  # "teacher" or a distillation method
    steps: int | None  # None: the teacher's full step count (profile teacher.sample.steps)
    source_method: str | None = None  # the distill run whose student generates (students only)
    seed_offset: int = 0  # added to teacher.sample.seed: 1 for the reference, 0 for every other set
    paper_row: str | None = None  # registry candidates: the paper's row their recipe reproduces
    label_: str | None = None  # registry candidates: the recipe's label

    @property
    def label(self) -> str:
        """Human name for tables: ``SenseFlow (4 steps)``."""
        if self.kind == "registry":
            return f"{self.label_} ({self.steps} step{'s' * (self.steps != 1)}, public weights)"
        base = LABELS.get(self.method, self.method)
        if self.name == NOISE_FLOOR:
            return "Teacher (full steps), candidates' seeds (noise floor)"
        return f"{base} ({'full' if self.steps is None else self.steps} step{'s' * (self.steps != 1)})"


CONSISTENCY_LOOP = ("lcm", "hyper_sd")  # trained by senseflow.consistency_run from `baselines.<name>`


def uses_consistency_loop(cfg: ProfileConfig, method: str) -> bool:
    """Whether ``method`` is a consistency baseline (LCM, Hyper-SD) rather than a SenseFlow-loop variant."""
    return method in CONSISTENCY_LOOP and method not in cfg.variants


def method_kind(method: str) -> Kind:
    """Where a method's rows go in the tables."""
    if method == "teacher":
        return "teacher"
    if method in ("senseflow", "senseflow_1step"):
        return "student"
    return "ablation" if method in ABLATION_METHODS else "baseline"


def parse_candidate(name: str) -> Candidate:
    """``teacher_full`` / ``teacher_4`` / ``senseflow_2`` ... -> :class:`Candidate`."""
    if name not in CANDIDATES:
        recipe = _registry().get(name)
        if recipe is None:
            raise UserError(
                f"unknown candidate {name!r} (known: {', '.join(CANDIDATES)}, or a name of "
                "experiments/baselines.yaml: `senseflow baselines list`)"
            )
        # a public model sampled by its registry recipe: its own source, its recipe's steps
        return Candidate(
            name, "registry", name, recipe.steps, paper_row=recipe.paper_row, label_=recipe.label
        )
    if name == REFERENCE:
        return Candidate(name, "teacher", "teacher", None, seed_offset=1)
    if name == NOISE_FLOOR:
        return Candidate(name, "teacher", "teacher", None)
    method, steps = re.fullmatch(r"(.+)_(\d+)", name).groups()
    steps = int(steps)
    if method == "teacher":
        return Candidate(name, "teacher", "teacher", steps)
    # the 1-step SenseFlow row comes from its own 1-step fine-tune (paper appendix)
    source = "senseflow_1step" if (method, steps) == ("senseflow", 1) else method
    return Candidate(name, method_kind(method), method, steps, source_method=source)


def _registry() -> dict:
    """experiments/baselines.yaml's recipes (read once per process; validated when read)."""
    global _REGISTRY
    if _REGISTRY is None:
        from senseflow.baselines import load_registry

        _REGISTRY = load_registry()
    return _REGISTRY


_REGISTRY: dict | None = None


def check_method(method: str) -> str:
    """A known method name (clear error otherwise)."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    return method


def method_inactive(cfg: ProfileConfig, method: str, ablations: bool) -> str | None:
    """Why profile ``cfg`` does not train ``method`` (None: it does)."""
    check_method(method)
    p = cfg.pipeline
    if method in p.methods:
        return None
    if method in p.ablations:
        return (
            None
            if ablations
            else "an ablation: run with `dvc exp run -S ablations=true` (make run-ablations)"
        )
    return f"not in pipeline.methods of profile {cfg.name!r}"


def candidate_inactive(cfg: ProfileConfig, name: str, ablations: bool) -> str | None:
    """Why profile ``cfg`` does not generate candidate ``name`` (None: it does)."""
    c = parse_candidate(name)
    p = cfg.pipeline
    if c.kind == "registry":
        return None if name in p.registry_baselines else f"not in pipeline.registry_baselines of {cfg.name!r}"
    if c.method == "teacher":
        if c.name == NOISE_FLOOR and not p.noise_floor:
            return "pipeline.noise_floor is false"
        if c.steps is not None and c.steps not in p.teacher_steps:
            return f"{c.steps} is not in pipeline.teacher_steps {p.teacher_steps}"
        return None
    if c.kind != "ablation" and c.steps not in p.student_steps:
        return f"{c.steps} is not in pipeline.student_steps {p.student_steps}"
    if c.source_method == "senseflow_1step" and method_inactive(cfg, "senseflow_1step", ablations):
        return "the 1-step SenseFlow row needs the senseflow_1step method in pipeline.methods"
    return method_inactive(cfg, c.source_method, ablations)


def active_candidates(cfg: ProfileConfig, ablations: bool) -> list[Candidate]:
    """The candidates this profile generates and evaluates, in table order (registry models last)."""
    names = [*CANDIDATES, *cfg.pipeline.registry_baselines]
    return [parse_candidate(n) for n in names if candidate_inactive(cfg, n, ablations) is None]


def validate_pipeline(cfg: ProfileConfig) -> None:
    """Every method / registry name in ``pipeline:`` is one the pipeline knows (clear error).

    A registry candidate must be a recipe of ``experiments/baselines.yaml`` whose base model is
    of the profile's family (an SD 3.5 profile cannot score an SDXL LoRA against its teacher).
    """
    for key in ("methods", "ablations"):
        for m in getattr(cfg.pipeline, key):
            if m not in METHODS:
                raise ConfigError(
                    f"experiments/{cfg.name}.yaml: pipeline.{key}: unknown method {m!r} "
                    f"(known: {', '.join(METHODS)})"
                )
    if cfg.pipeline.compbench is not None and cfg.family == "embedded":
        raise ConfigError(
            f"experiments/{cfg.name}.yaml: pipeline.compbench: the embedded world's T2I-CompBench is "
            "pipeline.metrics compbench_colour/shape/spatial/complex (the probe); drop pipeline.compbench"
        )
    if not cfg.pipeline.registry_baselines:
        return
    from senseflow.baselines import recipe_family

    where = f"experiments/{cfg.name}.yaml: pipeline.registry_baselines"
    if cfg.family == "embedded":
        raise ConfigError(f"{where}: the embedded world has no public checkpoints; leave the list empty")
    registry = _registry()
    for name in cfg.pipeline.registry_baselines:
        if name in CANDIDATES:
            raise ConfigError(f"{where}: {name!r} is a pipeline candidate name, not a registry recipe")
        if name not in registry:
            raise ConfigError(
                f"{where}: {name!r} is not in experiments/baselines.yaml (known: {', '.join(registry)})"
            )
        family = recipe_family(registry[name])
        if family != cfg.family:
            raise ConfigError(
                f"{where}: {name!r} samples a {family} model ({registry[name].pipeline}) but the "
                f"profile's family is {cfg.family!r}: name a {cfg.family} recipe"
            )


# ----------------------------------------------------------------------------- build paths
# every build path a stage reads or writes (senseflow.stages, senseflow.dvc_plan): one place
PREFLIGHT = Path("build/preflight.json")
WORLD = Path("build/world")
TEACHER = Path("build/teacher/teacher")
PROBE = Path("build/probes/probe.safetensors")
CLIP = Path("build/clip")
CACHE = Path("build/cache")
CURVE_REFERENCE = Path("build/curve_reference")  # teacher samples of the in-loop curve (embedded)


def distill_dir(method: str) -> Path:
    """Training run folder of ``method``."""
    return Path("build/distill") / method


def student_dir(method: str) -> Path:
    """Exported student of ``method``."""
    return Path("build/students") / method


def samples_dir(candidate: str) -> Path:
    """Sample folder of ``candidate``."""
    return Path("build/samples") / candidate


def eval_dir(candidate: str) -> Path:
    """Evaluation folder of ``candidate``."""
    return Path("build/eval") / candidate


# T2I-CompBench (pipeline.compbench, real profiles): <dir>/<candidate>/<category>/ per candidate
COMPBENCH_SAMPLES, COMPBENCH_EVAL = Path("build/compbench/samples"), Path("build/compbench/eval")


def compbench_samples_dir(candidate: str) -> Path:
    """T2I-CompBench sample folders of ``candidate`` (one sub-folder per category)."""
    return COMPBENCH_SAMPLES / candidate


def compbench_eval_dir(candidate: str) -> Path:
    """T2I-CompBench evaluations of ``candidate`` (one sub-folder per category)."""
    return COMPBENCH_EVAL / candidate


def compbench_candidates(cfg: ProfileConfig, source: str | None = None) -> list[str]:
    """The candidates sampled on T2I-CompBench: every planned 4-step model but the teacher (the paper's rows).

    None when the profile has no ``pipeline.compbench``; ``source`` keeps that source's only.
    """
    if cfg.pipeline.compbench is None:
        return []
    out = []
    for name in planned_candidates(cfg):
        c = parse_candidate(name)
        if c.method != "teacher" and c.kind != "ablation" and c.steps == 4:
            if source is None or source_of(name) == source:
                out.append(name)
    return out


# ----------------------------------------------------------------------------- skip markers
def write_skipped(folder: str | Path, reason: str) -> Path:
    """Mark a stage output folder as deliberately empty (the report shows the reason)."""
    folder = ensure_writable_dir(folder)
    path = folder / SKIPPED
    atomic_write_text(path, json.dumps({"skipped": True, "reason": reason}, indent=2) + "\n")
    return path


def skipped_reason(folder: str | Path) -> str | None:
    """The reason recorded in ``folder/skipped.json`` (None when the stage ran)."""
    path = Path(folder) / SKIPPED
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("reason", "skipped")
    except (OSError, json.JSONDecodeError):
        return "skipped (unreadable skipped.json)"


# ----------------------------------------------------------------------------- sources
def source_of(candidate: str) -> str:
    """The model a candidate is sampled from: ``teacher`` or the method whose student it is."""
    c = parse_candidate(candidate)
    if c.kind == "registry":
        return c.name
    return "teacher" if c.method == "teacher" else c.source_method


def planned_candidates(cfg: ProfileConfig) -> list[str]:
    """Every candidate ``dvc.yaml`` lists for ``cfg`` (ablations included; they may be skipped)."""
    names = [*CANDIDATES, *cfg.pipeline.registry_baselines]
    return [n for n in names if candidate_inactive(cfg, n, ablations=True) is None]


def candidates_of(cfg: ProfileConfig, source: str) -> list[str]:
    """The candidates of ``source`` in ``cfg``'s plan, in table order."""
    return [n for n in planned_candidates(cfg) if source_of(n) == source]


def planned_methods(cfg: ProfileConfig) -> list[str]:
    """The methods ``dvc.yaml`` lists for ``cfg``: ``pipeline.methods`` then ``pipeline.ablations``."""
    return [m for m in METHODS if m in cfg.pipeline.methods or m in cfg.pipeline.ablations]
