"""Prompt adherence of a flow model against the number of Euler steps (the curve distillation fixes).

Samples the world's test prompts with per-prompt seeds at each step count and judges every
image with the attribute probe; prints one row per (CFG, steps) and writes JSON with --out.

    python benchmarks/teacher_adherence.py --model build/teacher/teacher --world build/world \
        --probe build/probes/probe.safetensors --steps 1 2 4 8 16 32 --cfg 4 --n 512
"""

from __future__ import annotations

import argparse
import json

from senseflow.teacher import load_teacher
from senseflow.world.adherence import adherence_curve
from senseflow.world.probes import load_probe
from senseflow.world.prompts import load_prompt_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--probe", required=True)
    ap.add_argument("--prompts", default=None, help="prompt file (default: WORLD/prompts/test.jsonl)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--cfg", type=float, nargs="+", default=[4.0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    backbone, recipe = load_teacher(args.model, args.world)
    probe = load_probe(args.probe)
    records = load_prompt_file(args.prompts or f"{args.world}/prompts/test.jsonl")[: args.n]
    shape = (recipe["channels"], recipe["resolution"], recipe["resolution"])
    print(
        f"{len(records)} prompts; columns: cfg steps NFE all-correct digit colour position background "
        "all(1 digit) all(2 digits) s/img"
    )
    rows = []
    for cfg in args.cfg:
        for r in adherence_curve(
            backbone, records, probe, shape=shape, steps_list=args.steps, cfg=cfg, seed=args.seed
        ):
            rows.append(r)
            head = f"{cfg:4.1f} {r['steps']:3d} {r['nfe']:3d}  {r['all']:.3f}  {r['digit']:.3f}"
            head += f" {r['colour']:.3f}"
            by_count = f"{r.get('all_1_digit', float('nan')):.3f} {r.get('all_2_digit', float('nan')):.3f}"
            print(
                f"{head} {r['position']:.3f} {r['background']:.3f}  {by_count}  {r['seconds_per_image']:.4f}",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "n": len(records), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
