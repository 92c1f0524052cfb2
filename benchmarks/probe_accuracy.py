"""Probe accuracy per attribute on held-out handwriting, and its training time (target: >= 95%, <= 3 min).

python benchmarks/probe_accuracy.py [--profile embedded] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile

from senseflow.config import load_profile
from senseflow.world.probes import train_probe_for_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--out", default=None, help="keep the probe here (default: a temporary folder)")
    args = ap.parse_args()
    cfg = load_profile(args.profile)
    out = args.out or tempfile.mkdtemp(prefix="probe-bench-")
    report = train_probe_for_profile(cfg, out, progress=False)
    p = cfg.probe
    print(f"profile {cfg.name}: {p.steps} steps in {report['train_seconds']:.1f} s")
    for key in ("digit", "colour", "position", "background", "count", "all"):
        print(f"  {key:10s} {report[key]:.4f}")


if __name__ == "__main__":
    main()
