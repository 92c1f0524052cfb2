"""The dashboard's pure loaders on a fixture tree: tables, samples, logs, gate, experiments, path safety."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboard import data
from dashboard.pages import experiments as experiments_data
from dashboard.pages import gate as gate_data
from dashboard.pages import leaderboard as leaderboard_data
from dashboard.pages import samples as samples_data
from dashboard.pages import steps as steps_data
from dashboard.pages import training as training_data
from tests.dashboard_fixtures import CANDIDATES, PROMPTS, VALUES, build_tree, make_dvc_repo


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("dash") / "repo")


@pytest.fixture(scope="module")
def roots(tree) -> data.Roots:
    return data.Roots.from_settings(repo=tree, environ={})


@pytest.fixture(scope="module")
def summary(roots) -> dict:
    return data.load_summary(data.summary_files(roots)["embedded"])


def test_roots_precedence(tmp_path):
    env = {"SENSEFLOW_RESULTS": str(tmp_path / "r"), "SENSEFLOW_REPO": str(tmp_path)}
    r = data.Roots.from_settings(environ=env)
    assert r.results == tmp_path / "r" and r.build == tmp_path / "build" and r.repo == tmp_path
    r = data.Roots.from_settings(results=tmp_path / "x", environ=env)
    assert r.results == tmp_path / "x"
    assert r.samples == tmp_path / "build" / "samples"


def test_leaderboard_frame_values_paper_and_order(summary):
    long = leaderboard_data.leaderboard_frame(summary)
    assert list(dict.fromkeys(long["candidate"])) == [
        "teacher_32",
        "teacher_4",
        "senseflow_4",
        "dmd2_4",
        "no_ida_4",
    ]
    row = long[(long["candidate"] == "senseflow_4") & (long["metric"] == "fid_t")].iloc[0]
    assert row["value"] == 14.0 and row["paper_value"] == pytest.approx(13.38)
    assert row["difference"] == pytest.approx(14.0 - 13.38)
    assert row["ci_low"] < 14.0 < row["ci_high"] and row["nfe"] == 4 and row["speedup"] == 16
    # a metric the paper reports but that does not apply here: no value, no difference
    clip = long[(long["candidate"] == "senseflow_4") & (long["metric"] == "clip_score")].iloc[0]
    assert clip["status"] == "not_applicable" and pd.isna(clip["value"]) and pd.isna(clip["difference"])
    assert clip["reason"].startswith("needs real captions")


def test_leaderboard_table_best_and_sorting(summary):
    long = leaderboard_data.leaderboard_frame(summary)
    best = leaderboard_data.best_candidates(long)
    assert best == {"adherence": {"teacher_32"}, "fid_t_probe": {"teacher_32"}, "fid_t": {"senseflow_4"}}
    table = leaderboard_data.leaderboard_table(long)
    assert table.loc["teacher_32", "best"] == "adherence, fid_t_probe"
    assert table.loc["teacher_32", "s/image"] == pytest.approx(0.64)
    assert table.loc["senseflow_4", "fid_t paper"] == pytest.approx(13.38)
    assert "clip_score" not in table.columns  # not applicable anywhere: a note, not a blank column
    # a lower-is-better metric sorts ascending, a higher-is-better one descending (best first)
    by_fid = leaderboard_data.leaderboard_table(long, "fid_t_probe")
    assert list(by_fid.index) == sorted(VALUES, key=lambda c: VALUES[c]["fid_t_probe"])
    by_adh = leaderboard_data.leaderboard_table(long, "adherence")
    assert list(by_adh.index) == sorted(VALUES, key=lambda c: -VALUES[c]["adherence"])
    assert (
        list(leaderboard_data.leaderboard_table(long, "adherence", ascending=True).index)
        == list(by_adh.index)[::-1]
    )
    notes = leaderboard_data.not_applicable_notes(long)
    assert list(notes["metric"]) == ["clip_score"] and "teacher_32" in notes["candidates"].iloc[0]


def test_paper_value_matching():
    rows = [
        {"Method": "Hyper-SD", "Steps": "4", "Patch FID-T": "22.5", "CLIP": 0.31},
        {"Method": "Hyper-SD", "Steps": "1", "Patch FID-T": "30"},
    ]
    assert leaderboard_data.paper_value(rows, "hyper_sd", 4, "patch_fid_t") == 22.5
    assert leaderboard_data.paper_value(rows, "hyper_sd", 1, "patch_fid_t") == 30.0
    assert leaderboard_data.paper_value(rows, "hyper_sd", 4, "clip_score") == 0.31
    assert leaderboard_data.paper_value(rows, "hyper_sd", 2, "patch_fid_t") is None
    assert leaderboard_data.paper_value(rows, "lcm", 4, "patch_fid_t") is None


def test_steps_frame_lines(summary):
    steps = steps_data.steps_frame(leaderboard_data.leaderboard_frame(summary))
    teacher = steps[(steps["line"] == "teacher") & (steps["metric"] == "adherence")]
    assert list(teacher["nfe"]) == [8, 64] and list(teacher["value"]) == [0.3, 0.8]
    assert set(steps["line"]) == {"teacher", "SenseFlow", "DMD2", "no_ida"}


def test_samples_manifest_scores_and_filters(roots, summary):
    folders = samples_data.sample_folders(roots, summary)
    assert list(folders) == list(data.candidate_order(CANDIDATES, summary["candidates"]))
    assert list(folders)[0] == "teacher_32"
    man = samples_data.load_manifest(folders["senseflow_4"], roots.allowed)
    assert len(man) == len(PROMPTS) and (man["refused"] == "").all()
    assert man["path"].iloc[0] == (folders["senseflow_4"] / "p0000.png").resolve()
    assert man["colours"].iloc[0] == ("red",) and man["background"].iloc[1] == "white"
    manifests = {c: samples_data.load_manifest(folders[c], roots.allowed) for c in ("teacher_32", "dmd2_4")}
    scores = {c: data.load_scores(data.eval_folder(roots, c, summary)) for c in manifests}
    grid = samples_data.samples_grid(manifests, scores)
    assert len(grid) == 2 * len(PROMPTS)
    cell = grid[(grid["id"] == "p0001") & (grid["candidate"] == "dmd2_4")].iloc[0]
    assert cell["adherence"] == float((1 + list(CANDIDATES).index("dmd2_4")) % 2 == 0)
    assert samples_data.filter_prompts(grid, "RED") == ["p0000", "p0003"]
    assert samples_data.filter_prompts(grid, attributes={"background": ["white"]}) == ["p0001", "p0004"]
    assert samples_data.filter_prompts(grid, "red", {"positions": ["top right"]}) == ["p0003"]
    assert samples_data.attribute_options(grid)["digits"] == ["0", "1", "3", "4", "7"]
    assert samples_data.seeds_per_prompt(grid) == 1


def test_nth_seed_picks_same_seed_per_prompt():
    grid = pd.DataFrame(
        {
            "id": ["a", "a", "b", "b", "a", "b"],
            "seed": [5, 9, 7, 3, 5, 3],
            "candidate": ["x", "x", "x", "x", "y", "y"],
        }
    )
    assert samples_data.seeds_per_prompt(grid) == 2
    assert sorted(zip(*[samples_data.nth_seed(grid, 0)[c] for c in ("id", "seed")], strict=True)) == [
        ("a", 5),
        ("a", 5),
        ("b", 3),
        ("b", 3),
    ]
    assert set(samples_data.nth_seed(grid, 1)["seed"]) == {9, 7}


def test_read_image_upscales_without_smoothing(roots, summary):
    folder = samples_data.sample_folders(roots, summary)["teacher_32"]
    img = samples_data.read_image(folder / "p0000.png", roots.allowed, display_px=128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == CANDIDATES["teacher_32"][-1]
    assert set(map(tuple, img.reshape(-1, 3))) == {CANDIDATES["teacher_32"][-1], (255, 255, 255)}


def test_path_safety_refuses_escapes(tmp_path, roots):
    secret = tmp_path / "secret.png"
    shutil.copy(roots.samples / "teacher_32" / "p0000.png", secret)
    bad = roots.samples / "evil"
    bad.mkdir()
    try:
        (bad / "link.png").symlink_to(secret)
        records = [
            {"id": "a", "prompt": "p", "seed": 1, "file": "../../etc/passwd"},
            {"id": "b", "prompt": "p", "seed": 1, "file": "/etc/passwd"},
            {"id": "c", "prompt": "p", "seed": 1, "file": "link.png"},
            {"id": "d", "prompt": "p", "seed": 1, "file": "../teacher_32/p0000.png"},
        ]
        (bad / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        man = samples_data.load_manifest(bad, roots.allowed).set_index("id")
        for pid in "abc":
            assert man.at[pid, "path"] is None and "outside the dashboard's roots" in man.at[pid, "refused"]
        assert man.at["d", "refused"] == ""  # another candidate's image is still inside the roots
        with pytest.raises(data.UnsafePathError, match="etc/passwd"):
            samples_data.read_image(bad / "../../etc/passwd", roots.allowed)
        with pytest.raises(data.UnsafePathError):
            samples_data.read_image(bad / "link.png", roots.allowed)
        with pytest.raises(data.UnsafePathError):
            samples_data.load_manifest(tmp_path, roots.allowed)
        # a summary naming a sample folder outside the roots: the folder is never listed
        fake = {"candidates": {"x": {"samples": "../../etc"}, "y": {"samples": str(tmp_path)}}}
        folders = samples_data.sample_folders(roots, fake)
        assert "x" not in folders and "y" not in folders
    finally:
        shutil.rmtree(bad)


def test_mtime_cache_rereads_only_changed_files(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"v": 1}')
    before = data.read_json.misses
    first = data.read_json(path)
    assert data.read_json(path) == {"v": 1} and data.read_json.misses == before + 1
    first["v"] = 99  # callers get copies: editing one cannot poison the cache
    assert data.read_json(path) == {"v": 1}
    path.write_text('{"v": 22}')
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert data.read_json(path) == {"v": 22} and data.read_json.misses == before + 2
    frame = data.read_jsonl(tmp_path / "missing.jsonl")
    assert frame.empty
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(data.DashboardDataError, match="bad.json"):
        data.read_json(bad)


def test_folder_stamp_sees_new_dvclive_rows(tmp_path):
    from dvclive import Live

    live = Live(str(tmp_path / "dvclive"), dvcyaml=None, save_dvc_exp=False, report=None)
    live.step = 1
    live.log_metric("train/dmd", 0.5)
    live.make_summary()
    assert len(training_data.load_dvclive(tmp_path / "dvclive")) == 1
    live.step = 2
    live.log_metric("train/dmd", 0.25)
    live.make_summary()
    frame = training_data.load_dvclive(tmp_path / "dvclive")
    assert list(frame["step"]) == [1, 2] and list(frame["value"]) == [0.5, 0.25]


def test_training_logs_and_curves(roots):
    dirs = training_data.training_dirs(roots)
    assert list(dirs) == ["no_ida", "senseflow"]
    logs = training_data.training_frame(dirs)
    assert set(logs["metric"]) == {
        "train/dmd",
        "train/fake",
        "train/grad_norm/dmd",
        "train/generator_lr",
        "time/seconds_per_iteration",
    }
    dmd = logs[(logs["method"] == "senseflow") & (logs["metric"] == "train/dmd")]
    assert list(dmd["step"]) == list(range(10, 110, 10)) and dmd["value"].iloc[0] == pytest.approx(0.1)
    groups = training_data.metric_groups(logs["metric"])
    assert groups["losses"] == ["train/dmd", "train/fake"] and groups["gradient norms"] == [
        "train/grad_norm/dmd"
    ]
    assert groups["other"] == ["train/generator_lr"]
    curves = training_data.eval_curves(dirs)
    fid = curves[(curves["method"] == "no_ida") & (curves["metric"] == "fid_t")]
    assert list(fid["iteration"]) == [50, 100] and list(fid["value"]) == [190.0, 140.0]


def test_gate_violations_first_and_thresholds(roots, tmp_path):
    view = gate_data.load_gate(roots)
    assert view.passed is False
    assert list(view.rows["status"][:2]) == ["FAIL", "FAIL"] and set(view.rows["candidate"][:2]) == {
        "no_ida_4"
    }
    assert "violates" in view.rows["problems"].iloc[0] and view.rows["problems"].iloc[-1] == ""
    assert list(view.thresholds["metric"]) == ["adherence", "fid_t_probe"]
    # a gate naming a thresholds file outside the repository: not read
    outside = tmp_path / "t.yaml"
    outside.write_text("metrics: {adherence: {direction: higher}}\n")
    assert gate_data._thresholds_frame(roots, str(outside)).empty


def test_paired_comparison_matches_direct_difference(roots, summary):
    a = data.load_scores(data.eval_folder(roots, "teacher_32", summary))
    b = data.load_scores(data.eval_folder(roots, "senseflow_4", summary))
    table = experiments_data.paired_comparison(a, b).set_index("metric")
    expected = (b["clip_score_embedded"] - a["clip_score_embedded"]).mean()
    assert table.at["clip_score_embedded", "difference"] == pytest.approx(expected)
    assert table.at["clip_score_embedded", "n"] == len(PROMPTS)
    assert table.at["clip_score_embedded", "ci_low"] <= expected <= table.at["clip_score_embedded", "ci_high"]


@pytest.mark.slow  # a DVC repository with experiments
def test_experiments_from_dvc(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    make_dvc_repo(repo)
    exps = experiments_data.load_experiments(repo)
    assert exps.message == ""
    frame = exps.frame
    assert {"workspace", "main", "exp-lr"} <= set(frame["experiment"])
    assert frame.set_index("experiment").at["exp-lr", "baseline"] == "main"
    ia, ib = experiments_data.default_pair(frame)
    assert (frame["experiment"][ia], frame["experiment"][ib]) == ("main", "exp-lr")
    diff = experiments_data.param_diff(frame, "main", "exp-lr")
    assert diff.to_dict("records") == [{"param": "params.yaml:lr", "main": 0.1, "exp-lr": 0.5}]
    deltas = experiments_data.metric_deltas(frame, "main", "exp-lr").set_index("metric")
    assert (
        deltas.at["m.json:score", "delta"] == pytest.approx(0.8) and deltas.at["m.json:steps", "delta"] == 0
    )
    # cached until git refs or the lock change: no second subprocess, same frame
    assert experiments_data.load_experiments(repo).frame.equals(frame)


def test_experiments_tolerate_no_dvc_no_git(tmp_path):
    assert "not a DVC repository" in experiments_data.load_experiments(tmp_path).message
    (tmp_path / ".dvc").mkdir()
    result = experiments_data.load_experiments(tmp_path)
    assert result.frame.empty and "git" in result.message


def test_parse_exp_show_flattens_nested_keys():
    records = [
        {
            "rev": "workspace",
            "name": None,
            "data": {
                "params": {"p.yaml": {"data": {"a": {"b": 1}}}},
                "metrics": {"m.json": {"data": {"x": {"y": 2.5}}}},
            },
            "experiments": None,
        }
    ]
    frame = experiments_data.parse_exp_show(records)
    assert frame.loc[0, "param:p.yaml:a.b"] == 1 and frame.loc[0, "metric:m.json:x.y"] == 2.5


def test_empty_tree(tmp_path):
    roots = data.Roots.from_settings(repo=tmp_path, environ={})
    assert data.summary_files(roots) == {}
    assert samples_data.sample_folders(roots, {}) == {}
    assert training_data.training_dirs(roots) == {}
    assert gate_data.load_gate(roots) is None
    assert leaderboard_data.paper_tables(tmp_path) == {}
    assert (
        leaderboard_data.leaderboard_frame({}).empty
        and leaderboard_data.leaderboard_table(leaderboard_data.leaderboard_frame({})).empty
    )


def test_roots_from_streamlit_arguments(tmp_path):
    argv = ["-x", "--results-root", str(tmp_path / "r"), "--repo", str(tmp_path), "tests/whatever.py"]
    roots = data.roots_from_argv(argv, environ={"SENSEFLOW_BUILD": str(tmp_path / "b")})
    assert (roots.results, roots.build, roots.repo) == (tmp_path / "r", tmp_path / "b", tmp_path)
    assert data.roots_from_argv([], environ={}).repo == Path.cwd()
