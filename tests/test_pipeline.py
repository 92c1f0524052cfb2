"""End to end: `dvc repro` of the smoke profile in a fresh copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

SKIP = {".venv", ".git", "build", "results", ".pytest_cache", ".ruff_cache", "__pycache__", "tmp", "cache"}


def _copy_repo(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in SKIP])
    params = dest / "params.yaml"
    params.write_text(params.read_text().replace("profile: embedded", "profile: smoke"))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], cwd=dest, check=True
    )
    return dest


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def test_smoke_pipeline_end_to_end(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    run = subprocess.run(["dvc", "repro"], cwd=repo, env=_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    probe = json.loads((repo / "build/probes/probe_report.json").read_text())
    assert set(probe) >= {"digit", "colour", "position", "background", "all"}
    manifest = [
        json.loads(x) for x in (repo / "build/samples/teacher/manifest.jsonl").read_text().splitlines()
    ]
    assert len(manifest) == 64 and all(
        (repo / "build/samples/teacher" / m["file"]).is_file() for m in manifest
    )
    assert manifest[0]["nfe"] == 16  # 8 Euler steps with CFG
    adherence = json.loads((repo / "results/teacher_adherence.json").read_text())
    assert 0.0 <= adherence["all"] <= 1.0 and adherence["n"] == 64
    curve = json.loads((repo / "results/teacher_curve.json").read_text())
    assert [r["steps"] for r in curve["rows"]] == [1, 4, 8]

    # nothing changed: a second repro runs no stage
    again = subprocess.run(
        ["dvc", "repro"], cwd=repo, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "Running stage" not in again.stdout

    # a knob of the sampling recipe reruns only the stages that read it
    subprocess.run(
        ["dvc", "exp", "run", "-S", "experiments/smoke.yaml:teacher.sample.n_prompts=32"],
        cwd=repo, env=_env(), capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    status = (repo / "dvc.lock").read_text()
    assert "n_prompts: 32" in status
    manifest = (repo / "build/samples/teacher/manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 32


def test_real_profile_stops_at_the_first_stage(tmp_path):
    # The pipeline so far builds the embedded world only: a real profile stops at the first
    # stage, naming the profile file, before anything is written.
    repo = _copy_repo(tmp_path / "repo")
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("profile: smoke", "profile: sdxl"))
    run = subprocess.run(["dvc", "repro"], cwd=repo, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    out = run.stderr + run.stdout
    assert "failed to reproduce 'world'" in out and "experiments/sdxl.yaml" in out
    assert not (repo / "build").exists() or not any((repo / "build").iterdir())
