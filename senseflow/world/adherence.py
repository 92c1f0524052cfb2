"""Prompt adherence of generated images, judged by the attribute probe, and its curve over steps."""

from __future__ import annotations

import time

import numpy as np
import torch

from senseflow.samplers import prompt_seed, sample_prompts
from senseflow.world.probes import AttributeProbe, judge, run_probe, summarise
from senseflow.world.prompts import PromptRecord
from senseflow.world.scenes import Scene


def adherence(probe: AttributeProbe, images: torch.Tensor, scenes: list[Scene]) -> dict:
    """Per-attribute accuracy, plus all-correct split by the number of digits in the scene."""
    return adherence_report(judge(run_probe(probe, images.clamp(-1, 1)), scenes), scenes)


def adherence_report(verdicts: dict[str, np.ndarray], scenes: list[Scene]) -> dict:
    """:func:`adherence`'s report from the probe's verdicts (:func:`judge`) on ``scenes``."""
    out = summarise(verdicts)
    counts = np.array([len(s.objects) for s in scenes])
    for k in sorted(set(counts.tolist())):
        out[f"all_{k}_digit"] = float(verdicts["all"][counts == k].mean())
    out["n"] = len(scenes)
    return out


@torch.no_grad()  # sampling only: an autograd graph over every Euler step made this several times slower
def adherence_curve(
    backbone,
    records: list[PromptRecord],
    probe: AttributeProbe,
    *,
    shape: tuple[int, int, int],
    steps_list: list[int],
    cfg: float,
    seed: int = 0,
    batch_size: int = 256,
) -> list[dict]:
    """Adherence at each Euler step count, same prompts and noise seeds for every count."""
    scenes = [r.scene for r in records]
    if any(s is None for s in scenes):
        raise ValueError("adherence needs embedded-world prompts (records with a scene)")
    seeds = [prompt_seed(seed, r.id) for r in records]
    rows = []
    for steps in steps_list:
        t0 = time.perf_counter()
        images, nfe = sample_prompts(
            backbone,
            [r.prompt for r in records],
            seeds,
            steps=steps,
            cfg=cfg,
            shape=shape,
            batch_size=batch_size,
        )
        seconds = (time.perf_counter() - t0) / len(records)
        rows.append(
            {
                "steps": steps,
                "cfg": cfg,
                "nfe": nfe,
                "seconds_per_image": seconds,
                **adherence(probe, images, scenes),
            }
        )
    return rows
