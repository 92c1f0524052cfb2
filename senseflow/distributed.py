"""Process-group set-up and model wrapping for ``torchrun`` (DDP for small models, FSDP2 for large).

Under ``torchrun --nproc_per_node N`` the environment names the rank and world size; the
same command without torchrun runs one process and wraps nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from senseflow.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size and device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and exports."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device is 'cuda' but no CUDA device is visible; set runtime.device: cpu")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        # cuDNN's attention backward returns NaN gradients for some bf16 shapes on H100/H200
        # (pytorch/pytorch#196678, NVIDIA/cudnn-frontend#1072). Measured here on an H200
        # (torch 2.11): a tiny FLUX's first bf16 iteration gave a NaN generator gradient,
        # named by anomaly detection as ScaledDotProductCudnnAttentionBackward0, while fp32 ran
        # clean. Training therefore leaves attention to the flash / memory-efficient kernels.
        torch.backends.cuda.enable_cudnn_sdp(False)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, device=dev)


def resolve_parallel(parallel: str, world_size: int) -> str:
    """``auto`` -> ``ddp`` with several processes, ``none`` with one; FSDP with one process is an error."""
    if parallel not in ("auto", "none", "ddp", "fsdp"):
        raise UserError(f"runtime.parallel must be auto, none, ddp or fsdp, got {parallel!r}")
    if world_size == 1:
        if parallel == "fsdp":
            raise UserError(
                "runtime.parallel is 'fsdp' but this is one process: launch with "
                "`torchrun --nproc_per_node N` (N > 1) or set runtime.parallel: auto"
            )
        return "none"
    return "ddp" if parallel == "auto" else parallel


def wrap(module: nn.Module, parallel: str, info: DistInfo) -> nn.Module:
    """Wrap a trainable module for data parallelism; returns the module to call and optimise.

    ``ddp``: :class:`~torch.nn.parallel.DistributedDataParallel` (replicated weights).
    ``fsdp``: FSDP2 ``fully_shard`` on every transformer block, then on the root (the
    module is sharded in place; parameters become DTensors, which IDA updates shard by shard).
    """
    if parallel == "none":
        return module
    if parallel == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if parallel == "fsdp":
        return _fully_shard(module)
    raise ValueError(f"unknown parallel mode {parallel!r}")


def _fully_shard(module: nn.Module) -> nn.Module:
    """FSDP2 ``fully_shard`` on every transformer / UNet block, then on the root, in place.

    Each block's parameters are moved to this rank's device as they are sharded, so a module
    built on the CPU never exists whole on the accelerator.
    """
    from torch.distributed.fsdp import fully_shard

    for name in SHARDED_BLOCKS:
        for block in getattr(module, name, None) or []:
            fully_shard(block)
    fully_shard(module)
    return module


SHARDED_BLOCKS = ("transformer_blocks", "single_transformer_blocks", "down_blocks", "up_blocks")


def shard_frozen(module: nn.Module, parallel: str, info: DistInfo) -> nn.Module:
    """Place a frozen network (the teacher) for the loop: FSDP2-sharded under ``fsdp``, else moved whole.

    Under ``fsdp`` each rank keeps 1/N of the weights; a forward all-gathers one block at a
    time and frees it after (``reshard_after_forward``), so the teacher costs one block of
    full weights per rank instead of all of them (SD 3.5 Large: 16 GiB of bf16 weights
    become 2 GiB on 8 GPUs). It has no optimiser and no gradients, so nothing is
    reduce-scattered; every rank must call it the same number of times (the loop does).
    The module is sharded in place: its weights are no longer whole on any rank, so code
    after the loop must not read them (exports build the student from the config:
    :func:`senseflow.export.student_network`).
    """
    if parallel == "fsdp":
        return _fully_shard(module.requires_grad_(False))
    return module.to(info.device)


def reshard(*modules: nn.Module) -> None:
    """Put every FSDP2-sharded part of ``modules`` back in its sharded state (no-op for plain modules).

    FSDP2 does not reshard a root module after its forward (it expects the backward next),
    so after a no-grad forward (the fake model's DMD call) the root's weights stay gathered
    as plain tensors until the next backward. Code that pairs parameters shard by shard
    (IDA) reshards first.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in modules:
        for sub in module.modules():
            if isinstance(sub, FSDPModule):
                sub.reshard()


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under a DDP wrapper (FSDP2 modules are their own)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def barrier() -> None:
    """Synchronise ranks (no-op for one process)."""
    if dist.is_initialized():
        dist.barrier()


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (used by the NaN guard so all ranks stop together)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def close_distributed(wait: bool = True) -> None:
    """Wait for every rank (unless ``wait`` is False), then leave the process group (no-op alone)."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
