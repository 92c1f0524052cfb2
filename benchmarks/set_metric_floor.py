"""Do FID-T and KID-T resolve the 4-step teacher from the full-step one? Floor vs signal, measured.

The pipeline's rule (issue 13): every set is compared with the full-step teacher drawn from
*other* seeds (the reference, seed base ``ref_seed``); the floor is the full-step teacher on the
candidates' seeds against it. This script draws, on the first n test prompts:

* ``reference``: the teacher at full steps, seeds ``prompt_seed(ref_seed, id)``;
* ``floor``: the teacher at full steps, seeds ``prompt_seed(seed, id)`` (teacher_reseed);
* ``teacher_4``: the teacher at 4 Euler steps on the candidates' seeds;
* two independent draws of real scenes of the same prompts (held-out handwriting), for scale;

and prints FID-T and KID-T (x1000) of floor, teacher_4 and real-vs-real against the reference,
with the ratio teacher_4 / floor, for each n of ``--n`` (a prefix of the same prompts).
The same-noise paired FID-T (teacher_4 against the full-step teacher on the *same* seeds) is
printed as a secondary column.

    python benchmarks/set_metric_floor.py --teacher build/teacher/teacher --world build/world \
        --probe build/probes/probe.safetensors --n 256 512 --cfg 4 --full-steps 32
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from eval.metrics.frechet import fid_from_features
from eval.metrics.kid import SCALE, mmd2_unbiased
from senseflow.samplers import prompt_seed, sample_prompts
from senseflow.teacher import load_teacher
from senseflow.world.probes import load_probe, run_probe
from senseflow.world.prompts import load_prompt_file
from senseflow.world.scenes import render, to_tensor_range, with_fresh_handwriting


def features(probe, images: torch.Tensor) -> np.ndarray:
    """Probe penultimate features of [-1, 1] images, in batches."""
    out = [
        run_probe(probe, images[i : i + 512].clamp(-1, 1)).features.double().numpy()
        for i in range(0, len(images), 512)
    ]
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--probe", required=True)
    ap.add_argument("--n", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--full-steps", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="the few-step candidate's Euler steps")
    ap.add_argument("--seed", type=int, default=0, help="candidates' seed base")
    ap.add_argument("--ref-seed", type=int, default=1, help="the reference's seed base")
    args = ap.parse_args()
    backbone, recipe = load_teacher(args.teacher, args.world)
    probe = load_probe(args.probe)
    records = load_prompt_file(f"{args.world}/prompts/test.jsonl")[: max(args.n)]
    shape = (recipe["channels"], recipe["resolution"], recipe["resolution"])
    prompts = [r.prompt for r in records]
    t0 = time.perf_counter()

    @torch.no_grad()  # without it autograd keeps every Euler step's graph: several times slower
    def draw(steps: int, base: int) -> np.ndarray:
        seeds = [prompt_seed(base, r.id) for r in records]
        images, _ = sample_prompts(
            backbone, prompts, seeds, steps=steps, cfg=args.cfg, shape=shape, batch_size=256
        )
        return features(probe, images)

    ref = draw(args.full_steps, args.ref_seed)
    floor = draw(args.full_steps, args.seed)
    few = draw(args.steps, args.seed)

    def real(k: int) -> np.ndarray:
        rng = np.random.default_rng([k, 13])
        imgs = np.stack([render(with_fresh_handwriting(r.scene, rng, "heldout"), shape[1]) for r in records])
        return features(probe, to_tensor_range(imgs))

    real_a, real_b = real(0), real(1)
    print(f"{len(records)} prompts, cfg {args.cfg}, full {args.full_steps} steps, "
          f"candidate {args.steps} steps; "
          f"sampling {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(
        "    n | FID-T floor  4-step  ratio  real/real | KID-T floor  4-step  ratio  real/real "
        "| paired FID-T 4-step"
    )
    for n in args.n:
        k = slice(0, n)
        f = {name: fid_from_features(x[k], ref[k]) for name, x in (("floor", floor), ("few", few))}
        f["real"] = fid_from_features(real_a[k], real_b[k])
        kid = {
            name: SCALE * mmd2_unbiased(x[k], ref[k], paired=True)
            for name, x in (("floor", floor), ("few", few))
        }
        kid["real"] = SCALE * mmd2_unbiased(real_a[k], real_b[k], paired=True)
        paired = fid_from_features(few[k], floor[k])
        f_ratio = f["few"] / max(f["floor"], 1e-9)
        k_ratio = kid["few"] / max(abs(kid["floor"]), 1e-9)
        print(f"{n:5d} | {f['floor']:11.1f} {f['few']:7.1f} {f_ratio:6.1f} {f['real']:10.1f} | "
              f"{kid['floor']:11.2f} {kid['few']:7.2f} {k_ratio:6.1f} {kid['real']:10.2f} | "
              f"{paired:.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
