"""Public checkpoints as pipeline candidates (``pipeline.registry_baselines``) and the
evaluation-only ``tables_*`` profiles: validation when the profile is read, the rendered plan,
preflight's list of missing weights, the report's paper rows, and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import yaml

from senseflow import dvc_plan
from senseflow import pipeline as pl
from senseflow.baselines import get_recipe, missing_recipe_weights, recipe_family
from senseflow.config import ConfigError, load_profile
from senseflow.stages import missing_inputs, missing_registry_weights
from tests.helpers.dvc_repo import copy_repo, relax_inception_hash, repro_report, stages_run

TABLES = {"tables_sdxl": "sdxl", "tables_sd35": "sd3", "tables_flux": "flux"}


def test_unknown_registry_name_fails_when_the_profile_is_read():
    with pytest.raises(
        ConfigError, match=r"pipeline.registry_baselines: 'nope_4' is not in experiments/baselines"
    ):
        load_profile("sdxl", ["pipeline.registry_baselines=[nope_4]"])


def test_registry_recipe_of_another_family_fails_when_the_profile_is_read():
    with pytest.raises(ConfigError, match=r"'flux_schnell_4' samples a flux model .* family is 'sdxl'"):
        load_profile("sdxl", ["pipeline.registry_baselines=[flux_schnell_4]"])


def test_embedded_profile_refuses_registry_candidates():
    with pytest.raises(ConfigError, match="no public checkpoints"):
        load_profile("smoke", ["pipeline.registry_baselines=[dmd2_sdxl_4]"])


@pytest.mark.parametrize("profile", sorted(TABLES))
def test_evaluation_only_profile_plans_a_generate_and_evaluate_stage_per_public_model(profile):
    cfg = load_profile(profile)
    assert cfg.pipeline.methods == [] and cfg.pipeline.registry_baselines
    stages = dvc_plan.plan(cfg)["stages"]
    # nothing trained, no caption cache: the teacher, the public models, the report and the gate
    assert not any(s.startswith(("distill-", "export-", "cache")) for s in stages), list(stages)
    for name in cfg.pipeline.registry_baselines:
        assert recipe_family(get_recipe(name)) == TABLES[profile]
        gen, ev = stages[f"generate-{name}"], stages[f"evaluate-{name}"]
        assert "--candidate" not in gen["cmd"] and gen["cmd"].startswith(
            f"senseflow pipeline generate {name} "
        )
        assert {"experiments/baselines.yaml", "eval/weights_manifest.yaml", "build/preflight.json"} <= set(
            gen["deps"]
        )
        assert gen["outs"] == [f"build/samples/{name}"]
        assert "build/samples/teacher_full" in ev["deps"]  # scored against the full-step teacher
        assert f"build/eval/{name}" in stages["report"]["deps"]
    # an evaluation-only profile needs no training images
    assert not any(line.startswith("data") for line in missing_inputs(cfg))


@pytest.mark.parametrize("profile", sorted(TABLES))
def test_evaluation_only_profile_gates_each_public_model_on_its_paper_row(profile):
    from eval.gate import load_thresholds
    from eval.report import read_paper

    rules = load_thresholds(f"experiments/thresholds/{profile}.yaml").candidates
    paper = {r["method"]: r for r in read_paper("coco5k_4step")}
    for name in load_profile(profile).pipeline.registry_baselines:
        row = paper.get(get_recipe(name).paper_row or "")
        if row and row.get("fid_t") is not None:  # a bound a few percent above the paper's FID-T
            assert row["fid_t"] < rules[name]["fid_t"].max <= 1.2 * row["fid_t"], name


def test_trained_profile_names_public_models_beside_its_student():
    cfg = load_profile("sdxl")
    stages = dvc_plan.plan(cfg)["stages"]
    assert (
        "distill-senseflow" in stages
        and "generate-dmd2_sdxl_4" in stages
        and "generate-sdxl_lightning_4" in stages
    )
    names = [c.name for c in pl.active_candidates(cfg, ablations=False)]
    assert names.index("senseflow_4") < names.index(
        "dmd2_sdxl_4"
    )  # table order: ours, then the public models


def test_registry_candidate_parses_with_its_recipe_steps_and_paper_row():
    c = pl.parse_candidate("dmd2_sdxl_4")
    assert (c.kind, c.steps, c.paper_row) == ("registry", 4, "DMD2-SDXL")
    assert pl.source_of("dmd2_sdxl_4") == "dmd2_sdxl_4"
    assert "public weights" in c.label
    with pytest.raises(Exception, match="unknown candidate 'nope'"):
        pl.parse_candidate("nope")


def test_preflight_lists_every_missing_registry_file_before_sampling(tmp_path):
    cfg = load_profile("tables_sdxl")
    missing = missing_registry_weights(cfg, tmp_path)
    # one line per missing file (base and the replaced UNet or LoRA), each with how to provide it
    for name in cfg.pipeline.registry_baselines:
        assert any(line.startswith(f"{name}: ") or f"{name}: " in line for line in missing), name
    assert all(
        "hf download" in line or "senseflow weights fetch" in line or "mismatch" in line for line in missing
    )


def test_registry_file_with_another_hash_than_the_manifest_is_named(tmp_path, monkeypatch):
    # a manifest artefact whose pinned hash differs from the file on disk: one clear line, nothing loaded
    import dataclasses

    import eval.weights as w

    recipe = get_recipe("sdxl_lightning_4")
    manifest = w.load_manifest()
    art = manifest.artefacts[recipe.base.artefact]
    pinned = dataclasses.replace(art, files=tuple(dataclasses.replace(f, sha256="0" * 64) for f in art.files))
    manifest.artefacts[art.name] = pinned
    monkeypatch.setattr(w, "load_manifest", lambda *a, **k: manifest)
    for f in art.files:
        path = tmp_path / art.name / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not the weights")
    lines = missing_recipe_weights(recipe, tmp_path)
    assert any(
        line.startswith(f"sdxl_lightning_4: base {art.name}/") and "mismatch" in line for line in lines
    ), lines


def test_report_puts_the_recipes_paper_row_beside_a_public_model():
    from eval.report import paper_values, read_paper

    rows = [r for r in read_paper("coco5k_4step") if r["backbone"] == "sdxl"]
    entry = {
        "method": "dmd2_sdxl_4",
        "steps": 4,
        "paper_row": "DMD2-SDXL",
        "metrics": {"fid_t": {}, "hpsv2": {}},
    }
    assert paper_values("dmd2_sdxl_4", entry, "sdxl", rows) == {"fid_t": 15.04, "hpsv2": 0.2963}


def test_pcm_flash_and_turbo_alpha_sample_by_their_recipes(tmp_path):
    # the recipes added for the paper's PCM-SDXL, Flash-SDXL and FLUX-Turbo-Alpha rows, on tiny
    # bases saved under their real repository ids: each LoRA is found where `weights fetch` or
    # `hf download` puts it (PCM's in its sdxl/ subfolder), fused at its scale, and sampled by
    # the recipe's scheduler in 4 network evaluations
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    from senseflow.baselines import load_registry
    from tests.test_baselines_recipes import SDXL, _check_folder, assert_fused, run, tiny_lora
    from tests.tiny_pipelines import save_tiny_pipeline

    registry, weights = load_registry(), tmp_path / "weights"
    save_tiny_pipeline("sdxl", weights / SDXL)
    save_tiny_pipeline("flux", weights / "black-forest-labs/FLUX.1-dev")
    (tmp_path / "p.txt").write_text("a red cat\nthe photo of a dog\n")
    unet = UNet2DConditionModel.from_pretrained(weights / SDXL / "unet")
    cases = {
        "pcm_sdxl_4": ("TCDScheduler", unet, "unet",
                       "wangfuyun/PCM_Weights/sdxl/pcm_sdxl_smallcfg_4step_converted.safetensors"),
        "flash_sdxl_4": ("LCMScheduler", unet, "unet",
                         "jasperai/flash-sdxl/pytorch_lora_weights.safetensors"),
        "flux_turbo_alpha_4": (None, FluxTransformer2DModel.from_pretrained(
            weights / "black-forest-labs/FLUX.1-dev/transformer"), "transformer",
            "alimama-creative/FLUX.1-Turbo-Alpha/diffusion_pytorch_model.safetensors"),
    }  # fmt: skip
    for seed, (name, (scheduler, base, prefix, rel)) in enumerate(cases.items()):
        state = tiny_lora(base, prefix, weights / rel, seed=seed)
        _, cand = run(name, weights, tmp_path / "p.txt", tmp_path / name, registry)
        assert_fused(getattr(cand.pipe, prefix), base, state, prefix, get_recipe(name).lora.scale)
        if scheduler:  # trailing spacing, as the model cards set it
            assert cand.last_schedule["scheduler"] == scheduler
            assert cand.pipe.scheduler.config.timestep_spacing == "trailing"
        manifest, speed = _check_folder(tmp_path / name, n=2)
        assert manifest[0]["nfe"] == 4 and speed["nfe"] == 4, name


# family -> (profile, tiny pipeline, manifest artefact of the base, pipeline class, paper row, its FID-T)
TINY = {
    "sd3": ("tables_sd35", "sd3", "sd35_large", "StableDiffusion3Pipeline", "SD 3.5 Large Turbo", 13.58),
    "sdxl": ("tables_sdxl", "sdxl", "sdxl_base", "StableDiffusionXLPipeline", "DMD2-SDXL", 15.04),
    "flux": ("tables_flux", "flux", "flux_dev", "FluxPipeline", "Hyper-FLUX", 11.24),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TINY))
def test_evaluation_only_profile_runs_through_dvc_on_tiny_weights(tmp_path, family):
    # each tables_* profile on its family's tiny pipeline: the teacher and one public model (a
    # registry recipe pointed at the same tiny weights) sampled, scored with FID-T against the
    # full-step teacher and reported beside the paper row the recipe names
    from tests.test_fid import save_random_inception
    from tests.tiny_pipelines import RESOLUTION, T5_LENGTH, save_tiny_pipeline

    profile, tiny, artefact, pipeline_class, paper_row, paper_fid = TINY[family]
    repo = copy_repo(tmp_path / "repo", profile=profile)
    weights = tmp_path / "weights"
    save_tiny_pipeline(tiny, weights / artefact)
    (weights / "inception_fid").mkdir()
    save_random_inception(weights / "inception_fid")
    prompts = ["a red cat", "a blue dog", "a photo of a cat", "the dog and the cat"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    relax_inception_hash(repo)  # the random Inception cannot carry the real file's hash
    registry = yaml.safe_load((repo / "experiments/baselines.yaml").read_text())
    registry["candidates"]["tiny_public_4"] = {
        "label": "tiny public model", "kind": "baseline", "paper_row": paper_row, "pipeline": pipeline_class,
        "base": {"repo": str(weights / artefact)}, "steps": 4, "guidance": 0.0, "dtype": "float32",
        "max_sequence_length": None if family == "sdxl" else T5_LENGTH, "resolution": RESOLUTION,
        "licence": "test weights",
    }  # fmt: skip
    (repo / "experiments/baselines.yaml").write_text(yaml.safe_dump(registry, sort_keys=False))
    path = repo / f"experiments/{profile}.yaml"
    p = yaml.safe_load(path.read_text())
    p["teacher"]["pretrained"].update(
        model_id=str(weights / artefact),
        dtype="float32",
        resolution=RESOLUTION,
        max_sequence_length=77 if family == "sdxl" else T5_LENGTH,
    )
    p["teacher"]["sample"].update(steps=4, n_prompts=4, batch_size=2, step_curve=[4])
    p["pipeline"].update(prompts={"set": str(tmp_path / "prompts.txt")}, metrics=["fid_t"], n_boot=20,
                         n_boot_set=5, teacher_steps=[], noise_floor=False,
                         registry_baselines=["tiny_public_4"])  # fmt: skip
    # T2I-CompBench has its own stage tests (tests/test_compbench_pipeline.py): no judges built here
    p["pipeline"]["compbench"] = None
    p["runtime"] = {"nproc_per_node": 1, "device": "cpu", "threads": 1}
    run = repro_report(repo, path, p, weights)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert {"preflight", "generate-tiny_public_4", "evaluate-tiny_public_4"} <= stages_run(run.stdout)
    assert not any(s.startswith(("distill-", "cache")) for s in stages_run(run.stdout))  # nothing trained
    summary = json.loads((repo / "results/summary.json").read_text())
    entry = summary["candidates"]["tiny_public_4"]
    assert entry["kind"] == "registry" and entry["nfe"] == 4
    assert entry["metrics"]["fid_t"]["status"] == "ok"
    assert entry["paper"]["fid_t"] == paper_fid  # the paper's row beside the public model
    table = (repo / f"results/tables/{profile}/main.md").read_text()
    assert "tiny public model" in table and str(paper_fid) in table
