"""``make run-study``: every method with several seeds, mean and 95% interval over seeds, paired tests.

``make run`` trains one seed per method, so its table cannot say whether two methods differ.
The study retrains SenseFlow, vanilla DMD, DMD2, LCM, Hyper-SD and the ablations with each
seed of ``--seeds`` (the seed of ``distill`` and of both consistency baselines: initialisation,
data order and noise), samples every student at 4 steps on the candidates' seeds, evaluates it
against the pipeline's full-step reference (``build/samples/teacher_full``, drawn from other
seeds) and writes, per method and metric, the mean over seeds with a Student-t 95% interval,
plus a paired test of SenseFlow against every other method:

* over seeds: the per-seed differences ``SenseFlow(s) - other(s)`` (same seed, same teacher,
  same prompts), their mean, t interval and two-sided p-value (paired t-test, ``n - 1`` df);
* for adherence also over images: every (seed, prompt) pair judged for both methods, the
  paired bootstrap of the difference (:func:`eval.stats.paired_difference`).

Layout under ``--out`` (default ``build/study``)::

    runs/<method>/seed<k>/       training run (resumes when rerun) and its student/
    samples/<method>/seed<k>/    4-step samples
    eval/<method>/seed<k>/       summary.json + scores
    study.json, study.md         the table (rerunning skips finished cells)

It needs what ``make run`` builds first: the world, probe, teacher and ``teacher_full``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from senseflow.config import ProfileConfig, load_profile
from senseflow.errors import MissingArtefactError, UserError
from senseflow.io import atomic_write_text
from senseflow.pipeline import CACHE, PROBE, TEACHER, WORLD, samples_dir
from senseflow.pipeline import REFERENCE as REFERENCE_NAME

log = logging.getLogger(__name__)

METHODS = ("senseflow", "vanilla_dmd", "dmd2", "lcm", "hyper_sd", "no_ida", "no_isg", "no_gan")
METRICS = ("adherence", "fid_t_probe", "kid_t_probe")
HIGHER_IS_BETTER = {"adherence": True, "fid_t_probe": False, "kid_t_probe": False}
REFERENCE = samples_dir(REFERENCE_NAME)  # teacher_full: the set metrics' reference


# ----------------------------------------------------------------------------- statistics
def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile ``t_{(1 + level) / 2, df}``."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean over seeds and its Student-t interval (``nan`` bounds with one seed)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci95": [math.nan, math.nan], "n": len(x), "values": x.tolist()}
    half = t_quantile(len(x) - 1, level) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(x), "values": x.tolist()}


def paired_t(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """Paired t-test of ``a - b`` over seeds: mean difference, its t interval, two-sided p."""
    from scipy.stats import t

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    out = mean_interval(d.tolist(), level)
    if len(d) < 2:
        return {**out, "p": math.nan}
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    p = (
        1.0
        if se == 0 and out["mean"] == 0
        else (0.0 if se == 0 else 2 * float(t.sf(abs(out["mean"]) / se, len(d) - 1)))
    )
    return {**out, "p": p}


def study_table(cells: dict[str, dict[int, dict]], reference_method: str = "senseflow") -> dict:
    """Aggregate ``cells[method][seed] = {metric: value, "adherence_images": [...]}`` into the table."""
    from eval.stats import N_BOOT, paired_difference

    rows = {}
    for method, by_seed in cells.items():
        seeds = sorted(by_seed)
        rows[method] = {
            m: mean_interval([by_seed[s][m] for s in seeds])
            for m in METRICS
            if all(m in by_seed[s] for s in seeds)
        }
        rows[method]["seeds"] = seeds
    tests = {}
    ref = cells.get(reference_method, {})
    for method, by_seed in cells.items():
        if method == reference_method:
            continue
        seeds = sorted(set(ref) & set(by_seed))
        tests[method] = {"seeds": seeds}
        for m in METRICS:
            if seeds and all(m in ref[s] and m in by_seed[s] for s in seeds):
                tests[method][m] = paired_t([ref[s][m] for s in seeds], [by_seed[s][m] for s in seeds])
        a = np.concatenate([ref[s]["adherence_images"] for s in seeds]) if seeds else np.array([])
        b = np.concatenate([by_seed[s]["adherence_images"] for s in seeds]) if seeds else np.array([])
        if len(a) >= 2 and len(a) == len(b):
            # paired_difference reports B - A: SenseFlow is B, so the sign matches the seed test's
            tests[method]["adherence_images"] = paired_difference(b, a, n_boot=N_BOOT, seed=0)
    return {"reference_method": reference_method, "rows": rows, "tests": tests}


def render_markdown(table: dict) -> str:
    """The study table as Markdown: mean [95% interval] per metric, then the paired tests."""

    def cell(stat: dict | None, digits: int) -> str:
        if not stat:
            return "-"
        lo, hi = stat["ci95"]
        band = "" if math.isnan(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
        return f"{stat['mean']:.{digits}f}{band}"

    digits = {"adherence": 3, "fid_t_probe": 1, "kid_t_probe": 2}
    lines = ["| method | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for method, row in table["rows"].items():
        vals = " | ".join(cell(row.get(m), digits[m]) for m in METRICS)
        lines.append(f"| {method} | {len(row['seeds'])} | {vals} |")
    ref = table["reference_method"]
    lines += ["", f"Paired tests, {ref} minus each method (over seeds: mean [95% t interval], p):", "",
              "| method | " + " | ".join(METRICS) + " | adherence over images |",
              "|---" * (len(METRICS) + 2) + "|"]  # fmt: skip
    for method, test in table["tests"].items():
        vals = []
        for m in METRICS:
            st = test.get(m)
            vals.append("-" if not st else f"{cell(st, digits[m])} p={st['p']:.3f}")
        img = test.get("adherence_images")
        img_s = "-" if not img else f"{img['difference']:+.3f} [{img['ci_low']:+.3f}, {img['ci_high']:+.3f}]"
        lines.append(f"| {method} | " + " | ".join(vals) + f" | {img_s} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- running
def seeded_profile(profile: str, seed: int, overrides: list[str]) -> ProfileConfig:
    """The profile with ``seed`` as the seed of the distillation loop and of both baselines."""
    seeds = [f"distill.seed={seed}", f"baselines.lcm.seed={seed}", f"baselines.hyper_sd.seed={seed}"]
    return load_profile(profile, [*overrides, *seeds])


def check_inputs() -> None:
    """What ``make run`` builds and the study reuses must exist (clear error otherwise)."""
    missing = [str(p) for p in (WORLD, TEACHER, PROBE, REFERENCE) if not p.exists()]
    if missing:
        raise MissingArtefactError(
            f"the study reuses the pipeline's world, probe, teacher and reference samples; missing: "
            f"{', '.join(missing)}. Run `make run` (or `dvc repro`) first"
        )


def run_cell(cfg: ProfileConfig, method: str, seed: int, out: Path, progress: bool) -> dict:
    """Train, sample (4 steps) and evaluate one (method, seed); return its metric values."""
    from eval.evaluate import evaluate
    from senseflow.generate import generate
    from senseflow.stages import train

    run = out / "runs" / method / f"seed{seed}"
    samples = out / "samples" / method / f"seed{seed}"
    ev = out / "eval" / method / f"seed{seed}"
    cache = CACHE if CACHE.is_dir() else None
    t0 = time.perf_counter()
    if not (run / "student" / "recipe.json").is_file():
        # the pipeline's one dispatch; no in-loop curve (the study scores the exported student)
        train(cfg, run, method, world_dir=WORLD, teacher_dir=TEACHER, probe_path=PROBE, reference_dir=None,
              cache_dir=cache, progress=progress)  # fmt: skip
    s = cfg.teacher.sample
    # the candidates' seeds (teacher.sample.seed, offset 0): independent of the reference's
    generate(str(run / "student"), str(WORLD / "prompts" / "test.jsonl"), samples, profile=cfg, steps=4,
             seed=s.seed, limit=s.n_prompts, batch_size=s.batch_size, world_dir=WORLD,
             teacher_dir=TEACHER, progress=progress)  # fmt: skip
    summary = evaluate(samples, list(METRICS), ev, reference=REFERENCE, probe=PROBE,
                       seed=cfg.pipeline.eval_seed, n_boot=cfg.pipeline.n_boot,
                       n_boot_set=cfg.pipeline.n_boot_set,
                       paired_seeds=False)  # the reference is on other seeds by design  # fmt: skip
    from eval.evaluate import read_scores

    cell = {m: float(summary["metrics"][m]["value"]) for m in METRICS}
    scores = read_scores(ev).sort_values("id")
    cell["adherence_images"] = scores["adherence"].astype(float).to_numpy()
    cell["seconds"] = round(time.perf_counter() - t0, 1)
    return cell


def run_study(profile: str, seeds: list[int], methods: list[str], out: str | Path = "build/study", *,
              overrides: list[str] | None = None, progress: bool = False) -> dict:  # fmt: skip
    """Run every (method, seed) cell not yet done, then write ``study.json`` and ``study.md``."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown study method {unknown[0]!r} (known: {', '.join(METHODS)})")
    check_inputs()
    out = Path(out)
    done_path = out / "cells.json"
    done = json.loads(done_path.read_text()) if done_path.is_file() else {}
    cells: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        cfg = seeded_profile(profile, seed, overrides or [])
        for method in methods:
            key = f"{method}/seed{seed}"
            if key not in done:
                log.info("study: %s", key)
                cell = run_cell(cfg, method, seed, out, progress)
                done[key] = {**cell, "adherence_images": cell["adherence_images"].tolist()}
                atomic_write_text(done_path, json.dumps(done) + "\n")
            cells.setdefault(method, {})[seed] = {
                **done[key],
                "adherence_images": np.asarray(done[key]["adherence_images"]),
            }
    table = study_table(cells)
    table.update({"profile": profile, "seeds": seeds, "overrides": overrides or []})
    atomic_write_text(out / "study.json", json.dumps(table, indent=2) + "\n")
    atomic_write_text(out / "study.md", render_markdown(table))
    return table


def main(argv: list[str] | None = None) -> None:
    """``python -m senseflow.study --profile embedded --seeds 0 1 2`` (what ``make run-study`` runs)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--out", default="build/study")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        table = run_study(args.profile, args.seeds, args.methods, args.out, overrides=args.overrides)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(render_markdown(table))


if __name__ == "__main__":
    main()
