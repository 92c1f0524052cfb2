"""The Experiments page's data: ``dvc exp show``, parameter and metric differences, paired comparisons.

Pure loaders, no Streamlit import (see :mod:`dashboard.data` for the shared readers and path safety).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dashboard.data import SCORE_KEYS, file_stamp
from eval.stats import N_BOOT, paired_difference


def default_paired(scores: dict[str, pd.DataFrame]) -> tuple[int, int]:
    """Indices (into ``scores``' order) of the first two candidates whose images share prompt id and seed.

    The paired comparison is only defined over shared (id, seed) images; the reference teacher
    drawn from other seeds shares none with the candidates, so it is not opened on.
    """
    names = list(scores)
    for j in range(1, len(names)):
        for i in range(j):
            a, b = scores[names[i]], scores[names[j]]
            if a.empty or b.empty or "id" not in a or "id" not in b:
                continue
            on = ["id", "seed"] if "seed" in a and "seed" in b else ["id"]
            if len(a[on].merge(b[on], on=on)) >= 2:
                return i, j
    return 0, min(1, len(names) - 1)


def _flatten(prefix: str, data, out: dict) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = data


def parse_exp_show(records: list) -> pd.DataFrame:
    """Rows of ``dvc exp show --json``: ``experiment``, ``rev``, ``baseline``, ``timestamp``, params, metrics.

    Params and metrics become columns ``param:<file>:<key.path>`` and ``metric:<file>:<key.path>``
    (nested keys joined by dots).
    """
    rows: list[dict] = []

    def add(entry: dict, baseline: str | None) -> None:
        data = entry.get("data") or {}
        rev = entry.get("rev") or data.get("rev") or ""
        name = entry.get("name") or (rev if rev == "workspace" else rev[:7])
        row = {"experiment": name, "rev": rev, "baseline": baseline, "timestamp": data.get("timestamp")}
        for kind in ("params", "metrics"):
            for fname, content in (data.get(kind) or {}).items():
                flat: dict = {}
                _flatten("", (content or {}).get("data") or {}, flat)
                for key, value in flat.items():
                    row[f"{kind[:-1]}:{fname}:{key}"] = value
        rows.append(row)

    for entry in records or []:
        add(entry, None)
        base = entry.get("name") or (entry.get("rev") or "")[:7]
        for group in entry.get("experiments") or []:
            for exp in group.get("revs") or []:
                add(exp, base)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["experiment", "rev", "baseline", "timestamp"])
    # an experiment name shown twice (workspace and a branch of the same name) stays distinguishable
    dup = frame["experiment"].duplicated(keep=False)
    frame.loc[dup, "experiment"] = frame.loc[dup, "experiment"] + " @" + frame.loc[dup, "rev"].str[:7]
    return frame


def _git_dirs(repo: Path) -> list[Path]:
    """Files whose stamps change when experiments or the workspace's pipeline state change."""
    git = repo / ".git"
    dirs = [repo / "dvc.lock", repo / "params.yaml", repo / "dvc.yaml"]
    if git.is_file():  # a worktree: .git names the real git dir, whose commondir holds refs/exps
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            gd = (repo / text.split(":", 1)[1].strip()).resolve()
            dirs += [gd / "HEAD"]
            common = gd / "commondir"
            git = (gd / common.read_text().strip()).resolve() if common.is_file() else gd
    dirs += [git / "HEAD", git / "packed-refs", git / "refs" / "exps"]
    return dirs


@dataclass
class Experiments:
    """DVC experiments of a repository, or the reason there are none."""

    frame: pd.DataFrame
    message: str = ""


_EXP_CACHE: dict[str, tuple[tuple, Experiments]] = {}


def _dvc_executable() -> str | None:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.is_file() else shutil.which("dvc")


def load_experiments(repo: str | Path, timeout: float = 60.0) -> Experiments:
    """``dvc exp show --json`` of ``repo`` as a frame (:func:`parse_exp_show`), cached on git refs' stamps.

    Tolerant: no ``.dvc`` folder, no git, no dvc executable, a failing or slow command each
    give an empty frame and a message saying why.
    """
    repo = Path(repo).absolute()
    if not (repo / ".dvc").is_dir():
        return Experiments(pd.DataFrame(), f"{repo} is not a DVC repository (no .dvc folder)")
    if not (repo / ".git").exists():
        return Experiments(pd.DataFrame(), f"{repo} is not a git repository: DVC experiments need git")
    dvc = _dvc_executable()
    if dvc is None:
        return Experiments(pd.DataFrame(), "the dvc command is not installed")
    stamp = tuple(file_stamp(p) for p in _git_dirs(repo))
    hit = _EXP_CACHE.get(str(repo))
    if hit and hit[0] == stamp:
        return Experiments(hit[1].frame.copy(), hit[1].message)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        proc = subprocess.run(
            [dvc, "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Experiments(pd.DataFrame(), f"`dvc exp show --json` failed: {exc}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return Experiments(pd.DataFrame(), f"`dvc exp show --json` exited {proc.returncode}: {tail[0]}")
    try:
        result = Experiments(parse_exp_show(json.loads(proc.stdout or "[]")))
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        return Experiments(pd.DataFrame(), f"`dvc exp show --json` printed unreadable output: {exc}")
    _EXP_CACHE[str(repo)] = (stamp, result)
    return Experiments(result.frame.copy(), result.message)


def default_pair(frame: pd.DataFrame) -> tuple[int, int]:
    """Row indices to compare first: the first experiment against its baseline commit, else rows 0 and 1."""
    names = list(frame["experiment"])
    for i, base in enumerate(frame["baseline"]):
        if isinstance(base, str) and base in names:
            return names.index(base), i
    return 0, min(1, len(names) - 1)


def param_diff(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Params that differ between experiments ``a`` and ``b`` (``param``, ``a``, ``b``)."""
    return _diff(frame, a, b, "param:")[["param", a, b]] if a != b else pd.DataFrame(columns=["param", a, b])


def metric_deltas(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Every numeric metric of both experiments with ``delta = b - a``."""
    diff = _diff(frame, a, b, "metric:", keep_equal=True)
    diff["delta"] = pd.to_numeric(diff[b], errors="coerce") - pd.to_numeric(diff[a], errors="coerce")
    return diff.rename(columns={"param": "metric"})


def _diff(frame: pd.DataFrame, a: str, b: str, prefix: str, keep_equal: bool = False) -> pd.DataFrame:
    rows = frame.set_index("experiment")
    cols = [c for c in rows.columns if c.startswith(prefix)]
    out = []
    for col in cols:
        va, vb = rows.at[a, col], rows.at[b, col]
        if pd.isna(va) and pd.isna(vb):
            continue
        if keep_equal or not (va == vb or (pd.isna(va) and pd.isna(vb))):
            out.append({"param": col[len(prefix) :], a: va, b: vb})
    return pd.DataFrame(out, columns=["param", a, b] if a != b else ["param", a])


def paired_comparison(
    scores_a: pd.DataFrame, scores_b: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """Paired bootstrap of ``B - A`` per shared per-image metric, pairing images by prompt id and seed.

    Same statistic as ``senseflow-eval compare`` (:func:`eval.stats.paired_difference`);
    an empty frame when the two tables share fewer than two images.
    """
    cols = ["metric", "mean_a", "mean_b", "difference", "ci_low", "ci_high", "n", "significant"]
    if scores_a.empty or scores_b.empty or "id" not in scores_a or "id" not in scores_b:
        return pd.DataFrame(columns=cols)
    on = ["id", "seed"] if "seed" in scores_a and "seed" in scores_b else ["id"]
    metrics = [c for c in scores_a.columns if c in scores_b.columns and c not in SCORE_KEYS]
    merged = scores_a.merge(scores_b, on=on, suffixes=("_a", "_b"))
    out = []
    for m in metrics:
        pair = merged[[f"{m}_a", f"{m}_b"]].apply(pd.to_numeric, errors="coerce").dropna()
        if len(pair) < 2:
            continue
        stats = paired_difference(pair[f"{m}_a"], pair[f"{m}_b"], n_boot=n_boot, seed=seed)
        out.append(
            {
                "metric": m,
                "mean_a": float(pair[f"{m}_a"].mean()),
                "mean_b": float(pair[f"{m}_b"].mean()),
                **stats,
            }
        )
    return pd.DataFrame(out, columns=cols)
