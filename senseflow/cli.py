"""The ``senseflow`` command line: parse, build the config, call the library. Nothing else.

Every command that reads a profile takes ``--profile NAME|PATH`` (default ``embedded``)
and ``--set KEY.PATH=VALUE`` overrides. Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

app = typer.Typer(
    help=(
        "SenseFlow suite: few-step text-to-image distillation laboratory.\n\n"
        "Start with `senseflow config show` to see the default (embedded) profile, "
        "`senseflow world sample --n 8 --out /tmp/w` to look at the embedded world, "
        "and `make run` (dvc repro) for the whole pipeline."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect profiles (experiments/<profile>.yaml).", no_args_is_help=True)
world_app = typer.Typer(
    help="The embedded world: build it, look at it, train its probe, measure adherence.", no_args_is_help=True
)
weights_app = typer.Typer(
    help="Pretrained weights of the real profiles: fetch them once, check them (eval/weights_manifest.yaml).",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")
app.add_typer(world_app, name="world")
app.add_typer(weights_app, name="weights")
pipeline_app = typer.Typer(
    help=(
        "The stages `dvc repro` runs (dvc.yaml calls these; run `make run`, not them). "
        "`senseflow pipeline list` shows what a profile trains, samples and skips."
    ),
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")
baselines_app = typer.Typer(
    help="The baseline registry (experiments/baselines.yaml): public inference recipes.", no_args_is_help=True
)
app.add_typer(baselines_app, name="baselines")

Profile = Annotated[str, typer.Option("--profile", "-p", help="Profile name in experiments/ or a YAML path.")]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key, e.g. --set teacher.train.lr=5e-4 (repeatable)."),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory (created if missing).")]
WorldDir = Annotated[Path, typer.Option("--world", help="World folder written by `senseflow world build`.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _cfg(profile: str, sets: list[str] | None):
    from senseflow.config import load_profile

    return load_profile(profile, sets or [])


def _embedded(cfg):
    if cfg.family != "embedded":
        raise typer.BadParameter(f"profile {cfg.name!r} is not an embedded-world profile")
    return cfg


def _threads(cfg) -> None:
    if cfg.runtime.threads:
        import torch

        torch.set_num_threads(cfg.runtime.threads)


# ----------------------------------------------------------------------------- config
@config_app.command("show")
def config_show(profile: Profile = "embedded", set_: Sets = None) -> None:
    """Print the resolved profile (defaults filled in, overrides applied) as YAML."""
    from senseflow.config import dump_profile

    typer.echo(dump_profile(_cfg(profile, set_)), nl=False)


@config_app.command("list")
def config_list() -> None:
    """List the profiles defined in experiments/."""
    from senseflow.config import find_profiles_dir, known_profiles, load_profile

    folder = find_profiles_dir()
    for name in known_profiles(folder):
        typer.echo(f"{name:14s} {load_profile(name).description}")


# ----------------------------------------------------------------------------- world
@world_app.command("build")
def world_build(out: Out, profile: Profile = "embedded", set_: Sets = None, quiet: Quiet = False) -> None:
    """Write the tokenizer, the text encoder and the fixed prompt splits (dvc stage `world`).

    The encoder is pre-trained contrastively first when world.text.pretrain.steps > 0.
    """
    from senseflow.world.build import build_world

    cfg = _embedded(_cfg(profile, set_))
    w = cfg.world
    summary = build_world(
        out,
        digit_counts=dict(w.scenes.digit_counts),
        prompts_per_split=w.prompts.model_dump(),
        text_hidden_size=w.text.hidden_size,
        text_num_layers=w.text.num_layers,
        text_num_heads=w.text.num_heads,
        text_max_length=w.text.max_length,
        text_seed=w.text.seed,
        text_pooling=w.text.pooling,
        text_pretrain=w.text.pretrain.model_dump() if w.text.pretrain.steps else None,
        resolution=w.scenes.resolution,
        seed=w.seed,
        progress=not quiet,
    )
    typer.echo(f"world written to {out}: {summary}")


@world_app.command("sample")
def world_sample(
    out: Out,
    seed: Annotated[int, typer.Option(help="Seed; the same seed writes byte-identical files.")] = 0,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 16,
    split: Annotated[str | None, typer.Option(help="Restrict captions to train, val or test.")] = None,
    profile: Profile = "embedded",
    set_: Sets = None,
) -> None:
    """Write N real scenes as PNGs plus captions.jsonl (id, file, caption, scene)."""
    from senseflow.world.sampling import write_real_scenes

    cfg = _embedded(_cfg(profile, set_))
    write_real_scenes(
        out,
        n=n,
        seed=seed,
        resolution=cfg.world.scenes.resolution,
        digit_counts=dict(cfg.world.scenes.digit_counts),
        split=split,
    )
    typer.echo(f"{n} scenes written to {out}")


@world_app.command("train-probe")
def world_train_probe(
    out: Out, profile: Profile = "embedded", set_: Sets = None, quiet: Quiet = False
) -> None:
    """Train the attribute probe on real scenes; write probe.safetensors and probe_report.json."""
    from senseflow.world.probes import train_probe_for_profile

    cfg = _embedded(_cfg(profile, set_))
    _threads(cfg)
    report = train_probe_for_profile(cfg, out, progress=not quiet)
    typer.echo(json.dumps(report, indent=2))


@world_app.command("train-clip")
def world_train_clip(
    out: Out = Path("build/clip"),
    world: WorldDir = Path("build/world"),
    profile: Profile = "embedded",
    set_: Sets = None,
    quiet: Quiet = False,
) -> None:
    """Train the world's tiny CLIP on real scenes and captions (metric clip_score_embedded)."""
    from senseflow.world.clip import train_clip_for_profile

    cfg = _embedded(_cfg(profile, set_))
    _threads(cfg)
    report = train_clip_for_profile(cfg, world, out, progress=not quiet)
    typer.echo(json.dumps(report, indent=2))


@world_app.command("curve")
def world_curve(
    model: Annotated[Path, typer.Option(help="Exported model folder (recipe.json + transformer/).")],
    world: WorldDir,
    probe: Annotated[Path, typer.Option(help="probe.safetensors")],
    out: Annotated[Path, typer.Option(help="JSON report path.")],
    profile: Profile = "embedded",
    set_: Sets = None,
) -> None:
    """Adherence against the number of Euler steps on the test prompts (the curve distillation fixes)."""
    from senseflow.io import atomic_write_text
    from senseflow.teacher import load_teacher
    from senseflow.world.adherence import adherence_curve
    from senseflow.world.probes import load_probe
    from senseflow.world.prompts import load_prompt_file

    cfg = _embedded(_cfg(profile, set_))
    _threads(cfg)
    s = cfg.teacher.sample
    backbone, recipe = load_teacher(model, world)
    records = load_prompt_file(world / "prompts" / "test.jsonl")[: s.n_prompts]
    rows = adherence_curve(
        backbone,
        records,
        load_probe(probe),
        shape=(recipe["channels"], recipe["resolution"], recipe["resolution"]),
        steps_list=s.step_curve,
        cfg=s.cfg,
        seed=s.seed,
        batch_size=s.batch_size,
    )
    atomic_write_text(out, json.dumps({"model": str(model), "rows": rows}, indent=2) + "\n")
    for r in rows:
        typer.echo(
            f"steps {r['steps']:3d}  NFE {r['nfe']:3d}  all-correct {r['all']:.3f}  digit {r['digit']:.3f}  "
            f"colour {r['colour']:.3f}  position {r['position']:.3f}  background {r['background']:.3f}"
        )


# ----------------------------------------------------------------------------- teacher
@app.command("train-teacher")
def train_teacher_cmd(
    out: Out,
    world: WorldDir = Path("build/world"),
    profile: Profile = "embedded",
    set_: Sets = None,
    quiet: Quiet = False,
    restart_stale: Annotated[
        bool,
        typer.Option(
            help="Start over when OUT's checkpoint is from other settings, code or world (dvc repro "
            "reruns a stage when its inputs changed); otherwise such a checkpoint is an error. A "
            "finished checkpoint of the same run is exported again, not retrained."
        ),
    ] = False,
) -> None:
    """Train the embedded teacher by rectified flow (rerun the same command to resume)."""
    from senseflow.config import dump_profile
    from senseflow.io import atomic_write_text, ensure_writable_dir
    from senseflow.teacher import train_teacher

    cfg = _embedded(_cfg(profile, set_))
    _threads(cfg)
    ensure_writable_dir(out)
    atomic_write_text(out / "config.yaml", dump_profile(cfg))
    m, t = cfg.teacher.model, cfg.teacher.train
    folder = train_teacher(
        out,
        world_dir=world,
        resolution=cfg.world.scenes.resolution,
        digit_counts=dict(cfg.world.scenes.digit_counts),
        **m.model_dump(),
        **t.model_dump(exclude={"checkpoint_every", "log_every"}),
        checkpoint_every=t.checkpoint_every,
        log_every=t.log_every,
        sample_steps=cfg.teacher.sample.steps,
        sample_cfg=cfg.teacher.sample.cfg,
        progress=not quiet,
        restart_stale=restart_stale,
    )
    typer.echo(f"teacher exported to {folder}")


# ----------------------------------------------------------------------------- cache
@app.command("cache")
def cache_cmd(
    out: Out,
    profile: Profile = "embedded",
    world: WorldDir = Path("build/world"),
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="Prompt file (.txt or .jsonl): required by real profiles, extra prompts otherwise."
        ),
    ] = None,
    set_: Sets = None,
    quiet: Quiet = False,
) -> None:
    """Encode the teacher's text conditioning once: training then needs no text encoder.

    Writes OUT/prompts/: safetensors shards of the per-token and pooled
    embeddings of every prompt (and of the empty prompt, for CFG) and a
    manifest keyed by a hash of the encoder's files and the prompt.
    Rerunning encodes only the prompts not cached yet, nothing at all when
    the inputs are unchanged; a killed run resumes. A changed encoder needs
    another OUT.

    Embedded profiles cache the world's train/val/test prompts with its text
    encoder (--world); their images are rendered on the fly in pixel space,
    so no latents are cached. Real profiles (sdxl, sd3, flux) cache the
    prompts of --prompts with the teacher's own text encoders.

    Training reads it with senseflow.cache.CachedPromptEncoder(OUT).

    Example: senseflow cache --profile smoke --world build/world --out build/cache
    """
    from senseflow.cache import cache_profile

    cfg = _cfg(profile, set_)
    _threads(cfg)
    report = cache_profile(cfg, out, world_dir=world, prompts_file=prompts, progress=not quiet)
    for line in report.lines():
        typer.echo(line)


@app.command("distill")
def distill_cmd(
    out: Out,
    variant: Annotated[
        str, typer.Option(help="Recipe variant: senseflow, or a name under `variants:` in the profile.")
    ] = "senseflow",
    world: WorldDir = Path("build/world"),
    teacher: Annotated[Path, typer.Option(help="Exported teacher folder.")] = Path("build/teacher/teacher"),
    probe: Annotated[Path, typer.Option(help="Probe (discriminator taps, FID-T features).")] = Path(
        "build/probes/probe.safetensors"
    ),
    reference: Annotated[
        Path | None,
        typer.Option(help="Teacher sample folder for FID-T / adherence curves (none: no evaluation)."),
    ] = None,
    eval_prompts: Annotated[int, typer.Option(min=2, help="Reference prompts used by the evaluator.")] = 256,
    sampler: Annotated[str, typer.Option(help="Student sampler in the recipe: euler or x0.")] = "euler",
    cache: Annotated[
        Path | None,
        typer.Option(help="Prompt cache from `senseflow cache`: no text encoder runs during training."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(help="Start G, fake and D from this distill folder (overrides the variant's)."),
    ] = None,
    profile: Profile = "embedded",
    set_: Sets = None,
    quiet: Quiet = False,
) -> None:
    """Distil the teacher into a few-step student (SenseFlow: DMD + IDA + ISG + VFM discriminator).

    Rerun the same command to resume from OUT/checkpoint. Under `torchrun --nproc_per_node N`
    the same command trains data-parallel. The student is exported to OUT/student.

    `--variant lcm` / `--variant hyper_sd` train the consistency baselines of the profile's
    `baselines:` section instead (LCM, Hyper-SD TSCD; their sampler comes from that section).

    Example: senseflow distill --profile smoke --variant no_ida --out build/distill/no_ida
    """
    from senseflow.stages import train

    cfg = _embedded(_cfg(profile, set_))
    _threads(cfg)
    summary = train(
        cfg, out, variant, world_dir=world, teacher_dir=teacher, probe_path=probe, reference_dir=reference,
        eval_prompts=eval_prompts, sampler=sampler, cache_dir=cache, init_from=init_from, progress=not quiet,
    )  # fmt: skip
    typer.echo(json.dumps(summary, indent=2))


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Option(help="A `senseflow distill` output folder (its checkpoint/).")],
    out: Out,
    world: WorldDir = Path("build/world"),
    teacher: Annotated[Path, typer.Option(help="Exported teacher folder.")] = Path("build/teacher/teacher"),
    variant: Annotated[str, typer.Option(help="Variant the run was trained with.")] = "senseflow",
    sampler: Annotated[str, typer.Option(help="Student sampler in the recipe: euler or x0.")] = "euler",
    profile: Profile = "embedded",
    set_: Sets = None,
) -> None:
    """Export a student from a distillation checkpoint (e.g. a run stopped early).

    Writes a diffusers-format folder (transformer/, scheduler/, text encoder) with recipe.json;
    `senseflow.student.load_student(OUT)` generates from it with no other input.
    """
    from senseflow.distill_run import export_from_run

    cfg = _embedded(_cfg(profile, set_))
    folder = export_from_run(
        cfg, run, out, variant=variant, world_dir=world, teacher_dir=teacher, sampler=sampler
    )
    typer.echo(f"student exported to {folder}")


# ----------------------------------------------------------------------------- plan
@app.command("plan")
def plan_cmd(
    profile: Annotated[
        str,
        typer.Option(
            "--profile", "-p", help="A real profile (flux_dev, sd35_large, sd35_medium, sdxl) or a YAML path."
        ),
    ],
    gpus: Annotated[
        int | None,
        typer.Option(min=1, help="Number of GPUs (default: the profile's runtime.nproc_per_node)."),
    ] = None,
    gpu_mem_gb: Annotated[
        float, typer.Option(min=1.0, help="Memory of one GPU in GiB (an '80 GB' A100 or H100: 80).")
    ] = 80.0,
    sharding: Annotated[
        Literal["fsdp", "ddp"] | None,
        typer.Option(
            help="fsdp: FSDP2 full shard of the trainable networks' parameters, gradients and optimiser "
            "states; ddp: everything replicated on each GPU (default: the profile's runtime.parallel)."
        ),
    ] = None,
    precision: Annotated[
        Literal["bf16", "fp16", "fp32"] | None,
        typer.Option(help="Dtype of weights, gradients and activations (default: the teacher's dtype)."),
    ] = None,
    optimizer: Annotated[
        Literal["adamw", "adamw8bit"] | None,
        typer.Option(
            help="adamw: two fp32 moments, 8 B per trainable parameter; adamw8bit: two 8-bit moments, "
            "2 B (default: the profile's distill.optimizer)."
        ),
    ] = None,
    batch_per_gpu: Annotated[
        int | None,
        typer.Option(
            min=1, help="Images per GPU per step (default: distill.global_batch / gpus, at least 1)."
        ),
    ] = None,
    grad_checkpointing: Annotated[
        bool | None,
        typer.Option(
            help="Keep only each block's input for backward and recompute the rest "
            "(default: the profile's distill.grad_checkpointing)."
        ),
    ] = None,
    cache_text: Annotated[
        bool,
        typer.Option(help="Prompt embeddings computed ahead: the text encoders are not loaded."),
    ] = False,
    master_weights: Annotated[
        bool | None,
        typer.Option(
            help="fp32 master copies of the trainable weights (+4 B each) and fp32 gradients "
            "(default: on, as the loop trains them)."
        ),
    ] = None,
    set_: Sets = None,
) -> None:
    """Will the run fit? Per-GPU memory of distilling a real profile, computed without its weights.

    Networks: teacher, generator, fake score model, discriminator heads, frozen VFM, text encoders, VAE.

    Built on the meta device (no weights) from the published configs in experiments/architectures/<profile>/.

    Bill per GPU: weights, gradients, optimiser states, FSDP buffers, activations (an estimate), reserve.

    Exit code 0 when it fits, 1 when it does not.

    Example: senseflow plan --profile flux_dev --gpus 8 --gpu-mem-gb 80
    """
    from senseflow.planner import architectures_dir, plan_profile, render_plan

    cfg = _cfg(profile, set_)
    arch_dir = architectures_dir(cfg.name)
    gpus = gpus or cfg.runtime.nproc_per_node
    report = plan_profile(
        cfg,
        arch_dir,
        gpus=gpus,
        gpu_mem_gib=gpu_mem_gb,
        sharding=sharding,
        precision=precision,
        optimizer=optimizer,
        batch_per_gpu=batch_per_gpu,
        grad_checkpointing=grad_checkpointing,
        cache_text=cache_text,
        master_weights=master_weights,
    )
    typer.echo(render_plan(report))
    if not report.fits:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- weights
WeightsDir = Annotated[
    Path | None,
    typer.Option(help="Weights directory (default: $SENSEFLOW_WEIGHTS, else ~/.cache/senseflow/weights)."),
]
WeightsProfile = Annotated[
    str | None,
    typer.Argument(
        help="Profile (sdxl, tables_sdxl, ...): exactly what it loads (teacher, registry models, metric "
        "models); optional with --artefact/--metrics."
    ),
]
WeightsArtefacts = Annotated[
    list[str] | None,
    typer.Option("--artefact", help="One artefact of eval/weights_manifest.yaml by name (repeatable)."),
]
WeightsMetrics = Annotated[
    str | None,
    typer.Option("--metrics", help="Metric sets or metrics, comma-separated (coco, compbench, clip_score)."),
]


def _weights_run(action, profile, weights_dir, artefact, metrics, **kw) -> None:
    """Run ``eval.weights.fetch`` or ``check`` on the selection, print the table, exit 1 on failure.

    A PROFILE with a file in experiments/ selects exactly what that profile loads
    (:func:`senseflow.baselines.profile_artefacts`: teacher, the weights of its
    ``pipeline.registry_baselines`` recipes, the models of its metrics); a name that is only
    in the manifest's ``profiles:`` keeps the manifest's list.
    """
    from eval.weights import render_check, selection_args
    from eval.weights import weights_dir as resolve

    artefacts = tuple(artefact or ())
    label = selection_args(profile, artefacts, metrics)
    from senseflow.config import find_profiles_dir, known_profiles

    if profile is not None and profile in known_profiles(find_profiles_dir()):
        from senseflow.baselines import profile_artefacts

        needed = tuple(profile_artefacts(_cfg(profile, None)))
        artefacts = tuple(dict.fromkeys(needed + artefacts))
        if not artefacts and not metrics:  # an embedded profile: nothing to fetch or check
            typer.echo(render_check([], resolve(weights_dir), label))
            return
        if action.__name__ == "fetch":
            kw["label"] = label
        rows = action(None, weights_dir, artefacts=artefacts, metrics=metrics or (), **kw)
    else:
        rows = action(profile, weights_dir, artefacts=artefacts, metrics=metrics or ())
    typer.echo(render_check(rows, resolve(weights_dir), label))
    if any(r.failed for r in rows):
        raise typer.Exit(1)


@weights_app.command("fetch")
def weights_fetch(
    profile: WeightsProfile = None,
    weights_dir: WeightsDir = None,
    artefact: WeightsArtefacts = None,
    metrics: WeightsMetrics = None,
) -> None:
    """Download a profile's artefacts, single artefacts or metric sets (resumable, hash-checked).

    Needs the network. Exit code 1 when a file is still missing or has a wrong hash afterwards.
    """
    from eval.weights import fetch

    _weights_run(fetch, profile, weights_dir, artefact, metrics)


@weights_app.command("check")
def weights_check(
    profile: WeightsProfile = None,
    weights_dir: WeightsDir = None,
    artefact: WeightsArtefacts = None,
    metrics: WeightsMetrics = None,
) -> None:
    """Verify presence and sha256 of the selection's artefacts; print a table. Never downloads.

    Exit code 1 when something is missing or has a wrong hash; unpinned files are reported, not failed.
    """
    from eval.weights import check

    _weights_run(check, profile, weights_dir, artefact, metrics)


# ----------------------------------------------------------------------------- pipeline
Ablations = Annotated[
    str, typer.Option(help="Train the ablations too: true or false (params.yaml `ablations`).")
]


def _flag(value: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false", "1", "0", "yes", "no"):
        raise typer.BadParameter(f"--ablations {value!r}: expected true or false")
    return v in ("true", "1", "yes")


def _stage_cfg(profile: str, sets: list[str] | None):
    """The profile of a heavy stage, or None when the stage was rerun under torchrun instead.

    With ``runtime.nproc_per_node`` > 1 the same command runs again in that many processes.
    """
    import sys

    from senseflow.stages import relaunched

    cfg = _cfg(profile, sets)
    if relaunched(cfg, sys.argv[1:]):
        return None
    _threads(cfg)
    return cfg


@pipeline_app.command("list")
def pipeline_list(profile: Profile = "embedded", set_: Sets = None, ablations: Ablations = "false") -> None:
    """Which methods and candidates PROFILE runs (by source model), and why the others are skipped."""
    from senseflow import pipeline as pl

    cfg = _cfg(profile, set_)
    for m in pl.METHODS:
        typer.echo(f"distill  {m:16s} {pl.method_inactive(cfg, m, _flag(ablations)) or 'runs'}")
    for c in pl.CANDIDATES:
        why = pl.candidate_inactive(cfg, c, _flag(ablations))
        typer.echo(f"generate {c:16s} {why or 'runs (stage generate-' + pl.source_of(c) + ')'}")


@pipeline_app.command("render")
def pipeline_render(
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            help="Render for this profile and write it to params.yaml [default: params.yaml's].",
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option(help="Write nothing; exit 1 when dvc.yaml is not the rendered plan.")
    ] = False,
) -> None:
    """Write dvc.yaml: the stages PROFILE needs, each with its code, params and data deps."""
    from senseflow import dvc_plan
    from senseflow.config import load_profile

    if check:
        name = profile or dvc_plan.read_params()["profile"]
        stale = dvc_plan.stale_plan(load_profile(name))
        typer.echo(stale or f"dvc.yaml is the rendered plan of profile {name!r}")
        if stale:
            raise typer.Exit(1)
        return
    name, changed = dvc_plan.render_to_disk(profile)
    typer.echo(f"dvc.yaml {'written' if changed else 'unchanged'} for profile {name!r}")


@pipeline_app.command("preflight")
def pipeline_preflight(
    profile: Profile = "embedded", set_: Sets = None, weights_dir: WeightsDir = None
) -> None:
    """First stage: validate the profile; real profiles stop here when weights are missing."""
    from senseflow.stages import preflight

    typer.echo(json.dumps(preflight(_cfg(profile, set_), weights_dir)))


@pipeline_app.command("distill")
def pipeline_distill(
    method: Annotated[
        str, typer.Argument(help="senseflow, dmd2, lcm, hyper_sd, senseflow_1step or an ablation.")
    ],
    profile: Profile = "embedded",
    set_: Sets = None,
    ablations: Ablations = "false",
    quiet: Quiet = False,
) -> None:
    """Train METHOD into build/distill/METHOD (resumes; skipped when the profile does not run it)."""
    from senseflow.stages import distill

    cfg = _stage_cfg(profile, set_)
    if cfg is None:
        return
    typer.echo(json.dumps(distill(cfg, method, ablations=_flag(ablations), progress=not quiet)))


@pipeline_app.command("export")
def pipeline_export(
    method: Annotated[str, typer.Argument(help="A method of `senseflow pipeline list`.")],
    profile: Profile = "embedded",
    set_: Sets = None,
    ablations: Ablations = "false",
) -> None:
    """Publish METHOD's student to build/students/METHOD."""
    from senseflow.stages import export

    typer.echo(str(export(_cfg(profile, set_), method, ablations=_flag(ablations))))


@pipeline_app.command("curve-reference")
def pipeline_curve_reference(profile: Profile = "embedded", set_: Sets = None, quiet: Quiet = False) -> None:
    """Teacher samples the distillation stages measure their in-loop FID-T curve against (embedded)."""
    from senseflow.stages import curve_reference

    cfg = _embedded(_cfg(profile, set_))
    _threads(cfg)
    typer.echo(str(curve_reference(progress=not quiet)))


Source = Annotated[str, typer.Argument(help="teacher or a method (`senseflow pipeline list`).")]


@pipeline_app.command("generate")
def pipeline_generate(
    source: Source, profile: Profile = "embedded", set_: Sets = None, ablations: Ablations = "false",
    quiet: Quiet = False,
) -> None:  # fmt: skip
    """Sample every candidate of SOURCE (all its step counts) into build/samples/CANDIDATE (resumable)."""
    from senseflow.stages import generate

    cfg = _stage_cfg(profile, set_)
    if cfg is None:
        return
    for out in generate(cfg, source, ablations=_flag(ablations), progress=not quiet):
        typer.echo(str(out))


@pipeline_app.command("evaluate")
def pipeline_evaluate(source: Source, profile: Profile = "embedded", set_: Sets = None) -> None:
    """Score every candidate of SOURCE with the profile's metrics into build/eval/CANDIDATE."""
    from senseflow.stages import evaluate

    cfg = _cfg(profile, set_)
    _threads(cfg)
    for res in evaluate(cfg, source):
        typer.echo(json.dumps({k: v for k, v in res.items() if k in ("skipped", "n_images", "candidate")}))


@pipeline_app.command("compbench-generate")
def pipeline_compbench_generate(
    source: Source, profile: Profile = "embedded", set_: Sets = None, quiet: Quiet = False
) -> None:
    """Sample SOURCE's 4-step candidates on T2I-CompBench (10 images per prompt, seeds 42-51)."""
    from senseflow.compbench_generate import generate

    cfg = _stage_cfg(profile, set_)
    if cfg is None:
        return
    for out in generate(cfg, source, progress=not quiet):
        typer.echo(str(out))


@pipeline_app.command("compbench-evaluate")
def pipeline_compbench_evaluate(source: Source, profile: Profile = "embedded", set_: Sets = None) -> None:
    """Score SOURCE's T2I-CompBench folders with t2i_compbench_<category> into build/compbench/eval/."""
    from senseflow.compbench_stages import evaluate

    cfg = _cfg(profile, set_)
    _threads(cfg)
    for res in evaluate(cfg, source):
        typer.echo(json.dumps({k: res[k] for k in ("samples", "n_images")}))


@pipeline_app.command("report")
def pipeline_report(profile: Profile = "embedded", set_: Sets = None, ablations: Ablations = "false") -> None:
    """Write results/summary.json and results/tables/PROFILE/ (main, ablation, speed, steps)."""
    from eval.report import write_report

    summary = write_report(_cfg(profile, set_), ablations=_flag(ablations))
    typer.echo(f"{len(summary['candidates'])} candidates -> results/summary.json, results/tables/{profile}/")


# ----------------------------------------------------------------------------- baselines / generate
@baselines_app.command("list")
def baselines_list() -> None:
    """One line per registry candidate: kind, pipeline, steps, scheduler, guidance, extra weights."""
    from senseflow.baselines import load_registry

    for recipe in load_registry().values():
        typer.echo(recipe.summary())


@baselines_app.command("show")
def baselines_show(
    name: Annotated[str, typer.Argument(help="Candidate name (`senseflow baselines list`).")],
) -> None:
    """Print one recipe in full (YAML)."""
    from senseflow.baselines import get_recipe, show_recipe

    typer.echo(show_recipe(get_recipe(name)), nl=False)


@app.command("generate")
def generate_cmd(
    candidate: Annotated[
        str,
        typer.Option(help="`teacher`, a registry name (`senseflow baselines list`) or an exported folder."),
    ],
    prompts: Annotated[
        str, typer.Option(help="Prompt file (.txt/.jsonl) or set name (world_test, coco5k, ...).")
    ],
    out: Out,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Teacher: Euler steps; student: 1/2/4 of its anchors.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Base seed [default: profile's teacher.sample.seed].")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward batch.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    world: WorldDir = Path("build/world"),
    teacher: Annotated[Path, typer.Option(help="Exported teacher folder for `teacher`.")] = Path(
        "build/teacher/teacher"
    ),
    weights_dir: Annotated[
        Path | None, typer.Option(help="Weights directory searched before the Hugging Face cache.")
    ] = None,
    prompt_source: Annotated[
        Path | None, typer.Option(help="Source file/folder of a named prompt set (coco, hpsv2, parti).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    profile: Profile = "embedded",
    set_: Sets = None,
    quiet: Quiet = False,
) -> None:
    """Generate a candidate's images: PNGs, manifest.jsonl, generation.json, speed.json (resumable).

    Under `torchrun --nproc_per_node N` the prompts are split across ranks.

    Example: senseflow generate --candidate teacher --steps 4 --prompts world_test
    --out build/samples/teacher_4
    """
    from senseflow.generate import generate

    summary = generate(
        candidate, prompts, out, steps=steps, profile=profile, overrides=set_, seed=seed,
        batch_size=batch_size, limit=limit, world_dir=world, teacher_dir=teacher, weights_dir=weights_dir,
        prompt_source=prompt_source, device=device, progress=not quiet,
    )  # fmt: skip
    if summary["rank"] == 0:
        typer.echo(json.dumps(summary))


def main() -> None:
    """Console entry point: run the app, turning bad input into one clear line (exit code 2)."""
    from senseflow.errors import run_app

    run_app(app)


if __name__ == "__main__":
    main()
