"""Evaluation sharded across ranks: two CPU processes under torchrun give the one-process result."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from eval.sharding import Shard, gather_rows, map_rows
from senseflow.io import atomic_save_safetensors
from senseflow.world.clip import WorldClip, build_clip, clip_config, save_clip
from senseflow.world.probes import AttributeProbe, ProbeOutput
from senseflow.world.prompts import load_prompt_file
from senseflow.world.text import WorldTextEncoder

from .conftest import ROOT, torchrun
from .test_eval_cli import make_folder, noise, rendered


@pytest.mark.parametrize("n", [0, 1, 2, 7, 15, 16])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_blocks_cover_every_row_once_in_order(n, world):
    blocks = [Shard(r, world).rows(n) for r in range(world)]
    np.testing.assert_array_equal(np.concatenate(blocks), np.arange(n))
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_one_process_is_the_identity():
    out = ProbeOutput(torch.ones(3, 2), torch.zeros(3, 1), torch.zeros(3, 4, 11), torch.zeros(3, 4, 5))
    assert gather_rows(out, Shard()) is out
    assert map_rows(lambda idx: idx * 2, 5, Shard()).tolist() == [0, 2, 4, 6, 8]


def _run(launcher, args, port=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*launcher, "tests.eval_shard_script", *map(str, args)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_give_the_one_process_summary(world_dir, tmp_path):
    # 15 images: the ranks get blocks of 8 and 7 (uneven gathers are padded and trimmed)
    records = load_prompt_file(world_dir / "prompts" / "test.jsonl")[:15]
    samples = make_folder(tmp_path / "samples", records, rendered(records))
    reference = make_folder(tmp_path / "teacher", records, noise(records, 1))
    torch.manual_seed(0)
    probe = tmp_path / "probe.safetensors"
    meta = {"width": "4", "feature_dim": "8", "resolution": "16"}
    atomic_save_safetensors(AttributeProbe(4, 8).state_dict(), probe, metadata=meta)
    tok = WorldTextEncoder.load(world_dir).tokenizer
    cfg = clip_config(resolution=16, context_length=tok.model_max_length, vision_width=16, text_width=16,
                      embed_dim=8, vision_layers=1, text_layers=1)  # fmt: skip
    clip = save_clip(WorldClip(build_clip(cfg, seed=3), tok, cfg), tmp_path / "clip")
    args = [samples, reference, probe, clip]
    _run([sys.executable, "-m"], [*args, tmp_path / "one"])
    _run(torchrun(), [*args, tmp_path / "two"])

    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (one["ranks"], two["ranks"]) == (1, 2)
    s1, s2 = (pd.read_parquet(tmp_path / d / "scores.parquet") for d in ("one", "two"))
    # the rows really were sharded: rank 0 scored the first 8 images, rank 1 the last 7
    assert s1["scoring_rank"].tolist() == [0.0] * 15
    assert s2["scoring_rank"].tolist() == [0.0] * 8 + [1.0] * 7
    pd.testing.assert_frame_equal(s1.drop(columns="scoring_rank"), s2.drop(columns="scoring_rank"), atol=1e-6)
    for name in ("adherence", "fid_t_probe", "clip_score_embedded"):
        a, b = one["metrics"][name], two["metrics"][name]
        assert a["status"] == b["status"] == "ok"
        assert a["n"] == b["n"] == 15
        assert b["value"] == pytest.approx(a["value"], rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(b["ci95"], a["ci95"], rtol=1e-6, atol=1e-9)
        assert a["details"] == pytest.approx(b["details"])
        assert a["protocol"] == b["protocol"]
    fid_t = one["metrics"]["fid_t_probe"]
    assert fid_t["value"] > 0
    assert fid_t["ci95"][0] <= fid_t["value"] <= fid_t["ci95"][1]  # half-sampling: around the estimate
