"""FID-T and adherence of an exported embedded student at each step count it supports, both samplers.

Usage::

    python benchmarks/student_steps.py --student build/distill/senseflow/student \
        [--reference build/samples/teacher] [--probe build/probes/probe.safetensors] [--n 512]

The 4-step student also samples at 2 steps (anchors 1 and 3 of 4) and 1 step; ``euler`` is
the deterministic sampler, ``x0`` re-noises the x0 estimate with fresh per-prompt noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from senseflow.distill_run import EmbeddedEvaluator
from senseflow.export import anchors_for_steps
from senseflow.student import load_student
from senseflow.world.probes import load_probe


def main() -> None:
    """Evaluate every (steps, sampler) pair and print a table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--reference", type=Path, default=Path("build/samples/teacher"))
    ap.add_argument("--probe", type=Path, default=Path("build/probes/probe.safetensors"))
    ap.add_argument("--n", type=int, default=512)
    args = ap.parse_args()
    student = load_student(args.student)
    n_anchors = len(student.anchors)
    print("steps  sampler  times                       FID-T   all    digit  colour  bg")
    for steps in [k for k in range(1, n_anchors + 1) if n_anchors % k == 0]:
        times = anchors_for_steps(student.anchors, steps)
        for sampler in ("euler", "x0") if steps > 1 else ("euler",):
            ev = EmbeddedEvaluator(
                load_probe(args.probe), args.reference, n=args.n, anchors=times, sampler=sampler
            )
            m = ev(student.backbone, 0)
            cells = "  ".join(f"{m[f'adherence_{k}']:.3f}" for k in ("all", "digit", "colour", "background"))
            print(f"{steps:>5}  {sampler:<7}  {str(times):<26} {m['fid_t']:6.1f}  {cells}")


if __name__ == "__main__":
    main()
