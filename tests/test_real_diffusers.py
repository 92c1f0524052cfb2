"""Exported SDXL and FLUX students sample through the stock diffusers pipeline (issue 14, item 11).

A tiny teacher is saved to disk, a perturbed copy of its network exported as the student;
``DiffusionPipeline.from_pretrained(student_folder)`` called with ``recipe["diffusers_call"]``
must give the images ``load_student`` gives, from the same initial noise (and, for SDXL's
LCM scheduler, the same fresh re-noising noise the suite's ``x0`` sampler draws).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from senseflow.backbones.loading import load_backbone
from senseflow.config import PretrainedConfig
from tests.tiny_pipelines import RESOLUTION, T5_LENGTH, save_tiny_pipeline

ANCHORS = {"sdxl": [1.0, 749 / 999, 499 / 999, 249 / 999], "flux": [1.0, 0.904, 0.759, 0.512]}
PROMPTS = ["a red cat", "two blue dogs"]
SEEDS = [3, 11]


def export_tiny_student(family: str, tmp_path):
    """(teacher folder, student folder) of a tiny ``family`` whose student differs from the teacher."""
    from senseflow.export import export_student
    from senseflow.real_run import student_sampler

    folder = save_tiny_pipeline(family, tmp_path / "teacher")
    base = dict(model_id=str(folder), licence="test", dtype="float32", resolution=RESOLUTION,
                max_sequence_length=T5_LENGTH)  # fmt: skip
    teacher = load_backbone(family, PretrainedConfig(**base))
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in teacher.trainable_copy().state_dict().items()}  # fmt: skip
    recipe = {"anchors": ANCHORS[family], "sampler": student_sampler(family), "resolution": RESOLUTION,
              "family": family}  # fmt: skip
    return folder, export_student(tmp_path / "student", state, teacher, recipe, base=base)


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_student_folder_is_a_complete_pipeline_of_the_teachers_own_files(family, tmp_path):
    teacher, student = export_tiny_student(family, tmp_path)
    recipe = json.loads((student / "recipe.json").read_text())
    assert recipe["diffusers_pipeline"] is True
    index = json.loads((student / "model_index.json").read_text())
    assert index["scheduler"][1] == (
        "LCMScheduler" if family == "sdxl" else "FlowMatchEulerDiscreteScheduler"
    )
    linked = [n for n, spec in index.items() if isinstance(spec, list) and not n.startswith("_")
              and spec[0] is not None and n not in ("unet", "transformer", "scheduler")]  # fmt: skip
    assert {"vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"} <= set(linked)
    for name in linked:  # byte-identical: the same files (hard links here), not re-saved
        for file in (teacher / name).rglob("*"):
            if file.is_file():
                copy = student / name / file.relative_to(teacher / name)
                assert copy.read_bytes() == file.read_bytes()
                assert os.path.samefile(copy, file)


def stock_images(family: str, folder, recipe: dict, monkeypatch) -> torch.Tensor:
    """Images in [-1, 1] from the stock pipeline, fed the suite's initial and re-noising noise."""
    from diffusers import DiffusionPipeline

    from senseflow.samplers import prompt_noise, prompt_seed
    from senseflow.student import load_student

    shape = load_student(folder).shape()
    noise = prompt_noise(SEEDS, shape)
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    kwargs = {"height": RESOLUTION, "width": RESOLUTION, "output_type": "pt", **recipe["diffusers_call"]}
    if family == "flux":
        from diffusers import FluxPipeline

        kwargs["latents"] = FluxPipeline._pack_latents(noise, len(SEEDS), *shape)
        kwargs["max_sequence_length"] = T5_LENGTH
    else:
        kwargs["latents"] = noise
        # LCM re-noises its x0 estimate with fresh noise: give it the x0 sampler's (same seeds)
        fresh = iter(prompt_noise([prompt_seed(s, f"renoise-{i}") for s in SEEDS], shape) for i in range(3))
        monkeypatch.setattr("diffusers.schedulers.scheduling_lcm.randn_tensor", lambda *a, **k: next(fresh))
    out = pipe(PROMPTS, **kwargs).images
    if family == "flux":  # the sigmas really used: the anchors, then diffusers' final 0
        torch.testing.assert_close(pipe.scheduler.sigmas, torch.tensor([*ANCHORS["flux"], 0.0]))
    else:
        assert pipe.scheduler.timesteps.tolist() == [999, 749, 499, 249]
    return out * 2 - 1


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_stock_diffusers_pipeline_samples_what_load_student_samples(family, tmp_path, monkeypatch):
    from senseflow.student import load_student

    _, folder = export_tiny_student(family, tmp_path)
    recipe = json.loads((folder / "recipe.json").read_text())
    student = load_student(folder)
    ours = student.generate(PROMPTS, SEEDS)
    assert student.last_times == pytest.approx(ANCHORS[family])
    theirs = stock_images(family, folder, recipe, monkeypatch)
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)  # measured: ~1e-6 apart
    # and the teacher's own pipeline does not (the student is not the teacher)
    assert (ours - load_student_teacher_images(family, tmp_path)).abs().max() > 1e-3


def load_student_teacher_images(family: str, tmp_path) -> torch.Tensor:
    """The same sampling with the teacher's weights exported as a student (a sanity contrast)."""
    from senseflow.export import export_student
    from senseflow.student import load_student

    folder = tmp_path / "teacher"
    base = dict(model_id=str(folder), licence="test", dtype="float32", resolution=RESOLUTION,
                max_sequence_length=T5_LENGTH)  # fmt: skip
    teacher = load_backbone(family, PretrainedConfig(**base))
    recipe = {"anchors": ANCHORS[family], "sampler": "x0" if family == "sdxl" else "euler",
              "resolution": RESOLUTION, "family": family}  # fmt: skip
    out = export_student(tmp_path / "teacher_as_student", teacher.trainable_copy().state_dict(), teacher,
                         recipe, base=base)  # fmt: skip
    return load_student(out).generate(PROMPTS, SEEDS)
