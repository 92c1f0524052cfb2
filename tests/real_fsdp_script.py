"""A tiny real-family run under FSDP2 (``torchrun``, gloo on CPU), for the sharded-teacher test.

``python -m tests.real_fsdp_script FAMILY TEACHER_FOLDER OUT`` loads the tiny pipeline saved
at ``TEACHER_FOLDER`` in bfloat16 (the profiles' teacher dtype), distils 2 iterations with
``parallel="fsdp"`` and writes ``OUT/rank{R}.json`` (how the teacher's weights are held on
this rank) and ``OUT/final-rank{R}.pt`` (the generator's full weights); rank 0 then exports
the student to ``OUT/student`` from the sharded teacher.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from senseflow.backbones.loading import load_backbone
from senseflow.config import PretrainedConfig
from senseflow.data import WorldData
from senseflow.export import export_student
from senseflow.train import distill
from tests.tiny_pipelines import RESOLUTION, T5_LENGTH

ANCHORS = {"sdxl": (1.0, 749 / 999, 499 / 999, 249 / 999), "sd3": (1.0, 0.9, 0.75, 0.5),
           "flux": (1.0, 0.904, 0.759, 0.512)}  # fmt: skip


def main() -> None:
    """Load, distil under FSDP2, report the teacher's shards, export on rank 0."""
    family, folder, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    base = dict(model_id=folder, licence="test", dtype="bfloat16", resolution=RESOLUTION,
                max_sequence_length=T5_LENGTH)  # fmt: skip
    teacher = load_backbone(family, PretrainedConfig(**base))
    full = sum(p.numel() for p in teacher.network.parameters())
    result = distill(
        out / "run", teacher=teacher, data=WorldData(resolution=RESOLUTION, digit_counts={1: 1.0}),
        anchors=ANCHORS[family], iterations=2, global_batch=4, ttur=1, gan=False, parallel="fsdp",
        generator_lr=1e-3, fake_lr=1e-3, progress=False, checkpoint_every=10, precision="fp32",
    )  # fmt: skip
    rank = int(os.environ["RANK"])
    params = list(teacher.network.parameters())
    report = {
        "full": full,
        "dtensor": all(isinstance(p, DTensor) for p in params),
        "local": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params),
        "dtype": str(params[0].dtype),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    torch.save({k: v.detach().cpu() for k, v in result.generator_state.items()}, out / f"final-rank{rank}.pt")
    if rank == 0:  # the export reads the teacher's config, never its (sharded) weights
        recipe = {"anchors": list(ANCHORS[family]), "sampler": "euler", "resolution": RESOLUTION,
                  "family": family}  # fmt: skip
        export_student(out / "student", result.generator_state, teacher, recipe, base=base)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
