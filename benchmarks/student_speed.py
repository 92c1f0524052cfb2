"""Sampling wall-clock of an exported student against its teacher at full steps, in one process.

Usage::

    python benchmarks/student_speed.py --student build/distill/senseflow/student \
        [--teacher build/teacher/teacher] [--world build/world] [--n 256] [--repeats 3]

Both sample the same test prompts with the same per-prompt seeds and batch size; each is
timed ``repeats`` times alternately (so background load hits both alike) and the median is
reported, with NFE per image and the speedup.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from senseflow.samplers import prompt_seed, sample_prompts
from senseflow.student import load_student
from senseflow.teacher import load_teacher
from senseflow.world.prompts import load_prompt_file


def main() -> None:
    """Time teacher and student sampling and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--teacher", type=Path, default=Path("build/teacher/teacher"))
    ap.add_argument("--world", type=Path, default=Path("build/world"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    teacher, recipe = load_teacher(args.teacher, args.world)
    student = load_student(args.student)
    records = load_prompt_file(args.world / "prompts" / "test.jsonl")[: args.n]
    prompts = [r.prompt for r in records]
    seeds = [prompt_seed(0, r.id) for r in records]
    shape = student.shape()
    times: dict[str, list[float]] = {"teacher": [], "student": []}
    nfe_teacher = 0
    with torch.inference_mode():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _, nfe_teacher = sample_prompts(
                teacher,
                prompts,
                seeds,
                steps=recipe["steps"],
                cfg=recipe["cfg"],
                shape=shape,
                batch_size=args.n,
            )
            times["teacher"].append((time.perf_counter() - t0) / len(prompts))
            t0 = time.perf_counter()
            student.generate(prompts, seeds, batch_size=args.n)
            times["student"].append((time.perf_counter() - t0) / len(prompts))
    t_med, s_med = statistics.median(times["teacher"]), statistics.median(times["student"])
    steps = len(student.anchors)
    print(
        f"prompts {len(prompts)}, batch {args.n}, threads {torch.get_num_threads()}, repeats {args.repeats}"
    )
    head = f"teacher  {recipe['steps']:>2} steps CFG {recipe['cfg']}  NFE {nfe_teacher:>3}"
    print(f"{head}  {t_med * 1e3:8.3f} ms/image")
    print(f"student  {steps:>2} steps          NFE {steps:>3}  {s_med * 1e3:8.3f} ms/image")
    print(f"speedup  {t_med / s_med:.1f}x")


if __name__ == "__main__":
    main()
