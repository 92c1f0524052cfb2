"""The Gate page's data: ``gate.json`` and the thresholds file it was checked against.

Pure loaders, no Streamlit import (see :mod:`dashboard.data` for the shared readers and path safety).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dashboard.data import GATE, Roots, UnsafePathError, mtime_cached, read_json, safe_path


@dataclass
class GateView:
    """The gate's verdict: overall status, rows (violations first) and the thresholds applied."""

    passed: bool | None
    thresholds_path: str | None
    rows: pd.DataFrame
    thresholds: pd.DataFrame = field(default_factory=pd.DataFrame)


def load_gate(roots: Roots) -> GateView | None:
    """``results/gate.json`` with its rows sorted violations first, and the thresholds file it names.

    The thresholds file is read only when it resolves inside the repository (it is a YAML
    file under ``experiments/thresholds``); ``None`` when the gate has not run.
    """
    data = read_json(roots.results / GATE)
    if not isinstance(data, dict):
        return None
    rows = pd.DataFrame(
        data.get("rows") or [], columns=["candidate", "metric", "value", "baseline", "passed", "problems"]
    )
    rows["problems"] = rows["problems"].apply(lambda p: "; ".join(p) if isinstance(p, list) else (p or ""))
    rows["passed"] = rows["passed"].astype(bool)
    rows = rows.sort_values(["passed", "candidate", "metric"], kind="stable").reset_index(drop=True)
    rows.insert(0, "status", np.where(rows["passed"], "pass", "FAIL"))
    path = data.get("thresholds")
    return GateView(
        passed=data.get("passed"), thresholds_path=path, rows=rows.drop(columns="passed"),
        thresholds=_thresholds_frame(roots, path),
    )  # fmt: skip


def _thresholds_frame(roots: Roots, path: str | None) -> pd.DataFrame:
    if not path:
        return pd.DataFrame()
    full = Path(path) if Path(path).is_absolute() else roots.repo / path
    try:
        full = safe_path(full, [roots.repo, roots.results])
    except UnsafePathError:
        return pd.DataFrame()
    data = _read_yaml(full)
    metrics = (data or {}).get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        return pd.DataFrame()
    frame = pd.DataFrame.from_dict(metrics, orient="index")
    frame.index.name = "metric"
    return frame.reset_index()


@mtime_cached
def _read_yaml(path: Path):
    import yaml

    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
