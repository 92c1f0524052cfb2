"""Print the embedded distillation figures of finished runs: FID-T, adherence, speed, curves, overheads.

Usage::

    python benchmarks/distill_report.py RUNS_DIR [--teacher-samples build/samples/teacher]
        [--teacher-adherence results/teacher_adherence.json]

``RUNS_DIR`` holds one ``senseflow distill --reference ...`` output folder per variant
(``summary.json``, ``eval_curve.jsonl``, ``timing.json``). Run the variants first, e.g.::

    for v in senseflow vanilla_dmd no_ida no_isg dmd2; do
      senseflow distill --variant $v --out RUNS_DIR/$v --reference build/samples/teacher --eval-prompts 512
    done
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    """Read the runs and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--teacher-samples", type=Path, default=Path("build/samples/teacher"))
    ap.add_argument("--teacher-adherence", type=Path, default=Path("results/teacher_adherence.json"))
    args = ap.parse_args()

    teacher = _load(args.teacher_adherence) or {}
    manifest = args.teacher_samples / "manifest.jsonl"
    teacher_spi = None
    if manifest.exists():
        first = json.loads(manifest.read_text().splitlines()[0])
        teacher_spi = first.get("seconds_per_image")
        print(f"teacher: {first['steps']} Euler steps, CFG {first['cfg']}, NFE {first['nfe']}, "
              f"{teacher_spi:.4f} s/image, adherence all {teacher.get('all', float('nan')):.3f}, "
              f"digit {teacher.get('digit', float('nan')):.3f}")  # fmt: skip

    runs = sorted(p for p in args.runs.iterdir() if (p / "summary.json").exists())
    print("\nvariant          iters  train_s   FID-T   all    digit  colour  bg     s/image  speedup*")
    for run in runs:
        s = _load(run / "summary.json")
        f = s.get("final", {})
        spi = s.get("seconds_per_image")
        speed = f"{teacher_spi / spi:6.1f}x" if (teacher_spi and spi) else "   n/a"
        nan = float("nan")
        cells = [f.get(k, nan) for k in ("adherence_all", "adherence_digit", "adherence_colour",
                                         "adherence_background")]  # fmt: skip
        print(f"{s['variant']:<16} {s['iterations']:>5}  {s['seconds']:>7.0f}  {f.get('fid_t', nan):6.1f}  "
              + "  ".join(f"{c:.3f}" for c in cells) + f"  {spi or nan:.5f}  {speed}")  # fmt: skip

    print(
        "* against the teacher_samples stage's s/image, measured in another process and load;"
        " benchmarks/student_speed.py times both in one process"
    )
    print("\nFID-T over training (probe features, 4 steps, against the teacher's samples)")
    for run in runs:
        curve = [json.loads(x) for x in (run / "eval_curve.jsonl").read_text().splitlines() if x.strip()]
        row = "  ".join(f"{c['iteration']}:{c['fid_t']:.0f}" for c in curve)
        print(f"{run.name:<16} {row}")

    print("\nper-iteration time by phase (s), averaged over all iterations")
    for run in runs:
        t = _load(run / "timing.json")
        if not t:
            continue
        total = t["seconds_per_iteration"]
        parts = "  ".join(f"{k}={v:.3f}" for k, v in t.items() if k != "seconds_per_iteration")
        ida, isg = t.get("ida", 0.0) / total, t.get("isg", 0.0) / total
        print(f"{run.name:<16} total={total:.3f}  IDA {100 * ida:.1f}%  ISG {100 * isg:.1f}%  ({parts})")


if __name__ == "__main__":
    main()
