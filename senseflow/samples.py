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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from senseflow.errors import MissingArtefactError, UserError
from senseflow.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from senseflow.samplers import prompt_seed
from senseflow.world.prompts import PromptRecord
from senseflow.world.scenes import Scene, to_tensor_range

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


HEADER = "generation.json"
SPEED = "speed.json"


class SampleFolderMismatch(UserError):
    """An output folder holds images made under other settings; nothing in it is touched."""


def _partial(folder: Path, rank: int) -> Path:
    return folder / f"manifest.rank{rank}.jsonl"


def finished_records(folder: Path) -> dict[str, dict]:
    """Records whose image exists: the merged manifest plus any per-rank partial manifest."""
    done: dict[str, dict] = {}
    for path in [folder / MANIFEST, *sorted(folder.glob("manifest.rank*.jsonl"))]:
        for r in read_manifest(folder) if path.name == MANIFEST else _read_lines(path):
            if (folder / r["file"]).is_file():
                done[r["id"]] = r
    return done


def _read_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a partial line of a killed rank: the records before it are complete
    return out


def check_folder(
    folder: Path, identity: dict, records: list[PromptRecord], seed: int, fixed_seeds: dict | None = None
) -> dict[str, dict]:
    """Refuse a folder made by another candidate / steps / seed / prompt set; return its finished records.

    The header (``generation.json``) must hold the same identity; each finished record must
    carry the seed this run gives its id (``fixed_seeds[id]``, else derived from ``seed``) and
    the same prompt text.
    """
    header_path = folder / HEADER
    if header_path.is_file():
        try:
            old = json.loads(header_path.read_text()).get("identity", {})
        except json.JSONDecodeError as exc:
            raise SampleFolderMismatch(f"{header_path} is corrupt ({exc.msg}); delete the folder") from exc
        diffs = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in identity.items() if old.get(k) != v]
        diffs += [f"{k}: {old[k]!r} there, absent now" for k in old if k not in identity]
        if diffs:
            raise SampleFolderMismatch(
                f"{folder} holds images generated under other settings ({'; '.join(diffs)}); "
                "choose another --out or delete the folder to regenerate"
            )
    done = finished_records(folder)
    prompts = {r.id: r.prompt for r in records}
    for rid, rec in done.items():
        if rid not in prompts:
            continue
        want = fixed_seeds[rid] if fixed_seeds else prompt_seed(seed, rid)
        expected = {"seed": want, "prompt": prompts[rid], "steps": identity.get("steps")}
        bad = [k for k, v in expected.items() if v is not None and rec.get(k) != v]
        if bad:
            raise SampleFolderMismatch(
                f"{folder / rec['file']} was generated with another {bad[0]} ({rec.get(bad[0])!r}) than this "
                f"run's ({expected[bad[0]]!r}) for prompt {rid!r}; choose another --out or delete the folder"
            )
    return done


def check_unique_ids(records: list[PromptRecord]) -> None:
    """Prompt ids name files and derive seeds: a duplicate would overwrite an image."""
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise UserError(f"duplicate prompt id {r.id!r} in the prompt set; ids must be unique")
        seen.add(r.id)


def per_seed_records(records: list[PromptRecord], seeds) -> tuple[list[PromptRecord], dict[str, int]]:
    """Every prompt once per seed, in benchmark order, and each image's fixed seed.

    T2I-CompBench samples 10 images per prompt at the same seeds 42-51 for every prompt
    (prompt i owns images 10 i .. 10 i + 9): record ``<id>-s<k>`` is image ``k`` of prompt
    ``id``, generated with ``seeds[k]``. Pass the mapping as ``fixed_seeds`` to
    :func:`generate_to_folder`.
    """
    seeds = list(seeds)
    out = [PromptRecord(f"{r.id}-s{k}", r.prompt, r.scene) for r in records for k in range(len(seeds))]
    fixed = {f"{r.id}-s{k}": int(sd) for r in records for k, sd in enumerate(seeds)}
    return out, fixed


def generate_to_folder(
    candidate,
    records: list[PromptRecord],
    out_dir: str | Path,
    *,
    seed: int = 0,
    fixed_seeds: dict[str, int] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    identity_extra: dict | None = None,
    rank: int = 0,
    world_size: int = 1,
    on_batch=None,
) -> list[dict]:
    """Generate one PNG per prompt with ``candidate`` into ``out_dir``: resumable, batched, sharded.

    The folder gets ``<id>.png``, ``manifest.jsonl`` (id, prompt, seed, file, sha256, steps, NFE,
    seconds per image), ``generation.json`` (who made it; a rerun under other settings is
    refused) and ``speed.json`` (NFE and seconds per image of model forward + decode). Rank
    ``r`` of ``world_size`` takes prompts ``r::world_size`` and writes its own partial manifest;
    rank 0 merges them after a barrier. Finished images are never rewritten. ``on_batch(n)`` is
    called after each batch is recorded (tests interrupt a run there). ``fixed_seeds`` gives
    each record id its own seed (:func:`per_seed_records`) instead of deriving it from ``seed``.
    """
    from senseflow.distributed import barrier

    check_unique_ids(records)
    if fixed_seeds is not None:
        absent = [r.id for r in records if r.id not in fixed_seeds]
        if absent:
            raise UserError(f"fixed_seeds has no seed for prompt id {absent[0]!r} ({len(absent)} missing)")
    out_dir = ensure_writable_dir(out_dir)
    identity = {**candidate.identity(), "seed": seed, **(identity_extra or {})}
    if fixed_seeds is not None:
        identity["fixed_seeds_sha256"] = hashlib.sha256(
            json.dumps(fixed_seeds, sort_keys=True).encode()
        ).hexdigest()
    done = check_folder(out_dir, identity, records, seed, fixed_seeds)
    candidate.check_prompts([r.prompt for r in records])
    barrier()  # every rank has checked the folder before rank 0 (re)writes its header
    if rank == 0 and not (out_dir / HEADER).is_file():
        header = {"identity": identity, "resolution": candidate.resolution, "n_prompts": len(records)}
        atomic_write_text(out_dir / HEADER, json.dumps(header, indent=2) + "\n")
    mine = records[rank::world_size]
    todo = [r for r in mine if r.id not in done]
    own = {r.id: done[r.id] for r in mine if r.id in done}
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"generate {candidate.name}",
               unit="img", disable=not progress or rank != 0)  # fmt: skip
    timings: list[tuple[float, int]] = []
    nfe = None

    def record(chunk, seeds, pixels, nfe, elapsed) -> None:
        # PNG encoding, hashing and writing run in a worker thread while the next batch samples
        # (zlib and file I/O release the GIL); the manifest follows its files, never precedes them
        for rec, s, img in zip(chunk, seeds, pixels, strict=True):
            data = png_bytes(img)
            atomic_write_bytes(out_dir / f"{rec.id}.png", data)
            own[rec.id] = {
                "id": rec.id,
                "prompt": rec.prompt,
                "seed": s,
                "file": f"{rec.id}.png",
                "sha256": hashlib.sha256(data).hexdigest(),
                "steps": candidate.steps,
                **candidate.record_extra(),
                "nfe": nfe,
                "seconds_per_image": round(elapsed / len(chunk), 6),
                **({"scene": rec.scene.to_dict()} if rec.scene else {}),
            }
        # manifest after every batch: a killed run keeps everything finished so far
        if world_size == 1:
            write_manifest(out_dir, [own[r.id] for r in records if r.id in own])
        else:
            lines = "".join(json.dumps(own[r.id]) + "\n" for r in mine if r.id in own)
            atomic_write_text(_partial(out_dir, rank), lines)

    def settle(pending) -> None:
        future, number, n = pending
        future.result()  # a failed write stops the run here
        bar.update(n)
        if on_batch is not None:
            on_batch(number)

    pending = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            seeds = [fixed_seeds[r.id] if fixed_seeds else prompt_seed(seed, r.id) for r in chunk]
            t0 = time.perf_counter()
            pixels, nfe = candidate.render([r.prompt for r in chunk], seeds)
            elapsed = time.perf_counter() - t0
            timings.append((elapsed, len(chunk)))
            if pending is not None:  # the previous batch is on disk before this one is handed over
                settle(pending)
            pending = (
                writer.submit(record, chunk, seeds, pixels, nfe, elapsed),
                i // batch_size + 1,
                len(chunk),
            )
        if pending is not None:
            settle(pending)
    bar.close()
    if timings:
        _write_speed_part(out_dir, rank, candidate, timings, nfe, batch_size)
    barrier()
    if rank == 0:
        merged = finished_records(out_dir)
        write_manifest(out_dir, [merged[r.id] for r in records if r.id in merged])
        for part in out_dir.glob("manifest.rank*.jsonl"):
            part.unlink()
        _merge_speed(out_dir, candidate)
    barrier()
    final = {r["id"]: r for r in read_manifest(out_dir)}
    return [final[r.id] for r in records if r.id in final]


def _write_speed_part(folder: Path, rank: int, candidate, timings, nfe, batch_size: int) -> None:
    # the first batch pays for warm-up (allocations, kernel selection): leave it out when there are more
    timed = timings[1:] if len(timings) > 1 else timings
    part = {
        "seconds": sum(t for t, _ in timed),
        "images": sum(n for _, n in timed),
        "warmup_excluded": len(timings) > 1,
        "nfe": nfe,
        "batch_size": batch_size,
    }
    atomic_write_text(folder / f".speed.rank{rank}.json", json.dumps(part))


def _merge_speed(folder: Path, candidate) -> None:
    parts = [json.loads(p.read_text()) for p in sorted(folder.glob(".speed.rank*.json"))]
    if not parts:  # nothing generated this time: keep the speed measured when the images were made
        return
    images = sum(p["images"] for p in parts)
    speed = {
        "candidate": candidate.name,
        "kind": candidate.kind,
        "steps": candidate.steps,
        "nfe": parts[0]["nfe"],
        "seconds_per_image": round(sum(p["seconds"] for p in parts) / max(images, 1), 6),
        "timed_images": images,
        "warmup_excluded": all(p["warmup_excluded"] for p in parts),
        "measured": "model forward + decode per batch (text encoding included), no I/O",
        "batch_size": parts[0]["batch_size"],
        "ranks": len(parts),
        "resolution": candidate.resolution,
        "device": _device_name(candidate.device),
        "dtype": candidate.dtype,
        "schedule": candidate.last_schedule,
    }
    atomic_write_text(folder / SPEED, json.dumps(speed, indent=2) + "\n")
    for p in folder.glob(".speed.rank*.json"):
        p.unlink()


def _device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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
    """Euler-sample an embedded model into ``out_dir`` (resumable); return the manifest records.

    The embedded-teacher case of :func:`generate_to_folder` (``senseflow sample``).
    """
    from senseflow.teacher_candidate import EmbeddedTeacher

    cand = EmbeddedTeacher(backbone, shape, steps=steps, cfg=cfg, name="model")
    return generate_to_folder(cand, records, out_dir, seed=seed, batch_size=batch_size, progress=progress)


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
