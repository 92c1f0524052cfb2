"""A sample folder read for evaluation, checked file by file against its manifest.

Every image must be listed once, decode as a complete PNG, be RGB, have the folder's size
(the most common one) and the sha256 the manifest recorded. Anything else is bad input: an
error naming the file and what is wrong, or, with ``skip_bad``, an entry in ``skipped``.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from senseflow.errors import MissingArtefactError, UserError
from senseflow.samples import MANIFEST, read_manifest

REQUIRED_KEYS = ("id", "file", "sha256", "prompt", "seed")


class SampleFolderError(UserError, ValueError):
    """A sample folder's images and manifest disagree, or an image is unusable."""


@dataclass
class SampleFolder:
    """The usable images of a folder (manifest order), their records and what was skipped."""

    path: Path
    records: list[dict]
    images: np.ndarray  # (N, H, W, 3) uint8
    skipped: list[dict] = field(default_factory=list)  # {"file": ..., "reason": ...}

    @property
    def embedded(self) -> bool:
        """True when every record carries an embedded-world scene."""
        return bool(self.records) and all("scene" in r for r in self.records)


def _decode(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """Pixels of a PNG, or the reason they cannot be had."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes everything: a truncated file fails here, not at open
            if im.format != "PNG":
                return None, f"is {im.format}, expected a lossless PNG"
            if im.mode != "RGB":
                return None, f"has mode {im.mode}, expected RGB"
            return np.asarray(im), None
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"is corrupt or truncated ({exc})"


def load_sample_folder(folder: str | Path, *, skip_bad: bool = False) -> SampleFolder:
    """Read and check a sample folder; raise :class:`SampleFolderError` on the first bad file.

    With ``skip_bad`` every bad image is left out and recorded with its reason instead; an
    error is still raised when nothing usable remains.
    """
    folder = Path(folder)
    records = read_manifest(folder)
    if not records:
        raise MissingArtefactError(f"{folder / MANIFEST} is missing or empty: generate samples first")
    problems: list[tuple[str, str]] = []  # (file, reason)
    for no, r in enumerate(records, start=1):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise SampleFolderError(
                f"{folder / MANIFEST}:{no}: record lacks {', '.join(missing)}; regenerate the folder"
            )
    listed = Counter(r["file"] for r in records)
    ids = Counter(r["id"] for r in records)
    on_disk = sorted(p.name for p in folder.glob("*.png"))
    for name in on_disk:
        if name not in listed:
            problems.append((name, f"is not in {MANIFEST} (manifest and files disagree)"))
    decoded: list[tuple[dict, np.ndarray]] = []
    seen: set[str] = set()
    for r in records:
        path = folder / r["file"]
        if ids[r["id"]] > 1 and r["id"] in seen:
            problems.append((r["file"], f"repeats id {r['id']!r} in {MANIFEST}"))
            continue
        seen.add(r["id"])
        if not path.is_file():
            problems.append((r["file"], f"is listed in {MANIFEST} but missing"))
            continue
        data = path.read_bytes()
        pixels, reason = _decode(data)
        if reason is None and hashlib.sha256(data).hexdigest() != r["sha256"]:
            reason = "has a sha256 that differs from the manifest (changed after sampling)"
        if reason:
            problems.append((r["file"], reason))
            continue
        decoded.append((r, pixels))
    if decoded:
        # the folder's size is its most common one: a stray image is the odd one out
        size = Counter(p.shape for _, p in decoded).most_common(1)[0][0]
        for r, p in decoded:
            if p.shape != size:
                problems.append((r["file"], f"is {p.shape[1]}x{p.shape[0]}, the folder's images are "
                                 f"{size[1]}x{size[0]}"))  # fmt: skip
        decoded = [(r, p) for r, p in decoded if p.shape == size]
    if problems and not skip_bad:
        name, reason = problems[0]
        more = f" ({len(problems) - 1} more bad files)" if len(problems) > 1 else ""
        raise SampleFolderError(
            f"{folder / name} {reason}{more}; regenerate it, or pass --skip-bad to leave bad files out"
        )
    if not decoded:
        raise SampleFolderError(f"{folder}: no usable image left ({len(problems)} bad files)")
    return SampleFolder(
        folder,
        [r for r, _ in decoded],
        np.stack([p for _, p in decoded]),
        [{"file": n, "reason": why} for n, why in problems],
    )
