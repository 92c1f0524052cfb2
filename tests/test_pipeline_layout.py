"""The pipeline's layout and choices (senseflow.pipeline), the report tables and the aggregated gate."""

import json

import pytest
import yaml

from eval.gate import gate_json, run_gate
from eval.report import ablation_table, compact_metrics, main_table, speed_table, steps_table, to_markdown
from senseflow import pipeline as pl
from senseflow.config import ConfigError, load_profile
from senseflow.errors import UserError


def test_sources_group_the_candidates():
    smoke = load_profile("smoke")
    assert pl.source_of("senseflow_1") == "senseflow_1step" and pl.source_of("teacher_reseed") == "teacher"
    assert pl.candidates_of(smoke, "teacher") == [pl.REFERENCE]
    assert pl.candidates_of(smoke, "no_ida") == ["no_ida_4"]  # planned, run only with ablations=true
    assert pl.planned_methods(smoke) == ["senseflow", "lcm", "no_ida"]


def test_candidates_parse_and_profiles_choose():
    c = pl.parse_candidate("senseflow_1")
    assert (c.method, c.steps, c.source_method, c.kind) == ("senseflow", 1, "senseflow_1step", "student")
    assert pl.parse_candidate("no_isg_4").kind == "ablation"
    assert pl.parse_candidate("lcm_2").kind == "baseline"
    # independent noise: the reference alone draws other seeds; the floor shares the candidates'
    assert pl.parse_candidate(pl.REFERENCE).seed_offset == 1
    assert (
        pl.parse_candidate(pl.NOISE_FLOOR).seed_offset == pl.parse_candidate("senseflow_4").seed_offset == 0
    )
    assert pl.parse_candidate(pl.REFERENCE).steps is None
    with pytest.raises(UserError, match="unknown candidate 'nope'.*teacher_full"):
        pl.parse_candidate("nope")
    smoke = load_profile("smoke")
    assert pl.method_inactive(smoke, "senseflow", ablations=False) is None
    assert "ablations=true" in pl.method_inactive(smoke, "no_ida", ablations=False)
    assert pl.method_inactive(smoke, "no_ida", ablations=True) is None
    assert "student_steps" in pl.candidate_inactive(smoke, "senseflow_2", ablations=False)
    assert "noise_floor" in pl.candidate_inactive(smoke, pl.NOISE_FLOOR, ablations=False)
    no_1step = load_profile("smoke", ["pipeline.methods=[senseflow]", "pipeline.student_steps=[4, 1]"])
    assert "senseflow_1step" in pl.candidate_inactive(no_1step, "senseflow_1", ablations=False)
    names = [c.name for c in pl.active_candidates(smoke, ablations=True)]
    assert names[0] == pl.REFERENCE and "no_ida_4" in names and "teacher_2" not in names
    with pytest.raises(ConfigError, match=r"pipeline\.methods: unknown method 'dmd3'"):
        pl.validate_pipeline(load_profile("smoke", ["pipeline.methods=[dmd3]"]))


def test_skip_markers_round_trip(tmp_path):
    assert pl.skipped_reason(tmp_path) is None
    pl.write_skipped(tmp_path / "x", "not in pipeline.methods")
    assert pl.skipped_reason(tmp_path / "x") == "not in pipeline.methods"


def _entry(value, higher, lo=None, hi=None):
    return {"status": "ok", "value": value, "ci95": [lo or value * 0.9, hi or value * 1.1], "n": 64,
            "higher_is_better": higher, "protocol": {"metric": "m"}}  # fmt: skip


def _summary():
    def cand(method, steps, kind, fid, adh, sec):
        metrics = {"adherence": _entry(adh, True)}
        metrics["fid_t_probe"] = (
            {"status": "not_applicable", "reason": "the reference itself"}
            if fid is None
            else _entry(fid, False)
        )
        return {"label": f"{method} ({steps})", "kind": kind, "method": method, "steps": steps,
                "nfe": steps * (2 if method == "teacher" else 1), "seconds_per_image": sec,
                "speedup": 0.2 / sec,
                "metrics": metrics}  # fmt: skip

    return {
        "profile": "smoke",
        "candidates": {
            "teacher_full": cand("teacher", 32, "teacher", None, 0.09, 0.2),
            "teacher_4": cand("teacher", 4, "teacher", 400.0, 0.03, 0.03),
            "senseflow_4": cand("senseflow", 4, "student", 210.0, 0.08, 0.01),
            "senseflow_2": cand("senseflow", 2, "student", 250.0, 0.07, 0.005),
            "senseflow_1": cand("senseflow", 1, "student", 700.0, 0.04, 0.003),
            "no_ida_4": cand("no_ida", 4, "ablation", 200.0, 0.07, 0.01),
            "vanilla_dmd_4": cand("vanilla_dmd", 4, "ablation", 257.0, 0.068, 0.01),
        },
        "paper": {
            "backbone": "sdxl",
            "analogue": True,
            "main": [{"backbone": "sdxl", "method": "SenseFlow-SDXL", "fid_t": 17.76}],
            "ablation": [
                {"recipe": "without IDA", "fid_t": 17.83},
                {"recipe": "SenseFlow (full)", "fid_t": 13.38},
            ],
        },  # fmt: skip
    }


def test_report_tables():
    s = _summary()
    main = main_table(s).set_index("candidate")
    assert "senseflow_2" not in main.index and "no_ida_4" not in main.index  # 2-step rows: steps table
    assert main.loc["senseflow_4", "FID-T (probe)"] == "210 [189, 231]"
    assert main.loc["senseflow_4", "FID-T (probe) (paper)"] == "17.76"
    assert main.loc["teacher_full", "FID-T (probe)"] == "n/a"
    assert main.loc["senseflow_1", "FID-T (probe) (paper)"] != "17.76"  # the paper row is the 4-step one
    abl = ablation_table(s).set_index("recipe")
    assert list(abl["IDA"]) == ["on", "off", "off"] and abl["FID-T (paper, SD3.5-L)"].iloc[1] == "17.83"
    steps = steps_table(s)
    sf = steps[steps.method == "senseflow"]
    assert list(sf.NFE) == [1, 2, 4] and list(sf.adherence) == [0.04, 0.07, 0.08]
    assert len(speed_table(s)) == 7
    md = to_markdown(main_table(s), "Main")
    assert md.startswith("## Main") and "| senseflow_4 |" in md
    compact = compact_metrics(s)
    assert compact["senseflow_4"] == {
        "adherence": 0.08,
        "fid_t_probe": 210.0,
        "nfe": 4,
        "seconds_per_image": 0.01,
    }
    assert "fid_t_probe" not in compact["teacher_full"]


def test_gate_on_the_aggregated_summary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(_summary()))
    rules = {
        "candidates": {
            "senseflow_4": {"fid_t_probe": {"direction": "lower", "max": 300}},
            "*_4": {"adherence": {"direction": "higher", "min": 0.05}},
        }
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(rules))
    rows = {(r.candidate, r.metric): r for r in run_gate([path], tmp_path / "t.yaml")}
    assert rows[("senseflow_4", "fid_t_probe")].passed and rows[("senseflow_4", "adherence")].passed
    assert "< min 0.05" in rows[("teacher_4", "adherence")].problems[0]  # the pattern reached it
    assert ("teacher_full", "adherence") not in rows
    out = gate_json(list(rows.values()), tmp_path / "t.yaml")
    assert out["passed"] is False and out["rows"][0]["passed"] is False  # failures first
    # a gated candidate that is missing from the summary fails the gate
    rules["candidates"]["lcm_4"] = {"adherence": {"direction": "higher", "min": 0.0}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(rules))
    missing = [r for r in run_gate([path], tmp_path / "t.yaml") if r.candidate == "lcm_4"]
    assert missing and "no such candidate" in missing[0].problems[0]
    # a regression against an aggregated baseline is per candidate
    worse = _summary()
    worse["candidates"]["senseflow_4"]["metrics"]["fid_t_probe"].update(value=290.0, ci95=[285.0, 295.0])
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    rules["candidates"]["senseflow_4"]["fid_t_probe"]["regression_abs"] = 10
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(rules))
    rows = {
        (r.candidate, r.metric): r for r in run_gate([tmp_path / "worse.json"], tmp_path / "t.yaml", path)
    }
    assert "regressed by 80" in rows[("senseflow_4", "fid_t_probe")].problems[0]


def test_paper_values_follow_the_candidate():
    from eval.report import paper_values

    rows = [
        {"method": "SenseFlow-SDXL", "fid_t": 17.76, "clip": 0.32},
        {"method": "LCM-SDXL", "fid_t": 18.47},
    ]
    entry = {"method": "senseflow", "steps": 4, "metrics": {"fid_t_probe": {}, "adherence": {}}}
    assert paper_values("senseflow_4", entry, "sdxl", rows) == {"fid_t_probe": 17.76}
    assert paper_values("senseflow_1", {**entry, "steps": 1}, "sdxl", rows) == {}
    assert paper_values("lcm_4", {**entry, "method": "lcm"}, "sdxl", rows) == {"fid_t_probe": 18.47}
    assert paper_values("dmd2_4", {**entry, "method": "dmd2"}, "sdxl", rows) == {}


def test_stages_relaunch_under_torchrun_with_the_profiles_process_count(monkeypatch):
    from senseflow.stages import torchrun_command

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["pipeline", "generate", "senseflow_4", "--profile", "smoke"]
    assert torchrun_command(load_profile("smoke"), argv) is None  # one process: runs in place
    cmd = torchrun_command(load_profile("smoke", ["runtime.nproc_per_node=2"]), argv)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cmd[6:] == ["senseflow.cli", *argv]
    monkeypatch.setenv("WORLD_SIZE", "2")  # already a rank: no second launch
    assert torchrun_command(load_profile("smoke", ["runtime.nproc_per_node=2"]), argv) is None
