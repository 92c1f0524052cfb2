"""Wall time of pipeline stage commands started cold against forked from the warm server.

Usage (in a repository where `make run` has built the pipeline once)::

    python benchmarks/warm_start.py [--repo .] [--candidates teacher_4 senseflow_4] [--repeat 2]

For each candidate it runs the stage commands dvc would run, ``senseflow pipeline generate
NAME`` and ``senseflow pipeline evaluate NAME``, after deleting their outputs as dvc does,
once cold (no server) and once through a warm server (:mod:`senseflow.warm`), alternating so
machine drift hits both. The server's start-up (its imports) is timed separately: it is paid
once per `make run`. Prints one line per run and the mean saving per stage. Nothing else should
run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from senseflow.warm import background_server


def _stage_commands(name: str, profile: str) -> list[tuple[str, list[str], Path]]:
    return [
        ("generate", ["senseflow", "pipeline", "generate", name, "--quiet", "--profile", profile],
         Path("build/samples") / name),
        ("evaluate", ["senseflow", "pipeline", "evaluate", name, "--profile", profile],
         Path("build/eval") / name),
    ]  # fmt: skip


def _timed(cmd: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    """Parse arguments, start one server, time every stage command cold and warm."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--candidates", nargs="+", default=["teacher_4", "senseflow_4"])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    repo = args.repo.resolve()
    base_env = {k: v for k, v in os.environ.items() if k != "SENSEFLOW_WARM_SOCKET"}
    t0 = time.perf_counter()
    savings: dict[str, list[float]] = {}
    with background_server() as sock:
        while not sock.exists():
            if time.perf_counter() - t0 > 120:
                sys.exit("the warm server did not start in 120 s (see its message above)")
            time.sleep(0.05)
        print(f"server ready after {time.perf_counter() - t0:.1f} s (paid once per make run)")
        warm_env = {**base_env, "SENSEFLOW_WARM_SOCKET": str(sock)}
        for rep in range(args.repeat):
            for name in args.candidates:
                for stage, cmd, out in _stage_commands(name, args.profile):
                    times = {}
                    for mode, env in (("cold", base_env), ("warm", warm_env)):
                        shutil.rmtree(repo / out, ignore_errors=True)
                        times[mode] = _timed(cmd, env, repo)
                    savings.setdefault(stage, []).append(times["cold"] - times["warm"])
                    cold, warm = times["cold"], times["warm"]
                    print(f"run {rep} {stage:8s} {name:14s} cold {cold:6.1f} s   warm {warm:6.1f} s")
    for stage, s in savings.items():
        print(f"{stage}: mean saving {sum(s) / len(s):.1f} s per stage over {len(s)} runs")


if __name__ == "__main__":
    main()
