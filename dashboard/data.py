"""Pure loaders of the dashboard: files of the results layout in, pandas DataFrames out.

Everything here reads files written by the pipeline (``docs/architecture.md``, "Results
layout") and nothing else; no Streamlit import, so every function is testable on its own.
File reads are cached by modification time and size (:func:`mtime_cached`): a rerun of the
app costs a ``stat`` per file until the pipeline rewrites it.

Path safety: image files are named only by manifests, and every path (the sample folder a
summary names, each manifest's ``file``) is resolved, symlinks followed, and must stay inside
the configured roots (:func:`safe_path`); anything else is refused and never opened.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senseflow.errors import UserError

RUN_HINT = "run `make run`"
SUMMARY = "summary.json"
MANIFEST = "manifest.jsonl"
EVAL_CURVE = "eval_curve.jsonl"
GATE = "gate.json"
# columns of a scores table that identify an image rather than score it (eval.evaluate.KEYS)
SCORE_KEYS = ("id", "file", "prompt", "seed")


class UnsafePathError(UserError, PermissionError):
    """A path named by a results file resolves outside the dashboard's roots."""


class DashboardDataError(UserError, ValueError):
    """A results file exists but cannot be parsed."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Roots:
    """Where the dashboard reads from; relative paths in ``results/summary.json`` are relative to ``repo``."""

    results: Path
    build: Path
    repo: Path

    @property
    def samples(self) -> Path:
        """The samples root (``build/samples``)."""
        return self.build / "samples"

    @property
    def allowed(self) -> tuple[Path, Path]:
        """The two roots image paths may resolve into: the results root and the samples root."""
        return (self.results, self.samples)

    @staticmethod
    def from_settings(
        results: str | Path | None = None,
        build: str | Path | None = None,
        repo: str | Path | None = None,
        environ: dict[str, str] | None = None,
    ) -> Roots:
        """Explicit values first, then ``SENSEFLOW_RESULTS`` / ``SENSEFLOW_BUILD`` / ``SENSEFLOW_REPO``.

        Defaults: ``results/`` and ``build/`` of the repository, the current directory as the
        repository. Paths are made absolute so later ``cwd`` changes do not move them.
        """
        env = os.environ if environ is None else environ
        repo_path = Path(repo or env.get("SENSEFLOW_REPO") or ".").absolute()
        res = Path(results or env.get("SENSEFLOW_RESULTS") or repo_path / "results")
        bld = Path(build or env.get("SENSEFLOW_BUILD") or repo_path / "build")
        return Roots(results=res.absolute(), build=bld.absolute(), repo=repo_path)


def roots_from_argv(argv: Sequence[str], environ: dict[str, str] | None = None) -> Roots:
    """Roots from ``--results-root`` / ``--build-root`` / ``--repo`` in ``argv``, then the environment.

    ``argv`` is what follows ``--`` in ``streamlit run dashboard/app.py -- ...``; missing values
    come from :meth:`Roots.from_settings`. Unknown arguments are ignored: under pytest's
    AppTest, ``sys.argv`` is pytest's.
    """
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--results-root", "--build-root", "--repo"):
        parser.add_argument(flag)
    args, _ = parser.parse_known_args(list(argv))
    return Roots.from_settings(args.results_root, args.build_root, args.repo, environ)


def safe_path(path: str | Path, roots: Iterable[str | Path]) -> Path:
    """``path`` resolved (symlinks followed) if inside one of ``roots``; else :class:`UnsafePathError`.

    ``..`` components, absolute paths and symlinks that leave the roots are all caught,
    because the check is on the fully resolved path.
    """
    resolved = Path(path).resolve()
    roots = [Path(r).resolve() for r in roots]
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise UnsafePathError(
        f"{path} resolves to {resolved}, outside the dashboard's roots "
        f"({', '.join(str(r) for r in roots)}); the dashboard only reads files under them"
    )


# --------------------------------------------------------------------------- mtime cache


def _stamp(path: Path) -> tuple:
    """(mtime_ns, size) of a file, of every file under a folder, or ``None`` when missing."""
    try:
        st = path.stat()
    except OSError:
        return (None,)
    if not path.is_dir():
        return (st.st_mtime_ns, st.st_size)
    parts = []
    for dirpath, _dirs, files in os.walk(path):
        for name in sorted(files):
            try:
                fst = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            parts.append((os.path.relpath(os.path.join(dirpath, name), path), fst.st_mtime_ns, fst.st_size))
    return (st.st_mtime_ns, tuple(sorted(parts)))


def mtime_cached(func: Callable) -> Callable:
    """Cache ``func(path, *args)`` on the path's stamp (files: mtime and size; folders: all their files).

    A changed, added or removed file gives a new stamp and a fresh read; the old entry of that
    path is dropped. Callers get a copy, so a page that edits a frame cannot poison the cache.
    ``wrapper.misses`` counts real reads (tests use it).
    """
    cache: dict[tuple, tuple[tuple, Any]] = {}

    @functools.wraps(func)
    def wrapper(path, *args):
        path = Path(path)
        key = (str(path.absolute()), args)
        stamp = _stamp(path)
        hit = cache.get(key)
        if hit is None or hit[0] != stamp:
            wrapper.misses += 1
            cache[key] = (stamp, func(path, *args))
        value = cache[key][1]
        return value.copy() if isinstance(value, pd.DataFrame) else copy.deepcopy(value)

    wrapper.misses = 0
    wrapper.cache_clear = cache.clear
    return wrapper


@mtime_cached
def read_json(path: Path) -> Any:
    """A JSON file's content, ``None`` when it does not exist; :class:`DashboardDataError` when malformed."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DashboardDataError(f"{path} is not valid JSON ({exc}); rerun the stage that writes it") from exc


@mtime_cached
def read_jsonl(path: Path) -> pd.DataFrame:
    """One row per JSON line (blank lines skipped); an empty frame when the file does not exist."""
    if not path.is_file():
        return pd.DataFrame()
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DashboardDataError(f"{path}:{n} is not valid JSON ({exc})") from exc
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summary / leaderboard


def summary_files(roots: Roots) -> dict[str, Path]:
    """Profile name -> summary file: ``results/summary.json`` and any ``results/<profile>/summary.json``."""
    found: dict[str, Path] = {}
    candidates = [roots.results / SUMMARY, *sorted(roots.results.glob(f"*/{SUMMARY}"))]
    for path in candidates:
        data = read_json(path) if path.is_file() else None
        if isinstance(data, dict) and isinstance(data.get("candidates"), dict):
            found.setdefault(str(data.get("profile") or path.parent.name), path)
    return found


def load_summary(path: str | Path) -> dict:
    """The summary dict of one profile (``{}`` when missing)."""
    data = read_json(Path(path))
    return data if isinstance(data, dict) else {}


def candidate_order(names: Iterable[str], info: dict[str, dict] | None = None) -> list[str]:
    """Teachers first (most steps first), then students by method and steps, ablations last."""
    info = info or {}
    kind_rank = {"teacher": 0, "student": 1, "baseline": 2, "ablation": 3}

    def key(name: str):
        meta = info.get(name, {})
        kind = meta.get("kind") or ("teacher" if name.startswith("teacher") else "student")
        steps = meta.get("steps")
        if steps is None:
            m = re.search(r"_(\d+)$", name)
            steps = int(m.group(1)) if m else 0
        # teachers: the reference (most steps) first; students: fewer steps later
        return (kind_rank.get(kind, 4), 0 if kind == "teacher" else 1, -int(steps), name)

    return sorted(set(names), key=key)


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


def steps_frame(long: pd.DataFrame) -> pd.DataFrame:
    """Quality against NFE: ok metric rows with ``nfe``, one ``line`` per method."""
    frame = long[(long["status"] == "ok") & long["nfe"].notna() & long["value"].notna()].copy()
    if frame.empty:
        return frame.assign(line=pd.Series(dtype=str))
    frame["nfe"] = pd.to_numeric(frame["nfe"])
    frame["line"] = [
        "teacher" if k == "teacher" else (m or c.rsplit("_", 1)[0])
        for k, m, c in zip(frame["kind"], frame["method"], frame["candidate"], strict=True)
    ]
    return frame.sort_values(["metric", "line", "nfe"]).reset_index(drop=True)


# --------------------------------------------------------------------------- samples


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


def sample_folders(roots: Roots, summary: dict | None = None) -> dict[str, Path]:
    """Candidate -> its sample folder (holding ``manifest.jsonl``), each checked by :func:`safe_path`.

    Folders come from the summary's ``samples`` entries (relative to the repository) and from
    every ``build/samples/<candidate>/manifest.jsonl`` (a partial pipeline: sampled, not yet
    evaluated). A summary entry that leaves the roots is skipped (it is never read).
    """
    found: dict[str, Path] = {}
    info = (summary or {}).get("candidates") or {}
    for name, meta in info.items():
        rel = (meta or {}).get("samples")
        if not rel:
            continue
        folder = Path(rel) if Path(rel).is_absolute() else roots.repo / rel
        try:
            folder = safe_path(folder, roots.allowed)
        except UnsafePathError:
            continue
        if (folder / MANIFEST).is_file():
            found[name] = folder
    if roots.samples.is_dir():
        for manifest in sorted(roots.samples.glob(f"*/{MANIFEST}")):
            try:
                found.setdefault(manifest.parent.name, safe_path(manifest.parent, roots.allowed))
            except UnsafePathError:
                continue
    return {name: found[name] for name in candidate_order(found, info)}


@mtime_cached
def _manifest_records(path: Path) -> pd.DataFrame:
    return read_jsonl(path)


def load_manifest(folder: str | Path, roots: Sequence[str | Path]) -> pd.DataFrame:
    """A sample folder's manifest with ``path`` (the resolved image) and ``refused`` (why not, else ``""``).

    ``folder`` itself must lie inside ``roots``. An entry whose ``file`` resolves outside the
    roots (``../../etc/passwd``, an absolute path, a symlink out) keeps its row with ``path``
    ``None`` and the reason in ``refused``: it is reported, never opened. Scene attributes of
    the embedded world become columns ``background``, ``digits``, ``colours``, ``positions``.
    """
    folder = safe_path(folder, roots)
    frame = _manifest_records(folder / MANIFEST)
    if frame.empty:
        return pd.DataFrame(columns=["id", "prompt", "seed", "file", "path", "refused"])
    paths, refused = [], []
    for name in frame.get("file", pd.Series([None] * len(frame))):
        if not isinstance(name, str) or not name:
            paths.append(None)
            refused.append("no file named")
            continue
        try:
            target = safe_path(folder / name, roots)
            paths.append(target)
            refused.append("" if target.is_file() else "file missing")
        except UnsafePathError as exc:
            paths.append(None)
            refused.append(str(exc))
    frame["path"] = paths
    frame["refused"] = refused
    if "scene" in frame.columns:
        scenes = [s if isinstance(s, dict) else {} for s in frame["scene"]]
        frame["background"] = [s.get("background") for s in scenes]
        for col, key in (("digits", "digit"), ("colours", "colour"), ("positions", "position")):
            frame[col] = [tuple(str(o.get(key)) for o in s.get("objects", [])) for s in scenes]
    return frame


def eval_folder(roots: Roots, candidate: str, summary: dict | None = None) -> Path | None:
    """A candidate's evaluation folder (summary's ``eval``, else ``build/eval/<candidate>``) if it exists."""
    meta = ((summary or {}).get("candidates") or {}).get(candidate) or {}
    rel = meta.get("eval")
    folder = (
        (Path(rel) if Path(rel).is_absolute() else roots.repo / rel)
        if rel
        else roots.build / "eval" / candidate
    )
    return folder if folder.is_dir() else None


@mtime_cached
def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def load_scores(folder: str | Path | None) -> pd.DataFrame:
    """Per-image scores of an evaluated folder (the file its ``summary.json`` names; parquet or csv)."""
    if folder is None:
        return pd.DataFrame()
    folder = Path(folder)
    summary = read_json(folder / SUMMARY) or {}
    names = [summary.get("scores_file"), "scores.parquet", "scores.csv"]
    for name in names:
        # the summary may only name a file inside its own folder
        if name and (folder / Path(name).name).is_file():
            return _read_table(folder / Path(name).name)
    return pd.DataFrame()


def samples_grid(manifests: dict[str, pd.DataFrame], scores: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long grid frame: one row per (prompt id, seed, candidate) with image path and per-image scores.

    Only (id, seed) pairs present in the first candidate's manifest are kept, so every row of
    the grid shows the same seed across candidates (missing cells are simply absent).
    """
    parts = []
    for cand, man in manifests.items():
        if man.empty:
            continue
        part = man.copy()
        part["candidate"] = cand
        sc = scores.get(cand)
        if sc is not None and not sc.empty and "id" in sc.columns:
            metric_cols = [c for c in sc.columns if c not in SCORE_KEYS]
            on = ["id", "seed"] if "seed" in sc.columns and "seed" in part.columns else ["id"]
            part = part.merge(sc[on + metric_cols], on=on, how="left")
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["id", "seed", "prompt", "candidate", "path", "refused"])
    return pd.concat(parts, ignore_index=True)


def seeds_per_prompt(grid: pd.DataFrame) -> int:
    """The largest number of distinct seeds one candidate has for one prompt id (1: one image each)."""
    if grid.empty or "seed" not in grid.columns:
        return 1
    keys = ["candidate", "id"] if "candidate" in grid.columns else ["id"]
    return int(grid.groupby(keys)["seed"].nunique().max())


def nth_seed(grid: pd.DataFrame, k: int) -> pd.DataFrame:
    """Each candidate's image with the ``k``-th smallest seed of its prompt id.

    Ranked per candidate, not over all candidates: a set drawn with other seeds (the reference
    teacher, ``teacher_reseed``) keeps its own ``k``-th image instead of showing none.
    """
    keys = ["candidate", "id"] if "candidate" in grid.columns else ["id"]
    rank = grid.groupby(keys)["seed"].rank(method="dense").astype(int) - 1
    return grid[rank == k]


def default_sample_candidates(names: Sequence[str], info: dict[str, dict] | None = None) -> list[str]:
    """What the Samples page opens on: the full-step teacher beside every candidate at 4 steps.

    ``names`` in table order (:func:`candidate_order`, the reference teacher first). The
    full-step teacher is the first teacher; 4-step candidates are read from the summary's
    ``steps`` or, without one, a ``_4`` name suffix. With neither, the first five names.
    """
    info = info or {}

    def steps(name: str) -> int | None:
        value = (info.get(name) or {}).get("steps")
        if value is None:
            m = re.search(r"_(\d+)$", name)
            value = int(m.group(1)) if m else None
        return value

    def is_teacher(name: str) -> bool:
        return (
            (info.get(name) or {}).get("kind") or ("teacher" if name.startswith("teacher") else "")
        ) == "teacher"

    teachers = [n for n in names if is_teacher(n)]
    at_four = [n for n in names if steps(n) == 4]
    chosen = ([teachers[0]] if teachers and teachers[0] not in at_four else []) + at_four
    return chosen if len(chosen) >= 2 else list(names[: min(len(names), 5)])


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


def score_columns(scores: dict[str, pd.DataFrame]) -> list[str]:
    """The per-image metric columns of scores tables (shown under an image; manifest fields are not)."""
    cols: dict[str, None] = {}
    for table in scores.values():
        cols.update(dict.fromkeys(c for c in table.columns if c not in SCORE_KEYS))
    return list(cols)


def filter_prompts(
    grid: pd.DataFrame, text: str = "", attributes: dict[str, Sequence[str]] | None = None
) -> list:
    """Prompt ids (first-seen order) whose prompt contains ``text`` (any case) and that match every filter.

    ``attributes`` maps ``background`` to allowed values, and ``digits`` / ``colours`` /
    ``positions`` to values of which at least one object must have one.
    """
    if grid.empty:
        return []
    rows = grid.drop_duplicates("id")
    keep = pd.Series(True, index=rows.index)
    if text:
        keep &= rows["prompt"].astype(str).str.contains(text, case=False, regex=False)
    for col, allowed in (attributes or {}).items():
        if not allowed or col not in rows.columns:
            continue
        allowed = {str(a) for a in allowed}
        if col == "background":
            keep &= rows[col].astype(str).isin(allowed)
        else:
            keep &= rows[col].apply(lambda vals, allowed=allowed: bool(set(map(str, vals)) & allowed))
    return list(rows.loc[keep, "id"])


def attribute_options(grid: pd.DataFrame) -> dict[str, list[str]]:
    """The values seen per scene attribute (empty when the manifests carry no scenes)."""
    if grid.empty or "background" not in grid.columns:
        return {}
    out = {"background": sorted({str(v) for v in grid["background"].dropna()})}
    for col in ("digits", "colours", "positions"):
        out[col] = sorted({str(v) for vals in grid[col].dropna() for v in vals})
    return out


def read_image(path: str | Path, roots: Sequence[str | Path], display_px: int = 128) -> np.ndarray:
    """An image as uint8 RGB, nearest-neighbour upscaled so its longer side is at least ``display_px``.

    The path is checked again by :func:`safe_path` right before opening (a manifest row is not
    trusted twice). Tiny images (16-32 px) are upscaled without smoothing so pixels stay visible.
    """
    from PIL import Image

    path = safe_path(path, roots)
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = max(1, math.ceil(display_px / max(img.size)))
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        return np.asarray(img)


# --------------------------------------------------------------------------- training logs


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


# --------------------------------------------------------------------------- gate


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


# --------------------------------------------------------------------------- paper tables


def paper_tables(repo: str | Path) -> dict[str, pd.DataFrame]:
    """``experiments/paper/*.csv`` of the repository: the paper's reported numbers, by file stem."""
    folder = Path(repo) / "experiments" / "paper"
    return {p.stem: _read_table(p) for p in sorted(folder.glob("*.csv"))} if folder.is_dir() else {}


# --------------------------------------------------------------------------- DVC experiments


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
    stamp = tuple(_stamp(p) for p in _git_dirs(repo))
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
    scores_a: pd.DataFrame, scores_b: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Paired bootstrap of ``B - A`` per shared per-image metric, pairing images by prompt id and seed.

    Same statistic as ``senseflow-eval compare`` (:func:`eval.stats.paired_difference`);
    an empty frame when the two tables share fewer than two images.
    """
    from eval.stats import paired_difference

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
