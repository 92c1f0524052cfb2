"""Throughput of the batched learned metrics vs the reference packages' own per-call APIs (CPU).

Usage::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/preference_throughput.py [--n 64] [--batch-size 32]

The real checkpoints (ViT-H-14, BLIP ViT-L) are not on this machine, so both sides load the
SAME tiny random weights from disk (the configs of tests/preference_refs.py): HPSv2 through
``hpsv2.score(image, prompt, cp=...)`` (the package reloads the checkpoint on every call),
PickScore through the published recipe one pair per call, ImageReward through the package's
``model.score(prompt, image)``. Model loading is done once and left out of both timings (a
warm-up call first, then the best of ``--repeats`` alternating runs, as the 2 cores are
shared; one torch thread by default for the same reason); the hpsv2 per-call
checkpoint reload stays in, since it is what that API costs. Prints images/s of both, their
ratio, and the largest score difference. With tiny weights the figures measure per-call
overhead (preprocessing, tokenising, reloading), not the forward passes of the real models.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import preference_refs as refs  # noqa: E402


def _row(name: str, n: int, ours, ref, repeats: int) -> None:
    """Time both sides alternately (the 2 cores are shared: the minimum is the least disturbed run)."""
    a, b = ours(), ref()  # warm-up: one-time initialisation is not throughput
    ta = tb = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        ref()
        ta, tb = min(ta, t1 - t0), min(tb, time.perf_counter() - t1)
    diff = (a - b).abs().max().item()
    print(
        f"{name:<12} batched {n / ta:8.1f} img/s   reference {n / tb:8.1f} img/s   "
        f"ratio {tb / ta:6.1f}x   max |diff| {diff:.2e}",
        flush=True,
    )


def main() -> None:
    """Build the tiny weights, time both sides per metric and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on shared cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from eval.metrics import load_hpsv2_scorer, load_imagereward_scorer, load_pickscore_scorer
    from eval.metrics.imagereward import VisionConfig

    n, bs = args.n, args.batch_size
    images = refs.random_images(n, seed=1)
    prompts = [refs.PROMPTS[i % len(refs.PROMPTS)] for i in range(n)]
    print(f"{n} images, CPU, {torch.get_num_threads()} threads, tiny random weights (real ones absent)")
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        tmp = Path(tmp)
        arch = refs.register_tiny_open_clip(mp)
        img_score = refs.hpsv2_package(mp)
        ckpt = refs.save_tiny_hps(tmp / "HPS_v2.1_compressed.pt")
        ours = load_hpsv2_scorer("v2.1", ckpt, arch=arch, batch_size=bs, device="cpu")
        _row(
            "HPSv2.1",
            n,
            lambda: ours(images, prompts),
            lambda: refs.hpsv2_reference(img_score, images, prompts, ckpt, "v2.1"),
            args.repeats,
        )

        model_dir, proc_dir = refs.save_tiny_pickscore(tmp)
        ours = load_pickscore_scorer(model_dir, proc_dir, batch_size=bs, device="cpu")
        recipe = refs.pickscore_recipe(model_dir, proc_dir)
        _row(
            "PickScore",
            n,
            lambda: ours(images, prompts),
            lambda: refs.pickscore_reference(recipe, images, prompts),
            args.repeats,
        )

        tok = refs.bert_folder(tmp / "bert-base-uncased")
        ir_mod = refs.imagereward_package(mp, tok)
        ir_ckpt, med = refs.save_tiny_imagereward(ir_mod, tmp, tok)
        import ImageReward as RM

        ref_model = RM.load(str(ir_ckpt), device="cpu", med_config=str(med))
        ours = load_imagereward_scorer(
            ir_ckpt, med, tok, vision=VisionConfig(**refs.TINY_VIT), batch_size=bs, device="cpu"
        )
        _row(
            "ImageReward",
            n,
            lambda: ours(images, prompts),
            lambda: refs.imagereward_reference(ref_model, images, prompts),
            args.repeats,
        )


if __name__ == "__main__":
    main()
