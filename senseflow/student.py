"""A loaded few-step student: :func:`load_student` reads an exported folder, :class:`Student` samples it.

The folder format and its writer are :mod:`senseflow.export`; the sampling loop is
:mod:`senseflow.student_sampler`. Only the generate stages import this module, so editing it
regenerates samples and retrains nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from senseflow.backbones.flow import SD3FlowBackbone
from senseflow.errors import MissingArtefactError
from senseflow.export import RECIPE, anchors_for_steps
from senseflow.samplers import prompt_noise
from senseflow.student_sampler import student_sample
from senseflow.world.text import WorldTextEncoder


class Student:
    """A loaded student: generates images from prompts with nothing else given."""

    def __init__(self, backbone: SD3FlowBackbone, recipe: dict):
        self.backbone = backbone
        self.recipe = recipe
        self.last_times: list[float] = []

    @property
    def anchors(self) -> list[float]:
        """The times the generator was trained at, noisiest first."""
        return [float(a) for a in self.recipe["anchors"]]

    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample in the space the network denoises."""
        return tuple(self.backbone.latent_shape(int(self.recipe["resolution"])))

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        steps: int | None = None,
        sampler: str | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """One image per prompt, (N, C, H, W) in [-1, 1]; noise from each prompt's own seed.

        ``steps`` defaults to the number of anchors; fewer steps use every k-th anchor
        (:func:`anchors_for_steps`). ``sampler`` defaults to the recipe's.
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        times = anchors_for_steps(self.anchors, steps or len(self.anchors))
        sampler = sampler or self.recipe["sampler"]
        outs = []
        for i in range(0, len(prompts), batch_size):
            chunk, chunk_seeds = prompts[i : i + batch_size], seeds[i : i + batch_size]
            cond = self.backbone.text.encode(chunk)
            # drawn on the CPU (device-independent seeds), then moved to where the generator runs
            device = next(self.backbone.network.parameters()).device
            noise = prompt_noise(chunk_seeds, self.shape()).to(device)
            x, self.last_times = student_sample(
                self.backbone, cond, noise, times, sampler=sampler, seeds=chunk_seeds
            )
            outs.append(self.backbone.codec.decode(x).clamp(-1, 1))
        return torch.cat(outs)


def load_student(path: str | Path) -> Student:
    """Load what :func:`senseflow.export.export_student` wrote; refuse a folder that is not a student.

    Embedded students carry their text encoder; real-family students load text encoders and
    VAE from their recorded base model (local folder or HF cache, never downloaded).
    """
    import diffusers

    folder = Path(path)
    recipe_path = folder / RECIPE
    if not recipe_path.is_file():
        raise MissingArtefactError(
            f"{recipe_path} is missing: {folder} is not an exported student "
            "(make one with `senseflow distill` or `senseflow export`)"
        )
    recipe = json.loads(recipe_path.read_text())
    network = recipe.get("network", {"folder": "transformer", "class": "SD3Transformer2DModel"})
    needed = [network["folder"]] + (["tokenizer", "text_encoder"] if "base" not in recipe else [])
    for sub in needed:
        if not (folder / sub).is_dir():
            raise MissingArtefactError(
                f"{folder / sub} is missing: the student folder is incomplete; re-export it"
            )
    cls = getattr(diffusers, network["class"])
    net = cls.from_pretrained(folder / network["folder"]).eval().requires_grad_(False)
    if "base" in recipe:
        from senseflow.backbones.loading import load_backbone
        from senseflow.config import PretrainedConfig

        teacher = load_backbone(recipe["family"], PretrainedConfig(**recipe["base"]))
        return Student(teacher.with_network(net.to(teacher.network.dtype)), recipe)
    backbone = SD3FlowBackbone(net, WorldTextEncoder.load(folder), shift=float(recipe.get("shift", 1.0)))
    return Student(backbone, recipe)
