"""Sweep of the embedded teacher's levers: train short configurations, judge adherence, print a table.

Each configuration is the profile's teacher (``experiments/embedded.yaml``) with a few
``train_teacher`` keywords overridden; it is trained from scratch for its step budget, then its
samples of the world's test prompts are judged by the attribute probe at 4 Euler steps and at
the full steps (CFG from the profile). One row per configuration is printed as it finishes and
appended to ``--out`` (JSON lines), losers included, so a long sweep can be read while it runs
and resumed (rows already in ``--out`` are skipped).

    python benchmarks/teacher_sweep.py --world build/world --probe build/probes/probe.safetensors \
        --configs base patch2 --steps 400 --n 256 --out build/sweep.jsonl

Columns: name, steps, train seconds, seconds/step, all-correct at 4 and full steps, the gap,
digit / colour / position / background at full steps, all-correct of 1- and 2-digit scenes,
and the load average during training (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from senseflow.config import load_profile
from senseflow.teacher import load_teacher, train_teacher
from senseflow.world.adherence import adherence_curve
from senseflow.world.probes import load_probe
from senseflow.world.prompts import load_prompt_file

# name -> overrides of train_teacher's keywords (on top of the profile's teacher)
CONFIGS: dict[str, dict] = {
    "base": {},
    "patch2": {"patch_size": 2},
    "patch2_l4": {"patch_size": 2, "num_layers": 4},
    "patch8": {"patch_size": 8},  # one token per grid cell: the token is the object
    "patch8_b256": {"patch_size": 8, "batch_size": 256},
    "lr1e-3": {"lr": 1e-3},
    "lr4e-3": {"lr": 4e-3},
    "one_digit": {"digit_counts": {1: 1.0}},
    "wide": {"num_attention_heads": 8, "attention_head_dim": 32},
    "deep": {"num_layers": 10},
    "batch128": {"batch_size": 128},
    "mode_density": {"density": "mode"},
    "logit_low": {"logit_mean": -0.5},
    "logit_high": {"logit_mean": 0.5},
    "no_dropout_cfg": {"caption_dropout": 0.05},
    "ema_0.99": {"ema_decay": 0.99},
}


def profile_teacher_kwargs(profile: str) -> dict:
    """``train_teacher`` keywords of the profile's teacher (the sweep's baseline)."""
    cfg = load_profile(profile)
    m, t, s = cfg.teacher.model, cfg.teacher.train, cfg.teacher.sample
    scenes = cfg.world.scenes
    return {
        "resolution": scenes.resolution,
        "digit_counts": dict(scenes.digit_counts),
        **m.model_dump(),
        **{k: v for k, v in t.model_dump().items() if k not in ("checkpoint_every", "log_every")},
        "sample_steps": s.steps,
        "sample_cfg": s.cfg,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="experiments/embedded.yaml")
    ap.add_argument("--world", required=True)
    ap.add_argument("--probe", required=True)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), help=f"any of {', '.join(CONFIGS)}")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                    help="extra overrides for every configuration, e.g. steps=400")  # fmt: skip
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the profile's)")
    ap.add_argument("--n", type=int, default=256, help="test prompts judged")
    ap.add_argument("--eval-steps", type=int, nargs="+", default=None, help="default: 4 and full")
    ap.add_argument("--out", default=None, help="JSON lines, one row per configuration (appended)")
    args = ap.parse_args()
    base = profile_teacher_kwargs(args.profile)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.steps:
        extra["steps"] = args.steps
    done = set()
    if args.out and Path(args.out).is_file():
        done = {json.loads(line)["name"] for line in Path(args.out).read_text().splitlines() if line.strip()}
    probe = load_probe(args.probe)
    records = load_prompt_file(f"{args.world}/prompts/test.jsonl")[: args.n]
    print("name steps train_s s/step | all@4 all@full gap | digit colour position background | "
          "all(1) all(2) | load", flush=True)  # fmt: skip
    for name in args.configs:
        if name in done:
            print(f"{name}: already in {args.out}, skipped", flush=True)
            continue
        over = {**CONFIGS[name], **extra}
        kw = {**base, **over}
        if "digit_counts" in over:
            kw["digit_counts"] = {int(k): v for k, v in over["digit_counts"].items()}
        full = kw["sample_steps"]
        eval_steps = args.eval_steps or [4, full]
        with tempfile.TemporaryDirectory(prefix=f"sweep-{name}-") as tmp:
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            folder = train_teacher(tmp, world_dir=args.world, progress=False, **kw)
            seconds = time.perf_counter() - t0
            load1 = os.getloadavg()[0]
            backbone, recipe = load_teacher(folder, args.world)
            shape = (recipe["channels"], recipe["resolution"], recipe["resolution"])
            curve = adherence_curve(backbone, records, probe, shape=shape, steps_list=eval_steps,
                                    cfg=kw["sample_cfg"], seed=0)  # fmt: skip
        by = {r["steps"]: r for r in curve}
        lo, hi = by[min(eval_steps, key=lambda s: abs(s - 4))], by[max(eval_steps)]
        row = {
            "name": name, "overrides": over, "steps": kw["steps"], "train_seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / kw["steps"], 3), "load": [round(load0, 2), round(load1, 2)],
            "n": len(records), "curve": curve,
        }  # fmt: skip
        gap = hi["all"] - lo["all"]
        print(
            f"{name} {kw['steps']} {seconds:.0f} {seconds / kw['steps']:.3f} | "
            f"{lo['all']:.3f} {hi['all']:.3f} {gap:+.3f} | "
            f"{hi['digit']:.3f} {hi['colour']:.3f} {hi['position']:.3f} {hi['background']:.3f} | "
            f"{hi.get('all_1_digit', float('nan')):.3f} {hi.get('all_2_digit', float('nan')):.3f} | "
            f"{load0:.1f}-{load1:.1f}",
            flush=True,
        )
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
