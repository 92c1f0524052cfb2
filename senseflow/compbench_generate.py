"""The T2I-CompBench generate stage of a real profile (``pipeline.compbench``).

``compbench-generate-<source>`` samples every 4-step candidate of a source
(:func:`senseflow.pipeline.compbench_candidates`) on each category's validation prompts, 10
images per prompt at the benchmark's seeds 42-51 (image ``k`` of every prompt uses seed
``42 + k``), into ``build/compbench/samples/<candidate>/<category>/`` with ``compbench.json``
(category, prompt files and their sha256, the 3-in-1 kind of each complex prompt).
"""

from __future__ import annotations

import json
from pathlib import Path

from senseflow import pipeline as pl
from senseflow.compbench_stages import require_candidates
from senseflow.config import ProfileConfig
from senseflow.io import atomic_write_text


def category_card(cfg: ProfileConfig, category: str) -> tuple[list, dict[str, int], dict]:
    """The category's per-seed records, their fixed seeds and the folder's ``compbench.json`` content."""
    from eval.compbench import SEEDS
    from eval.prompts import t2i_compbench_complex_kinds, t2i_compbench_prompts
    from senseflow.samples import per_seed_records

    cb = cfg.pipeline.compbench
    ps = t2i_compbench_prompts(Path(cb.source).expanduser(), [category])
    prompts = list(ps.records)[: cb.n_prompts]
    records, seeds = per_seed_records(prompts, SEEDS)
    card = {"category": category, "files": dict(ps.files), "n_prompts": len(prompts),
            "seeds": list(SEEDS), "images_per_prompt": len(SEEDS)}  # fmt: skip
    if category == "complex":
        kinds, files = t2i_compbench_complex_kinds(Path(cb.source).expanduser())
        card |= {"complex_kinds": kinds, "files": card["files"] | dict(files)}
    return records, seeds, card


def generate(cfg: ProfileConfig, source: str, *, progress: bool = True) -> list[Path]:
    """Sample every 4-step candidate of ``source`` on each category (resumable, like ``generate``)."""
    from eval.compbench import write_card
    from senseflow.generate import generate as run_generate

    outs = []
    plans = {c: category_card(cfg, c) for c in cfg.pipeline.compbench.categories}
    s = cfg.teacher.sample
    for name in require_candidates(cfg, source):
        c = pl.parse_candidate(name)
        model = name if c.kind == "registry" else str(pl.student_dir(c.source_method))
        for category, (records, seeds, card) in plans.items():
            out = pl.compbench_samples_dir(name) / category
            prompt_file = pl.compbench_samples_dir(name) / f"{category}.prompts.jsonl"
            prompt_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                prompt_file, "".join(json.dumps({"id": r.id, "prompt": r.prompt}) + "\n" for r in records)
            )
            run_generate(
                model, str(prompt_file), out, profile=cfg, steps=c.steps, batch_size=s.batch_size,
                fixed_seeds=seeds, progress=progress,
            )  # fmt: skip
            write_card(out, card)
            outs.append(out)
    return outs
