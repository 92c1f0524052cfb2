"""The ``senseflow-eval`` command line: parse arguments and call the evaluation library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from eval.stats import N_BOOT, N_BOOT_SET

app = typer.Typer(
    help="SenseFlow evaluation: score sample folders under a recorded protocol.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


reference_app = typer.Typer(help="Real-image references for FID.", no_args_is_help=True)
app.add_typer(reference_app, name="reference")


@app.callback()
def _root() -> None:
    """SenseFlow evaluation: score sample folders under a recorded protocol."""


def _split(metrics: str) -> list[str]:
    return [m.strip() for m in metrics.split(",") if m.strip()]


@app.command("evaluate")
def evaluate_cmd(
    samples: Annotated[Path, typer.Option(help="Sample folder: PNGs + manifest.jsonl.")],
    metrics: Annotated[
        str, typer.Option(help="Comma-separated metric names, e.g. adherence,fid_t_probe,hpsv2.")
    ],
    out: Annotated[Path, typer.Option(help="Output folder: scores.parquet (or .csv) and summary.json.")],
    reference: Annotated[
        Path | None, typer.Option(help="Teacher sample folder of the same prompts (FID-T).")
    ] = None,
    probe: Annotated[Path | None, typer.Option(help="Embedded-world probe.safetensors.")] = None,
    clip: Annotated[
        Path | None,
        typer.Option(help="Embedded-world CLIP folder of `senseflow world train-clip` (build/clip)."),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Leave out bad images (recorded in summary.json) instead of failing.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap intervals.")] = 0,
    n_boot: Annotated[int, typer.Option(min=10, help="Bootstrap replicates of per-image metrics.")] = N_BOOT,
    n_boot_set: Annotated[
        int, typer.Option(min=10, help="Bootstrap replicates of set metrics (FID).")
    ] = N_BOOT_SET,
    protocol: Annotated[
        str,
        typer.Option(help="Image protocol of FID / CLIP score: dmd2 (the paper's), clean or torchmetrics."),
    ] = "dmd2",
    paired_seeds: Annotated[
        bool,
        typer.Option(help="FID-T pairs share seeds; --no-paired-seeds for a noise-floor set (other seeds)."),
    ] = True,
) -> None:
    """Score a sample folder: per-image scores and summary.json (value, 95% interval, n, protocol).

    Metrics that do not apply to the folder are written as not applicable, with the reason.
    Bad input (corrupt image, manifest and files disagreeing, wrong size or mode, sha256
    mismatch, NaN score) stops with the file and the problem unless --skip-bad.
    Under `torchrun --nproc_per_node N` the images are sharded across the ranks (rank 0 writes).
    """
    from eval.evaluate import evaluate
    from senseflow.distributed import close_distributed, init_distributed

    info = init_distributed("auto")  # joins torchrun's process group; one process: a no-op
    try:
        summary = evaluate(
            samples,
            _split(metrics),
            out,
            reference=reference,
            probe=probe,
            clip=clip,
            skip_bad=skip_bad,
            seed=seed,
            n_boot=n_boot,
            n_boot_set=n_boot_set,
            protocol=protocol,
            paired_seeds=paired_seeds,
        )
    except BaseException:
        close_distributed(wait=False)  # a failing rank must not wait for the others
        raise
    close_distributed()
    rank = info.rank
    if rank != 0:
        return
    for name, m in summary["metrics"].items():
        if m["status"] == "ok":
            lo, hi = m["ci95"]
            typer.echo(f"{name:16s} {m['value']:.4f}  95% [{lo:.4f}, {hi:.4f}]  n={m['n']}")
        else:
            typer.echo(f"{name:16s} not applicable: {m['reason']}")
    if summary["skipped"]:
        typer.echo(f"skipped {len(summary['skipped'])} bad files (listed in {out / 'summary.json'})")


@app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="Evaluated folder A (--out of `senseflow-eval evaluate`).")],
    b: Annotated[Path, typer.Argument(help="Evaluated folder B.")],
    metrics: Annotated[
        str | None, typer.Option(help="Comma-separated per-image metrics (default: all shared).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    n_boot: Annotated[int, typer.Option(min=10, help="Bootstrap replicates.")] = N_BOOT,
) -> None:
    """Paired bootstrap of B - A over shared prompt ids and seeds: difference, 95% interval, significance."""
    from eval.evaluate import compare, render_compare

    rows = compare(a, b, metrics=_split(metrics) if metrics else None, seed=seed, n_boot=n_boot)
    typer.echo(render_compare(rows, a, b))


@app.command("gate")
def gate_cmd(
    summary: Annotated[
        list[Path], typer.Option(help="summary.json of a candidate (repeat for several candidates).")
    ],
    thresholds: Annotated[Path, typer.Option(help="experiments/thresholds/<profile>.yaml.")],
    baseline: Annotated[
        Path | None, typer.Option(help="summary.json of the baseline to compare with.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write the verdict as JSON here (results/gate.json).")
    ] = None,
) -> None:
    """Check candidates against floors / ceilings and allowed regression; exit 1 on any failure.

    --summary takes a candidate's summary.json (senseflow-eval evaluate) or the pipeline's
    aggregated results/summary.json (rules per candidate under `candidates:` in the thresholds).

    Failures: a violated bound or regression, a missing metric, an unreadable file, a
    protocol mismatch with the baseline.
    """
    from eval.gate import render_gate, run_gate
    from senseflow.errors import UserError

    try:
        rows = run_gate(summary, thresholds, baseline)
    except UserError as exc:  # an unreadable thresholds or baseline file fails the gate (exit 1)
        typer.echo(f"gate: FAILED: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render_gate(rows))
    if out is not None:
        import json

        from eval.gate import gate_json
        from senseflow.io import atomic_write_text

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(gate_json(rows, thresholds), indent=2) + "\n")
    if not all(r.passed for r in rows):
        raise typer.Exit(1)


@app.command("prompts")
def prompts_cmd(
    name: Annotated[
        str, typer.Argument(help="coco10k, coco5k, coco2017_5k, hpsv2, parti, world_test or t2i_compbench.")
    ],
    source: Annotated[
        Path,
        typer.Option(
            help="captions_val2014.json, the folder of HPSv2 <style>.json files, PartiPrompts.tsv, "
            "a world folder or T2I-CompBench's examples/dataset folder."
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Write the set as a .jsonl prompt file here.")] = None,
    published: Annotated[
        Path | None,
        typer.Option(help="DMD2's published prompt list (.txt one per line, or .json): compare and report."),
    ] = None,
) -> None:
    """Load a prompt set from its local file; print its size and content hash (sha256).

    With --published, compare it with a published list and print the match (exit 1 if not identical).
    """
    from eval.prompts import compare_published, load_prompt_set
    from senseflow.io import atomic_write_text

    ps = load_prompt_set(name, source)
    if out:
        atomic_write_text(out, ps.to_jsonl())
    typer.echo(f"{ps.name}: {len(ps.records)} prompts, sha256 {ps.sha256}")
    if published is not None:
        report = compare_published(ps, published)
        typer.echo(json.dumps(report, indent=2))
        if not report["identical"]:
            raise typer.Exit(1)


@reference_app.command("build")
def reference_build_cmd(
    source: Annotated[
        Path, typer.Option(help="Folder of real images (.jpg, .jpeg, .png), e.g. COCO val2014/.")
    ],
    out: Annotated[
        Path, typer.Option(help="Reference folder to write: PNGs, manifest.jsonl, reference.json.")
    ],
    protocol: Annotated[
        str, typer.Option(help="dmd2 (centre crop, LANCZOS 512), clean or torchmetrics.")
    ] = "dmd2",
    size: Annotated[int, typer.Option(min=32, help="Side of the resized square (DMD2: 512).")] = 512,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="A .jsonl prompt file whose records carry 'image' (file name): only those, in order."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Keep the first N images.")] = None,
) -> None:
    """Turn a folder of photographs into a FID reference folder (centre crop + resize per protocol)."""
    from eval.reference import build_reference

    captions = None
    if prompts is not None:
        rows = [json.loads(x) for x in prompts.read_text().splitlines() if x.strip()]
        from eval.prompts import coco_image_file

        # an explicit 'image' file name, else the COCO file of a coco-N / coco2017-N id
        files = [(r.get("image") or coco_image_file(str(r.get("id", ""))), r.get("prompt", "")) for r in rows]
        captions = {f: p for f, p in files if f}
        if not captions:
            raise typer.BadParameter(f"{prompts}: no record names an image ('image', or a coco-N id)")
    info = build_reference(source, out, protocol=protocol, size=size, captions=captions, limit=limit)
    typer.echo(
        f"{out}: {info['count']} images, protocol {protocol}, source list sha256 {info['source_list_sha256']}"
    )


def main() -> None:
    """Console entry point: run the app, turning bad input into one clear line (exit code 2)."""
    from senseflow.errors import run_app

    run_app(app)


if __name__ == "__main__":
    main()
