"""End to end: `dvc repro` of the smoke profile in a fresh copy of the repository, run ONCE.

The module's fixture runs the smoke pipeline from nothing; the tests after it read its results,
ask `dvc status` what an edit would rerun, and finally (last, as it changes code) break the DMD
sign and check that the gate fails. CI runs this file once (`make test-all`; `make test-slow`
alone runs it too); `.ci/smoke` is the same pipeline for a person to watch.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.dvc_repo import (
    changed_stages,
    copy_repo,
    deps_of,
    dvc,
    dvc_env,
    relax_inception_hash,
    repro_report,
    restore,
    stages_run,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("smoke") / "repo")
    t0 = time.perf_counter()
    run = dvc(repo, "repro", timeout=1800)
    print(f"smoke dvc repro from nothing: {time.perf_counter() - t0:.0f} s")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    return repo


def test_smoke_pipeline_end_to_end(smoke):
    repo = smoke
    summary = json.loads((repo / "results/summary.json").read_text())
    cands = summary["candidates"]
    assert set(cands) == {"teacher_full", "senseflow_4", "lcm_4"}, sorted(cands)
    assert "pipeline.teacher_steps" in summary["skipped"]["teacher_4"]
    assert "ablations=true" in summary["skipped"]["no_ida_4"]
    assert "pipeline.methods" in summary["skipped"]["dmd2_4"]
    s4 = cands["senseflow_4"]
    assert s4["nfe"] == 4 and s4["steps"] == 4 and s4["speedup"] > 1
    assert s4["metrics"]["fid_t_probe"]["status"] == "ok" and "protocol" in s4["metrics"]["adherence"]
    assert cands["teacher_full"]["metrics"]["fid_t_probe"]["status"] == "not_applicable"
    manifest = (repo / "build/samples/senseflow_4/manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 64 and json.loads(manifest[0])["nfe"] == 4
    tables = repo / "results/tables/smoke"
    for name in ("main", "ablation", "speed", "steps"):
        assert (tables / f"{name}.md").is_file() and (tables / f"{name}.csv").is_file()
    assert "| senseflow_4 |" in (tables / "main.md").read_text()
    gate = json.loads((repo / "results/gate.json").read_text())
    assert gate["passed"] is True and gate["rows"]
    metrics = dvc(repo, "metrics", "show", "--json")
    assert "senseflow_4" in metrics.stdout


def test_nothing_changed_reruns_nothing(smoke):
    t0 = time.perf_counter()
    again = dvc(smoke, "repro", timeout=300)
    print(f"second dvc repro, nothing changed: {time.perf_counter() - t0:.1f} s")
    assert again.returncode == 0 and not stages_run(again.stdout), again.stdout[-2000:]
    assert changed_stages(smoke) == set()


def test_editing_the_student_code_marks_the_generate_stages(smoke):
    # issue 16: an edit of senseflow/student.py used to mark no generate stage
    path = smoke / "senseflow/student.py"
    path.write_text(path.read_text() + "\n# an edit\n")
    try:
        changed = changed_stages(smoke)
    finally:
        restore(smoke)
    generate = {
        s for s in yaml.safe_load((smoke / "dvc.yaml").read_text())["stages"] if s.startswith("generate-")
    }
    assert generate <= changed, (generate, changed)
    # exactly the generate stages (and the first stage, which tracks all code for the render check):
    # no training stage, nor the in-loop curve's reference, imports the student loader
    assert changed == generate | {"preflight"}, changed
    assert changed == deps_of(smoke, "senseflow/student.py") | {"preflight"}, changed


def test_a_knob_of_ida_marks_only_the_methods_that_use_ida(smoke):
    # the README's example: `dvc exp run -S experiments/smoke.yaml:distill.ida.lam=0.95` edits this key
    path = smoke / "experiments/smoke.yaml"
    before = "ida: {enabled: true, lam: 0.97}"
    assert before in path.read_text()
    path.write_text(path.read_text().replace(before, "ida: {enabled: true, lam: 0.95}"))
    try:
        changed = changed_stages(smoke)
    finally:
        restore(smoke)
    # senseflow uses IDA; lcm (consistency loop) and no_ida (an ablation without it) do not
    assert changed == {"preflight", "distill-senseflow"}, changed


def test_an_evaluation_knob_reruns_only_the_evaluation(smoke):
    exp = dvc(smoke, "exp", "run", "-S", "experiments/smoke.yaml:pipeline.n_boot=100", timeout=600)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-2000:]
    ran = stages_run(exp.stdout)
    assert ran and all(s.startswith("evaluate-") or s in ("preflight", "report", "gate") for s in ran), ran
    restore(smoke)


def test_broken_dmd_sign_fails_the_gate(smoke):
    # last: it changes code. The distillation loss pushed the wrong way: the pipeline still runs to
    # the end, and the gate fails on the SenseFlow student's FID-T (experiments/thresholds/smoke.yaml);
    # only the stages that import the loss rerun (not the world, the teacher, the probe)
    repo = smoke
    dmd = repo / "senseflow/losses/dmd.py"
    src = dmd.read_text()
    assert "grad = (fake - real) / w" in src
    dmd.write_text(src.replace("grad = (fake - real) / w", "grad = (real - fake) / w"))
    run = dvc(repo, "repro", timeout=1200)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "failed to reproduce 'gate'" in out, out[-4000:]
    assert not {"world", "probes", "clip", "teacher"} & stages_run(run.stdout), stages_run(run.stdout)
    gate = json.loads((repo / "results/gate.json").read_text())
    failed = {(r["candidate"], r["metric"]) for r in gate["rows"] if not r["passed"]}
    assert gate["passed"] is False and failed == {("senseflow_4", "fid_t_probe")}, failed


def test_real_profile_stops_at_the_first_stage(tmp_path):
    # no weights on this machine: the first stage names what is missing and how to fetch it,
    # before any stage writes anything
    repo = copy_repo(tmp_path / "repo", profile="sdxl")
    env_weights = tmp_path / "no-weights"
    run = subprocess.run(
        ["dvc", "repro"], cwd=repo, env={**dvc_env(repo), "SENSEFLOW_WEIGHTS": str(env_weights)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0
    out = run.stderr + run.stdout
    assert "failed to reproduce 'preflight'" in out and "senseflow weights fetch sdxl" in out, out[-3000:]
    assert stages_run(run.stdout) == {"preflight"}
    assert not (repo / "build").exists() or not any((repo / "build").iterdir())


def test_real_profile_runs_through_dvc_on_tiny_weights(tmp_path):
    # sd35_medium pointed at a tiny SD3 pipeline, a tiny DINOv2, 6 images and 6 prompts: every
    # stage up to the report runs (the gate's wiring bounds are for real models, not random tiny ones)
    import yaml

    from tests.test_distill_families import tiny_dinov2
    from tests.test_fid import save_random_inception
    from tests.test_real_data import write_folder
    from tests.tiny_pipelines import RESOLUTION, T5_LENGTH, save_tiny_pipeline

    repo = copy_repo(tmp_path / "repo", profile="sd35_medium")
    weights = tmp_path / "weights"
    save_tiny_pipeline("sd3", weights / "sd35_medium")
    tiny_dinov2().save_pretrained(weights / "dinov2_vitl14")
    (weights / "inception_fid").mkdir()
    save_random_inception(weights / "inception_fid")
    write_folder(tmp_path / "data", n=6)
    prompts = ["a red cat", "a blue dog", "a photo of a cat", "the dog and the cat", "a red dog", "a cat"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    # preflight checks the evaluation models: only the random Inception is here (metric fid_t alone),
    # and it cannot carry the real file's hash prefix
    relax_inception_hash(repo)
    path = repo / "experiments/sd35_medium.yaml"
    p = yaml.safe_load(path.read_text())
    p["teacher"]["pretrained"].update(model_id=str(weights / "sd35_medium"), dtype="float32",
                                      resolution=RESOLUTION, max_sequence_length=T5_LENGTH)  # fmt: skip
    p["teacher"]["sample"].update(steps=4, n_prompts=6, batch_size=3, step_curve=[4])
    p["distill"].update(iterations=2, global_batch=2, ttur=1, checkpoint_every=1, log_every=1)
    p["distill"]["gan"].update(blocks=[0, 2], text_projection_dim=8)
    p["data"] = {"path": str(tmp_path / "data"), "format": "folder", "min_side": 20, "min_aesthetic": 5.0}
    p["pipeline"].update(prompts={"set": str(tmp_path / "prompts.txt")}, metrics=["fid_t"], n_boot=20,
                         n_boot_set=5, student_steps=[4], teacher_steps=[4], noise_floor=False)  # fmt: skip
    p["runtime"] = {"nproc_per_node": 1, "device": "cpu", "threads": 1}
    run = repro_report(repo, path, p, weights)  # the pipeline section changed: render the plan again
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert {"cache", "distill-senseflow", "generate-senseflow"} <= stages_run(run.stdout)
    assert not {"world", "teacher"} & set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert json.loads((repo / "build/distill/senseflow/summary.json").read_text())["text"] == "cached"
    cands = json.loads((repo / "results/summary.json").read_text())["candidates"]
    assert set(cands) == {"teacher_full", "teacher_4", "senseflow_4"}, sorted(cands)
    assert cands["senseflow_4"]["metrics"]["fid_t"]["status"] == "ok" and cands["senseflow_4"]["nfe"] == 4
    assert cands["teacher_full"]["metrics"]["fid_t"]["status"] == "not_applicable"
