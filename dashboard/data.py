"""Shared loaders of the dashboard: configuration, path safety, cached reads, summaries and scores.

Each page's own loaders are in :mod:`dashboard.pages` (one module per page), built on these.
Files of the results layout in, pandas DataFrames out.

Everything here reads files written by the pipeline (``docs/architecture/pipeline-data-flow.md``)
and nothing else; no Streamlit import, so every function is testable on its own.
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
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def file_stamp(path: Path) -> tuple:
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
        stamp = file_stamp(path)
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


# ---------------------------------------------------------------- summaries and scores (several pages)


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
def read_table(path: Path) -> pd.DataFrame:
    """A parquet or csv table (empty when the file is missing), cached by modification time."""
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
            return read_table(folder / Path(name).name)
    return pd.DataFrame()
