"""Sample folders: lossless PNGs plus ``manifest.jsonl``, written resumably.

A folder holds one PNG per prompt (``<id>.png``) and a manifest line per image with the
prompt, its noise seed, the file's sha256, steps, NFE and seconds per image. Rerunning
the same command skips prompts whose image is already recorded, so an interrupted run
continues and never rewrites finished images.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from senseflow.errors import MissingArtefactError, UserError
from senseflow.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from senseflow.samplers import prompt_seed, sample_prompts
from senseflow.world.prompts import PromptRecord
from senseflow.world.scenes import Scene, to_tensor_range, to_uint8

MANIFEST = "manifest.jsonl"


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an HWC uint8 array as PNG (deterministic bytes: no timestamps, fixed settings)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def read_manifest(folder: str | Path) -> list[dict]:
    """Records of a sample folder (empty if none yet)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return []
    out = []
    for no, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}:{no}: corrupt manifest line ({exc.msg}); delete the folder to regenerate"
            ) from exc
    return out


def write_manifest(folder: Path, records: list[dict]) -> None:
    """Rewrite the manifest atomically (small: one line per image)."""
    atomic_write_text(folder / MANIFEST, "".join(json.dumps(r) + "\n" for r in records))


def sample_to_folder(
    backbone,
    records: list[PromptRecord],
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int],
    steps: int,
    cfg: float,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> list[dict]:
    """Generate one image per prompt into ``out_dir`` (resumable); return the manifest records."""
    out_dir = ensure_writable_dir(out_dir)
    done = {r["id"]: r for r in read_manifest(out_dir) if (out_dir / r["file"]).is_file()}
    todo = [r for r in records if r.id not in done]
    bar = tqdm(
        total=len(records), initial=len(records) - len(todo), desc="sample", unit="img", disable=not progress
    )
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        seeds = [prompt_seed(seed, r.id) for r in chunk]
        t0 = time.perf_counter()
        images, nfe = sample_prompts(
            backbone,
            [r.prompt for r in chunk],
            seeds,
            steps=steps,
            cfg=cfg,
            shape=shape,
            batch_size=batch_size,
        )
        pixels = to_uint8(backbone.codec.decode(images))
        per_image = (time.perf_counter() - t0) / len(chunk)
        for rec, s, img in zip(chunk, seeds, pixels, strict=True):
            data = png_bytes(img)
            atomic_write_bytes(out_dir / f"{rec.id}.png", data)
            done[rec.id] = {
                "id": rec.id,
                "prompt": rec.prompt,
                "seed": s,
                "file": f"{rec.id}.png",
                "sha256": hashlib.sha256(data).hexdigest(),
                "steps": steps,
                "cfg": cfg,
                "nfe": nfe,
                "seconds_per_image": round(per_image, 6),
                **({"scene": rec.scene.to_dict()} if rec.scene else {}),
            }
        # manifest after every batch: a killed run keeps everything finished so far
        write_manifest(out_dir, [done[r.id] for r in records if r.id in done])
        bar.update(len(chunk))
    bar.close()
    return [done[r.id] for r in records]


def load_folder_images(folder: str | Path) -> tuple[torch.Tensor, list[dict]]:
    """All images of a sample folder as a [-1, 1] tensor, with their manifest records."""
    folder = Path(folder)
    records = read_manifest(folder)
    if not records:
        raise MissingArtefactError(f"{folder / MANIFEST} is missing or empty: generate samples first")
    arrays = [np.asarray(Image.open(folder / r["file"]).convert("RGB")) for r in records]
    return to_tensor_range(np.stack(arrays)), records


def scenes_of(records: list[dict]) -> list[Scene]:
    """Scenes recorded in a manifest (embedded-world prompts only)."""
    missing = [r["id"] for r in records if "scene" not in r]
    if missing:
        raise UserError(
            f"{len(missing)} records have no scene (e.g. {missing[0]}): not embedded-world prompts"
        )
    return [Scene.from_dict(r["scene"]) for r in records]
