"""Real-profile training fidelity (issue 14): tiny SDXL / SD 3.5 / FLUX families in their real dtype.

Each tiny pipeline is saved and loaded through ``load_backbone`` in the dtype its profile
loads the real weights in (SDXL float16, SD 3.5 and FLUX bfloat16), so the defects that only
show outside float32 (rounded-away updates, dtype mismatches) show here.
"""

from __future__ import annotations

import pytest
import torch

from senseflow.backbones.loading import load_backbone
from senseflow.config import PretrainedConfig
from senseflow.data import WorldData
from tests.tiny_pipelines import RESOLUTION, T5_LENGTH, save_tiny_pipeline

LOAD_DTYPE = {"sdxl": "float16", "sd3": "bfloat16", "flux": "bfloat16"}  # the profiles' teacher dtypes
ANCHORS = {"sdxl": (999 / 999, 749 / 999, 499 / 999, 249 / 999), "sd3": (1.0, 0.9, 0.75, 0.5),
           "flux": (1.0, 0.904, 0.759, 0.512)}  # fmt: skip


def tiny_family(family: str, root, dtype: str | None = None):
    """A tiny teacher of ``family`` loaded from disk in ``dtype`` (default: its profile's)."""
    folder = save_tiny_pipeline(family, root / f"teacher_{family}")
    cfg = PretrainedConfig(
        model_id=str(folder), licence="test", dtype=dtype or LOAD_DTYPE[family], resolution=RESOLUTION,
        max_sequence_length=T5_LENGTH,
    )  # fmt: skip
    return load_backbone(family, cfg)


def world_data() -> WorldData:
    """Rendered scenes at the tiny pipelines' resolution (stand-in for real images)."""
    return WorldData(resolution=RESOLUTION, digit_counts={1: 1.0})


# ----------------------------------------------------------------------------- defect 3
def test_lora_run_keeps_the_fake_models_base_weights_frozen(tmp_path, monkeypatch):
    """The trainable count of the fake model stays constant over iterations (IDA counts them)."""
    from senseflow import train

    counts: list[int] = []
    real_ida = train.ida_update

    def spy(fake, generator, lam):
        counts.append(sum(p.numel() for p in fake.parameters() if p.requires_grad))
        return real_ida(fake, generator, lam)

    monkeypatch.setattr(train, "ida_update", spy)
    teacher = tiny_family("sd3", tmp_path, "float32")
    train.distill(
        tmp_path / "run", teacher=teacher, data=world_data(), anchors=ANCHORS["sd3"], iterations=3,
        global_batch=2, ttur=1, gan=False, isg=False, lora_rank=2, progress=False, checkpoint_every=10,
    )  # fmt: skip
    assert len(counts) == 3
    assert counts[0] == counts[-1], f"fake model's trainable weights grew over iterations: {counts}"
    assert counts[0] < sum(p.numel() for p in teacher.network.parameters()) / 10  # LoRA only
