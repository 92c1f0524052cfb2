"""A fresh copy of the repository as a DVC project, and what the DVC tests ask of it.

Shared by the slow end-to-end tests (tests/test_pipeline.py, tests/test_registry_candidates.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

# from nothing: no build outputs, no lock file, no DVC cache
SKIP = {".venv", ".git", "build", "results", ".pytest_cache", ".ruff_cache", "__pycache__", "tmp", "cache",
        "dvc.lock"}  # fmt: skip


def copy_repo(dest: Path, profile: str = "smoke") -> Path:
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in SKIP])
    # params.yaml and dvc.yaml of the profile (the render command the README gives)
    subprocess.run([sys.executable, "-m", "senseflow.cli", "pipeline", "render", "--profile", profile],
                   cwd=dest, env=dvc_env(dest), check=True, capture_output=True)  # fmt: skip
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):  # fmt: skip
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def dvc_env(repo: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(repo)  # the copy's code, not the editable install's
    env["DVC_NO_ANALYTICS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def dvc(repo: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["dvc", *args], cwd=repo, env=dvc_env(repo), capture_output=True, text=True, timeout=timeout
    )


def stages_run(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def changed_stages(repo: Path) -> set[str]:
    """Stages `dvc status` reports as changed (their own deps, params or outs)."""
    status = dvc(repo, "status", "--json", timeout=300)
    assert status.returncode == 0, status.stderr[-2000:]
    return set(json.loads(status.stdout or "{}"))


def restore(repo: Path) -> None:
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=repo, check=True)


def deps_of(repo: Path, path: str) -> set[str]:
    """Stages of the rendered dvc.yaml with a dep covering ``path``."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {name for name, s in stages.items()
            if any(path == d or path.startswith(d + "/") for d in s.get("deps", []))}  # fmt: skip


def relax_inception_hash(repo: Path) -> None:
    """Check only the random test Inception among the evaluation models, without the real file's hash."""
    path = repo / "eval/weights_manifest.yaml"
    manifest = yaml.safe_load(path.read_text())
    manifest["evaluation"] = ["inception_fid"]
    for f in manifest["artefacts"]["inception_fid"]["files"]:
        f.update({k: None for k in ("sha256", "sha256_prefix", "size") if k in f})
    path.write_text(yaml.safe_dump(manifest))


def repro_report(repo: Path, profile_path: Path, profile: dict, weights: Path) -> subprocess.CompletedProcess:
    """Write the edited profile, render and commit the plan, then `dvc repro report` on ``weights``."""
    profile_path.write_text(yaml.safe_dump(profile, sort_keys=False))
    subprocess.run([sys.executable, "-m", "senseflow.cli", "pipeline", "render"], cwd=repo, env=dvc_env(repo),
                   check=True)  # fmt: skip
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "tiny"], cwd=repo,
                   check=True)  # fmt: skip
    env = {**dvc_env(repo), "SENSEFLOW_WEIGHTS": str(weights)}
    return subprocess.run(["dvc", "repro", "report"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
