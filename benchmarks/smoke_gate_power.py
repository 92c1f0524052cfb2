"""Can the smoke gate tell a working SenseFlow recipe from a broken one? FID-T per recipe and seed.

Runs in a folder that holds the smoke pipeline's ``build/world``, ``build/probes``,
``build/teacher`` and ``build/samples/teacher_full`` (e.g. ``SMOKE_KEEP=1 .ci/smoke``'s copy,
or the folder tests/test_study.py builds). For each recipe and ``distill.seed`` it trains the
smoke profile's SenseFlow student (10 iterations), samples it at 4 steps on the candidates'
seeds and prints its FID-T and KID-T against ``teacher_full`` (other seeds: the pipeline's
rule); with ``build/cache`` present, prompts come from the cache as in the pipeline.
Recipes: ``senseflow`` (as shipped), ``flipped_dmd`` (the DMD gradient's sign
reversed, what tests/test_pipeline.py mutates), ``no_ida``, ``no_isg``.

    cd SMOKE_COPY && python /path/to/benchmarks/smoke_gate_power.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from senseflow.config import load_profile

RECIPES = ("senseflow", "flipped_dmd", "no_ida", "no_isg")


@contextmanager
def flipped_dmd_sign():
    """The DMD gradient pushed the wrong way (as tests/test_pipeline.py's mutation)."""
    import senseflow.losses.dmd as dmd

    original = dmd.dmd_gradient

    def flipped(*args, **kwargs):
        return -original(*args, **kwargs)

    dmd.dmd_gradient = flipped
    try:
        yield
    finally:
        dmd.dmd_gradient = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--profile", default="smoke")
    args = ap.parse_args()
    from eval.evaluate import evaluate
    from senseflow.distill_run import distill_method
    from senseflow.generate import generate

    build = Path("build")
    print("recipe seed | FID-T KID-T | seconds load", flush=True)
    for recipe in args.recipes:
        for seed in args.seeds:
            cfg = load_profile(args.profile, [f"distill.seed={seed}"])
            variant = recipe if recipe in ("no_ida", "no_isg") else "senseflow"
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="gatepower-") as tmp:
                tmp = Path(tmp)
                ctx = flipped_dmd_sign() if recipe == "flipped_dmd" else _null()
                with ctx:
                    # with build/cache (the pipeline's `cache` stage) train as the pipeline does
                    cache = build / "cache" if (build / "cache").is_dir() else None
                    distill_method(cfg, tmp / "run", variant, world_dir=build / "world",
                                   teacher_dir=build / "teacher" / "teacher", cache_dir=cache,
                                   probe_path=build / "probes" / "probe.safetensors",
                                   progress=False)  # fmt: skip
                s = cfg.teacher.sample
                generate(str(tmp / "run" / "student"), str(build / "world" / "prompts" / "test.jsonl"),
                         tmp / "samples", profile=cfg, steps=4, seed=s.seed, limit=s.n_prompts,
                         batch_size=s.batch_size, world_dir=build / "world",
                         teacher_dir=build / "teacher" / "teacher", progress=False)  # fmt: skip
                out = evaluate(tmp / "samples", ["fid_t_probe", "kid_t_probe"], tmp / "eval",
                               reference=build / "samples" / "teacher_full",
                               probe=build / "probes" / "probe.safetensors", n_boot_set=20)  # fmt: skip
            m = out["metrics"]
            print(f"{recipe} {seed} | {m['fid_t_probe']['value']:.1f} {m['kid_t_probe']['value']:.2f} | "
                  f"{time.perf_counter() - t0:.0f} {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip


@contextmanager
def _null():
    yield


if __name__ == "__main__":
    main()
