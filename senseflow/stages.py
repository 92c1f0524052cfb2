"""What each ``dvc.yaml`` stage runs (``senseflow pipeline STAGE ...``), and the hand-run commands too.

The glue between the profile, the fixed layout of :mod:`senseflow.pipeline` and the modules
that do the work. Each function lazily imports the work of its own stage only, so a stage's
code deps (:mod:`senseflow.code_deps`) are its entry modules, not this file's every import.

An ablation stage whose switch is off (``params.yaml`` ``ablations: false``) writes the skip
marker. Training stages resume an interrupted run and start over when DVC reruns a finished
one (DVC only reruns a stage whose code or params changed, so a finished run found at the
start of the stage is stale by construction).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from senseflow import pipeline as pl
from senseflow.config import ProfileConfig
from senseflow.errors import UserError
from senseflow.io import atomic_write_text, ensure_writable_dir

log = logging.getLogger(__name__)

PREFLIGHT, WORLD, TEACHER, PROBE, CLIP, CACHE = (
    pl.PREFLIGHT,
    pl.WORLD,
    pl.TEACHER,
    pl.PROBE,
    pl.CLIP,
    pl.CACHE,
)
CURVE_PROMPTS = 256  # test prompts of the in-loop FID-T / adherence curve
# measured against teacher_full (the pipeline's `fid` too: its reference is teacher_full, i.e. FID-T)
REFERENCE_METRICS = frozenset({"fid_t_probe", "kid_t_probe", "fid_t", "patch_fid_t", "fid"})


def preflight(cfg: ProfileConfig, weights_dir: str | Path | None = None) -> dict:
    """First stage: the profile is valid and every artefact it needs is present, or stop here.

    Real profiles check the weights manifest (``senseflow weights check``) so a machine without
    the weights stops before any stage writes anything, with the command that fetches them;
    T2I-CompBench's prompt files (``pipeline.compbench``) are read and checked here too
    (:func:`missing_compbench`).
    """
    from senseflow.dvc_plan import stale_plan

    pl.validate_pipeline(cfg)
    stale = stale_plan(cfg)
    if stale:
        raise UserError(stale)
    record = {"profile": cfg.name, "family": cfg.family}
    if cfg.family != "embedded":
        from eval.weights import weights_dir as resolve

        missing = missing_weights(cfg, weights_dir) + missing_inputs(cfg) + missing_compbench(cfg)
        missing += missing_registry_weights(cfg, weights_dir, skip_manifest=True)
        if missing:
            from senseflow.errors import MissingArtefactError

            raise MissingArtefactError(
                f"profile {cfg.name!r} cannot start, {len(missing)} problem(s) here (one per line):\n  "
                + "\n  ".join(missing)
                + f"\nfix the weights with `senseflow weights fetch {cfg.name} --weights-dir "
                f"{resolve(weights_dir)}` on a connected machine (it fetches exactly this profile's set)"
            )
    PREFLIGHT.parent.mkdir(parents=True, exist_ok=True)
    # deterministic content: an unchanged preflight never invalidates the stages after it
    atomic_write_text(PREFLIGHT, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def missing_weights(cfg: ProfileConfig, weights_dir: str | Path | None = None) -> list[str]:
    """One line per file of the profile's artefacts that is absent or has another sha256.

    The selection is :func:`senseflow.baselines.profile_artefacts` (teacher, registry models,
    metric models), the set ``senseflow weights fetch PROFILE`` downloads; each line names the
    file, what is wrong and who needs it (a LoRA swapped after its fetch fails here, before any
    sampling).
    """
    from eval.weights import check
    from eval.weights import weights_dir as resolve
    from senseflow.baselines import profile_artefacts

    users = profile_artefacts(cfg)
    if not users:
        return []
    root = resolve(weights_dir)
    rows = check(None, root, artefacts=list(users))
    return [
        f"{r.artefact}/{r.path.relative_to(root / r.artefact)}: {r.status} ({r.detail}); "
        f"needed by {', '.join(users[r.artefact])}"
        for r in rows
        if r.failed
    ]


def missing_registry_weights(
    cfg: ProfileConfig, weights_dir: str | Path | None = None, *, skip_manifest: bool = False
) -> list[str]:
    """What the profile's registry candidates (``pipeline.registry_baselines``) cannot find here.

    ``skip_manifest``: leave out the weights that are manifest artefacts (:func:`missing_weights`
    reports those); what remains are recipe weights given as local paths or Hub repositories.
    """
    from senseflow.baselines import get_recipe, missing_recipe_weights

    out = []
    for name in cfg.pipeline.registry_baselines:
        out += missing_recipe_weights(get_recipe(name), weights_dir, skip_manifest=skip_manifest)
    return out


def _missing_data(cfg: ProfileConfig) -> list[str]:
    """What the training images of ``data:`` lack on disk (presence only)."""
    d = cfg.data
    if d is None:
        return ["data: the profile names no training images (add a `data:` section; README)"]
    if not Path(d.path).expanduser().is_dir():
        return [f"data.path {d.path}: no such folder (put the dataset there or point data.path at it)"]
    if d.format == "folder" and not (Path(d.path).expanduser() / d.captions).is_file():
        return [f"data.captions {Path(d.path) / d.captions}: missing (JSONL of {{id, file, caption}})"]
    if d.format == "webdataset" and not any(Path(d.path).expanduser().glob("*.tar")):
        return [f"data.path {d.path}: no *.tar shards (format webdataset)"]
    return []


def missing_inputs(cfg: ProfileConfig) -> list[str]:
    """What a real profile's training data (``data:``) and prompt set (``pipeline.prompts``) lack on disk.

    Presence only (the files themselves are checked when the data source indexes them), so
    the first stage stays fast on a dataset of millions of images.
    """
    out = []
    if cfg.pipeline.methods or cfg.pipeline.ablations:  # an evaluation-only profile needs no images
        out += _missing_data(cfg)
    p = cfg.pipeline.prompts
    if p is None:
        out.append("pipeline.prompts: the profile names no prompt set (e.g. {set: coco5k, source: FILE})")
    else:
        is_file = Path(p.set).suffix in (".txt", ".jsonl")
        where = p.set if is_file else p.source
        if where is None:
            out.append(f"pipeline.prompts.source: prompt set {p.set!r} needs its local file or folder")
        elif not Path(where).expanduser().exists():
            key = "pipeline.prompts.set" if is_file else "pipeline.prompts.source"
            out.append(f"{key} {where}: not found (the {p.set} prompts are read from there)")
    return out


def missing_compbench(cfg: ProfileConfig) -> list[str]:
    """What T2I-CompBench's prompt files (``pipeline.compbench``) lack: one line per file and problem.

    The files are read and checked here (existence, count, published sha256:
    :func:`eval.prompts.check_t2i_compbench`) rather than when ``compbench-generate`` first
    reads them, after hours of other stages.
    """
    cb = cfg.pipeline.compbench
    if cb is None:
        return []
    from eval.prompts import check_t2i_compbench

    folder = Path(cb.source).expanduser()
    where = (
        f" [read from pipeline.compbench.source = {cb.source}: clone the benchmark and point that key at its "
        "examples/dataset folder]"
    )
    return [line + where for line in check_t2i_compbench(folder, cb.categories, cb.n_prompts)]


def torchrun_command(cfg: ProfileConfig, argv: list[str]) -> list[str] | None:
    """The torchrun command that reruns this stage in ``runtime.nproc_per_node`` processes.

    None when one process is asked for, or when this process already is a torchrun rank
    (``WORLD_SIZE`` set): the stage then runs here. Multi-node jobs set the rendezvous through
    torchrun's own environment (experiments/launch/).
    """
    import os
    import sys

    n = cfg.runtime.nproc_per_node
    if n <= 1 or "WORLD_SIZE" in os.environ:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "senseflow.cli", *argv]  # fmt: skip


def relaunched(cfg: ProfileConfig, argv: list[str]) -> bool:
    """Run this stage under torchrun when the profile asks for several processes; True if it did."""
    import subprocess

    cmd = torchrun_command(cfg, argv)
    if cmd is None:
        return False
    log.info("launching %s", " ".join(cmd))
    done = subprocess.run(cmd, check=False)
    if done.returncode:
        raise UserError(f"torchrun exited with {done.returncode} (command: {' '.join(cmd)})")
    return True


def _stale_run(folder: Path) -> bool:
    """A finished run (summary.json written after export) or a foreign checkpoint."""
    return (folder / "summary.json").is_file()


def _clear(folder: Path) -> None:
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def curve_reference(
    out: str | Path = pl.CURVE_REFERENCE,
    *,
    teacher_dir: str | Path = TEACHER,
    world_dir: str | Path = WORLD,
    progress: bool = True,
) -> Path:
    """Teacher samples of the first test prompts: the reference of the in-loop FID-T curve (embedded).

    Sampled at the steps and CFG of the teacher's own ``recipe.json`` with a fixed seed, so it
    depends on the teacher folder and the world only: a change of ``teacher.sample``
    (``teacher_full``'s prompt count, seed, batch size) never retrains a student.
    """
    from senseflow.samples import MANIFEST, SPEED, sample_to_folder
    from senseflow.teacher import load_teacher
    from senseflow.world.prompts import load_prompt_file

    backbone, recipe = load_teacher(teacher_dir, world_dir)
    records = load_prompt_file(Path(world_dir) / "prompts" / "test.jsonl")[:CURVE_PROMPTS]
    done = sample_to_folder(
        backbone, records, out, shape=(recipe["channels"], recipe["resolution"], recipe["resolution"]),
        steps=int(recipe["steps"]), cfg=float(recipe["cfg"]), seed=0, batch_size=256, progress=progress,
    )  # fmt: skip
    # every distillation stage reads this folder: no wall clock in it (the measured seconds per
    # image would change its hash on a rerun with the same images)
    (Path(out) / SPEED).unlink(missing_ok=True)
    timeless = [{k: v for k, v in r.items() if "second" not in k} for r in done]
    atomic_write_text(Path(out) / MANIFEST, "".join(json.dumps(r) + "\n" for r in timeless))
    return Path(out)


def train(
    cfg: ProfileConfig,
    out: str | Path,
    method: str,
    *,
    world_dir: str | Path = WORLD,
    teacher_dir: str | Path = TEACHER,
    probe_path: str | Path = PROBE,
    reference_dir: str | Path | None = pl.CURVE_REFERENCE,
    cache_dir: str | Path | None = CACHE,
    eval_prompts: int = CURVE_PROMPTS,
    sampler: str = "euler",
    init_from: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """The one dispatch of distillation: train ``method`` of ``cfg`` into ``out``.

    Real families: :func:`senseflow.real_run.distill_real`. Embedded: the consistency loop
    (:mod:`senseflow.consistency_run`) for LCM / Hyper-SD, else the SenseFlow loop
    (:mod:`senseflow.distill_run`) with the variant's recipe. ``senseflow distill`` (by hand)
    and the ``distill-<method>`` stages both call this.
    """
    if cfg.family != "embedded":
        from senseflow.real_run import distill_real

        return distill_real(cfg, out, variant=method, cache_dir=cache_dir, progress=progress)
    common = dict(
        world_dir=world_dir, teacher_dir=teacher_dir, probe_path=probe_path, reference_dir=reference_dir,
        eval_prompts=eval_prompts, cache_dir=cache_dir, progress=progress,
    )  # fmt: skip
    if pl.uses_consistency_loop(cfg, method):
        from senseflow.consistency_run import consistency_embedded

        if init_from is not None:
            raise UserError(f"--init-from is not supported by the {method} baseline")
        return consistency_embedded(cfg, out, variant=method, **common)
    from senseflow.distill_run import distill_embedded

    return distill_embedded(cfg, out, variant=method, sampler=sampler, init_from=init_from, **common)


def distill(cfg: ProfileConfig, method: str, *, ablations: bool, progress: bool = True) -> dict:
    """Train ``method`` into ``build/distill/<method>`` (an ablation whose switch is off: skip marker)."""
    from senseflow.checkpoint import ResumeError

    out = pl.distill_dir(method)
    reason = pl.method_inactive(cfg, method, ablations)
    if reason:
        if out.is_dir():
            _clear(out)
        pl.write_skipped(out, reason)
        return {"skipped": reason}
    out = ensure_writable_dir(out)
    if _stale_run(out) or (out / pl.SKIPPED).is_file():
        log.info("%s holds a finished run of other code or params: starting over", out)
        _clear(out)
    try:
        return train(cfg, out, method, progress=progress)
    except ResumeError as exc:
        # the interrupted run was started under other settings: DVC asked for the new ones
        log.warning("%s; starting over", exc)
        _clear(out)
        return train(cfg, out, method, progress=progress)


def export(cfg: ProfileConfig, method: str, *, ablations: bool) -> Path:
    """Publish ``method``'s trained generator to ``build/students/<method>``."""
    out = pl.student_dir(method)
    reason = pl.method_inactive(cfg, method, ablations)
    if reason:
        return pl.write_skipped(out, reason).parent
    final = pl.distill_dir(method) / "student"
    if (final / "recipe.json").is_file():
        # a finished run already exported its final generator (EMA applied): publish it as is,
        # without loading torch (this stage then costs a copy)
        from senseflow.io import atomic_folder

        with atomic_folder(out) as tmp:
            shutil.copytree(final, tmp, dirs_exist_ok=True)
        return out
    if pl.uses_consistency_loop(cfg, method):  # the consistency loop exports only at its end
        raise UserError(
            f"{pl.distill_dir(method)} has no exported student: "
            f"rerun `dvc repro distill-{method}` to finish it"
        )
    if cfg.family != "embedded":
        from senseflow.real_run import export_real_from_run

        return export_real_from_run(cfg, pl.distill_dir(method), out, method)
    from senseflow.distill_run import export_from_run

    return export_from_run(
        cfg, pl.distill_dir(method), out, variant=method, world_dir=WORLD, teacher_dir=TEACHER
    )


def generation_prompts(cfg: ProfileConfig) -> tuple[str, str | None]:
    """``(prompts, source)``: what every candidate of the profile is sampled on (``senseflow generate``).

    Embedded: the world's test prompt file. Real profiles: ``pipeline.prompts`` (a prompt-set
    name of eval/prompts.py with its local source, or a prompt file).
    """
    if cfg.family == "embedded":
        return str(WORLD / "prompts" / "test.jsonl"), None
    p = cfg.pipeline.prompts
    if p is None:
        raise UserError(
            f"profile {cfg.name!r} names no prompt set: add `pipeline.prompts: {{set: coco5k, source: "
            "<captions_val2014.json>}` (or a .txt / .jsonl prompt file as set)"
        )
    return p.set, p.source


def generate_candidate(cfg: ProfileConfig, name: str, *, ablations: bool, progress: bool = True) -> Path:
    """Sample candidate ``name`` on the profile's prompts into ``build/samples/<name>`` (resumable)."""
    out = pl.samples_dir(name)
    reason = pl.candidate_inactive(cfg, name, ablations)
    if reason:
        if out.is_dir():
            _clear(out)
        return pl.write_skipped(out, reason).parent
    from senseflow.generate import generate as run_generate

    c = pl.parse_candidate(name)
    s = cfg.teacher.sample
    registry = None
    if c.kind == "registry":  # a public model, by its recipe in experiments/baselines.yaml
        source = name
    elif c.method != "teacher":
        source = str(pl.student_dir(c.source_method))
    elif cfg.family == "embedded":
        source = "teacher"
    else:  # the pretrained teacher's own pipeline, at the profile's CFG
        from senseflow.real_run import teacher_registry

        source, registry = teacher_registry(cfg, c.steps or s.steps)
    prompts, prompt_source = generation_prompts(cfg)
    run_generate(
        source, prompts, out, profile=cfg, steps=c.steps, prompt_source=prompt_source,
        seed=s.seed + c.seed_offset, limit=s.n_prompts, batch_size=s.batch_size,
        world_dir=WORLD, teacher_dir=TEACHER, progress=progress, registry=registry,
    )  # fmt: skip
    return out


def _source_candidates(cfg: ProfileConfig, source: str) -> list[str]:
    names = pl.candidates_of(cfg, source)
    if not names:
        raise UserError(
            f"profile {cfg.name!r} samples nothing from {source!r} "
            f"(`senseflow pipeline list --profile {cfg.name}`)"
        )
    return names


def generate(cfg: ProfileConfig, source: str, *, ablations: bool, progress: bool = True) -> list[Path]:
    """Every candidate of ``source`` (``teacher`` or a method): all its step counts, in this one process."""
    return [
        generate_candidate(cfg, name, ablations=ablations, progress=progress)
        for name in _source_candidates(cfg, source)
    ]


def evaluate_candidate(cfg: ProfileConfig, name: str) -> dict:
    """Score ``build/samples/<name>`` with the profile's metrics into ``build/eval/<name>``."""
    out = pl.eval_dir(name)
    reason = pl.skipped_reason(pl.samples_dir(name))
    if reason:
        pl.write_skipped(out, reason)
        return {"skipped": reason, "candidate": name}
    from eval.evaluate import evaluate as run_evaluate

    p = cfg.pipeline
    is_reference = name == pl.REFERENCE
    # the reference is drawn from other seeds than every candidate (independent noise, issue 13):
    # pairs must share the prompt, and the seed only where both sets use the same seed base
    same_noise = pl.parse_candidate(name).seed_offset == pl.parse_candidate(pl.REFERENCE).seed_offset
    # the reference against itself is 0 by construction: recorded as not applicable, never as 0
    why = "teacher_full is the reference set of this metric (see teacher_reseed for the noise floor)"
    skip = {m: why for m in p.metrics if m in REFERENCE_METRICS} if is_reference else {}
    extra = {}
    if cfg.family == "embedded":
        extra = {"probe": PROBE}
        if "clip_score_embedded" in p.metrics:
            extra["clip"] = CLIP
    reference = None if is_reference else pl.samples_dir(pl.REFERENCE)
    return run_evaluate(
        pl.samples_dir(name), list(p.metrics), out, reference=reference,
        seed=p.eval_seed, n_boot=p.n_boot, n_boot_set=p.n_boot_set, not_applicable=skip, **extra,
        protocol=p.eval_protocol, paired_seeds=same_noise,
    )  # fmt: skip


def evaluate(cfg: ProfileConfig, source: str) -> list[dict]:
    """Score every candidate of ``source`` (``teacher`` or a method), in this one process."""
    return [evaluate_candidate(cfg, name) for name in _source_candidates(cfg, source)]
