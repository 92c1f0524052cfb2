"""Prompt files: ``.jsonl`` records (``id``, ``prompt``, optional ``scene``) or plain ``.txt`` lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from senseflow.errors import UserError
from senseflow.world.scenes import Scene


class PromptFileError(UserError, ValueError):
    """A prompt file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class PromptRecord:
    """One prompt with a stable id (used to derive its noise seed) and, in the world, its scene."""

    id: str
    prompt: str
    scene: Scene | None = None


def load_prompt_file(path: str | Path) -> list[PromptRecord]:
    """Read prompts; every problem is reported with ``file:line`` and what to change.

    ``.txt``: one prompt per line, ids are ``line-00001``...; ``.jsonl``: objects with a
    ``prompt`` (or ``caption``) string, an optional ``id`` and an optional ``scene``.
    Empty lines and duplicate ids are errors (an empty prompt is a silent unconditional sample).
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[PromptRecord] = []
    jsonl = path.suffix == ".jsonl"
    for no, line in enumerate(lines, start=1):
        where = f"{path}:{no}"
        if not line.strip():
            raise PromptFileError(f"{where}: empty line; remove it (every line must hold a prompt)")
        if not jsonl:
            records.append(PromptRecord(f"line-{no:05d}", line.strip()))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{where}: not valid JSON ({exc.msg})") from exc
        text = obj.get("prompt", obj.get("caption")) if isinstance(obj, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise PromptFileError(f"{where}: needs a non-empty string field 'prompt'")
        try:
            scene = Scene.from_dict(obj["scene"]) if obj.get("scene") else None
        except (KeyError, TypeError) as exc:
            raise PromptFileError(f"{where}: malformed 'scene' ({exc})") from exc
        records.append(PromptRecord(str(obj.get("id", f"line-{no:05d}")), text, scene))
    if not records:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PromptFileError(f"{path}: duplicate prompt id {dup!r}; ids must be unique")
    return records
