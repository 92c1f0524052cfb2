"""Quality gate: check evaluated summaries against a thresholds file and an optional baseline.

A thresholds file (``experiments/thresholds/<profile>.yaml``)::

    ignore_protocol_keys: [library_versions]   # protocol-card keys allowed to differ from the baseline
    metrics:
      adherence: {direction: higher, min: 0.03, regression_abs: 0.02, regression_rel: 0.10}
      fid_t_probe: {direction: lower, max: 400, regression_abs: 10, regression_rel: 0.10}

Per candidate and metric: the metric must be present and computed (``not_applicable`` counts
as missing), its ``higher_is_better`` must agree with ``direction``, ``min`` / ``max`` bound
the value, and against a baseline summary the regression (the change in the bad direction)
may not exceed ``regression_abs + regression_rel * |baseline|``; the baseline must have the
metric with the same protocol card (keys in ``ignore_protocol_keys`` excepted).

The regression is measured between the 95% intervals, not the point values: it is the
smallest regression both intervals allow (baseline's worse end against the candidate's
better end), so bootstrap noise alone never fails the gate; summaries without intervals fall
back to the point values. Library versions in the cards are compared at major.minor: patch
releases never count as a protocol change unless ``strict_library_versions: true``.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from senseflow.errors import UserError

NonNegative = Annotated[float, Field(ge=0)]


class GateFileError(UserError, ValueError):
    """A thresholds or summary file is missing, unreadable or malformed."""


class MetricRule(BaseModel):
    """Bounds and allowed regression of one metric."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    direction: Literal["higher", "lower"]
    min: float | None = None
    max: float | None = None
    regression_abs: NonNegative = 0.0
    regression_rel: NonNegative = 0.0
    # another candidate of the same aggregated summary this one must beat on this metric (strictly
    # better point value in ``direction``): a bound that moves with the run, e.g. every 4-step
    # student against the 4-step teacher it replaces, whatever the teacher's absolute quality
    beats: str | None = None


class Thresholds(BaseModel):
    """A whole thresholds file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    ignore_protocol_keys: list[str] = []
    # False: library versions in protocol cards are compared at major.minor (patch releases ignored)
    strict_library_versions: bool = False
    # rules of a single candidate's summary (``senseflow-eval evaluate``), and of every candidate of
    # an aggregated ``results/summary.json`` when ``candidates`` is empty
    metrics: dict[str, MetricRule] = {}
    # aggregated summaries: rules per candidate name (fnmatch patterns, e.g. "senseflow_*");
    # a pattern that matches no candidate of the summary is a failure (the candidate is missing)
    candidates: dict[str, dict[str, MetricRule]] = {}

    @model_validator(mode="after")
    def _some_rule(self) -> Thresholds:
        if not self.metrics and not self.candidates:
            raise ValueError("needs 'metrics' or 'candidates' rules")
        return self

    def rules_for(self, candidate: str, aggregated: bool) -> dict[str, MetricRule]:
        """The metric rules that apply to ``candidate`` (patterns merged in file order)."""
        if not aggregated or not self.candidates:
            return dict(self.metrics)
        out: dict[str, MetricRule] = {}
        for pattern, rules in self.candidates.items():
            if fnmatch.fnmatchcase(candidate, pattern):
                out.update(rules)
        return out


@dataclass(frozen=True)
class GateRow:
    """One verdict: candidate, metric, value, the rule checked and what failed (empty: passed)."""

    candidate: str
    metric: str
    value: float | None
    baseline: float | None
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """No problem found."""
        return not self.problems


def load_thresholds(path: str | Path) -> Thresholds:
    """Parse and validate a thresholds file; :class:`GateFileError` names the file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
        return Thresholds.model_validate(raw)
    except FileNotFoundError:
        raise GateFileError(f"thresholds file {path} is missing; see experiments/thresholds/") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GateFileError(f"thresholds file {path} is unreadable ({exc})") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise GateFileError(f"{path}: {loc}: {err['msg']}; fix the thresholds file") from None


def minor_versions(versions: dict | None) -> dict | None:
    """Library versions cut to major.minor (``2.14.1+cu130`` -> ``2.14``): patch releases dropped."""
    if not isinstance(versions, dict):
        return versions
    return {lib: ".".join(str(v).split("+")[0].split(".")[:2]) for lib, v in versions.items()}


def protocol_differences(a: dict, b: dict, ignore: list[str], *, strict_libraries: bool = False) -> list[str]:
    """Keys whose values differ between two protocol cards (``ignore`` excepted).

    ``library_versions`` are compared at major.minor unless ``strict_libraries``.
    """
    keys = sorted((set(a) | set(b)) - set(ignore))

    def value(card: dict, key: str):
        v = card.get(key)
        return minor_versions(v) if key == "library_versions" and not strict_libraries else v

    return [k for k in keys if value(a, k) != value(b, k)]


def interval_regression(entry: dict, base: dict, direction: str) -> tuple[float, float]:
    """``(point regression, regression supported by both 95% intervals)`` in the bad direction.

    The supported regression compares the baseline's worse end with the candidate's better
    end (for higher-is-better: ``base_low - value_high``); without intervals it equals the
    point regression.
    """
    v, b = float(entry["value"]), float(base["value"])
    point = (b - v) if direction == "higher" else (v - b)
    ci_v, ci_b = entry.get("ci95"), base.get("ci95")
    if not (
        isinstance(ci_v, list | tuple) and isinstance(ci_b, list | tuple) and len(ci_v) == len(ci_b) == 2
    ):
        return point, point
    supported = (ci_b[0] - ci_v[1]) if direction == "higher" else (ci_v[0] - ci_b[1])
    return point, supported


def check_metric(
    name: str,
    rule: MetricRule,
    entry: dict | None,
    base: dict | None,
    thresholds: Thresholds,
    rival: dict | None = None,
) -> tuple[float | None, list[str]]:
    """Problems of one metric of one candidate (empty list: it passes).

    ``rival`` is the same metric's entry of the candidate named by ``rule.beats``.
    """
    if not entry or entry.get("status") != "ok":
        why = entry.get("reason", entry.get("status")) if entry else "not in the summary"
        return None, [f"missing ({why})"]
    value = entry.get("value")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, [f"value {value!r} is not a finite number"]
    problems = []
    if entry.get("higher_is_better") is not None and entry["higher_is_better"] != (
        rule.direction == "higher"
    ):
        problems.append(f"direction: the summary says higher_is_better={entry['higher_is_better']}")
    if rule.min is not None and value < rule.min:
        problems.append(f"{value:.4g} < min {rule.min:g}")
    if rule.max is not None and value > rule.max:
        problems.append(f"{value:.4g} > max {rule.max:g}")
    if rule.beats is not None:
        r = (rival or {}).get("value")
        if (rival or {}).get("status") != "ok" or not isinstance(r, (int, float)):
            problems.append(f"cannot compare: {rule.beats}'s {name} is not in the summary")
        elif (value <= r) if rule.direction == "higher" else (value >= r):
            problems.append(f"{value:.4g} does not beat {rule.beats} ({r:.4g})")
    if base is not None:
        if base.get("status") != "ok" or not isinstance(base.get("value"), (int, float)):
            return value, [*problems, "missing in the baseline"]
        diff = protocol_differences(
            entry.get("protocol", {}), base.get("protocol", {}), thresholds.ignore_protocol_keys,
            strict_libraries=thresholds.strict_library_versions,
        )  # fmt: skip
        if diff:
            return value, [*problems, f"protocol mismatch with the baseline: {', '.join(diff)}"]
        b = float(base["value"])
        point, supported = interval_regression(entry, base, rule.direction)
        allowed = rule.regression_abs + rule.regression_rel * abs(b)
        if supported > allowed:
            problems.append(
                f"regressed by {point:.4g} from {b:.4g} ({supported:.4g} between the 95% intervals; "
                f"allowed {allowed:.4g})"
            )
    return value, problems


def _read_summary(path: Path) -> dict:
    """A per-candidate summary (``metrics``) or an aggregated one (``candidates``)."""
    import json

    from eval.summaries import read_summary

    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("candidates"), dict):
        return data
    return read_summary(path)


def _per_candidate(summary: dict, path: Path) -> tuple[dict[str, dict], bool]:
    """``{candidate: metrics}`` of a summary, and whether it was an aggregated one."""
    if "candidates" in summary:
        return {name: c.get("metrics", {}) for name, c in summary["candidates"].items()}, True
    return {summary.get("candidate") or str(path): summary["metrics"]}, False


def run_gate(
    summaries: list[str | Path], thresholds: str | Path, baseline: str | Path | None = None
) -> list[GateRow]:
    """Every (candidate, metric) verdict; unreadable summaries become failing rows."""
    rules = load_thresholds(thresholds)
    base_by_candidate = None
    if baseline:
        base_by_candidate, base_aggregated = _per_candidate(_read_summary(Path(baseline)), Path(baseline))
    rows = []
    for path in summaries:
        try:
            summary = _read_summary(Path(path))
        except UserError as exc:
            rows.append(GateRow(str(path), "*", None, None, (f"unreadable: {exc}",)))
            continue
        per_candidate, aggregated = _per_candidate(summary, Path(path))
        if aggregated:
            for pattern in rules.candidates:
                if not any(fnmatch.fnmatchcase(c, pattern) for c in per_candidate):
                    rows.append(
                        GateRow(pattern, "*", None, None, ("missing: no such candidate in the summary",))
                    )
        for candidate, metrics in per_candidate.items():
            base_metrics = None
            if base_by_candidate is not None:
                # a single-candidate baseline stands for whichever candidate is gated
                base_metrics = (
                    base_by_candidate.get(candidate, {})
                    if base_aggregated
                    else next(iter(base_by_candidate.values()))
                )
            for name, rule in rules.rules_for(candidate, aggregated).items():
                base = None if base_metrics is None else base_metrics.get(name, {"status": "missing"})
                rival = per_candidate.get(rule.beats, {}).get(name) if rule.beats else None
                value, problems = check_metric(name, rule, metrics.get(name), base, rules, rival)
                b = base.get("value") if base else None
                rows.append(GateRow(candidate, name, value, b, tuple(problems)))
    if not rows:
        rows.append(GateRow("*", "*", None, None, ("no rule applies to any candidate of the summary",)))
    return rows


def gate_json(rows: list[GateRow], thresholds: str | Path) -> dict:
    """What ``--out results/gate.json`` holds: the verdict and every row, failures first."""
    ordered = sorted(rows, key=lambda r: r.passed)
    return {
        "passed": all(r.passed for r in rows),
        "thresholds": str(thresholds),
        "rows": [
            {"candidate": r.candidate, "metric": r.metric, "value": r.value, "baseline": r.baseline,
             "passed": r.passed, "problems": list(r.problems)}
            for r in ordered
        ],
    }  # fmt: skip


def render_gate(rows: list[GateRow]) -> str:
    """The table ``senseflow-eval gate`` prints, with the overall verdict last."""
    lines = [f"{'candidate':24s} {'metric':16s} {'value':>10s} {'baseline':>10s}  verdict"]
    for r in rows:
        v = f"{r.value:10.4g}" if r.value is not None else f"{'-':>10s}"
        b = f"{r.baseline:10.4g}" if isinstance(r.baseline, (int, float)) else f"{'-':>10s}"
        verdict = "pass" if r.passed else "FAIL: " + "; ".join(r.problems)
        lines.append(f"{r.candidate:24s} {r.metric:16s} {v} {b}  {verdict}")
    failed = sum(not r.passed for r in rows)
    lines.append(
        f"gate: {'PASSED' if not failed else 'FAILED'} ({len(rows) - failed}/{len(rows)} checks pass)"
    )
    return "\n".join(lines)
