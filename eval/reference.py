"""Real-image references for FID: a folder of photographs turned into a checked sample folder.

``senseflow-eval reference build --source val2014/ --out build/reference/coco`` reads every
JPEG / PNG of the source (sorted by name, or the files a caption list names), centre-crops
its long edge and resizes it as the protocol says (``dmd2``: LANCZOS to 512, the size DMD2
evaluates at; FID then resizes 512 -> 299 as for generated images), and writes lossless PNGs
plus ``manifest.jsonl`` (id, file, sha256, caption, seed 0, source file and its sha256) and
``reference.json`` (protocol, size, count, source folder, the list's hash). The result is a
sample folder: ``senseflow-eval evaluate --metrics fid --reference`` takes it as it is. One
image is in memory at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from PIL import Image

from eval.image_protocols import DMD2_EVAL_RES, center_crop_square, check_protocol
from senseflow.errors import MissingArtefactError, UserError
from senseflow.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from senseflow.samples import write_manifest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
REFERENCE_INFO = "reference.json"


def reference_image(image: Image.Image, protocol: str = "dmd2", size: int = DMD2_EVAL_RES) -> Image.Image:
    """One reference image under ``protocol``: centre square, LANCZOS to ``size`` (``dmd2``, ``clean``).

    ``torchmetrics`` keeps the centre square at its own resolution (its extractor resizes).
    """
    square = center_crop_square(image.convert("RGB"))
    if check_protocol(protocol) == "torchmetrics":
        return square
    return square.resize((size, size), Image.LANCZOS)


def build_reference(
    source: str | Path,
    out: str | Path,
    *,
    protocol: str = "dmd2",
    size: int = DMD2_EVAL_RES,
    captions: dict[str, str] | None = None,
    limit: int | None = None,
) -> dict:
    """Write the reference folder ``out`` from the images in ``source``; return ``reference.json``.

    ``captions`` maps a source file name to its caption (the files it names are used, in its
    order); without it every image of ``source`` is used, sorted by name. ``limit`` keeps the
    first ``limit`` images.
    """
    source, out = Path(source), ensure_writable_dir(out)
    if not source.is_dir():
        raise MissingArtefactError(f"--source {source} is not a folder of images")
    if captions is not None:
        names = list(captions)
        absent = [n for n in names if not (source / n).is_file()]
        if absent:
            raise MissingArtefactError(
                f"{source / absent[0]} is missing ({len(absent)} captioned files absent)"
            )
    else:
        names = sorted(p.name for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    names = names[:limit] if limit else names
    if not names:
        raise UserError(f"{source} holds no .jpg, .jpeg or .png image")
    records, listing = [], hashlib.sha256()
    for name in names:
        data = (source / name).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                ref = reference_image(im, protocol, size)
        except (OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"{source / name} is not a readable image ({exc}); remove it or fix it") from exc
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        png = buf.getvalue()
        file = Path(name).stem + ".png"
        atomic_write_bytes(out / file, png)
        src_sha = hashlib.sha256(data).hexdigest()
        listing.update(f"{name}:{src_sha}\n".encode())
        records.append({
            "id": Path(name).stem, "file": file, "sha256": hashlib.sha256(png).hexdigest(),
            "prompt": (captions or {}).get(name, ""), "seed": 0, "source": name, "source_sha256": src_sha,
        })  # fmt: skip
    write_manifest(out, records)
    info = {
        "protocol": protocol,
        "size": size if protocol != "torchmetrics" else None,
        "crop": "centre square of the long edge",
        "resize": "PIL LANCZOS" if protocol != "torchmetrics" else "none",
        "count": len(records),
        "source": str(source),
        "source_list_sha256": listing.hexdigest(),
    }
    atomic_write_text(out / REFERENCE_INFO, json.dumps(info, indent=2) + "\n")
    return info
