"""The rendered DVC plan (senseflow.dvc_plan): one rule per test, on every profile, without running DVC."""

import json
import subprocess

import pytest
import yaml

from senseflow import dvc_plan
from senseflow import pipeline as pl
from senseflow.code_deps import closure, function_imports, module_file
from senseflow.config import known_profiles, load_profile

from .conftest import ROOT

PROFILES = known_profiles(ROOT / "experiments")
REAL = [p for p in PROFILES if load_profile(p).family != "embedded"]


@pytest.fixture(scope="module")
def plans() -> dict[str, dict]:
    return {name: dvc_plan.plan(load_profile(name)) for name in PROFILES}


def _deps(stage: dict) -> list[str]:
    return stage["deps"]


def _keys(stage: dict) -> set[str]:
    return {k for e in stage.get("params", []) if isinstance(e, dict) for ks in e.values() for k in ks or []}


def _outs(stage: dict) -> list[str]:
    return [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]


def _covers(deps: list[str], path: str) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_committed_dvc_yaml_is_the_rendered_plan():
    # fails when code, a profile or the plan changed and `senseflow pipeline render` was not run
    profile = dvc_plan.read_params(ROOT / "params.yaml")["profile"]
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == dvc_plan.render(load_profile(profile)), (
        f"dvc.yaml is stale: run `senseflow pipeline render --profile {profile}`"
    )


def test_the_repository_commits_no_lock():
    # a lock records one machine's run; DVC refuses a git-ignored one, so it is simply not committed
    tracked = subprocess.run(["git", "ls-files", "dvc.lock"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.returncode == 0 and tracked.stdout.strip() == ""


def test_real_profiles_have_no_embedded_stages_or_skip_markers(plans):
    for name in REAL:
        stages = plans[name]["stages"]
        assert not {"world", "probes", "clip", "teacher", "curve-reference"} & set(stages), name
        assert not any(d.startswith(("build/world", "build/teacher", "build/probes")) for s in stages.values()
                       for d in _deps(s)), name  # fmt: skip
    assert {"world", "probes", "clip", "teacher"} <= set(plans["embedded"]["stages"])


def test_one_generate_and_one_evaluate_stage_per_source_model(plans):
    for name, plan in plans.items():
        cfg = load_profile(name)
        stages = plan["stages"]
        sources = {s.split("-", 1)[1] for s in stages if s.startswith("generate-")}
        assert sources == {s.split("-", 1)[1] for s in stages if s.startswith("evaluate-")}
        outs = [o for s in sources for o in _outs(stages[f"generate-{s}"])]
        assert sorted(outs) == sorted(str(pl.samples_dir(c)) for c in pl.planned_candidates(cfg)), name
        for source in sources:
            cands = pl.candidates_of(cfg, source)
            assert _outs(stages[f"evaluate-{source}"]) == [str(pl.eval_dir(c)) for c in cands]
    # embedded: 1 teacher + 9 methods, ~2 stages each instead of one per candidate
    assert sum(s.startswith("generate-") for s in plans["embedded"]["stages"]) == 10


def test_every_tracked_key_exists_in_its_profile(plans):
    # DVC refuses a stage whose tracked key is missing from the file
    for name, plan in plans.items():
        raw = yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())
        for stage in plan["stages"].values():
            for key in _keys(stage):
                node = raw
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{name}.yaml lacks {key}"
                    node = node[part]


def test_generate_stages_track_the_sampling_code(plans):
    # issue 16: editing the x0 sampler or the student loader must regenerate samples
    for name, plan in plans.items():
        for stage_name, stage in plan["stages"].items():
            if stage_name.startswith("generate-"):
                for f in ("senseflow/student.py", "senseflow/student_sampler.py", "senseflow/export.py",
                          "senseflow/candidates.py", "senseflow/teacher_candidate.py",
                          "senseflow/samplers.py", "senseflow/schedules.py",
                          "senseflow/backbones/sd3.py"):  # fmt: skip
                    assert _covers(_deps(stage), f), (name, stage_name, f)


def _downstream(stages: dict, names: set[str]) -> set[str]:
    """``names`` and every stage reading (directly or not) what one of them writes."""
    found, todo = set(names), list(names)
    while todo:
        outs = _outs(stages[todo.pop()])
        for name, stage in stages.items():
            if name not in found and any(_covers(outs, d) for d in _deps(stage)):
                found.add(name)
                todo.append(name)
    return found


def test_editing_the_student_loader_marks_exactly_the_generate_stages(plans):
    # issue 16: an edit of senseflow/student.py (the loaded student) regenerates samples and retrains
    # nothing: distillation writes the folder through senseflow.export and samples its in-loop curve
    # through senseflow.student_sampler, and the curve's reference samples the teacher through
    # senseflow.teacher_candidate, so none of them reaches student.py
    for name, plan in plans.items():
        stages = plan["stages"]
        generate = {s for s in stages if s.startswith(("generate-", "compbench-generate-"))}
        marked = {s for s, stage in stages.items() if _covers(_deps(stage), "senseflow/student.py")}
        # (the first stage tracks all code: its stale-plan check renders the plan from the imports)
        assert marked - {"preflight"} == generate, (name, sorted(marked ^ generate))
        rerun = _downstream(stages, generate)
        assert not {s for s in rerun if s.startswith(("distill-", "export-"))}, name
        assert not {"world", "probes", "clip", "teacher", "cache", "curve-reference"} & rerun, name
        evaluate = {s for s in stages if s.startswith(("evaluate-", "compbench-evaluate-"))}
        assert evaluate <= rerun and "report" in rerun, name
    # the files split from it do reach training: an edit there honestly retrains
    embedded = plans["embedded"]["stages"]
    for f in ("senseflow/export.py", "senseflow/student_sampler.py"):
        assert _covers(_deps(embedded["distill-senseflow"]), f), f
    assert _covers(_deps(embedded["curve-reference"]), "senseflow/teacher_candidate.py")
    assert not _covers(_deps(embedded["curve-reference"]), "senseflow/candidates.py")


def test_training_and_evaluation_stages_track_what_they_import(plans):
    stages = plans["embedded"]["stages"]
    for f in ("senseflow/optim.py", "senseflow/teacher.py", "senseflow/samplers.py",
              "senseflow/world/probes.py", "senseflow/train.py"):  # fmt: skip
        assert _covers(_deps(stages["distill-senseflow"]), f), f
    for f in ("senseflow/guidance_embedding.py", "senseflow/consistency.py", "senseflow/optim.py"):
        assert _covers(_deps(stages["distill-lcm"]), f), f
    # the two loops do not import each other: the SenseFlow students do not retrain on an LCM edit
    assert not _covers(_deps(stages["distill-senseflow"]), "senseflow/consistency_run.py")
    for f in ("eval/registry.py", "eval/sample_folder.py", "eval/sharding.py", "eval/metrics/fid_t_probe.py"):
        assert _covers(_deps(stages["evaluate-senseflow"]), f), f
    # ... and not what they never run: the real-model loop is not an embedded student's code
    assert not _covers(_deps(stages["distill-senseflow"]), "senseflow/real_run.py")
    assert not _covers(_deps(stages["teacher"]), "senseflow/student.py")
    sdxl = plans["sdxl"]["stages"]
    assert _covers(_deps(sdxl["distill-senseflow"]), "senseflow/real_run.py")


def test_code_deps_are_the_import_closure_of_the_entry_modules():
    files = {str(p.relative_to(ROOT)) for p in closure(["senseflow.generate"])}
    assert {"senseflow/generate.py", "senseflow/candidates.py", "senseflow/student.py"} <= files
    # a package's __getattr__ hook (senseflow.load_student) is not an import of every module
    assert "senseflow/student.py" not in {
        str(p.relative_to(ROOT)) for p in closure(["senseflow.world.build"])
    }
    # the lazy imports of each glue function are inside the closure of the stage that calls it
    # (the dispatch functions pick one loop per method: the other loops are alternatives, not deps)
    alternatives = {"senseflow.real_run", "senseflow.consistency_run", "senseflow.distill_run"}
    for stage, function, entries in (
        ("distill", "train", ["senseflow.distill_run"]),
        ("distill", "distill", ["senseflow.distill_run"]),
        ("export", "export", ["senseflow.distill_run"]),
        ("generate", "generate_candidate", ["senseflow.generate"]),
        ("evaluate", "evaluate_candidate", ["eval.evaluate"]),
        ("curve-reference", "curve_reference",
         ["senseflow.teacher", "senseflow.samples", "senseflow.world.prompts"]),
    ):  # fmt: skip
        inside = {p for p in closure(entries)}
        lazy = function_imports("senseflow.stages", function) - alternatives
        escaped = {m for m in lazy if module_file(m) not in inside}
        assert not escaped, (stage, function, escaped)


def test_each_method_tracks_only_the_keys_its_recipe_reads(plans):
    stages = plans["embedded"]["stages"]
    uses_ida = {
        m
        for m in pl.METHODS
        if f"distill-{m}" in stages and "distill.ida.lam" in _keys(stages[f"distill-{m}"])
    }
    cfg = load_profile("embedded")
    expected = {m for m in pl.planned_methods(cfg)
                if not pl.uses_consistency_loop(cfg, m) and cfg.variant(m).ida.enabled}  # fmt: skip
    assert uses_ida == expected and "senseflow" in uses_ida
    assert not {"dmd2", "lcm", "hyper_sd", "no_ida", "vanilla_dmd"} & uses_ida
    lcm = _keys(stages["distill-lcm"])
    assert "baselines.lcm" in lcm and not any(
        k.startswith(("distill.gan", "baselines.hyper_sd")) for k in lcm
    )
    # no stage but the first tracks the method list: toggling a method retrains nothing else
    for stage_name, stage in stages.items():
        if stage_name != "preflight":
            assert "pipeline.methods" not in _keys(stage), stage_name


def test_every_cross_stage_read_is_declared(plans):
    for name, plan in plans.items():
        stages = plan["stages"]
        outs = {o for s in stages.values() for o in _outs(s)}
        for stage_name, stage in stages.items():
            for dep in _deps(stage):
                if dep.startswith(("build/", "results/")):
                    assert _covers(list(outs), dep), f"{name}: {stage_name} reads {dep}, no stage writes it"
    one_step = plans["embedded"]["stages"]["distill-senseflow_1step"]
    assert "build/distill/senseflow/checkpoint" in _deps(one_step)  # init_from


def test_students_never_depend_on_the_reference_samples(plans):
    # the in-loop curve has its own reference (curve-reference): resampling teacher_full retrains nothing
    for name, plan in plans.items():
        for stage_name, stage in plan["stages"].items():
            if stage_name.startswith(("distill-", "export-")):
                assert not any(d.startswith("build/samples") for d in _deps(stage)), (name, stage_name)
                assert not any(k.startswith("teacher.sample") for k in _keys(stage)), (name, stage_name)


def test_teacher_export_holds_no_wall_clock(tmp_path, world_dir):
    from senseflow.teacher import train_teacher

    from .test_teacher import TINY

    folder = train_teacher(tmp_path / "t", world_dir=world_dir, steps=2, checkpoint_every=2, **TINY)
    recipe = json.loads((folder / "recipe.json").read_text())
    assert not [k for k in recipe if "second" in k or "time" in k], recipe
    assert json.loads((tmp_path / "t" / "timing.json").read_text())["train_seconds_this_run"] >= 0


def test_preflight_stops_on_a_stale_plan(tmp_path, monkeypatch):
    from senseflow.errors import UserError
    from senseflow.stages import preflight

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text(dvc_plan.render(load_profile("embedded")))
    with pytest.raises(UserError, match="senseflow pipeline render --profile smoke"):
        preflight(load_profile("smoke"))
    (tmp_path / "dvc.yaml").write_text(dvc_plan.render(load_profile("smoke")))
    assert preflight(load_profile("smoke"))["profile"] == "smoke"
    # `dvc exp run -S profile=embedded` rewrites params.yaml only: the smoke stages must not run
    (tmp_path / "params.yaml").write_text("profile: embedded\nablations: false\n")
    with pytest.raises(UserError, match="names profile 'embedded'.*render --profile embedded"):
        preflight(load_profile("smoke"))


def test_render_switches_the_profile(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    name, changed = dvc_plan.render_to_disk("smoke", root=tmp_path)
    assert (name, changed) == ("smoke", True)
    assert dvc_plan.read_params(tmp_path / "params.yaml")["profile"] == "smoke"
    assert "# do not edit" in (tmp_path / "dvc.yaml").read_text().splitlines()[1]
    assert dvc_plan.render_to_disk(None, root=tmp_path) == ("smoke", False)


def test_curve_reference_is_deterministic_and_holds_no_wall_clock(tmp_path, world_dir):
    # every distillation stage reads it: a rerun with the same teacher must give the same bytes
    from senseflow.stages import curve_reference

    from .distill_script import tiny_teacher

    teacher = tmp_path / "teacher"
    tiny_teacher(str(world_dir)).network.save_pretrained(teacher / "transformer")
    recipe = {"steps": 2, "cfg": 2.0, "channels": 3, "resolution": 16, "shift": 1.0}
    (teacher / "recipe.json").write_text(json.dumps(recipe))
    a = curve_reference(tmp_path / "a", teacher_dir=teacher, world_dir=world_dir, progress=False)
    b = curve_reference(tmp_path / "b", teacher_dir=teacher, world_dir=world_dir, progress=False)
    assert not (a / "speed.json").exists()
    records = [json.loads(line) for line in (a / "manifest.jsonl").read_text().splitlines()]
    assert records and all("scene" in r and not any("second" in k for k in r) for r in records)
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert all((a / p.name).read_bytes() == (b / p.name).read_bytes() for p in a.iterdir() if p.is_file())
