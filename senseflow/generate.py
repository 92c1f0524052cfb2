"""``senseflow generate``: one candidate, one prompt set, one sample folder (resumable, sharded).

Resolves the prompts (a prompt-set name of :mod:`eval.prompts` or a ``.txt`` / ``.jsonl``
file) and the candidate (:func:`senseflow.candidates.load_candidate`), joins the torchrun
process group when there is one, and hands both to
:func:`senseflow.samples.generate_to_folder`. Every candidate sees the same per-prompt noise
seeds, derived from (prompt id, base seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from senseflow.errors import UserError
from senseflow.world.prompts import PromptRecord, load_prompt_file

if TYPE_CHECKING:
    from senseflow.config import ProfileConfig

PIPELINE_BATCH = 4  # default batch of the diffusers pipelines (1024 px images)


@dataclass(frozen=True)
class Prompts:
    """Resolved prompts, with the name they were asked by and their content hash."""

    name: str
    records: list[PromptRecord]
    sha256: str


def resolve_prompts(
    spec: str,
    *,
    source: str | Path | None = None,
    world_dir: str | Path = "build/world",
    limit: int | None = None,
) -> Prompts:
    """A prompt file (``.txt`` / ``.jsonl``) or a prompt-set name (``world_test``, ``coco5k``, ...).

    Named sets read their local source: ``world_test`` the world folder, the others
    ``source`` (captions_val2014.json, the HPSv2 folder, PartiPrompts.tsv). ``limit`` keeps the
    first N prompts (the hash is of the prompts actually used).
    """
    from eval.prompts import load_prompt_set, prompt_set_hash

    path = Path(spec)
    if path.suffix in (".txt", ".jsonl") or path.is_file():
        records = load_prompt_file(path)
    else:
        if source is None and spec != "world_test":
            if spec in ("coco5k", "coco10k", "hpsv2", "parti"):
                raise UserError(f"prompt set {spec!r} needs --prompt-source (its local file or folder)")
        records = list(load_prompt_set(spec, source if source is not None else world_dir).records)
    if limit is not None:
        records = records[:limit]
    return Prompts(spec, records, prompt_set_hash((r.id, r.prompt) for r in records))


def generate(
    candidate: str,
    prompts: str,
    out: str | Path,
    *,
    steps: int | None = None,
    profile: str | ProfileConfig = "embedded",
    overrides: list[str] | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    world_dir: str | Path = "build/world",
    teacher_dir: str | Path = "build/teacher/teacher",
    weights_dir: str | Path | None = None,
    prompt_source: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    registry: dict | None = None,
    recipe_overrides: dict | None = None,
    on_batch=None,
    fixed_seeds: dict[str, int] | None = None,
) -> dict:
    """Generate ``candidate``'s images for ``prompts`` into ``out``; return a summary.

    Defaults come from the profile's ``teacher.sample`` (seed, CFG and steps of the embedded
    teacher, batch size of embedded candidates); pipelines default to a batch of
    :data:`PIPELINE_BATCH`. Under torchrun each rank takes every world-size-th prompt.
    ``fixed_seeds`` gives each prompt id its own seed (T2I-CompBench's 42-51,
    :func:`senseflow.samples.per_seed_records`) instead of deriving it from ``seed``.
    """
    import torch.distributed as dist

    from senseflow.candidates import PipelineCandidate, load_candidate
    from senseflow.config import load_profile
    from senseflow.distributed import init_distributed
    from senseflow.samples import generate_to_folder

    # a loaded profile (the pipeline's stages, with their --set overrides applied) or a name
    cfg = profile if not isinstance(profile, str) else load_profile(profile, overrides or [])
    plan = cfg.teacher.sample
    if cfg.runtime.threads:
        import torch

        torch.set_num_threads(cfg.runtime.threads)
    owned = not dist.is_initialized()
    info = init_distributed(device)
    try:
        ps = resolve_prompts(prompts, source=prompt_source, world_dir=world_dir, limit=limit)
        cand = load_candidate(
            candidate,
            steps=steps,
            cfg=plan.cfg,
            teacher_steps=plan.steps,
            world_dir=world_dir,
            teacher_dir=teacher_dir,
            weights_dir=weights_dir,
            device=info.device,
            registry=registry,
            recipe_overrides=recipe_overrides,
        )
        if batch_size is None:
            batch_size = PIPELINE_BATCH if isinstance(cand, PipelineCandidate) else plan.batch_size
        seed = plan.seed if seed is None else seed
        records = generate_to_folder(
            cand,
            ps.records,
            out,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
            identity_extra={"prompt_set_sha256": ps.sha256},
            rank=info.rank,
            world_size=info.world_size,
            on_batch=on_batch,
            fixed_seeds=fixed_seeds,
        )
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
    return {
        "candidate": cand.name,
        "images": len(records),
        "steps": cand.steps,
        "nfe": records[0]["nfe"] if records else None,
        "out": str(out),
        "prompts": ps.name,
        "prompt_set_sha256": ps.sha256,
        "seed": seed,
        "rank": info.rank,
    }
