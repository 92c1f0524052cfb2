"""A sample folder read for evaluation, checked file by file against its manifest.

Every image must be listed once, be a PNG, be RGB, have the folder's size (the most common
one) and the sha256 the manifest recorded. Anything else is bad input: an error naming the
file and what is wrong, or, with ``skip_bad``, an entry in ``skipped``.

The check decodes each file once, in threads, and keeps no pixels: the folder's images are a
:class:`LazyImages`, decoded again only when a metric reads a batch of them
(:mod:`eval.streaming`), so host memory does not grow with the folder's image count.
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


class LazyImages:
    """The checked images of a folder, decoded on access: ``images[rows]`` -> (n, H, W, 3) uint8.

    Behaves like the (N, H, W, 3) array it stands for (``shape``, ``len``, integer, slice and
    index-array access, ``np.asarray``) without holding it; :attr:`paths` feed the streaming
    loaders of :mod:`eval.streaming`.
    """

    def __init__(self, paths: list[Path], size: tuple[int, int, int]):
        self.paths, self._size = list(paths), tuple(size)

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, H, W, 3)."""
        return (len(self.paths), *self._size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx):
        from eval.streaming import decode_png

        if isinstance(idx, int | np.integer):
            return decode_png(self.paths[int(idx)])
        rows = np.arange(len(self.paths))[idx]
        if not len(rows):
            return np.zeros((0, *self._size), dtype=np.uint8)
        return np.stack([decode_png(self.paths[int(i)]) for i in rows])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


@dataclass
class SampleFolder:
    """The usable images of a folder (manifest order), their records and what was skipped."""

    path: Path
    records: list[dict]
    images: LazyImages  # (N, H, W, 3) uint8, decoded on access
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


def _inspect(path: Path, sha256: str) -> tuple[tuple[int, int, int] | None, str | None]:
    """(H, W, 3) of a listed file, or the reason it is unusable.

    The file is decoded in full (a truncated PNG fails only there) and its pixels dropped at
    once: the check costs one decode per image and no memory that grows with the folder.
    """
    if not path.is_file():
        return None, f"is listed in {MANIFEST} but missing"
    data = path.read_bytes()
    pixels, reason = _decode(data)
    if reason is None and hashlib.sha256(data).hexdigest() != sha256:
        reason = "has a sha256 that differs from the manifest (changed after sampling)"
    return (None, reason) if reason else (pixels.shape, None)


def load_sample_folder(
    folder: str | Path, *, skip_bad: bool = False, workers: int | None = None
) -> SampleFolder:
    """Read and check a sample folder; raise :class:`SampleFolderError` on the first bad file.

    With ``skip_bad`` every bad image is left out and recorded with its reason instead; an
    error is still raised when nothing usable remains. Files are decoded and hashed by
    ``workers`` threads (zlib and hashlib release the GIL); no pixels are kept.
    """
    from concurrent.futures import ThreadPoolExecutor

    from eval.streaming import default_workers

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
    unique: list[dict] = []
    seen: set[str] = set()
    for r in records:
        if ids[r["id"]] > 1 and r["id"] in seen:
            problems.append((r["file"], f"repeats id {r['id']!r} in {MANIFEST}"))
            continue
        seen.add(r["id"])
        unique.append(r)
    with ThreadPoolExecutor(max(1, workers if workers is not None else default_workers())) as pool:
        shapes = list(pool.map(lambda r: _inspect(folder / r["file"], r["sha256"]), unique))
    checked: list[tuple[dict, tuple[int, int, int]]] = []
    for r, (shape, reason) in zip(unique, shapes, strict=True):
        if reason:
            problems.append((r["file"], reason))
        else:
            checked.append((r, shape))
    size = None
    if checked:
        # the folder's size is its most common one: a stray image is the odd one out
        size = Counter(shape for _, shape in checked).most_common(1)[0][0]
        for r, shape in checked:
            if shape != size:
                problems.append((r["file"], f"is {shape[1]}x{shape[0]}, the folder's images are "
                                 f"{size[1]}x{size[0]}"))  # fmt: skip
        checked = [(r, shape) for r, shape in checked if shape == size]
    if problems and not skip_bad:
        name, reason = problems[0]
        more = f" ({len(problems) - 1} more bad files)" if len(problems) > 1 else ""
        raise SampleFolderError(
            f"{folder / name} {reason}{more}; regenerate it, or pass --skip-bad to leave bad files out"
        )
    if not checked:
        raise SampleFolderError(f"{folder}: no usable image left ({len(problems)} bad files)")
    return SampleFolder(
        folder,
        [r for r, _ in checked],
        LazyImages([folder / r["file"] for r, _ in checked], size),
        [{"file": n, "reason": why} for n, why in problems],
    )
