"""Seconds per training iteration of the consistency baselines (LCM, Hyper-SD TSCD) at a profile's batch.

Usage::

    python benchmarks/consistency_speed.py [--profile embedded] [--iterations 20] [--rounds 2]
        [--world build/world] [--teacher build/teacher/teacher]

Runs ``iterations`` iterations of each method in throw-away folders, alternating methods for
``rounds`` rounds so that both see the same machine load, and prints the per-round and median
seconds per iteration (the first iteration of a run, with its warm-up, is included), plus the
1-minute load average before each run: on a shared machine the load is part of the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from senseflow.config import load_profile
from senseflow.consistency import consistency_distill
from senseflow.consistency_run import baseline_section, consistency_kwargs
from senseflow.data import WorldData
from senseflow.teacher import load_teacher


def main() -> None:
    """Time both methods and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--world", type=Path, default=Path("build/world"))
    ap.add_argument("--teacher", type=Path, default=Path("build/teacher/teacher"))
    args = ap.parse_args()
    cfg = load_profile(args.profile)
    teacher, _ = load_teacher(args.teacher, args.world)
    scenes = cfg.world.scenes
    rows: dict[str, list[float]] = {"lcm": [], "hyper_sd": []}
    print(
        f"torch threads {torch.get_num_threads()}, profile {cfg.name}, {args.iterations} iterations per run"
    )
    for r in range(args.rounds):
        for method in rows:
            b = baseline_section(cfg, method)
            kw = {**consistency_kwargs(method, b), "iterations": args.iterations, "checkpoint_every": 10**9}
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as tmp:
                data = WorldData(
                    resolution=scenes.resolution, digit_counts=dict(scenes.digit_counts), seed=b.seed
                )
                consistency_distill(tmp, teacher=teacher, data=data, progress=False, device="cpu", **kw)
                spi = json.loads((Path(tmp) / "timing.json").read_text())["seconds_per_iteration"]
            rows[method].append(spi)
            print(f"round {r} {method:9s} batch {b.global_batch}: {spi:.3f} s/iteration (load {load:.1f})")
    for method, values in rows.items():
        b = baseline_section(cfg, method)
        med = statistics.median(values)
        print(
            f"{method:9s} median {med:.3f} s/iteration -> {b.iterations} iterations "
            f"~ {med * b.iterations / 60:.1f} min"
        )


if __name__ == "__main__":
    main()
