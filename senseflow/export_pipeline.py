"""A real-family student folder as a complete diffusers pipeline (issue 14, item 11).

``senseflow.export.export_student`` writes the generator and its scheduler; for SDXL, SD 3.5
and FLUX students this module adds what ``DiffusionPipeline.from_pretrained(student_folder)``
needs besides: the teacher's ``model_index.json`` (with the student's scheduler class) and
the teacher's own text encoders, tokenizers and VAE, hard-linked from the base model's files
(copied where a hard link is impossible), never re-saved, so they are byte-identical to the
teacher's. ``recipe.json``'s ``diffusers_call`` holds the keyword arguments that make the
stock pipeline sample at the trained anchors::

    pipe = DiffusionPipeline.from_pretrained(student_folder, torch_dtype=torch.bfloat16)
    images = pipe(prompt, **recipe["diffusers_call"]).images

Flow students: ``sigmas=`` the anchors (the exported scheduler has shift 1 and no dynamic
shifting, so they pass unchanged; diffusers appends the final 0) and its Euler steps are the
suite's ``euler`` sampler. SDXL students: ``timesteps=`` the anchors' DDPM indices with the
exported LCM scheduler, which re-noises its x0 estimate with fresh noise: the suite's ``x0``
sampler. ``guidance_scale=1``: guidance is distilled into the student (one call per step).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from senseflow.io import atomic_write_text

log = logging.getLogger(__name__)
MODEL_INDEX = "model_index.json"


def base_folder(base: dict) -> Path | None:
    """The base model's files on disk: a local folder, or its HF cache snapshot (never downloaded)."""
    path = Path(str(base.get("model_id", ""))).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base["model_id"], revision=base.get("revision"), local_files_only=True))
    except (OSError, ValueError, KeyError):
        return None


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` mirrors ``src``: every file hard-linked (the HF cache's symlinks resolved), else copied."""
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dst / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        real = file.resolve()
        try:
            os.link(real, target)  # no extra disk; a plain file for DVC and for moving the folder
        except OSError:  # another file system, or links not allowed
            shutil.copy2(real, target)


def complete_pipeline(folder: Path, base: dict, network_folder: str) -> bool:
    """Add the teacher's other components and ``model_index.json`` to a student ``folder``.

    ``network_folder`` (``unet`` / ``transformer``) and ``scheduler/`` are the student's own,
    already written; every other component the teacher's ``model_index.json`` names is
    linked from the base model. Returns False, leaving the folder as it is (``load_student``
    still works from the recorded base), when the base model is not on disk.
    """
    src = base_folder(base)
    if src is None or not (src / MODEL_INDEX).is_file():
        log.warning("base model %s not found on disk: %s is not a complete diffusers pipeline folder",
                    base.get("model_id"), folder)  # fmt: skip
        return False
    index = json.loads((src / MODEL_INDEX).read_text())
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    index["scheduler"] = ["diffusers", scheduler]  # SDXL: LCM, not the teacher's
    for name, spec in index.items():
        if name.startswith("_") or name in (network_folder, "scheduler"):
            continue
        if isinstance(spec, list) and spec and spec[0] is not None:
            if not (src / name).is_dir():
                raise FileNotFoundError(f"{src / name} is missing: the base model folder is incomplete")
            _link_tree(src / name, folder / name)
    atomic_write_text(folder / MODEL_INDEX, json.dumps(index, indent=2) + "\n")
    return True


def diffusers_call(teacher, anchors: list[float]) -> dict:
    """The stock pipeline's keyword arguments that sample a student at ``anchors`` (module docstring)."""
    call: dict = {"num_inference_steps": len(anchors), "guidance_scale": 1.0}
    if teacher.prediction == "epsilon":
        call["timesteps"] = [int(k) for k in teacher.timestep_index(torch.tensor(anchors)).tolist()]
    else:
        call["sigmas"] = [float(a) for a in anchors]
    return call
