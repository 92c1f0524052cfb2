"""The Samples page's data: sample folders, manifests, the prompt x candidate grid, filters and images.

Pure loaders, no Streamlit import (see :mod:`dashboard.data` for the shared readers and path safety).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dashboard.data import (
    MANIFEST,
    SCORE_KEYS,
    Roots,
    UnsafePathError,
    candidate_order,
    mtime_cached,
    read_jsonl,
    safe_path,
)


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
