"""Data of the dashboard's T2I-CompBench page: measured rows beside the paper's (``results/summary.json``).

No Streamlit import: every function is testable on its own. The measured values are the
embedded world's probe categories (``compbench_*`` in a candidate's ``metrics``) or a real
profile's benchmark metrics (``t2i_compbench_*`` in its ``compbench``); the paper's rows are
``summary["paper"]["compbench"]`` (experiments/paper/t2i_compbench_4step.csv of the backbone).
"""

from __future__ import annotations

import pandas as pd

CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex_3in1")
# metric name -> the paper's column (the report's mapping, eval.report.COMPBENCH_COLUMNS)
COLUMNS = {
    "compbench_colour": "color", "compbench_shape": "shape", "compbench_spatial": "spatial",
    "compbench_complex": "complex_3in1",
    **{f"t2i_compbench_{c}": c for c in ("color", "shape", "texture", "spatial", "non_spatial")},
    "t2i_compbench_complex": "complex_3in1",
}  # fmt: skip


def compbench_frame(summary: dict) -> pd.DataFrame:
    """One row per (source, method, category): value, 95% interval, and the metric's card.

    Measured rows are the teacher's reference and every 4-step non-ablation candidate (the
    paper's table is at 4 steps); paper rows follow.
    """
    rows = []
    for name, e in (summary.get("candidates") or {}).items():
        if e.get("kind") == "ablation" or e.get("steps") != 4:
            continue
        found = {**(e.get("metrics") or {}), **(e.get("compbench") or {})}
        for metric, col in COLUMNS.items():
            entry = found.get(metric)
            if not entry or entry.get("status") != "ok":
                continue
            lo, hi = (entry.get("ci95") or [None, None])[:2]
            card = entry.get("protocol") or {}
            rows.append({"source": "measured", "method": e.get("label", name), "category": col,
                         "value": float(entry["value"]), "lo": lo, "hi": hi, "metric": metric,
                         "n": entry.get("n"), "prompt_files": card.get("prompt_files"),
                         "parser": card.get("parser")})  # fmt: skip
    for r in (summary.get("paper") or {}).get("compbench") or []:
        for col in CATEGORIES:
            if r.get(col) is not None:
                rows.append(
                    {"source": "paper", "method": r["method"], "category": col, "value": float(r[col])}
                )
    return pd.DataFrame(rows, columns=["source", "method", "category", "value", "lo", "hi", "metric", "n",
                                       "prompt_files", "parser"])  # fmt: skip


def compbench_wide(long: pd.DataFrame) -> pd.DataFrame:
    """``(source, method)`` x category values, measured rows first, categories in the paper's order."""
    if long.empty:
        return pd.DataFrame()
    wide = long.pivot_table(index=["source", "method"], columns="category", values="value", aggfunc="first")
    wide = wide[[c for c in CATEGORIES if c in wide.columns]]
    order = sorted(wide.index, key=lambda k: (k[0] != "measured", list(long.method).index(k[1])))
    return wide.loc[order]


def compbench_cards(long: pd.DataFrame) -> pd.DataFrame:
    """Per measured metric: images scored, the parser and the prompt files' hashes (first 12 digits)."""
    measured = long[long.source == "measured"]
    if measured.empty:
        return pd.DataFrame()
    out = measured[["method", "metric", "n", "parser"]].copy()
    out["prompt_files"] = [
        ", ".join(f"{k} {v[:12]}" for k, v in (files or {}).items()) for files in measured["prompt_files"]
    ]
    return out.reset_index(drop=True)
