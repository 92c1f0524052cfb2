"""Evaluate a sample folder: per-image scores, ``summary.json`` with intervals and protocol cards.

Outputs (written atomically into ``--out``):

- ``scores.parquet``: one row per usable image (``id``, ``file``, ``prompt``, ``seed``) and one
  column per per-image metric. Parquet needs ``pyarrow``; without it the same table is
  written as ``scores.csv`` (``summary.json`` names the file actually written).
- ``summary.json``: per metric ``status`` (``ok`` or ``not_applicable`` with the reason),
  ``value``, ``ci95`` (seeded bootstrap), ``n``, ``higher_is_better``, ``protocol`` and
  ``details``; plus the files skipped with ``--skip-bad`` and why.

:func:`compare` pairs two evaluated folders by prompt id and seed and bootstraps the mean
difference of each per-image metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from eval import registry
from eval.gate import protocol_differences
from eval.image_protocols import check_protocol
from eval.prompts import prompt_set_hash
from eval.sample_folder import SampleFolderError, load_sample_folder
from eval.sharding import Shard, current_shard
from eval.stats import N_BOOT, N_BOOT_SET, bootstrap_mean_ci, paired_difference
from eval.summaries import SUMMARY, read_summary  # noqa: F401  (re-exported: eval.evaluate.read_summary)
from senseflow.errors import MissingArtefactError, UserError
from senseflow.io import atomic_write, atomic_write_text, ensure_writable_dir

KEYS = ("id", "file", "prompt", "seed")


class ScoreError(UserError, ValueError):
    """A metric produced an unusable score (NaN or inf); the message names the file."""


def _parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _scores_name() -> str:
    return "scores.parquet" if _parquet_available() else "scores.csv"


def write_scores(table: pd.DataFrame, out_dir: Path) -> str:
    """Write the per-image table as parquet (CSV when pyarrow is absent); return the file name."""
    if _parquet_available():
        atomic_write(out_dir / "scores.parquet", lambda p: table.to_parquet(p, index=False))
        return "scores.parquet"
    atomic_write(out_dir / "scores.csv", lambda p: table.to_csv(p, index=False))
    return "scores.csv"


def read_scores(out_dir: str | Path) -> pd.DataFrame:
    """The per-image table of an evaluated folder (the file its summary names)."""
    out_dir = Path(out_dir)
    summary = read_summary(out_dir / SUMMARY)
    path = out_dir / summary.get("scores_file", "scores.parquet")
    if not path.is_file():
        raise MissingArtefactError(f"{path} is missing: rerun `senseflow-eval evaluate --out {out_dir}`")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"id": str})
    except Exception as exc:  # pyarrow / csv raise many types for a damaged file
        raise UserError(f"{path} is unreadable ({exc}); rerun `senseflow-eval evaluate`") from exc


def _finite_per_image(name: str, result, folder, skip_bad: bool, skipped: list[dict]) -> np.ndarray:
    """Per-image scores checked for NaN / inf: an error naming the file, or skipped entries."""
    scores = np.asarray(result.per_image, dtype=np.float64)
    if scores.shape != (len(folder.records),):
        raise ValueError(f"metric {name} returned {scores.shape} scores for {len(folder.records)} images")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad) and not skip_bad:
        raise ScoreError(
            f"{folder.path / folder.records[bad[0]]['file']}: metric {name} scored it {scores[bad[0]]} "
            f"({len(bad)} non-finite scores); check the image, or pass --skip-bad to leave it out"
        )
    skipped += [{"file": folder.records[i]["file"], "reason": f"{name} score is {scores[i]}"} for i in bad]
    return scores


def evaluate(
    samples: str | Path,
    metrics: list[str],
    out: str | Path,
    *,
    reference: str | Path | None = None,
    probe: str | Path | None = None,
    clip: str | Path | None = None,
    skip_bad: bool = False,
    seed: int = 0,
    n_boot: int = N_BOOT,
    n_boot_set: int = N_BOOT_SET,
    shard: Shard | None = None,
    not_applicable: dict[str, str] | None = None,
    protocol: str = "dmd2",
    paired_seeds: bool = True,
) -> dict:
    """Score ``samples`` with ``metrics``; write ``scores.*`` and ``summary.json`` to ``out``.

    ``protocol`` is the image protocol of FID and CLIP score (:mod:`eval.image_protocols`):
    ``dmd2`` (the paper's, default), ``clean`` or ``torchmetrics``; every card records it.
    ``paired_seeds=False`` lets FID-T pair images of other seeds (the noise-floor set).

    Under torchrun (an initialised process group) each rank scores its block of images
    (:mod:`eval.sharding`); every rank returns the same summary and rank 0 writes the files.
    """
    shard = shard or current_shard()
    if not metrics:
        raise UserError("--metrics is empty: name at least one metric (e.g. adherence,fid_t_probe)")
    unknown = [m for m in metrics if m not in registry.known()]
    if unknown:
        raise registry.MetricError(f"unknown metric {unknown[0]!r} (known: {', '.join(registry.known())})")
    check_protocol(protocol)
    out = ensure_writable_dir(out)
    folder = load_sample_folder(samples, skip_bad=skip_bad)
    ref = load_sample_folder(reference, skip_bad=skip_bad) if reference else None
    ctx = registry.EvalContext(
        samples=folder,
        reference=ref,
        probe_path=Path(probe) if probe else None,
        clip_path=Path(clip) if clip else None,
        seed=seed,
        n_boot=n_boot,
        n_boot_set=n_boot_set,
        shard=shard,
        protocol=protocol,
        paired_seeds=paired_seeds,
        prompt_set_sha256=prompt_set_hash((r["id"], r["prompt"]) for r in folder.records),
    )
    table = pd.DataFrame({k: [r[k] for r in folder.records] for k in KEYS})
    table["id"] = table["id"].astype(str)
    skipped = list(folder.skipped) + ([{**s, "folder": "reference"} for s in ref.skipped] if ref else [])
    results: dict[str, dict] = {}
    for name in metrics:
        # the caller's reasons first (e.g. FID-T of the reference set itself), then the registry's
        reason = (not_applicable or {}).get(name) or registry.not_applicable(name, ctx)
        if reason:
            results[name] = {"status": "not_applicable", "reason": reason}
            continue
        res = registry.get(name).factory()(ctx)
        entry = {"status": "ok", "higher_is_better": res.higher_is_better}
        if res.per_image is not None:
            scores = _finite_per_image(name, res, folder, skip_bad, skipped)
            table[name] = scores
            ok = scores[np.isfinite(scores)]
            if not len(ok):
                raise ScoreError(f"{folder.path}: metric {name} has no finite score")
            value, ci = bootstrap_mean_ci(ok, n_boot=n_boot, seed=seed)
            entry |= {"kind": "per_image", "value": value, "ci95": list(ci), "n": len(ok)}
        else:
            if res.value is None or not np.isfinite(res.value):
                raise ScoreError(
                    f"{folder.path}: metric {name} is {res.value}; check the images and features"
                )
            entry |= {"kind": "set", "value": float(res.value), "ci95": list(res.ci95), "n": res.n}
        results[name] = entry | {"protocol": res.protocol, "details": res.details}
    scores_file = write_scores(table, out) if shard.rank == 0 else _scores_name()
    summary = {
        "candidate": folder.path.name,
        "samples": str(folder.path),
        "reference": str(ref.path) if ref else None,
        "n_images": len(folder.records),
        "ranks": shard.world_size,
        "scores_file": scores_file,
        "seed": seed,
        "skipped": skipped,
        "metrics": results,
    }
    if shard.rank == 0:
        atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def compare(
    a: str | Path, b: str | Path, *, metrics: list[str] | None = None, seed: int = 0, n_boot: int = N_BOOT
):
    """Paired bootstrap of ``B - A`` per per-image metric, over prompt ids and seeds both share."""
    ta, tb = read_scores(a), read_scores(b)
    shared_metrics = [c for c in ta.columns if c in tb.columns and c not in KEYS]
    if metrics:
        missing = [m for m in metrics if m not in shared_metrics]
        if missing:
            raise UserError(
                f"metric {missing[0]!r} has no per-image scores in both {a} and {b} "
                f"(shared: {', '.join(shared_metrics) or 'none'}); set-level metrics cannot be paired"
            )
        shared_metrics = metrics
    merged = ta.merge(tb, on=["id", "seed"], suffixes=("_a", "_b"))
    if len(merged) < 2:
        raise SampleFolderError(
            f"{a} and {b} share {len(merged)} (prompt id, seed) pairs: compare folders sampled on the same "
            "prompts with the same seeds"
        )
    cards_a, cards_b = read_summary(Path(a) / SUMMARY)["metrics"], read_summary(Path(b) / SUMMARY)["metrics"]
    rows = {}
    for m in shared_metrics:
        pair = merged[[f"{m}_a", f"{m}_b"]].dropna()
        # a paired difference is only meaningful under one protocol; the folders' own sizes may differ
        diff = protocol_differences(
            cards_a.get(m, {}).get("protocol", {}),
            cards_b.get(m, {}).get("protocol", {}),
            ignore=["image_count", "prompt_set_sha256"],
        )
        rows[m] = {
            "mean_a": float(pair[f"{m}_a"].mean()),
            "mean_b": float(pair[f"{m}_b"].mean()),
            **paired_difference(pair[f"{m}_a"], pair[f"{m}_b"], n_boot=n_boot, seed=seed),
            "protocol_differences": diff,
        }
    return rows


def render_compare(rows: dict, a: str | Path, b: str | Path) -> str:
    """The table ``senseflow-eval compare`` prints."""
    lines = [
        f"A = {a}",
        f"B = {b}",
        f"{'metric':16s} {'A':>9s} {'B':>9s} {'B - A':>9s}  95% interval        n  verdict",
    ]
    for m, r in rows.items():
        verdict = "significant" if r["significant"] else "not significant"
        lines.append(
            f"{m:16s} {r['mean_a']:9.4f} {r['mean_b']:9.4f} {r['difference']:+9.4f}  "
            f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] {r['n']:5d}  {verdict}"
        )
        if r["protocol_differences"]:
            lines.append(f"  warning: {m} protocols differ in {', '.join(r['protocol_differences'])}")
    return "\n".join(lines)
