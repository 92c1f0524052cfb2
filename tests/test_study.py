"""``make run-study`` (senseflow/study.py): statistics over seeds, the table, and a 2-seed smoke study."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from senseflow import study
from tests.conftest import ROOT


def test_mean_interval_is_the_student_t_interval():
    stat = study.mean_interval([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.3027; sd = 1; half width = 4.3027 / sqrt(3)
    assert stat["mean"] == 2.0
    assert stat["ci95"] == pytest.approx([2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)], rel=1e-5)
    assert all(math.isnan(v) for v in study.mean_interval([5.0])["ci95"])


def test_paired_t_detects_a_consistent_difference_and_not_noise():
    a = [0.80, 0.70, 0.75]
    clear = study.paired_t(a, [x - 0.10 for x in a[:2]] + [a[2] - 0.11])
    assert clear["mean"] == pytest.approx(0.1033, abs=1e-3) and clear["p"] < 0.01
    noise = study.paired_t([0.5, 0.6, 0.4], [0.6, 0.4, 0.5])
    assert noise["p"] > 0.5 and noise["ci95"][0] < 0 < noise["ci95"][1]


def test_study_table_and_markdown():
    rng = np.random.default_rng(0)
    cells = {
        m: {s: {"adherence": 0.5 + off + 0.01 * s, "fid_t_probe": 10.0 - off, "kid_t_probe": 1.0,
                "adherence_images": (rng.random(20) < 0.5 + off).astype(float)} for s in (0, 1)}
        for m, off in (("senseflow", 0.2), ("lcm", 0.0))
    }  # fmt: skip
    table = study.study_table(cells)
    assert table["rows"]["senseflow"]["adherence"]["mean"] == pytest.approx(0.705)
    test = table["tests"]["lcm"]
    assert test["adherence"]["mean"] == pytest.approx(0.2) and test["seeds"] == [0, 1]
    assert test["adherence_images"]["n"] == 40
    text = study.render_markdown(table)
    assert "| senseflow | 2 | 0.705 [" in text and "| lcm |" in text and "p=" in text


def test_study_refuses_without_the_pipeline_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(study.MissingArtefactError, match="Run `make run`"):
        study.run_study("smoke", [0], ["senseflow"], tmp_path / "study")
    with pytest.raises(study.UserError, match="unknown study method 'nope'"):
        study.run_study("smoke", [0], ["nope"], tmp_path / "study")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~10 minutes on 2 loaded cores: world, probe, teacher, 4 trainings
def test_two_seed_smoke_study_end_to_end(tmp_path):
    """The smoke profile's world, probe, teacher and reference, then 2 seeds x (SenseFlow, LCM)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "SENSEFLOW_WARM": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    steps = [
        ["senseflow", "world", "build", "--profile", "smoke", "--out", "build/world"],
        ["senseflow", "world", "train-probe", "--quiet", "--profile", "smoke", "--out", "build/probes"],
        ["senseflow", "train-teacher", "--quiet", "--profile", "smoke", "--world", "build/world",
         "--out", "build/teacher"],
        ["senseflow", "pipeline", "generate", "teacher", "--profile", "smoke"],
    ]  # fmt: skip
    for cmd in steps:
        run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, (cmd, run.stdout[-2000:], run.stderr[-2000:])
    # 5 iterations: with TTUR 5 the generator steps once, at iteration 4 (the released schedule)
    cmd = [sys.executable, "-m", "senseflow.study", "--profile", "smoke", "--seeds", "0", "1",
           "--methods", "senseflow", "lcm", "--set", "distill.iterations=5",
           "--set", "baselines.lcm.iterations=2"]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = json.loads((tmp_path / "build/study/study.json").read_text())
    assert table["seeds"] == [0, 1] and set(table["rows"]) == {"senseflow", "lcm"}
    for row in table["rows"].values():
        for metric in study.METRICS:
            lo, hi = row[metric]["ci95"]
            assert row[metric]["n"] == 2 and lo <= row[metric]["mean"] <= hi
    # the two seeds trained different students: their samples differ
    a, b = (tmp_path / f"build/study/samples/senseflow/seed{s}/manifest.jsonl" for s in (0, 1))
    sha = lambda p: [json.loads(line)["sha256"] for line in p.read_text().splitlines()]  # noqa: E731
    assert sha(a) != sha(b)
    assert "lcm" in table["tests"] and "p" in table["tests"]["lcm"]["adherence"]
    assert "| senseflow | 2 |" in (tmp_path / "build/study/study.md").read_text()
