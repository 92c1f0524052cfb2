"""``senseflow world sample``: real scenes as PNG files plus ``captions.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from senseflow.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from senseflow.samples import png_bytes
from senseflow.world.scenes import caption, render, sample_scene


def write_real_scenes(
    out_dir: str | Path,
    *,
    n: int,
    seed: int,
    resolution: int,
    digit_counts: dict[int, float],
    split: str | None = None,
    instances: str = "train",
) -> list[dict]:
    """Render ``n`` scenes from ``seed``; the same arguments give byte-identical files."""
    out_dir = ensure_writable_dir(out_dir)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        scene = sample_scene(rng, digit_counts=digit_counts, instances=instances, split=split)
        name = f"{i:06d}.png"
        atomic_write_bytes(out_dir / name, png_bytes(render(scene, resolution)))
        records.append({"id": f"{i:06d}", "file": name, "caption": caption(scene), "scene": scene.to_dict()})
    atomic_write_text(out_dir / "captions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return records
