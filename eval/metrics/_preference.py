"""Shared plumbing of the learned image-text metrics (CLIP score, HPSv2, PickScore, ImageReward).

Every learned metric has the same shape: a *scorer* (the model loaded once, plus its
preprocessing) that maps a batch of images and their prompts to one score per image, a
cached loader so that the functional ``score(images, prompts)`` never reloads weights, and a
``torchmetrics.Metric`` (:mod:`eval.metrics.torchmetrics_api`) that keeps the per-image scores
(gathered across ranks by concatenation) and reports their mean.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eval.streaming import map_batches
from eval.weights import require_path


def require_any(folder: str | os.PathLike, names: Sequence[str], artefact: str) -> Path:
    """The first of ``names`` present in ``folder``; if none is, the error names the first.

    ``artefact`` is the manifest entry that provides the default folder (named in the error).
    """
    folder = Path(folder)
    for name in names:
        if (folder / name).exists():
            return folder / name
    return require_path(folder / names[0], artefact)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_precision(precision: str) -> str:
    """``precision`` if known (fp32, fp16, bf16), else a ValueError listing them."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown scorer precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str = "fp32"):
    """Autocast to ``precision`` on CUDA (none for fp32); a no-op on the CPU, which runs fp32.

    Each scorer defaults to its reference's precision (fp32 for ImageReward, PickScore and
    DMD2's CLIP score; fp16 autocast for hpsv2), recorded in its protocol card.
    """
    dtype = PRECISIONS[check_precision(precision)]
    if torch.device(device).type == "cuda" and dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def to_pil_images(images) -> list[Image.Image]:
    """Images as RGB PIL images.

    Accepts a sequence of PIL images or uint8 HWC arrays, a uint8 tensor (B, 3, H, W), or a
    float tensor (B, 3, H, W) in [-1, 1] (the suite's convention for pixels inside). The
    reference packages all start from PIL images, so going through PIL keeps their
    preprocessing bit-identical.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = images.detach().cpu()
        if x.dtype != torch.uint8:
            x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [Image.fromarray(a) for a in x.permute(0, 2, 3, 1).numpy()]
    out = []
    for im in images:
        if isinstance(im, Image.Image):
            out.append(im.convert("RGB"))
        else:
            out.append(Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB"))
    return out


def check_pairs(images: Sequence, prompts: Sequence[str]) -> list[str]:
    """The prompts as a list, checked to pair one to one with the images."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
    return prompts


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    from senseflow.io import sha256_file

    return sha256_file(path, chunk=1 << 24)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per (path, size, mtime): checkpoints are gigabytes."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


class BatchedScorer:
    """Base of the scorers: checks the pairs, converts to PIL, runs ``score_batch`` per batch.

    ``weights_file`` (set by the loaders) is hashed into :meth:`weights_protocol`, so a stored
    number names the exact checkpoint it came from.
    """

    batch_size: int = 32
    weights_file: Path | None = None

    def weights_protocol(self) -> dict:
        """Hash of the checkpoint file and the library versions that ran it."""
        import torch as _torch
        import transformers

        out = {"torch": _torch.__version__, "transformers": transformers.__version__}
        if self.weights_file is not None:
            out["weights_sha256"] = file_sha256(self.weights_file)
        return out

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        """Scores of one batch of at most ``batch_size`` pairs."""
        raise NotImplementedError

    def __call__(self, images, prompts) -> torch.Tensor:
        """One score per (image, prompt) pair, shape (B,), float32 on the CPU."""
        pil = to_pil_images(images)
        prompts = check_pairs(pil, prompts)
        out = [
            self.score_batch(pil[sl], prompts[sl]).float().cpu() for sl in batched(len(pil), self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0)


def batched(n: int, batch_size: int):
    """Slices of ``range(n)`` of at most ``batch_size``."""
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


def register_scorer_metric(name: str, loader, version: str, protocol_kwargs=None) -> None:
    """Register ``name`` with ``senseflow-eval evaluate``: per-image scores of ``loader()``'s scorer.

    The scorer is built when the metric first runs (weights read once, cached by the loader);
    ``protocol_kwargs(ctx.protocol)`` gives the loader's keyword arguments of an evaluation
    protocol (CLIP score's DMD2 prefix and pre-resize). The protocol card carries the
    scorer's own protocol (backbone, scale, prefix, precision) and its checkpoint hash.
    """
    from eval.registry import MetricResult, protocol_card, register

    def factory():
        def metric(ctx) -> MetricResult:
            scorer = loader(**(protocol_kwargs(ctx.protocol) if protocol_kwargs else {}))
            prompts = [r["prompt"] for r in ctx.samples.records]
            paths = ctx.samples.images.paths

            def block(idx):
                # this rank's images only, streamed in batches (eval.streaming); rows gathered
                def fn(batch, rows):
                    return scorer(list(batch.numpy()), [prompts[idx[i]] for i in rows]).numpy()

                return map_batches([paths[i] for i in idx], fn, batch_size=scorer.batch_size)

            per_image = ctx.map_rows(block).astype(float)
            info = scorer.protocol()
            skip = ("torch", "transformers", "weights_sha256")
            card = protocol_card(
                ctx, metric=name, version=version,
                backbone=str({k: v for k, v in info.items() if k not in skip}),
                weights_sha256=info.get("weights_sha256", ""), image_count=len(per_image),
                resize=info.get("pre_resize", "the model's own preprocessing"),
                precision=info.get("precision", "fp32"),
            )  # fmt: skip
            return MetricResult(card, higher_is_better=True, per_image=per_image)

        return metric

    register(name, factory)
