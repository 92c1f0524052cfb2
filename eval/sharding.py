"""Evaluation across ranks: each rank scores a contiguous block of images, the rows are gathered.

Under ``torchrun --nproc_per_node N senseflow-eval evaluate ...`` every rank loads the
(checked) sample folder, runs the expensive per-row work -- model forward passes that give
per-image scores or features -- on its own block of rows only, and all-gathers the rows
(``torchmetrics``' padded ``gather_all_tensors``, so blocks may differ in size). Blocks are
contiguous and gathered in rank order, so the gathered array is in manifest order and
everything after it (means, bootstrap and subsampling intervals, Fréchet distances) is the
same computation on the same numbers as in one process. Without a process group it is the
identity: one process, one block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """A rank and the number of evaluating ranks (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    def rows(self, n: int) -> np.ndarray:
        """Indices of this rank's contiguous block of ``range(n)`` (sizes differ by at most one)."""
        bounds = np.linspace(0, n, self.world_size + 1).round().astype(int)
        return np.arange(bounds[self.rank], bounds[self.rank + 1])


def current_shard() -> Shard:
    """The shard of this process: from the initialised process group, else the single shard."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def _gather_tensor(local: torch.Tensor) -> torch.Tensor:
    from torchmetrics.utilities.distributed import gather_all_tensors

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    dtype = local.dtype
    # gather pads with zeros, which bool tensors do not take: ship them as uint8
    x = local.to(torch.uint8) if dtype == torch.bool else local
    parts = gather_all_tensors(x.detach().to(device))
    return torch.cat([p.cpu() for p in parts]).to(dtype)


def gather_rows(local, shard: Shard):
    """Concatenate every rank's rows in rank order; same structure as ``local``.

    ``local`` is a tensor, an array, or a tuple / list / dataclass of them (e.g. a probe
    output), each with the rows along the first dimension.
    """
    if shard.world_size == 1:
        return local
    if isinstance(local, torch.Tensor):
        return _gather_tensor(local)
    if isinstance(local, np.ndarray):
        return _gather_tensor(torch.from_numpy(np.ascontiguousarray(local))).numpy()
    if dataclasses.is_dataclass(local):
        fields = {f.name: gather_rows(getattr(local, f.name), shard) for f in dataclasses.fields(local)}
        return type(local)(**fields)
    if isinstance(local, tuple | list):
        return type(local)(gather_rows(x, shard) for x in local)
    raise TypeError(f"cannot gather rows of a {type(local).__name__}")


def map_rows(fn: Callable[[np.ndarray], object], n: int, shard: Shard):
    """``fn(indices)`` on this rank's block of ``range(n)``, gathered: the result for all ``n`` rows."""
    return gather_rows(fn(shard.rows(n)), shard)
