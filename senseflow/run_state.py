"""What makes two training runs "the same run": a settings fingerprint and its differences.

The teacher loop and the distillation loop both refuse to resume a checkpoint written under
other settings; they share this comparison and word the refusal for their own folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path


def run_fingerprint(config: dict) -> dict:
    """JSON-normal form of a run's settings (tuples become lists, keys strings) for comparison."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_differences(saved: dict, current: dict) -> list[str]:
    """``"key: saved -> current"`` for every setting that differs (empty when it is the same run)."""
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)]  # fmt: skip


def files_digest(paths: Iterable[str | Path]) -> str:
    """sha256 over the named files and every file under the named folders (relative names + bytes).

    Goes into a run's fingerprint so that a finished run counts as "the same run" only while
    the code and data that shaped its weights are unchanged (what DVC's deps track).
    """
    h = hashlib.sha256()
    for root in sorted(Path(p) for p in paths):
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(f"{f.relative_to(root.parent)}\0".encode())
            h.update(f.read_bytes() if f.is_file() else b"<missing>")
    return h.hexdigest()
