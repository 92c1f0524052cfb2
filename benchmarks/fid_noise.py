"""How noisy is FID in the embedded world's probe feature space? Measured, not assumed.

1. Real vs real: FID between two independent draws of real scenes (held-out handwriting, the
   profile's digit counts) for n = 64 ... 2048, several repeats per n. This is what FID reads
   when nothing differs but the draw: any model difference smaller than it is noise.
2. FID-T noise floor: the teacher against itself, same prompts, other seeds. The folder's
   samples (``--teacher-samples``) are compared with fresh teacher samples of the same prompts
   at other base seeds, on the first n prompts. For scale, also the teacher against the real
   renders of the same scenes.

Usage::

    python benchmarks/fid_noise.py [--probe build/probes/probe.safetensors] [--profile embedded] \
        [--teacher-samples build/samples/teacher --teacher build/teacher/teacher --world build/world]

The probe's features are 256-d: below n = 257 the covariances are singular, and FID is still
defined (eigh-based square root) but carries round-off of its own.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from eval.metrics import ProbeFeatures, fid_from_features, image_features
from senseflow.config import load_profile
from senseflow.samplers import prompt_seed, sample_prompts
from senseflow.samples import load_folder_images, scenes_of
from senseflow.world.probes import load_probe
from senseflow.world.scenes import render, sample_batch, to_tensor_range

ROOT = Path(__file__).resolve().parent.parent


def fid(features, a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two image batches ([-1, 1] or uint8) with the given extractor."""
    return fid_from_features(image_features(a, features), image_features(b, features))


def real_vs_real(features, digit_counts, resolution, ns, repeats) -> None:
    """Two independent real draws per (n, repeat)."""
    print(f"real vs real (held-out handwriting, {repeats} repeats of two independent draws)")
    print("     n    mean     std     min     max   s/pair")
    for n in ns:
        vals, t0 = [], time.perf_counter()
        for r in range(repeats):
            a, _ = sample_batch(np.random.default_rng([r, n, 0]), n, resolution=resolution,
                                digit_counts=digit_counts, instances="heldout")  # fmt: skip
            b, _ = sample_batch(np.random.default_rng([r, n, 1]), n, resolution=resolution,
                                digit_counts=digit_counts, instances="heldout")  # fmt: skip
            vals.append(fid(features, to_tensor_range(a), to_tensor_range(b)))
        v = np.array(vals)
        dt = (time.perf_counter() - t0) / repeats
        print(
            f"{n:6d} {v.mean():7.3f} {v.std(ddof=1):7.3f} {v.min():7.3f} {v.max():7.3f} {dt:8.2f}", flush=True
        )


def teacher_floor(features, samples: Path, teacher: Path, world: Path, ns, bases) -> None:
    """The teacher folder against fresh teacher samples of the same prompts at other seeds."""
    from senseflow.teacher import load_teacher

    images, records = load_folder_images(samples)
    steps, cfg = int(records[0]["steps"]), float(records[0]["cfg"])
    backbone, recipe = load_teacher(teacher, world)
    shape = (recipe["channels"], recipe["resolution"], recipe["resolution"])
    real = to_tensor_range(np.stack([render(s, recipe["resolution"]) for s in scenes_of(records)]))
    draws = {}
    for base in bases:
        seeds = [prompt_seed(base, r["id"]) for r in records]
        clash = sum(s == r["seed"] for s, r in zip(seeds, records, strict=True))
        if clash:
            raise SystemExit(f"base seed {base} reproduces {clash} of the folder's seeds: pick other --bases")
        t0 = time.perf_counter()
        x, _ = sample_prompts(
            backbone, [r["prompt"] for r in records], seeds, steps=steps, cfg=cfg, shape=shape
        )
        draws[base] = backbone.codec.decode(x).clamp(-1, 1)
        print(f"sampled {len(records)} prompts at base seed {base}: {steps} steps, CFG {cfg}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    print(f"FID-T floor: teacher ({samples}) vs teacher, same prompts, other seeds; first n prompts")
    header = "     n  " + "  ".join(f"vs seed {b}" for b in bases)
    if len(bases) > 1:
        header += f"  seed {bases[0]} vs {bases[1]}"
    print(header + "  teacher vs real renders")
    for n in [n for n in ns if n <= len(records)]:
        row = [fid(features, draws[b][:n], images[:n]) for b in bases]
        if len(bases) > 1:
            row.append(fid(features, draws[bases[0]][:n], draws[bases[1]][:n]))
        row.append(fid(features, images[:n], real[:n]))
        print(f"{n:6d}  " + "  ".join(f"{v:9.3f}" for v in row), flush=True)


def main() -> None:
    """Print both tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", type=Path, default=ROOT / "build/probes/probe.safetensors")
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--n", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--teacher-samples", type=Path, default=ROOT / "build/samples/teacher")
    ap.add_argument("--teacher", type=Path, default=ROOT / "build/teacher/teacher")
    ap.add_argument("--world", type=Path, default=ROOT / "build/world")
    ap.add_argument("--bases", type=int, nargs="+", default=[1, 2], help="base seeds of the fresh draws")
    args = ap.parse_args()
    torch.manual_seed(0)
    scenes_cfg = load_profile(str(ROOT / "experiments" / f"{args.profile}.yaml")).world.scenes
    features = ProbeFeatures(load_probe(args.probe))
    print(f"probe {args.probe} ({features.id}, {features.dim}-d); profile {args.profile}")
    real_vs_real(features, dict(scenes_cfg.digit_counts), scenes_cfg.resolution, args.n, args.repeats)
    if (args.teacher_samples / "manifest.jsonl").is_file():
        teacher_floor(features, args.teacher_samples, args.teacher, args.world, args.n, args.bases)
    else:
        print(f"no teacher samples at {args.teacher_samples}: FID-T floor skipped")


if __name__ == "__main__":
    main()
