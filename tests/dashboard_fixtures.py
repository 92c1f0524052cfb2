"""A small results tree in the pipeline's layout (docs/architecture/pipeline-data-flow.md), for the dashboard.

Real 16 px PNGs (one colour family per candidate, so a screenshot shows which column is
which), manifests with embedded-world scenes, evaluated summaries with per-image scores in
parquet, dvclive logs written by dvclive itself, eval curves, a gate verdict with its
thresholds file, and optionally a git + DVC repository with one experiment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CANDIDATES = {
    # name: (kind, method, steps, nfe, colour of its images)
    "teacher_32": ("teacher", "teacher", 32, 64, (40, 90, 220)),
    "teacher_4": ("teacher", "teacher", 4, 8, (120, 60, 200)),
    "senseflow_4": ("student", "SenseFlow", 4, 4, (30, 170, 60)),
    "dmd2_4": ("baseline", "DMD2", 4, 4, (220, 140, 20)),
    "no_ida_4": ("ablation", "no_ida", 4, 4, (200, 40, 40)),
}
PROMPTS = [
    ("p0000", "at the top left a red 3 on a black background", "black", [(3, "red", "top left")]),
    ("p0001", "at the centre a green 7 on a white background", "white", [(7, "green", "centre")]),
    ("p0002", "at the bottom right a blue 1 on a black background", "black", [(1, "blue", "bottom right")]),
    ("p0003", "at the top right a red 0 on a grey background", "grey", [(0, "red", "top right")]),
    ("p0004", "at the centre a yellow 4 on a white background", "white", [(4, "yellow", "centre")]),
]
# the measured value per candidate: adherence (higher better), fid_t_probe and fid_t (lower better)
VALUES = {
    "teacher_32": {"adherence": 0.8, "fid_t_probe": 12.0},
    "teacher_4": {"adherence": 0.3, "fid_t_probe": 70.0},
    "senseflow_4": {"adherence": 0.6, "fid_t_probe": 30.0, "fid_t": 14.0},
    "dmd2_4": {"adherence": 0.4, "fid_t_probe": 45.0, "fid_t": 16.5},
    "no_ida_4": {"adherence": 0.2, "fid_t_probe": 80.0},
}
PAPER_MAIN = [
    {"backbone": "SD 3.5 Large", "method": "SenseFlow", "steps": 4, "FID-T": 13.38, "CLIP": 0.3495},
    {"backbone": "SD 3.5 Large", "method": "DMD2", "steps": 4, "FID-T": 15.0, "CLIP": 0.33},
]
TRAIN_METHODS = ("senseflow", "no_ida")


def seed_of(pid: str) -> int:
    """The seed of a prompt: one per prompt id, shared by every candidate (like samplers.prompt_seed)."""
    return 1000 + int(pid[1:])


def _png(path: Path, colour: tuple[int, int, int], index: int) -> None:
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, :] = colour
    img[4 + index % 8 : 8 + index % 8, 4:12] = 255  # a white bar whose height varies by prompt
    Image.fromarray(img).save(path)


def _metric_entry(name: str, value: float, n: int) -> dict:
    per_image = name == "adherence"
    return {
        "status": "ok",
        "kind": "per_image" if per_image else "set",
        "value": value,
        "ci95": [value - 0.05 * abs(value) - 0.01, value + 0.05 * abs(value) + 0.01],
        "n": n,
        "higher_is_better": per_image,
        "protocol": {"metric": name},
        "details": {},
    }


# the pipeline's seed scheme (issue 13): the reference teacher draws from other seeds than every
# candidate; teacher_reseed is the full-step teacher on the candidates' seeds (the noise floor)
RESEED = {"teacher_reseed": ("teacher", "teacher", 32, 64, (90, 90, 90))}
REFERENCE_SEED_SHIFT = 500_000


def build_tree(root: Path, *, with_dvc: bool = False, independent_reference: bool = False) -> Path:
    """Write the fixture under ``root`` (``results/``, ``build/``, ``experiments/``); return ``root``.

    ``independent_reference``: the reference ``teacher_32`` uses other seeds than the rest and a
    ``teacher_reseed`` candidate (full steps, the candidates' seeds) is added, as the pipeline does.
    """
    root.mkdir(parents=True, exist_ok=True)
    results, build = root / "results", root / "build"
    summary_cands = {}
    candidates = {**CANDIDATES, **(RESEED if independent_reference else {})}
    values = {**VALUES, "teacher_reseed": {"adherence": 0.8, "fid_t_probe": 10.0}}
    for ci, (cand, (kind, method, steps, nfe, colour)) in enumerate(candidates.items()):
        shift = REFERENCE_SEED_SHIFT if independent_reference and cand == "teacher_32" else 0
        samples = build / "samples" / cand
        samples.mkdir(parents=True)
        records, scores = [], []
        for i, (pid, prompt, background, objects) in enumerate(PROMPTS):
            _png(samples / f"{pid}.png", colour, i)
            scene = {
                "background": background,
                "objects": [{"digit": d, "colour": c, "position": p, "instance": 0} for d, c, p in objects],
            }
            records.append(
                {
                    "id": pid,
                    "prompt": prompt,
                    "seed": seed_of(pid) + shift,
                    "file": f"{pid}.png",
                    "sha256": "0" * 64,
                    "steps": steps,
                    "nfe": nfe,
                    "seconds_per_image": 0.01 * nfe,
                    "scene": scene,
                }
            )
            # candidate ci gets prompt i right when i + ci is even: differs per cell, visible in captions
            scores.append(
                {
                    "id": pid,
                    "file": f"{pid}.png",
                    "prompt": prompt,
                    "seed": seed_of(pid) + shift,
                    "adherence": float((i + ci) % 2 == 0),
                    "clip_score_embedded": 0.2 + 0.01 * i + 0.1 * ci,
                }
            )
        (samples / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        metrics = {m: _metric_entry(m, v, len(PROMPTS)) for m, v in values[cand].items()}
        metrics["clip_score"] = {"status": "not_applicable", "reason": "needs real captions (embedded world)"}
        ev = build / "eval" / cand
        ev.mkdir(parents=True)
        pd.DataFrame(scores).to_parquet(ev / "scores.parquet")
        (ev / "summary.json").write_text(
            json.dumps(
                {
                    "candidate": cand,
                    "n_images": len(PROMPTS),
                    "scores_file": "scores.parquet",
                    "metrics": metrics,
                }
            )
        )
        summary_cands[cand] = {
            "label": f"{method} ({steps} steps)",
            "kind": kind,
            "method": method,
            "steps": steps,
            "nfe": nfe,
            "seconds_per_image": 0.01 * nfe,
            "speedup": 64 / nfe,
            "samples": f"build/samples/{cand}",
            "eval": f"build/eval/{cand}",
            "metrics": metrics,
        }
    results.mkdir(parents=True)
    (results / "summary.json").write_text(
        json.dumps(
            {
                "profile": "embedded",
                "created": "2026-11-25T00:00:00+00:00",
                "reference": "teacher_32",
                "candidates": summary_cands,
                "paper": {"main": PAPER_MAIN, "ablation": []},
            },
            indent=1,
        )
    )
    _training_logs(build / "distill")
    thresholds = root / "experiments" / "thresholds" / "embedded.yaml"
    thresholds.parent.mkdir(parents=True)
    thresholds.write_text(
        "metrics:\n  adherence: {direction: higher, min: 0.3}\n  fid_t_probe: {direction: lower, max: 60}\n"
    )
    rows = []
    for cand in ("senseflow_4", "dmd2_4", "no_ida_4"):
        for metric, rule in (("adherence", lambda v: v >= 0.3), ("fid_t_probe", lambda v: v <= 60)):
            v = VALUES[cand][metric]
            ok = rule(v)
            rows.append(
                {
                    "candidate": cand,
                    "metric": metric,
                    "value": v,
                    "baseline": None,
                    "passed": ok,
                    "problems": [] if ok else [f"{metric} {v} violates the bound"],
                }
            )
    (results / "gate.json").write_text(
        json.dumps(
            {
                "passed": all(r["passed"] for r in rows),
                "thresholds": "experiments/thresholds/embedded.yaml",
                "rows": rows,
            }
        )
    )
    if with_dvc:
        make_dvc_repo(root)
    return root


def _training_logs(base: Path) -> None:
    from dvclive import Live

    for k, method in enumerate(TRAIN_METHODS):
        out = base / method
        out.mkdir(parents=True)
        live = Live(str(out / "dvclive"), dvcyaml=None, save_dvc_exp=False, report=None)
        curve = []
        for step in range(10, 110, 10):
            live.step = step
            # no_ida's loss wanders: the stability story the Training page exists to show
            live.log_metric("train/dmd", 1.0 / step + (0.02 * (step % 20 == 0) if k else 0.0))
            live.log_metric("train/fake", 0.5 + 0.1 * k)
            live.log_metric("train/grad_norm/dmd", 2.0 + k * (step % 30) / 10)
            live.log_metric("train/generator_lr", 1e-5)
            live.log_metric("time/seconds_per_iteration", 0.3)
            live.make_summary()
            if step % 50 == 0:
                curve.append(
                    {"iteration": step, "fid_t": 200.0 - step + 40 * k, "adherence_all": 0.1 + step / 1000}
                )
        live.end()
        (out / "eval_curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))


def make_dvc_repo(root: Path) -> None:
    """Turn ``root`` into a git + DVC repository with one pipeline commit and one experiment ``exp-lr``."""
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    dvc = str(Path(sys.executable).parent / "dvc")

    def run(*cmd: str) -> None:
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, text=True)

    (root / ".gitignore").write_text("build/\nresults/\n")
    (root / "params.yaml").write_text("lr: 0.1\nsteps: 3\n")
    script = (
        "import json,yaml;p=yaml.safe_load(open('params.yaml'));"
        "json.dump({'score':p['lr']*2,'steps':p['steps']},open('m.json','w'))"
    )
    (root / "dvc.yaml").write_text(
        f'stages:\n  s:\n    cmd: {sys.executable} -c "{script}"\n    params: [lr, steps]\n'
        "    metrics:\n      - m.json: {cache: false}\n"
    )
    run("git", "init", "-q", "-b", "main")
    run(dvc, "init", "-q")
    run(dvc, "repro", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "pipeline")
    run(dvc, "exp", "run", "-q", "-n", "exp-lr", "-S", "lr=0.5")
