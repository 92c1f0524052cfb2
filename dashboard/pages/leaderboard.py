"""The Leaderboard page's data: a summary's long table, the paper's values, `make run-study`'s table.

Pure loaders, no Streamlit import (see :mod:`dashboard.data` for the shared readers and path safety).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dashboard.data import Roots, candidate_order, read_json, read_table

_PAPER_ALIASES = {"clip": "clip_score", "clipscore": "clip_score", "hps": "hpsv2", "hps_v2": "hpsv2",
                  "image_reward": "imagereward", "pick_score": "pickscore"}  # fmt: skip


def _norm(text: str) -> str:
    """``"Patch FID-T"`` -> ``"patch_fid_t"``: how paper columns and metric names are matched."""
    key = re.sub(r"[^0-9a-z]+", "_", str(text).lower()).strip("_")
    return _PAPER_ALIASES.get(key, key)


def paper_value(rows: Sequence[dict], method: str | None, steps: int | None, metric: str) -> float | None:
    """The paper's reported value of ``metric`` for ``method`` at ``steps``, if a paper row has it.

    Rows are the paper CSV's rows as dicts; the method column is ``method`` / ``model`` (matched
    case- and punctuation-insensitively), an optional ``steps`` / ``nfe`` column must agree.
    """
    if not method:
        return None
    for row in rows:
        cols = {_norm(k): v for k, v in row.items()}
        name = cols.get("method", cols.get("model", cols.get("variant")))
        if name is None or _norm(name) != _norm(method):
            continue
        row_steps = cols.get("steps", cols.get("nfe"))
        if steps is not None and row_steps not in (None, "") and not _is_nan(row_steps):
            try:
                if int(float(row_steps)) != int(steps):
                    continue
            except ValueError:
                continue
        value = cols.get(_norm(metric))
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(value) else value
    return None


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


LEADERBOARD_COLUMNS = [
    "candidate", "label", "kind", "method", "steps", "nfe", "speedup", "seconds_per_image", "metric",
    "status", "value", "ci_low", "ci_high", "higher_is_better", "n", "reason", "paper_value", "difference",
]  # fmt: skip


def leaderboard_frame(summary: dict) -> pd.DataFrame:
    """Long frame, one row per candidate and metric, with the paper's value and ``value - paper``.

    Candidates are in :func:`candidate_order`; not-applicable metrics keep their row with
    ``status == "not_applicable"`` and the reason, so pages can print a note.
    """
    cands = summary.get("candidates") or {}
    paper_rows = [*((summary.get("paper") or {}).get("main") or []),
                  *((summary.get("paper") or {}).get("ablation") or [])]  # fmt: skip
    rows = []
    for name in candidate_order(cands, cands):
        meta = cands[name]
        for metric, entry in sorted((meta.get("metrics") or {}).items()):
            entry = entry or {}
            ok = entry.get("status") == "ok"
            ci = entry.get("ci95") or [None, None]
            value = entry.get("value") if ok else None
            # the report matches each candidate to its paper row (eval.report.paper_values)
            paper = (meta.get("paper") or {}).get(metric)
            if paper is None:
                paper = paper_value(paper_rows, meta.get("method"), meta.get("steps"), metric)
            rows.append({
                "candidate": name, "label": meta.get("label", name), "kind": meta.get("kind"),
                "method": meta.get("method"), "steps": meta.get("steps"), "nfe": meta.get("nfe"),
                "speedup": meta.get("speedup"), "seconds_per_image": meta.get("seconds_per_image"),
                "metric": metric, "status": entry.get("status", "missing"), "value": value,
                "ci_low": ci[0] if ok else None, "ci_high": ci[1] if ok else None,
                "higher_is_better": entry.get("higher_is_better"), "n": entry.get("n"),
                "reason": entry.get("reason"), "paper_value": paper,
                "difference": None if value is None or paper is None else value - paper,
            })  # fmt: skip
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    for col in ("value", "ci_low", "ci_high", "paper_value", "difference", "speedup", "seconds_per_image"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def best_candidates(long: pd.DataFrame) -> dict[str, set[str]]:
    """Metric -> the candidates with the best value (ties share it), honouring ``higher_is_better``."""
    best: dict[str, set[str]] = {}
    for metric, group in long[long["status"] == "ok"].groupby("metric"):
        values = group["value"].dropna()
        if values.empty:
            continue
        higher = (
            bool(group["higher_is_better"].dropna().iloc[0])
            if group["higher_is_better"].notna().any()
            else True
        )
        target = values.max() if higher else values.min()
        best[metric] = set(group.loc[values.index[np.isclose(values, target)], "candidate"])
    return best


def leaderboard_table(
    long: pd.DataFrame, sort_by: str | None = None, ascending: bool | None = None
) -> pd.DataFrame:
    """Wide table: one row per candidate; per metric its value, 95% CI, paper value and difference.

    ``best`` lists the metrics where the candidate is best (:func:`best_candidates`).
    ``sort_by`` is a metric (sorted best first unless ``ascending`` says otherwise) or a column.
    """
    if long.empty:
        return pd.DataFrame()
    meta_cols = ["label", "kind", "nfe", "seconds_per_image", "speedup"]
    order = list(dict.fromkeys(long["candidate"]))
    table = long.drop_duplicates("candidate").set_index("candidate")[meta_cols].reindex(order)
    table = table.rename(columns={"nfe": "NFE", "seconds_per_image": "s/image"})
    ok = long[long["status"] == "ok"]
    # a metric no candidate has (not applicable everywhere) gets a note on the page, not a column of blanks
    for metric in sorted(ok["metric"].unique()):
        rows = ok[ok["metric"] == metric].set_index("candidate")
        table[metric] = rows["value"].reindex(order)
        paper = rows["paper_value"].reindex(order)
        if paper.notna().any():  # the paper's value right beside the measured one
            table[f"{metric} paper"] = paper
            table[f"{metric} diff"] = rows["difference"].reindex(order)
        table[f"{metric} 95% CI"] = [
            f"[{rows.at[c, 'ci_low']:.4g}, {rows.at[c, 'ci_high']:.4g}]"
            if c in rows.index and pd.notna(rows.at[c, "ci_low"]) else "" for c in order
        ]  # fmt: skip
    best = best_candidates(long)
    # beside the candidate's identity, so it stays in view when the metric columns scroll
    table.insert(
        len(meta_cols), "best", [", ".join(sorted(m for m, cs in best.items() if c in cs)) for c in order]
    )
    if sort_by:
        if sort_by in set(long["metric"]):
            higher = ok.loc[ok["metric"] == sort_by, "higher_is_better"]
            best_first_ascending = not (bool(higher.iloc[0]) if len(higher) else True)
            asc = best_first_ascending if ascending is None else ascending
        else:
            asc = True if ascending is None else ascending
        if sort_by in table.columns:
            table = table.sort_values(sort_by, ascending=asc, na_position="last", kind="stable")
    table.index.name = "candidate"
    return table


def not_applicable_notes(long: pd.DataFrame) -> pd.DataFrame:
    """Metric, candidates and reason for every metric entry whose status is not ``ok``."""
    bad = long[long["status"] != "ok"]
    if bad.empty:
        return pd.DataFrame(columns=["metric", "reason", "candidates"])
    bad = bad.assign(reason=bad["reason"].fillna(bad["status"]))
    out = (
        bad.groupby(["metric", "reason"], sort=True)["candidate"].apply(lambda s: ", ".join(s)).reset_index()
    )
    return out.rename(columns={"candidate": "candidates"})


STUDY = "study/study.json"  # under the build root: `make run-study`'s table (senseflow/study.py)


def _band(stat: dict | None) -> str:
    if not stat:
        return "-"
    if "difference" in stat:  # eval.stats.paired_difference's keys
        mean, lo, hi = stat["difference"], stat["ci_low"], stat["ci_high"]
    else:  # senseflow.study.mean_interval's
        mean, (lo, hi) = stat["mean"], stat.get("ci95", [math.nan, math.nan])
    return f"{mean:.4g}" if _is_nan(lo) else f"{mean:.4g} [{lo:.4g}, {hi:.4g}]"


def study_frames(roots: Roots) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``make run-study``'s table: mean [95% interval] over seeds per method, and the paired tests.

    Returns ``(per method, SenseFlow minus each other method)`` or None before a study was run.
    The first frame has one row per method; the second the paired t-test over seeds per metric
    (difference, interval, p) and, for adherence, the paired bootstrap over images.
    """
    path = roots.build / STUDY
    if not path.is_file():
        return None
    table = read_json(path)
    rows = []
    for method, row in table.get("rows", {}).items():
        rows.append({"method": method, "seeds": len(row.get("seeds", []))}
                    | {m: _band(v) for m, v in row.items() if isinstance(v, dict)})  # fmt: skip
    ref = table.get("reference_method", "senseflow")
    tests = []
    for method, test in table.get("tests", {}).items():
        for metric, stat in test.items():
            if not isinstance(stat, dict):
                continue
            tests.append({
                "comparison": f"{ref} - {method}", "metric": metric, "difference": _band(stat),
                "p": stat.get("p"), "test": "paired bootstrap over images" if metric == "adherence_images"
                else "paired t over seeds",
            })  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(tests)


def paper_tables(repo: str | Path) -> dict[str, pd.DataFrame]:
    """``experiments/paper/*.csv`` of the repository: the paper's reported numbers, by file stem."""
    folder = Path(repo) / "experiments" / "paper"
    return {p.stem: read_table(p) for p in sorted(folder.glob("*.csv"))} if folder.is_dir() else {}
