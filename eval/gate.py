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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class Thresholds(BaseModel):
    """A whole thresholds file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    ignore_protocol_keys: list[str] = []
    metrics: dict[str, MetricRule]


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


def protocol_differences(a: dict, b: dict, ignore: list[str]) -> list[str]:
    """Keys whose values differ between two protocol cards (``ignore`` excepted)."""
    keys = sorted((set(a) | set(b)) - set(ignore))
    return [k for k in keys if a.get(k) != b.get(k)]


def check_metric(
    name: str, rule: MetricRule, entry: dict | None, base: dict | None, thresholds: Thresholds
) -> tuple[float | None, list[str]]:
    """Problems of one metric of one candidate (empty list: it passes)."""
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
    if base is not None:
        if base.get("status") != "ok" or not isinstance(base.get("value"), (int, float)):
            return value, [*problems, "missing in the baseline"]
        diff = protocol_differences(
            entry.get("protocol", {}), base.get("protocol", {}), thresholds.ignore_protocol_keys
        )
        if diff:
            return value, [*problems, f"protocol mismatch with the baseline: {', '.join(diff)}"]
        b = float(base["value"])
        regression = (b - value) if rule.direction == "higher" else (value - b)
        allowed = rule.regression_abs + rule.regression_rel * abs(b)
        if regression > allowed:
            problems.append(f"regressed by {regression:.4g} from {b:.4g} (allowed {allowed:.4g})")
    return value, problems


def _read_summary(path: Path) -> dict:
    from eval.evaluate import read_summary

    return read_summary(path)


def run_gate(
    summaries: list[str | Path], thresholds: str | Path, baseline: str | Path | None = None
) -> list[GateRow]:
    """Every (candidate, metric) verdict; unreadable summaries become failing rows."""
    rules = load_thresholds(thresholds)
    base_metrics = _read_summary(Path(baseline))["metrics"] if baseline else None
    rows = []
    for path in summaries:
        try:
            summary = _read_summary(Path(path))
        except UserError as exc:
            rows.append(GateRow(str(path), "*", None, None, (f"unreadable: {exc}",)))
            continue
        candidate = summary.get("candidate") or str(path)
        for name, rule in rules.metrics.items():
            base = None if base_metrics is None else base_metrics.get(name, {"status": "missing"})
            value, problems = check_metric(name, rule, summary["metrics"].get(name), base, rules)
            b = base.get("value") if base else None
            rows.append(GateRow(candidate, name, value, b, tuple(problems)))
    return rows


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
