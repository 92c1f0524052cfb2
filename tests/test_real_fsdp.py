"""The frozen teacher is FSDP2-sharded with the trainable networks; the export still works (issue 14).

Two CPU processes (gloo) under ``torchrun`` distil a tiny real-family teacher loaded in
bfloat16 with ``parallel="fsdp"``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.conftest import torchrun
from tests.tiny_pipelines import save_tiny_pipeline


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux", "sdxl"])
def test_fsdp2_shards_the_teacher_and_exports_the_generator_only(family, tmp_path):
    from senseflow.student import load_student

    folder = save_tiny_pipeline(family, tmp_path / "teacher")
    out = tmp_path / "run"
    out.mkdir()
    cmd = [*torchrun(), "tests.real_fsdp_script", family, str(folder), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:  # each rank holds about half of the teacher, in its load dtype
        assert r["dtensor"] and r["dtype"] == "torch.bfloat16"
        assert r["local"] < 0.6 * r["full"]
    assert sum(r["local"] for r in ranks) >= ranks[0]["full"]  # (FSDP pads the last shard)
    w0, w1 = (torch.load(out / f"final-rank{r}.pt") for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)  # full on every rank
    student = load_student(out / "student")
    exported = student.backbone.network.state_dict()
    assert exported.keys() == w0.keys()
    for k, v in w0.items():  # the generator's trained weights, in the teacher's dtype
        assert exported[k].dtype == torch.bfloat16
        torch.testing.assert_close(exported[k], v.to(torch.bfloat16), rtol=0, atol=0)
    images = student.generate(["a red cat"], [0])
    assert torch.isfinite(images).all()
