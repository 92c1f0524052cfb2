"""Several images per prompt at fixed seeds (T2I-CompBench: 10 per prompt at seeds 42-51)."""

from __future__ import annotations

import numpy as np
import pytest

from senseflow.samples import SampleFolderMismatch, generate_to_folder, per_seed_records, read_manifest
from senseflow.world.prompts import PromptRecord


class _Fake:
    """A candidate that paints its seed into the image, so the seed used is visible."""

    name, kind, steps, resolution = "fake", "test", 1, 8
    device, dtype, last_schedule = "cpu", "float32", None

    def identity(self):
        return {"candidate": "fake", "steps": 1}

    def check_prompts(self, prompts):
        """Every prompt is valid for the fake candidate."""

    def record_extra(self):
        return {}

    def render(self, prompts, seeds):
        return [np.full((8, 8, 3), s % 256, np.uint8) for s in seeds], 1


def test_ten_images_per_prompt_at_seeds_42_to_51(tmp_path):
    prompts = [PromptRecord("a", "a red cube"), PromptRecord("b", "a blue ball")]
    records, fixed = per_seed_records(prompts, range(42, 52))
    assert [r.id for r in records[:3]] == ["a-s0", "a-s1", "a-s2"] and records[10].id == "b-s0"
    rows = generate_to_folder(
        _Fake(), records, tmp_path / "out", fixed_seeds=fixed, progress=False, batch_size=7
    )
    assert [r["seed"] for r in rows] == list(range(42, 52)) * 2
    assert [r["prompt"] for r in rows[9:11]] == ["a red cube", "a blue ball"]
    assert len(read_manifest(tmp_path / "out")) == 20
    # a rerun with other seeds is refused, the same one resumes
    generate_to_folder(_Fake(), records, tmp_path / "out", fixed_seeds=fixed, progress=False)
    other = {k: v + 1 for k, v in fixed.items()}
    with pytest.raises(SampleFolderMismatch):
        generate_to_folder(_Fake(), records, tmp_path / "out", fixed_seeds=other, progress=False)
