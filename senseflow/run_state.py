"""What makes two training runs "the same run": a settings fingerprint and its differences.

The teacher loop and the distillation loop both refuse to resume a checkpoint written under
other settings; they share this comparison and word the refusal for their own folder.
"""

from __future__ import annotations

import json


def run_fingerprint(config: dict) -> dict:
    """JSON-normal form of a run's settings (tuples become lists, keys strings) for comparison."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_differences(saved: dict, current: dict) -> list[str]:
    """``"key: saved -> current"`` for every setting that differs (empty when it is the same run)."""
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)]  # fmt: skip
