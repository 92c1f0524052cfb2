"""What can be sampled: the embedded teacher, an exported student, a registry recipe's pipeline.

The protocol (:class:`senseflow.teacher_candidate.Candidate`: ``render`` and ``identity``) and
the embedded teacher live in :mod:`senseflow.teacher_candidate`; here are the student and
pipeline candidates and :func:`load_candidate`, which resolves a name or folder to one of them.
Teacher, students and public baselines share one resumable, sharded generation loop
(:mod:`senseflow.samples`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from senseflow.errors import MissingArtefactError, UserError
from senseflow.teacher_candidate import Candidate, EmbeddedTeacher
from senseflow.world.scenes import to_uint8

DEFAULT_TEACHER = Path("build/teacher/teacher")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class StudentCandidate(Candidate):
    """An exported student (or the authors' released generator): its anchors, its sampler."""

    kind = "student"

    def __init__(
        self,
        student,
        *,
        name: str,
        steps: int | None = None,
        sampler: str | None = None,
        recipe_hash: str | None = None,
    ):
        from senseflow.export import anchors_for_steps

        super().__init__()
        self.student, self.name = student, name
        self.steps = steps or len(student.anchors)
        self.times = anchors_for_steps(student.anchors, self.steps)  # refuses a step count it cannot do
        self.sampler = sampler or student.recipe["sampler"]
        self.resolution = int(student.recipe["resolution"])
        self.recipe_hash = recipe_hash or _sha(student.recipe)

    def identity(self) -> dict:
        """Name, kind, sampler, steps, the anchors used and a hash of the student's recipe."""
        return {
            "candidate": self.name,
            "kind": self.kind,
            "sampler": self.sampler,
            "steps": self.steps,
            "times": self.times,
            "recipe_sha256": self.recipe_hash,
        }

    def record_extra(self) -> dict:
        """The student sampler."""
        return {"sampler": self.sampler}

    def check_prompts(self, prompts: list[str]) -> None:
        """Embedded students: the world's tokenizer must know every word."""
        check = getattr(self.student.backbone.text, "check", None)
        if check is not None:
            check(prompts)

    def render(self, prompts, seeds):
        """The student's few steps from each prompt's noise, decoded, 8-bit."""
        images = self.student.generate(
            prompts, seeds, steps=self.steps, sampler=self.sampler, batch_size=len(prompts)
        )
        self.last_schedule = {"sigmas": list(self.student.last_times)}
        return to_uint8(images), len(self.times)


class PipelineCandidate(Candidate):
    """A registry recipe run through its diffusers pipeline, verbatim."""

    def __init__(self, pipe, recipe, device: torch.device):
        from senseflow.baselines import network_of, runtime_dtype

        super().__init__()
        self.pipe, self.recipe, self.device = pipe, recipe, device
        self.name, self.kind, self.steps, self.resolution = (
            recipe.name,
            recipe.kind,
            recipe.steps,
            recipe.resolution,
        )
        self.dtype = str(runtime_dtype(recipe, device)).removeprefix("torch.")
        self._rows = 0
        # NFE is counted, not assumed: rows through the network per image (CFG doubles the batch)
        network_of(pipe).register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self._rows += int(x.shape[0])

    def identity(self) -> dict:
        """Name, kind, steps and a hash of the full recipe (scheduler, weights, guidance...)."""
        return {
            "candidate": self.name,
            "kind": self.kind,
            "steps": self.steps,
            "recipe_sha256": _sha(self.recipe.model_dump(by_alias=True)),
        }

    def record_extra(self) -> dict:
        """The guidance scale."""
        return {"guidance": self.recipe.guidance}

    def render(self, prompts, seeds):
        """One pipeline call for the batch; CPU generators, one per prompt, so noise is device-independent."""
        from senseflow.baselines import call_kwargs

        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        self._rows = 0
        out = self.pipe(
            prompt=list(prompts),
            generator=gens,
            output_type="np",
            height=self.resolution,
            width=self.resolution,
            **call_kwargs(self.recipe),
        )
        sched = self.pipe.scheduler
        self.last_schedule = {"scheduler": type(sched).__name__, "timesteps": sched.timesteps.tolist()}
        if getattr(sched, "sigmas", None) is not None:
            self.last_schedule["sigmas"] = torch.as_tensor(sched.sigmas).float().tolist()
        images = (np.clip(out.images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return images, self._rows // len(prompts)


def recipe_student(recipe, *, weights_dir, device: torch.device) -> StudentCandidate:
    """A registry row with a SenseFlow sampler: the base pipeline with its network replaced, as a student."""
    from senseflow.backbones.loading import backbone_from_pipeline
    from senseflow.baselines import build_pipeline
    from senseflow.config import PretrainedConfig
    from senseflow.student import Student

    pipe = build_pipeline(recipe, weights_dir=weights_dir, device=device)
    cfg = PretrainedConfig(
        model_id=recipe.base.repo,
        revision=recipe.base.revision,
        dtype="float32" if device.type != "cuda" else recipe.dtype,
        resolution=recipe.resolution,
        max_sequence_length=recipe.max_sequence_length or 256,
        licence=recipe.licence,
    )
    backbone = backbone_from_pipeline(recipe.family, pipe, cfg)
    student = Student(
        backbone, {"anchors": list(recipe.sigmas), "sampler": recipe.sampler, "resolution": recipe.resolution}
    )
    cand = StudentCandidate(student, name=recipe.name, recipe_hash=_sha(recipe.model_dump(by_alias=True)))
    cand.kind, cand.device = recipe.kind, device
    return cand


def load_candidate(
    name_or_path: str,
    *,
    steps: int | None = None,
    cfg: float = 4.0,
    teacher_steps: int = 32,
    world_dir: str | Path = "build/world",
    teacher_dir: str | Path = DEFAULT_TEACHER,
    weights_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    registry: dict | None = None,
    recipe_overrides: dict | None = None,
) -> Candidate:
    """Resolve ``teacher``, a registry name, or a path to an exported teacher / student folder.

    ``teacher``: the exported embedded teacher (``teacher_dir``) by Euler with CFG ``cfg`` at
    ``steps`` (default ``teacher_steps``). A folder with ``recipe.json``: a student (its recipe
    has anchors; ``steps`` picks 1/2/4 of them) or a teacher. A registry name: its recipe,
    verbatim (``steps``, if given, must be the recipe's). ``recipe_overrides`` replaces recipe
    fields (tests point tiny pipelines at 32 px this way).
    """
    device = torch.device(device)
    path = Path(name_or_path)
    if name_or_path == "teacher" or path.is_dir() or name_or_path.startswith((".", "/", "~")):
        folder = Path(teacher_dir) if name_or_path == "teacher" else path.expanduser()
        recipe_path = folder / "recipe.json"
        if not recipe_path.is_file():
            raise MissingArtefactError(
                f"{recipe_path} is missing: {folder} is not an exported teacher or student "
                "(make one with `senseflow train-teacher`, `senseflow distill` or `senseflow export`)"
            )
        recipe = json.loads(recipe_path.read_text())
        if "anchors" in recipe:
            from senseflow.student import load_student

            return StudentCandidate(load_student(folder), name=name_or_path, steps=steps)
        from senseflow.teacher import load_teacher

        backbone, recipe = load_teacher(folder, world_dir)
        shape = (recipe["channels"], recipe["resolution"], recipe["resolution"])
        return EmbeddedTeacher(backbone, shape, steps=steps or teacher_steps, cfg=cfg, name=name_or_path)
    from senseflow.baselines import build_pipeline, get_recipe

    recipe = get_recipe(name_or_path, registry)
    if recipe_overrides:
        recipe = type(recipe)(**{**recipe.model_dump(by_alias=True), **recipe_overrides})
    if steps is not None and steps != recipe.steps:
        raise UserError(
            f"candidate {recipe.name!r} samples at {recipe.steps} steps (its recipe), not {steps}; "
            "pick the registry row with the steps you want (`senseflow baselines list`)"
        )
    if recipe.sampler != "pipeline":
        return recipe_student(recipe, weights_dir=weights_dir, device=device)
    return PipelineCandidate(build_pipeline(recipe, weights_dir=weights_dir, device=device), recipe, device)
