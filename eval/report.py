"""The ``report`` stage: results/summary.json and the paper-style tables.

Every candidate's evaluation gathered into ``results/summary.json`` and the paper-style
tables (main, ablation, speed, step curve) as Markdown and CSV.

Table builders are pure functions of the summary (a dict) and the paper's rows, so the
dashboard and the tests use them without touching files. The paper's numbers sit beside the
measured ones: for a real profile the same backbone's rows of ``experiments/paper/``; for the
embedded world the SDXL rows of the same methods, labelled as an analogue (another world and
scale: compare rankings and gaps, never values).
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from senseflow import pipeline as pl
from senseflow.config import ProfileConfig
from senseflow.io import atomic_write_text

PAPER_DIR = Path("experiments/paper")
# paper rows of each backbone, by pipeline method ("teacher" is the teacher row)
# The pipeline's students sample with the Euler flow step (real_run.export_real), so the SD 3.5 and
# FLUX rows are the paper's "(Euler)" ones; its unmarked rows use the x0 sampler.
PAPER_ROWS = {
    "sdxl": {"teacher": "SDXL (teacher)", "senseflow": "SenseFlow-SDXL", "lcm": "LCM-SDXL",
             "dmd2": "DMD2-SDXL", "hyper_sd": "Hyper-SDXL"},
    "sd35_large": {"teacher": "SD 3.5 Large (teacher)", "senseflow": "SenseFlow-SD3.5 (Euler)"},
    "flux_dev": {"teacher": "FLUX.1 dev (teacher)", "senseflow": "SenseFlow-FLUX (Euler)",
                 "hyper_sd": "Hyper-FLUX"},
}  # fmt: skip
PAPER_ABLATION = {"senseflow": "SenseFlow (full)", "no_isg": "without ISG", "no_ida": "without IDA",
                  "vanilla_dmd": "without IDA and ISG"}  # fmt: skip
# measured metric -> paper column (the embedded world's probe FID-T stands in for FID-T)
PAPER_COLUMNS = {"fid_t_probe": "fid_t", "fid_t": "fid_t", "patch_fid_t": "patch_fid_t", "clip_score": "clip",
                 "hpsv2": "hpsv2", "pickscore": "pickscore", "imagereward": "image_reward"}  # fmt: skip
METRIC_TITLES = {
    "fid_t_probe": "FID-T (probe)", "fid_t": "FID-T", "patch_fid_t": "patch FID-T", "fid": "FID",
    "adherence": "adherence", "clip_score_embedded": "CLIP (tiny)", "clip_score": "CLIP",
    "hpsv2": "HPSv2", "pickscore": "PickScore", "imagereward": "ImageReward",
}  # fmt: skip


def paper_backbone(cfg: ProfileConfig) -> tuple[str, bool]:
    """The paper backbone whose rows sit beside this profile's, and whether it is only an analogue."""
    if cfg.name in PAPER_ROWS:
        return cfg.name, False
    return {"sdxl": "sdxl", "sd3": "sd35_large", "flux": "flux_dev"}.get(cfg.family, "sdxl"), True


def read_paper(name: str, root: Path = PAPER_DIR) -> list[dict]:
    """Rows of ``experiments/paper/<name>.csv`` as dicts (numbers parsed, blanks None)."""
    path = root / f"{name}.csv"
    if not path.is_file():
        return []
    rows = []
    for row in csv.DictReader(path.open()):
        out = {}
        for k, v in row.items():
            try:
                out[k] = (
                    float(v)
                    if v not in ("", None) and k not in ("backbone", "method", "recipe", "source")
                    else (v or None)
                )
            except ValueError:
                out[k] = v
        rows.append(out)
    return rows


# ----------------------------------------------------------------------------- gathering
def paper_values(name: str, entry: dict, backbone: str, rows: list[dict]) -> dict:
    """``{metric: paper value}`` of the paper row matching a candidate (4-step students, the teacher)."""
    if entry.get("paper_row"):  # a public model: the row its registry recipe names
        method = entry["paper_row"]
    elif not (name == pl.REFERENCE or (entry["method"] != "teacher" and entry["steps"] == 4)):
        return {}
    else:
        method = PAPER_ROWS.get(backbone, {}).get(entry["method"])
    row = next((r for r in rows if r["method"] == method), None)
    if row is None:
        return {}
    return {
        m: row[col] for m, col in PAPER_COLUMNS.items() if row.get(col) is not None and m in entry["metrics"]
    }


def _speed(samples: Path) -> dict:
    """NFE and seconds per image of a sample folder (speed.json, else the manifest's records)."""
    speed_file = samples / "speed.json"
    if speed_file.is_file():
        data = json.loads(speed_file.read_text())
        return {"nfe": data.get("nfe"), "seconds_per_image": data.get("seconds_per_image")}
    manifest = samples / "manifest.jsonl"
    records = (
        [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()] if manifest.is_file() else []
    )
    if not records:
        return {"nfe": None, "seconds_per_image": None}
    secs = [r["seconds_per_image"] for r in records if r.get("seconds_per_image") is not None]
    return {"nfe": records[0].get("nfe"), "seconds_per_image": sum(secs) / len(secs) if secs else None}


def gather(cfg: ProfileConfig, *, ablations: bool, root: Path = Path(".")) -> dict:
    """``results/summary.json``'s content: every candidate the profile ran, with its metrics."""
    from eval.summaries import read_summary

    candidates, skipped = {}, {}
    for name in [*pl.CANDIDATES, *cfg.pipeline.registry_baselines]:
        c = pl.parse_candidate(name)
        reason = pl.candidate_inactive(cfg, name, ablations) or pl.skipped_reason(root / pl.eval_dir(name))
        if reason:
            skipped[name] = reason
            continue
        evaluated = read_summary(root / pl.eval_dir(name) / "summary.json")
        steps = c.steps if c.steps is not None else cfg.teacher.sample.steps
        candidates[name] = {
            "label": c.label, "kind": c.kind, "method": c.method, "steps": steps,
            **_speed(root / pl.samples_dir(name)),
            "samples": str(pl.samples_dir(name)), "eval": str(pl.eval_dir(name)), "paper_row": c.paper_row,
            "metrics": evaluated["metrics"], "compbench": compbench_metrics(cfg, name, root),
        }  # fmt: skip
    backbone, analogue = paper_backbone(cfg)
    paper_main = [r for r in read_paper("coco5k_4step", root / PAPER_DIR) if r["backbone"] == backbone]
    for name, entry in candidates.items():
        entry["paper"] = paper_values(name, entry, backbone, paper_main)
    ref = candidates.get(pl.REFERENCE, {}).get("seconds_per_image")
    for entry in candidates.values():
        sec = entry["seconds_per_image"]
        entry["speedup"] = round(ref / sec, 2) if ref and sec else None
    return {
        "profile": cfg.name,
        "family": cfg.family,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reference": pl.REFERENCE,
        "ablations": ablations,
        "candidates": candidates,
        "skipped": skipped,
        "paper": {
            "backbone": backbone,
            "analogue": analogue,
            "main": paper_main,
            "ablation": read_paper("ablation_sd35_large", root / PAPER_DIR),
            "compbench": [
                r for r in read_paper("t2i_compbench_4step", root / PAPER_DIR) if r["backbone"] == backbone
            ],
        },
    }


def compbench_metrics(cfg: ProfileConfig, candidate: str, root: Path = Path(".")) -> dict:
    """``{t2i_compbench_<category>: entry}`` of a candidate's evaluated T2I-CompBench folders.

    Real profiles with ``pipeline.compbench``: the summaries of ``build/compbench/eval/<candidate>/
    <category>/`` (kept apart from ``metrics``: they are scored on other prompts and images).
    """
    from eval.summaries import read_summary

    if candidate not in pl.compbench_candidates(cfg):
        return {}
    out = {}
    for category in cfg.pipeline.compbench.categories:
        path = root / pl.compbench_eval_dir(candidate) / category / "summary.json"
        name = f"t2i_compbench_{category}"
        if path.is_file() and name in (metrics := read_summary(path)["metrics"]):
            out[name] = metrics[name]
    return out


# ----------------------------------------------------------------------------- tables
def _value(entry: dict | None) -> float | None:
    if not entry or entry.get("status") != "ok":
        return None
    return float(entry["value"])


def _cell(entry: dict | None) -> str:
    """``12.34 [11.9, 12.8]``, ``n/a`` (not applicable) or ``-`` (not measured)."""
    if not entry:
        return "-"
    if entry.get("status") != "ok":
        return "n/a"
    v, (lo, hi) = entry["value"], entry.get("ci95", [math.nan, math.nan])
    return f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"


def metric_names(summary: dict) -> list[str]:
    """Metrics present in any candidate, in a stable order."""
    seen: dict[str, None] = {}
    for entry in summary["candidates"].values():
        seen.update(dict.fromkeys(entry["metrics"]))
    return list(seen)


def main_table(summary: dict) -> pd.DataFrame:
    """Teacher and every method at 4 steps (plus 1-step rows): NFE, metrics, the paper beside."""
    paper = {r["method"]: r for r in summary["paper"]["main"]}
    mapping = PAPER_ROWS.get(summary["paper"]["backbone"], {})
    rows = []
    for name, e in summary["candidates"].items():
        if e["kind"] == "ablation" or (e["method"] != "teacher" and e["steps"] == 2):
            continue
        row = {"candidate": name, "method": e["label"], "NFE": e["nfe"]}
        if e.get("paper_row"):  # a public model: the row its registry recipe names, at its own steps
            prow = paper.get(e["paper_row"], {})
        elif e["steps"] in (4, None) or name == pl.REFERENCE:
            prow = paper.get(mapping.get(e["method"], ""), {})
        else:
            prow = {}
        for m, entry in e["metrics"].items():
            row[METRIC_TITLES.get(m, m)] = _cell(entry)
            col = PAPER_COLUMNS.get(m)
            if (
                col
                and (name == pl.REFERENCE or e["steps"] == 4 or e.get("paper_row"))
                and prow.get(col) is not None
            ):
                row[f"{METRIC_TITLES.get(m, m)} (paper)"] = _fmt(prow[col])
        row["s/img"] = _fmt(e["seconds_per_image"])
        row["speedup"] = _fmt(e.get("speedup"))
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_table(summary: dict) -> pd.DataFrame:
    """SenseFlow with IDA / ISG / GAN switched off (4 steps), beside the paper's SD 3.5 ablation."""
    paper = {r["recipe"]: r for r in summary["paper"]["ablation"]}
    switches = {"senseflow": (1, 1, 1), "no_ida": (0, 1, 1), "no_isg": (1, 0, 1), "no_gan": (1, 1, 0),
                "vanilla_dmd": (0, 0, 0)}  # fmt: skip
    rows = []
    for method, (ida, isg, gan) in switches.items():
        e = summary["candidates"].get(f"{method}_4")
        if e is None:
            continue
        row = {"recipe": e["label"], "IDA": "on" if ida else "off", "ISG": "on" if isg else "off",
               "GAN": "on" if gan else "off"}  # fmt: skip
        for m, entry in e["metrics"].items():
            row[METRIC_TITLES.get(m, m)] = _cell(entry)
        prow = paper.get(PAPER_ABLATION.get(method, ""), {})
        row["FID-T (paper, SD3.5-L)"] = _fmt(prow.get("fid_t"))
        rows.append(row)
    return pd.DataFrame(rows)


def speed_table(summary: dict) -> pd.DataFrame:
    """NFE, measured seconds per image and speedup against the full-step teacher."""
    rows = [
        {"candidate": n, "method": e["label"], "steps": e["steps"], "NFE": e["nfe"],
         "s/img": _fmt(e["seconds_per_image"]), "speedup": _fmt(e.get("speedup"))}
        for n, e in summary["candidates"].items()
    ]  # fmt: skip
    return pd.DataFrame(rows)


def steps_table(summary: dict) -> pd.DataFrame:
    """Quality against NFE for the teacher and every student (the step-count curve)."""
    rows = []
    for n, e in summary["candidates"].items():
        if e["kind"] == "ablation" or n == pl.NOISE_FLOOR:
            continue
        row = {"method": "teacher" if e["method"] == "teacher" else e["method"], "steps": e["steps"],
               "NFE": e["nfe"]}  # fmt: skip
        for m, entry in e["metrics"].items():
            row[m] = _value(entry)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["method", "NFE"]) if rows else pd.DataFrame(rows)


# measured T2I-CompBench metric -> paper column (the embedded world's probe categories, and the
# real profiles' metrics under the same names)
COMPBENCH_COLUMNS = {"compbench_colour": "color", "compbench_shape": "shape", "compbench_texture": "texture",
                     "compbench_spatial": "spatial", "compbench_non_spatial": "non_spatial",
                     "compbench_complex": "complex_3in1",
                     **{f"t2i_compbench_{c}": c for c in ("color", "shape", "texture", "spatial",
                                                          "non_spatial")},
                     "t2i_compbench_complex": "complex_3in1"}  # fmt: skip


def compbench_table(summary: dict) -> pd.DataFrame:
    """T2I-CompBench at 4 steps: measured rows (teacher and 4-step methods), then the paper's rows."""
    rows = []
    for name, e in summary["candidates"].items():
        if e["kind"] == "ablation" or not (name == pl.REFERENCE or e["steps"] == 4):
            continue
        found = {**e["metrics"], **e.get("compbench", {})}  # embedded: the probe's; real: its own folders
        measured = {col: found[m] for m, col in COMPBENCH_COLUMNS.items() if m in found}
        if measured:
            rows.append(
                {"source": "measured", "method": e["label"], **{c: _cell(v) for c, v in measured.items()}}
            )
    for r in summary["paper"].get("compbench", []):
        rows.append({"source": "paper", "method": r["method"],
                     **{c: _fmt(r.get(c)) for c in COMPBENCH_COLUMNS.values()}})  # fmt: skip
    return pd.DataFrame(rows)


def compbench_note(cfg: ProfileConfig) -> str:
    """What the measured T2I-CompBench rows are (the probe's analogue, or the benchmark, deviations named)."""
    if cfg.family == "embedded":
        return ("Embedded: colour = colour binding, shape = digit, spatial = position, complex = every "
                "attribute (the probe judges; no BLIP-VQA, detector or CLIP).")  # fmt: skip
    if cfg.pipeline.compbench is None:
        return "No measured rows: the profile has no pipeline.compbench."
    return (
        "Measured: 10 images per prompt at seeds 42-51 on the benchmark's validation prompts (hashes in each "
        "card). B-VQA runs the Hub port of BLIP-VQA at 480 px with [ENC]; spatial uses OWLv2 instead of "
        "UniDet under the same rule (approximate); non-spatial is CLIP ViT-B/32 raw cosine "
        "(docs/evaluation.md)."
    )


def to_markdown(df: pd.DataFrame, title: str, note: str = "") -> str:
    """A GitHub-style Markdown table (no tabulate dependency) with a title and a note."""
    out = io.StringIO()
    out.write(f"## {title}\n\n")
    if note:
        out.write(note + "\n\n")
    if df.empty:
        out.write("(no rows: the stages that fill this table did not run)\n")
        return out.getvalue()
    cols = list(df.columns)
    out.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
    for _, r in df.iterrows():
        out.write("| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in r.tolist()) + " |\n")
    return out.getvalue()


def write_report(cfg: ProfileConfig, *, ablations: bool, root: Path = Path(".")) -> dict:
    """Write ``results/summary.json`` and ``results/tables/<profile>/*.{md,csv}``; return the summary."""
    summary = gather(cfg, ablations=ablations, root=root)
    results = root / "results"
    tables = results / "tables" / cfg.name
    tables.mkdir(parents=True, exist_ok=True)
    backbone, analogue = summary["paper"]["backbone"], summary["paper"]["analogue"]
    paper_note = (
        f"Paper columns: the {backbone} rows of the same methods, for orientation only (another world "
        "and scale: compare rankings, not values)."
        if analogue
        else f"Paper columns: the paper's {backbone} rows."
    )
    skipped = "; ".join(f"{k}: {v}" for k, v in summary["skipped"].items() if "steps" not in v)
    specs = {
        "main": (main_table, "Main table (4 steps, and 1 step where trained)", paper_note),
        "ablation": (ablation_table, "Ablation: IDA, ISG, GAN", "Paper column: SD 3.5 Large, 4 steps. "
                     "Our vanilla_dmd also drops the GAN; the paper's 'without IDA and ISG' keeps it."),
        "speed": (speed_table, "Speed",
                  "Seconds per image measured on this machine at the profile's batch size."),
        "steps": (steps_table, "Quality against NFE", "Teacher and every student at each step count."),
        "compbench": (compbench_table, "T2I-CompBench (4 steps)", paper_note + " " + compbench_note(cfg)),
    }  # fmt: skip
    for name, (build, title, note) in specs.items():
        df = build(summary)
        atomic_write_text(tables / f"{name}.csv", df.to_csv(index=False))
        atomic_write_text(tables / f"{name}.md", to_markdown(df, f"{title}: {cfg.name}", note))
    if skipped:
        atomic_write_text(tables / "skipped.md", "## Not run\n\n" + skipped.replace("; ", "\n\n") + "\n")
    atomic_write_text(results / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(results / "metrics.json", json.dumps(compact_metrics(summary), indent=2) + "\n")
    return summary


def compact_metrics(summary: dict) -> dict:
    """``{candidate: {metric: value, nfe, seconds_per_image}}``: for `dvc metrics show` / `dvc exp show`."""
    out = {}
    for name, e in summary["candidates"].items():
        row = {m: round(v, 6) for m, entry in e["metrics"].items() if (v := _value(entry)) is not None}
        row |= {"nfe": e["nfe"], "seconds_per_image": e["seconds_per_image"]}
        out[name] = row
    return out
