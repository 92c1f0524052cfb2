"""The real-image training source (senseflow/real_data.py): both layouts, determinism, filters, errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from senseflow.errors import MissingArtefactError, UserError
from senseflow.real_data import RealImageData

RES = 16


def _png(seed: int, size=(40, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_folder(root: Path, n: int = 6, *, extra: list[dict] | None = None, size=(40, 24)) -> Path:
    """A folder dataset: images/NNN.png and captions.jsonl (aesthetic metadata on each line)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        (root / "images" / f"{i:03d}.png").write_bytes(_png(i, size))
        rows.append({"id": f"img{i}", "file": f"images/{i:03d}.png", "caption": f"a photo number {i}",
                     "aesthetic": 6.0})  # fmt: skip
    rows += extra or []
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_shards(root: Path, n: int = 6, per_shard: int = 4) -> Path:
    """Webdataset shards as img2dataset writes them: KEY.png, KEY.txt, KEY.json."""
    root.mkdir(parents=True)
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(n, s + per_shard)):
                meta = {"caption": f"ignored, the txt wins {i}", "width": 40, "height": 24, "aesthetic": 5.5}
                files = {f"{i:09d}.png": _png(i), f"{i:09d}.txt": f"a shard photo {i}".encode(),
                         f"{i:09d}.json": json.dumps(meta).encode()}  # fmt: skip
                for name, raw in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(raw)
                    tar.addfile(info, io.BytesIO(raw))
    return root


@pytest.mark.parametrize("fmt", ["folder", "webdataset"])
def test_batches_are_deterministic_per_seed_iteration_rank(fmt, tmp_path):
    root = write_folder(tmp_path / "d") if fmt == "folder" else write_shards(tmp_path / "d")
    data = RealImageData(root, format=fmt, resolution=RES, min_side=20, seed=3)
    assert len(data) == 6
    prompts, images = data.batch(5, 1, 3)
    assert images.shape == (3, 3, RES, RES) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.1
    assert len(set(prompts)) == 3  # drawn without replacement within a batch
    word = "photo" if fmt == "folder" else "shard photo"
    assert all(word in p for p in prompts)
    # same (seed, iteration, rank) -> same batch, from a fresh source too (resume = rerun)
    again = RealImageData(root, format=fmt, resolution=RES, min_side=20, seed=3).batch(5, 1, 3)
    assert again[0] == prompts and torch.equal(again[1], images)
    others = [data.batch(6, 1, 3)[0], data.batch(5, 0, 3)[0],
              RealImageData(root, format=fmt, resolution=RES, seed=4).batch(5, 1, 3)[0]]  # fmt: skip
    assert any(o != prompts for o in others)


def test_images_keep_their_caption_and_are_centre_cropped(tmp_path):
    root = write_folder(tmp_path / "d", n=2)
    data = RealImageData(root, resolution=RES)
    prompts, images = data.batch(0, 0, 2)
    for p, img in zip(prompts, images, strict=True):
        i = int(p.rsplit(" ", 1)[1])
        src = Image.open(root / "images" / f"{i:03d}.png").convert("RGB")
        w = round(40 * RES / 24)  # short side 24 -> RES, then the centre RES columns
        ref = np.asarray(src.resize((w, RES), Image.Resampling.BICUBIC, reducing_gap=None))
        left = (w - RES) // 2
        ref = torch.from_numpy(ref[:, left : left + RES].transpose(2, 0, 1).copy()).float() / 127.5 - 1
        assert torch.allclose(img, ref)


def test_metadata_filters_drop_records(tmp_path):
    extra = [
        {"id": "ugly", "file": "images/000.png", "caption": "low score", "aesthetic": 4.0},
        {"id": "small", "file": "images/001.png", "caption": "small", "width": 600, "height": 500},
    ]
    root = write_folder(tmp_path / "d", n=3, extra=extra)
    data = RealImageData(root, resolution=RES, min_aesthetic=5.0, min_side=550)  # 600x500 listed
    assert len(data) == 3 and not {"low score", "small"} & set(data.captions())
    kept = RealImageData(root, resolution=RES, min_aesthetic=None, min_side=None)
    assert len(kept) == 5


def test_missing_folder(tmp_path):
    with pytest.raises(MissingArtefactError, match=r"nowhere does not exist.*data\.path"):
        RealImageData(tmp_path / "nowhere", resolution=RES)


def test_missing_captions_file_and_bad_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingArtefactError, match="captions.jsonl is missing"):
        RealImageData(tmp_path / "empty", resolution=RES)
    root = write_folder(tmp_path / "d", n=1)
    (root / "captions.jsonl").write_text('{"id": "a", "caption": "no file key"}\n')
    with pytest.raises(UserError, match=r"captions.jsonl:1: expected a JSON object with 'id', 'file'"):
        RealImageData(root, resolution=RES)


def test_missing_image_named_in_jsonl(tmp_path):
    ghost = {"id": "ghost", "file": "images/ghost.png", "caption": "x"}
    root = write_folder(tmp_path / "d", n=2, extra=[ghost])
    with pytest.raises(MissingArtefactError, match=r"ghost.png is missing \(record 'ghost', .*:3\)"):
        RealImageData(root, resolution=RES)


def test_unreadable_image(tmp_path):
    root = write_folder(tmp_path / "d", n=2)
    (root / "images" / "001.png").write_bytes(b"not an image")
    data = RealImageData(root, resolution=RES)
    with pytest.raises(UserError, match=r"001.png: cannot read the image of record 'img1'"):
        data.batch(0, 0, 2)


def test_too_few_images_for_the_batch(tmp_path):
    data = RealImageData(write_folder(tmp_path / "d", n=2), resolution=RES)
    with pytest.raises(UserError, match=r"2 of 2 images pass .* fewer than one batch of 3"):
        data.batch(0, 0, 3)


def test_image_below_min_side_names_the_file(tmp_path):
    data = RealImageData(write_folder(tmp_path / "d", n=2), resolution=RES, min_side=1024)
    with pytest.raises(UserError, match=r"\.png: image 'img\d' is 40x24, below data.min_side 1024"):
        data.batch(0, 0, 1)


def test_shard_sample_without_caption(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tar:
        raw = _png(0)
        info = tarfile.TarInfo("000000000.png")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(UserError, match=r"00000.tar:000000000: sample has no caption"):
        RealImageData(root, format="webdataset", resolution=RES)
    (root / "00000.tar").unlink()
    with pytest.raises(MissingArtefactError, match="no \\*.tar shards"):
        RealImageData(root, format="webdataset", resolution=RES)
