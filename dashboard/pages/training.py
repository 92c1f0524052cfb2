"""The Training page's data: dvclive logs and in-loop evaluation curves of each training run.

Pure loaders, no Streamlit import (see :mod:`dashboard.data` for the shared readers and path safety).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dashboard.data import EVAL_CURVE, Roots, mtime_cached, read_jsonl


def training_dirs(roots: Roots) -> dict[str, Path]:
    """Method -> ``build/distill/<method>`` for every method with dvclive logs or an eval curve."""
    base = roots.build / "distill"
    if not base.is_dir():
        return {}
    return {
        d.name: d for d in sorted(base.iterdir())
        if d.is_dir() and ((d / "dvclive").is_dir() or (d / EVAL_CURVE).is_file())
    }  # fmt: skip


@mtime_cached
def load_dvclive(folder: Path) -> pd.DataFrame:
    """Long frame (``metric``, ``step``, ``value``) of a dvclive folder's ``plots/metrics/**/*.tsv``.

    ``metric`` is the path under ``plots/metrics`` without ``.tsv`` (``train/dmd``,
    ``train/grad_norm/dmd``, ``eval/fid_t``): the name dvclive was given.
    """
    base = folder / "plots" / "metrics"
    parts = []
    if base.is_dir():
        for tsv in sorted(base.rglob("*.tsv")):
            table = pd.read_csv(tsv, sep="\t")
            value_cols = [c for c in table.columns if c not in ("step", "timestamp")]
            if "step" not in table.columns or not value_cols:
                continue
            parts.append(pd.DataFrame({
                "metric": tsv.relative_to(base).with_suffix("").as_posix(),
                "step": pd.to_numeric(table["step"], errors="coerce"),
                "value": pd.to_numeric(table[value_cols[-1]], errors="coerce"),
            }))  # fmt: skip
    if not parts:
        return pd.DataFrame(columns=["metric", "step", "value"])
    return pd.concat(parts, ignore_index=True)


def training_frame(dirs: dict[str, Path]) -> pd.DataFrame:
    """Dvclive logs of several methods in one long frame (``method``, ``metric``, ``step``, ``value``)."""
    parts = [load_dvclive(d / "dvclive").assign(method=m) for m, d in dirs.items()]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=["method", "metric", "step", "value"])
    return pd.concat(parts, ignore_index=True)[["method", "metric", "step", "value"]]


def metric_groups(metrics: Iterable[str]) -> dict[str, list[str]]:
    """Split dvclive metric names into losses, gradient norms, evaluation, time and other (page groups)."""
    groups: dict[str, list[str]] = {
        "losses": [],
        "gradient norms": [],
        "evaluation": [],
        "time": [],
        "other": [],
    }
    for m in sorted(set(metrics)):
        if "grad_norm" in m:
            groups["gradient norms"].append(m)
        elif m.startswith("eval/"):
            groups["evaluation"].append(m)
        elif m.startswith("time/"):
            groups["time"].append(m)
        elif m.startswith("train/") and not m.endswith("_lr") and not m.endswith("/lr"):
            groups["losses"].append(m)
        else:
            groups["other"].append(m)
    return {k: v for k, v in groups.items() if v}


def eval_curves(dirs: dict[str, Path]) -> pd.DataFrame:
    """Every method's ``eval_curve.jsonl`` stacked, long: ``method``, ``iteration``, ``metric``, ``value``."""
    parts = []
    for method, d in dirs.items():
        curve = read_jsonl(d / EVAL_CURVE)
        if curve.empty or "iteration" not in curve.columns:
            continue
        numeric = [c for c in curve.columns if c != "iteration" and pd.api.types.is_numeric_dtype(curve[c])]
        long = curve.melt(id_vars=["iteration"], value_vars=numeric, var_name="metric", value_name="value")
        parts.append(long.assign(method=method))
    if not parts:
        return pd.DataFrame(columns=["method", "iteration", "metric", "value"])
    return pd.concat(parts, ignore_index=True)[["method", "iteration", "metric", "value"]]
