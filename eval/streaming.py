"""Read, prepare and score images in batches, so host memory stays flat in the image count.

FID-T of 5k + 5k images at 1024 px is 31 GB of decoded pixels: an evaluation must never hold
a folder in memory. A :class:`torch.utils.data.DataLoader` with worker processes reads and
decodes each PNG and applies the metric's preparation (crop and resize of the protocol) in
the workers; the main process runs the model on the best device and keeps only its outputs
(features or scores). Peak memory is a few batches, whatever the folder's size
(``benchmarks/eval_streaming.py`` measures it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from senseflow.errors import UserError

WORKERS_ENV = "SENSEFLOW_EVAL_WORKERS"


def default_workers() -> int:
    """Data workers: ``$SENSEFLOW_EVAL_WORKERS``, else half the CPUs (at most 8; 0 on a 1-2 CPU box)."""
    if os.environ.get(WORKERS_ENV):
        return max(0, int(os.environ[WORKERS_ENV]))
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus // 2)


def decode_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a checked PNG; a file that fails to decode is named."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(
            f"{path} is corrupt or truncated ({exc}); regenerate it, or pass --skip-bad to leave it out"
        ) from exc


class _Rows(Dataset):
    """Row ``i``: ``prepare(decode(paths[i]))``, run in a data worker."""

    def __init__(self, paths: Sequence[Path], prepare: Callable[[np.ndarray], object] | None):
        self.paths, self.prepare = list(paths), prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        pixels = decode_png(self.paths[i])
        return self.prepare(pixels) if self.prepare is not None else pixels


def _collate(items):
    """Arrays of one shape become one tensor; anything else stays a list."""
    if all(isinstance(x, np.ndarray) for x in items) and len({x.shape for x in items}) == 1:
        return torch.from_numpy(np.stack(items))
    return list(items)


def iter_batches(
    paths: Sequence[Path],
    prepare: Callable[[np.ndarray], object] | None = None,
    *,
    batch_size: int = 32,
    workers: int | None = None,
) -> Iterator[torch.Tensor | list]:
    """Batches of ``prepare(pixels)`` of the files, in order; decoded and prepared in workers.

    ``prepare`` must be picklable (a module-level function or a ``functools.partial``) when
    workers are used.
    """
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        _Rows(paths, prepare),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def map_batches(
    paths: Sequence[Path],
    fn: Callable[[torch.Tensor | list, np.ndarray], np.ndarray],
    prepare: Callable[[np.ndarray], object] | None = None,
    *,
    batch_size: int = 32,
    workers: int | None = None,
) -> np.ndarray:
    """``fn(batch, rows)`` over the files' batches, outputs concatenated (only the outputs are kept)."""
    outs, start = [], 0
    for batch in iter_batches(paths, prepare, batch_size=batch_size, workers=workers):
        rows = np.arange(start, start + len(batch))
        outs.append(np.asarray(fn(batch, rows)))
        start += len(batch)
    return np.concatenate(outs) if outs else np.zeros(0)
