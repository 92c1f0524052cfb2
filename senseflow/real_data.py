"""Real training images for the real profiles (sdxl, sd3, flux): a captioned image set on disk.

Two layouts, chosen by ``data.format`` in the profile (see README, "Training data")::

    folder:      DIR/captions.jsonl   one JSON object a line: {"id", "file", "caption"}
                                      optional: "aesthetic", "width", "height"
                 DIR/<file>           the image, path relative to DIR (jpg, png, webp)

    webdataset:  DIR/*.tar            shards as img2dataset writes them: per sample KEY.jpg
                                      (or .png / .webp / .jpeg) with KEY.txt (the caption)
                                      and/or KEY.json ({"caption", "aesthetic", "width", ...})

The set is indexed once when the source is built (every file named is checked then, so a
broken dataset stops before training starts). Records whose metadata puts them below the
profile's filters (method.md: LAION aesthetic >= 5, short side >= 1024) are dropped at that
point; an image whose real short side turns out below ``min_side`` when it is read is an
error naming the file, because upscaling it would train the student on blurred targets.

Batches are deterministic in ``(seed, iteration, rank)`` like :class:`senseflow.data.WorldData`,
so resuming needs no loader state. Webdataset shards are read by random access (member
offsets from the index), not streamed, because determinism per iteration needs any sample
at any time.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from senseflow.errors import MissingArtefactError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
AESTHETIC_KEYS = ("aesthetic", "AESTHETIC_SCORE", "aesthetic_score")  # LAION parquet spellings


@dataclass(frozen=True)
class ImageRecord:
    """One training sample: where its image is, its caption and what the filters read."""

    id: str
    caption: str
    where: str  # a path (folder) or "shard.tar:member" (webdataset), for error messages
    path: Path
    offset: int | None = None  # webdataset: byte offset of the image inside the shard
    size: int | None = None
    aesthetic: float | None = None
    short_side: int | None = None


def _fix(key: str) -> str:
    return f"set `{key}` in the profile (or `dvc exp run -S 'experiments/<profile>.yaml:{key}=...'`)"


def _short_side(meta: dict) -> int | None:
    w, h = meta.get("width"), meta.get("height")
    return min(int(w), int(h)) if isinstance(w, int | float) and isinstance(h, int | float) else None


def _aesthetic(meta: dict) -> float | None:
    for key in AESTHETIC_KEYS:
        if isinstance(meta.get(key), int | float):
            return float(meta[key])
    return None


def index_folder(root: Path, captions: str) -> list[ImageRecord]:
    """Records of a folder dataset; every line and every file it names is checked."""
    path = root / captions
    if not path.is_file():
        raise MissingArtefactError(
            f"{path} is missing: a folder dataset needs a captions JSONL with one "
            '{"id", "file", "caption"} object a line (or set data.captions to its name)'
        )
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rid, file, cap = str(row["id"]), str(row["file"]), row["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(
                f"{path}:{n}: expected a JSON object with 'id', 'file' and 'caption' ({exc}); fix the line"
            ) from None
        if not isinstance(cap, str) or not cap.strip():
            raise UserError(f"{path}:{n}: record {rid!r} has an empty caption; fix or remove the line")
        image = root / file
        if not image.is_file():
            raise MissingArtefactError(
                f"{image} is missing (record {rid!r}, {path}:{n}): restore the file or remove its line"
            )
        records.append(
            ImageRecord(rid, cap, str(image), image, aesthetic=_aesthetic(row), short_side=_short_side(row))
        )
    return records


def index_shards(root: Path) -> list[ImageRecord]:
    """Records of every ``*.tar`` shard in ``root`` (sorted by name, so the order is stable)."""
    shards = sorted(root.glob("*.tar"))
    if not shards:
        raise MissingArtefactError(f"{root} holds no *.tar shards: a webdataset dataset is a folder of them")
    records = []
    for shard in shards:
        groups: dict[str, dict] = {}
        try:
            with tarfile.open(shard) as tar:
                for m in tar:
                    base = Path(m.name).name
                    if not m.isfile() or "." not in base:
                        continue
                    # webdataset's key: the path up to the first dot of the file name
                    stem, ext = base.split(".", 1)
                    key = str(Path(m.name).parent / stem)
                    g = groups.setdefault(key, {})
                    if "." + ext.lower() in IMAGE_SUFFIXES:
                        g["image"] = m
                    elif ext in ("txt", "json"):
                        g[ext] = tar.extractfile(m).read().decode("utf-8")
        except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{shard}: not a readable tar shard ({exc}); re-create or remove it") from None
        for key, g in groups.items():
            where = f"{shard}:{key}"
            if "image" not in g:
                raise UserError(f"{where}: sample has no image ({', '.join(IMAGE_SUFFIXES)}); fix the shard")
            meta = json.loads(g["json"]) if "json" in g else {}
            cap = g["txt"].strip() if "txt" in g else meta.get("caption")
            if not isinstance(cap, str) or not cap.strip():
                raise UserError(f"{where}: sample has no caption (KEY.txt or 'caption' in KEY.json)")
            m = g["image"]
            records.append(
                ImageRecord(Path(key).name, cap, f"{shard}:{m.name}", shard, m.offset_data, m.size,
                            aesthetic=_aesthetic(meta), short_side=_short_side(meta))
            )  # fmt: skip
    return records


def load_image(record: ImageRecord, resolution: int, min_side: int | None) -> np.ndarray:
    """The record's image as (3, R, R) uint8: short side resized to ``resolution``, centre-cropped."""
    try:
        if record.offset is None:
            raw = record.path.read_bytes()
        else:
            with open(record.path, "rb") as f:
                f.seek(record.offset)
                raw = f.read(record.size)
        with Image.open(io.BytesIO(raw)) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(
            f"{record.where}: cannot read the image of record {record.id!r} ({exc}); replace it or remove it"
        ) from None
    w, h = im.size
    if min_side is not None and min(w, h) < min_side:
        raise UserError(
            f"{record.where}: image {record.id!r} is {w}x{h}, below data.min_side {min_side}: "
            "remove it from the dataset (or record its width/height so the filter drops it), "
            "or lower data.min_side"
        )
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


class RealImageData:
    """:class:`senseflow.data.TrainData` over a captioned image set on disk (profile ``data:``).

    ``batch(iteration, rank, batch_size)`` draws ``batch_size`` records with a generator
    seeded by ``(seed, iteration, rank)`` and returns their captions and images (B, 3, R, R)
    in [-1, 1].
    """

    def __init__(
        self,
        path: str | Path,
        *,
        format: str = "folder",
        resolution: int,
        captions: str = "captions.jsonl",
        min_aesthetic: float | None = None,
        min_side: int | None = None,
        seed: int = 0,
    ):
        root = Path(path).expanduser()
        if not root.is_dir():
            raise MissingArtefactError(
                f"training data folder {root} does not exist: put the dataset there or {_fix('data.path')}"
            )
        if format == "folder":
            records = index_folder(root, captions)
        elif format == "webdataset":
            records = index_shards(root)
        else:
            raise UserError(f"unknown data.format {format!r}: expected folder or webdataset")
        self.n_indexed = len(records)
        # metadata filters first (cheap, no image read); unknown metadata passes, the read checks it
        self.records = [
            r for r in records
            if (min_aesthetic is None or r.aesthetic is None or r.aesthetic >= min_aesthetic)
            and (min_side is None or r.short_side is None or r.short_side >= min_side)
        ]  # fmt: skip
        self.root, self.resolution, self.min_side, self.seed = root, resolution, min_side, seed
        self.filters = {"min_aesthetic": min_aesthetic, "min_side": min_side}

    def __len__(self) -> int:
        return len(self.records)

    def captions(self) -> list[str]:
        """Every caption the source can draw (what the prompt cache must hold)."""
        return list(dict.fromkeys(r.caption for r in self.records))

    def check(self, batch_size: int) -> None:
        """Raise when the filtered set cannot fill one rank's batch."""
        if len(self.records) < batch_size:
            raise UserError(
                f"{self.root}: {len(self.records)} of {self.n_indexed} images pass the filters "
                f"{self.filters}, "
                f"fewer than one batch of {batch_size}: add images, lower the filters or distill.global_batch"
            )

    def batch(self, iteration: int, rank: int, batch_size: int) -> tuple[list[str], torch.Tensor]:
        """Records drawn without replacement by a generator seeded by (seed, iteration, rank)."""
        self.check(batch_size)
        rng = np.random.default_rng([self.seed, 2, iteration, rank])
        picks = rng.choice(len(self.records), size=batch_size, replace=False)
        chosen = [self.records[int(i)] for i in picks]
        images = np.stack([load_image(r, self.resolution, self.min_side) for r in chosen])
        tensor = torch.from_numpy(images).float() / 127.5 - 1.0
        return [r.caption for r in chosen], tensor


def data_from_profile(cfg, *, seed: int) -> RealImageData:
    """The training data of real profile ``cfg`` (its ``data:`` section, at the teacher's resolution)."""
    d = cfg.data
    if d is None:
        raise UserError(
            f"profile {cfg.name!r} names no training images: add a `data:` section "
            "(path, format; README 'Training data')"
        )
    return RealImageData(
        d.path, format=d.format, resolution=cfg.teacher.pretrained.resolution, captions=d.captions,
        min_aesthetic=d.min_aesthetic, min_side=d.min_side, seed=seed,
    )  # fmt: skip
