"""The pipeline stages on a real-family profile, end to end on a tiny SD3 pipeline saved to disk.

The profile is experiments/sd35_medium.yaml pointed (with ``--set``-style overrides) at the
tiny pipeline, a tiny DINOv2 in a weights directory, a folder of 32 px images and a prompt
file: ``distill`` trains two iterations and exports, ``export`` publishes, ``generate``
samples the student; with the prompt cache filled, training runs without text encoders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from senseflow import pipeline as pl
from senseflow import stages
from senseflow.config import load_profile
from senseflow.errors import MissingArtefactError, UserError
from tests.test_distill_families import tiny_dinov2
from tests.test_real_data import write_folder
from tests.tiny_pipelines import RESOLUTION, T5_LENGTH, save_tiny_pipeline

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
PROFILE = EXPERIMENTS / "sd35_medium.yaml"


def tiny_profile(root: Path, family_folder: Path, profile: Path = PROFILE, **extra: str):
    """sd35_medium shrunk to the tiny pipeline, 2 iterations, the data and prompts under ``root``."""
    sets = {
        "teacher.pretrained.model_id": str(family_folder),
        "teacher.pretrained.dtype": "float32",
        "teacher.pretrained.resolution": str(RESOLUTION),
        "teacher.pretrained.max_sequence_length": str(T5_LENGTH),
        "teacher.sample": "{steps: 4, cfg: 3.5, n_prompts: 3, batch_size: 2, seed: 0, step_curve: [4]}",
        "distill.iterations": "2",
        "distill.global_batch": "2",
        "distill.ttur": "1",
        "distill.checkpoint_every": "1",
        "distill.log_every": "1",
        "distill.generator_lr": "1e-3",
        "distill.gan.blocks": "[0, 2]",
        "distill.gan.text_projection_dim": "8",
        "data": f"{{path: {root / 'data'}, format: folder, min_side: 20}}",
        "pipeline.prompts": f"{{set: {root / 'prompts.txt'}}}",
        "runtime": "{nproc_per_node: 1, device: cpu, threads: 0}",
        **extra,
    }
    return load_profile(str(profile), [f"{k}={v}" for k, v in sets.items()])


@pytest.fixture
def real_setup(tmp_path, monkeypatch):
    """Tiny SD3 weights, a tiny DINOv2 as dinov2_vitl14, 6 images, 3 prompts; cwd = the repo root."""
    teacher = save_tiny_pipeline("sd3", tmp_path / "weights" / "sd3")
    tiny_dinov2().save_pretrained(tmp_path / "weights" / "dinov2_vitl14")
    monkeypatch.setenv("SENSEFLOW_WEIGHTS", str(tmp_path / "weights"))
    write_folder(tmp_path / "data", n=6)
    (tmp_path / "prompts.txt").write_text("a red cat\na blue dog\na photo of a cat\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)  # the stages write under build/
    return tiny_profile(tmp_path, teacher)


def test_distill_export_generate_on_a_real_family(real_setup):
    cfg = real_setup
    summary = stages.distill(cfg, "senseflow", ablations=False, progress=False)
    assert summary["iterations"] == 2 and summary["text"] == "live" and summary["images"] == 6
    run = pl.distill_dir("senseflow")
    assert json.loads((run / "summary.json").read_text())["iterations"] == 2
    recipe = json.loads((run / "student" / "recipe.json").read_text())
    assert recipe["family"] == "sd3" and recipe["anchors"] == [1.0, 0.9, 0.75, 0.5]
    assert (
        recipe["base"]["model_id"] == cfg.teacher.pretrained.model_id and recipe["resolution"] == RESOLUTION
    )
    metrics = json.loads((run / "dvclive" / "metrics.json").read_text())["train"]
    for term in ("dmd", "isg", "gan_g", "gan_d", "fake"):  # every SenseFlow term ran on the real path
        assert term in metrics, term

    student = stages.export(cfg, "senseflow", ablations=False)
    assert (student / "recipe.json").is_file() and (student / "transformer").is_dir()
    samples = stages.generate_candidate(cfg, "senseflow_4", ablations=False, progress=False)
    records = [json.loads(line) for line in (samples / "manifest.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a red cat", "a blue dog", "a photo of a cat"]
    assert len(list(samples.glob("*.png"))) == 3
    # the teacher candidates sample the pretrained pipeline at the profile's steps and CFG
    teacher = stages.generate_candidate(cfg, "teacher_full", ablations=False, progress=False)
    generation = json.loads((teacher / "generation.json").read_text())
    assert len(list(teacher.glob("*.png"))) == 3 and "sd35_medium_teacher_4" in json.dumps(generation)

    # a rerun by DVC (code or params changed) finds the finished run and starts over
    (run / "marker").write_text("old")
    again = stages.distill(cfg, "senseflow", ablations=False, progress=False)
    assert again["iterations"] == 2 and not (run / "marker").exists()


def test_distill_reads_the_prompt_cache_when_it_covers_the_data(real_setup):
    from senseflow.cache import cache_profile
    from senseflow.real_run import distill_real

    cfg = real_setup
    cache_profile(cfg, "build/cache", progress=False)
    summary = distill_real(cfg, "run", cache_dir="build/cache", progress=False)
    assert summary["text"] == "cached"
    # no cache there: the live text encoders run
    summary = distill_real(cfg, "run2", cache_dir="absent", progress=False)
    assert summary["text"] == "live"


def test_interrupted_run_resumes_from_its_checkpoint(real_setup, monkeypatch):
    from senseflow.real_data import RealImageData
    from senseflow.real_run import distill_real

    cfg = real_setup
    short = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"iterations": 1})})
    run = pl.distill_dir("senseflow")
    distill_real(short, run, progress=False)
    (run / "summary.json").unlink()  # as if killed after the checkpoint of iteration 1
    drawn = []
    batch = RealImageData.batch
    monkeypatch.setattr(
        RealImageData, "batch", lambda self, it, rank, n: drawn.append(it) or batch(self, it, rank, n)
    )
    summary = stages.distill(cfg, "senseflow", ablations=False, progress=False)
    assert summary["iterations"] == 2 and drawn == [1]  # only the missing iteration was trained


def test_generation_prompts_and_preflight_inputs(real_setup, tmp_path):
    cfg = real_setup
    assert stages.generation_prompts(cfg) == (str(tmp_path / "prompts.txt"), None)
    assert stages.missing_inputs(cfg) == []
    coco = f"{{set: coco5k, source: {tmp_path / 'coco.json'}}}"
    gone = tiny_profile(tmp_path, Path(cfg.teacher.pretrained.model_id),
                        data=f"{{path: {tmp_path / 'nodata'}}}", **{"pipeline.prompts": coco})  # fmt: skip
    missing = stages.missing_inputs(gone)
    assert (
        len(missing) == 2 and "nodata: no such folder" in missing[0] and "coco.json: not found" in missing[1]
    )
    no_prompts = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"prompts": None})})
    with pytest.raises(UserError, match="names no prompt set"):
        stages.generation_prompts(no_prompts)
    # the stage stops on missing data before it loads any model
    with pytest.raises(MissingArtefactError, match="nodata does not exist"):
        stages.distill(gone, "senseflow", ablations=False, progress=False)


@pytest.mark.parametrize(("family", "profile"), [("sdxl", "sdxl.yaml"), ("flux", "flux_dev.yaml")])
def test_distill_and_generate_on_sdxl_and_flux(family, profile, real_setup, tmp_path):
    teacher = save_tiny_pipeline(family, tmp_path / "weights" / family)
    # FLUX's profile trains with bitsandbytes' 8-bit AdamW, a CUDA optimiser
    cfg = tiny_profile(tmp_path, teacher, EXPERIMENTS / profile, **{"distill.optimizer": "adamw"})
    summary = stages.distill(cfg, "senseflow", ablations=False, progress=False)
    assert summary["iterations"] == 2
    recipe = json.loads((pl.distill_dir("senseflow") / "student" / "recipe.json").read_text())
    assert recipe["family"] == family and recipe["anchors"] == cfg.distill.anchor_times()
    stages.export(cfg, "senseflow", ablations=False)
    samples = stages.generate_candidate(cfg, "senseflow_2", ablations=False, progress=False)
    records = [json.loads(line) for line in (samples / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["nfe"] == 2 for r in records)


def test_embedded_world_commands_refuse_a_real_profile(tmp_path, monkeypatch):
    # a real profile's dvc.yaml has no world, probes, clip or teacher stage (senseflow.dvc_plan);
    # run by hand, these commands say the profile is not an embedded one
    from typer.testing import CliRunner

    from senseflow.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (
        ["world", "build", "--out", "build/world"],
        ["world", "train-probe", "--out", "build/probes"],
        ["world", "train-clip", "--out", "build/clip"],
        ["train-teacher", "--out", "build/teacher"],
    ):
        done = runner.invoke(app, [*args, "--profile", "sdxl"])
        assert done.exit_code != 0 and "not an embedded-world profile" in done.output, done.output
    assert not (tmp_path / "build").exists()
