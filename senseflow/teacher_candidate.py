"""The candidate protocol and the embedded teacher, the one candidate the training stages sample.

Each candidate turns a batch of prompts and their noise seeds into uint8 images with one
method, :meth:`Candidate.render`, and says who it is (:meth:`Candidate.identity`, the
settings that decide its images). The sample-folder code (:mod:`senseflow.samples`) only ever
calls those two. Students and public pipelines are in :mod:`senseflow.candidates`; this module
stays apart from them because the in-loop curve's reference (``curve-reference``, read by every
distillation stage) samples the teacher: an edit of the student loader or of a baseline recipe
must not retrain anything.
"""

from __future__ import annotations

import numpy as np
import torch

from senseflow.samplers import sample_prompts
from senseflow.world.scenes import to_uint8


class Candidate:
    """Base class: ``render(prompts, seeds) -> (uint8 NHWC images, NFE per image)``."""

    name: str
    kind: str
    steps: int
    resolution: int
    device: torch.device = torch.device("cpu")
    dtype: str = "float32"

    def __init__(self) -> None:
        self.last_schedule: dict = {}

    def identity(self) -> dict:
        """Settings that decide the images; a folder made under other values is refused."""
        raise NotImplementedError

    def record_extra(self) -> dict:
        """Extra manifest fields (e.g. the CFG scale)."""
        return {}

    def check_prompts(self, prompts: list[str]) -> None:
        """Refuse prompts the candidate cannot encode (before anything is generated)."""

    def render(self, prompts: list[str], seeds: list[int]) -> tuple[np.ndarray, int]:
        """Images for ``prompts``, each from its own seed's noise: batch composition never changes one."""
        raise NotImplementedError


class EmbeddedTeacher(Candidate):
    """The embedded world's teacher: Euler flow ODE with CFG (:func:`senseflow.samplers.sample_prompts`)."""

    kind = "teacher"

    def __init__(
        self, backbone, shape: tuple[int, int, int], *, steps: int, cfg: float, name: str = "teacher"
    ):
        super().__init__()
        self.backbone, self.shape, self.steps, self.cfg, self.name = backbone, shape, steps, cfg, name
        self.resolution = shape[-1]

    def identity(self) -> dict:
        """Name, kind, sampler, steps and CFG scale."""
        return {
            "candidate": self.name,
            "kind": self.kind,
            "sampler": "euler",
            "steps": self.steps,
            "cfg": self.cfg,
        }

    def record_extra(self) -> dict:
        """The CFG scale, as ``senseflow sample`` always recorded it."""
        return {"cfg": self.cfg}

    def check_prompts(self, prompts: list[str]) -> None:
        """The world's tokenizer must know every word."""
        self.backbone.text.check(prompts)

    def render(self, prompts, seeds):
        """Euler-sample, decode, round to 8 bits."""
        x, nfe = sample_prompts(
            self.backbone,
            prompts,
            seeds,
            steps=self.steps,
            cfg=self.cfg,
            shape=self.shape,
            batch_size=len(prompts),
        )
        from senseflow.schedules import euler_sigmas

        self.last_schedule = {"sigmas": euler_sigmas(self.steps, self.backbone.shift).tolist()}
        return to_uint8(self.backbone.codec.decode(x)), nfe
