"""The ``senseflow-eval`` command line: parse arguments and call the evaluation library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="SenseFlow evaluation: score sample folders under a recorded protocol.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """SenseFlow evaluation: score sample folders under a recorded protocol."""


@app.command("adherence")
def adherence_cmd(
    samples: Annotated[
        Path, typer.Option(help="Sample folder with manifest.jsonl (embedded-world prompts).")
    ],
    probe: Annotated[Path, typer.Option(help="probe.safetensors written by `senseflow world train-probe`.")],
    out: Annotated[Path | None, typer.Option(help="Also write the report here as JSON.")] = None,
) -> None:
    """Prompt adherence judged by the attribute probe: per attribute and all-correct."""
    from senseflow.io import atomic_write_text
    from senseflow.samples import load_folder_images, scenes_of
    from senseflow.world.adherence import adherence
    from senseflow.world.probes import load_probe

    images, records = load_folder_images(samples)
    report = adherence(load_probe(probe), images, scenes_of(records))
    report["samples"] = str(samples)
    report["protocol"] = {"metric": "probe adherence", "probe": str(probe), "n_images": len(records)}
    text = json.dumps(report, indent=2) + "\n"
    if out:
        atomic_write_text(out, text)
    typer.echo(text, nl=False)


def main() -> None:
    """Console entry point: run the app, turning bad input into one clear line (exit code 2)."""
    from senseflow.errors import run_app

    run_app(app)


if __name__ == "__main__":
    main()
