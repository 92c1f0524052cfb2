"""Reading a candidate's ``summary.json`` without the evaluation stack.

Kept apart from :mod:`eval.evaluate` (which imports the metric registry, numpy and pandas)
so that the gate and the report, which only read summaries, start in well under a second:
the smoke pipeline runs both as DVC stages.
"""

from __future__ import annotations

import json
from pathlib import Path

from senseflow.errors import MissingArtefactError, UserError

SUMMARY = "summary.json"


def read_summary(path: str | Path) -> dict:
    """A ``summary.json`` (or a folder holding one); one clear error when it is missing or not JSON."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingArtefactError(f"{path} is missing: run `senseflow-eval evaluate` first") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); rerun `senseflow-eval evaluate`") from exc
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise UserError(f"{path}: no 'metrics' mapping; not a summary written by `senseflow-eval evaluate`")
    return data
