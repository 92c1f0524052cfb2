"""The dashboard app under ``streamlit.testing`` (AppTest): every page on a fixture tree and on an empty one.

Widgets are driven and what the page shows afterwards is asserted (tables, image counts,
captions), so a widget that stops changing the page fails a test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard_fixtures import CANDIDATES, PROMPTS, VALUES, build_tree

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
PAGES = ["Leaderboard", "Samples", "Steps", "Training", "Experiments", "Gate"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("dashapp") / "repo", with_dvc=True)


def open_page(root: Path, page: str, monkeypatch) -> AppTest:
    """Run the app on ``root`` (repository with results/ and build/) opened at ``page``."""
    for var in ("SENSEFLOW_RESULTS", "SENSEFLOW_BUILD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SENSEFLOW_REPO", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["page"] = page
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [h.value for h in at.header] == [page]
    return at


def images(at: AppTest) -> list:
    return list(at.get("image"))


def captions(at: AppTest) -> list[str]:
    return [img.proto.imgs[0].caption for img in images(at)]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_on_fixture_tree(tree, page, monkeypatch):
    at = open_page(tree, page, monkeypatch)
    assert not at.info or page == "Experiments", [i.value for i in at.info]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_says_what_to_run_on_empty_tree(tmp_path, page, monkeypatch):
    at = open_page(tmp_path, page, monkeypatch)
    messages = [i.value for i in at.info]
    assert messages and all("Nothing yet" in m and "make run" in m for m in messages)


def test_sidebar_switches_page_and_url(tree, monkeypatch):
    at = open_page(tree, "Leaderboard", monkeypatch)
    at.sidebar.radio(key="page").set_value("Gate").run()
    assert [h.value for h in at.header] == ["Gate"] and at.query_params["page"] == "Gate"


def test_leaderboard_sort_and_reverse(tree, monkeypatch):
    at = open_page(tree, "Leaderboard", monkeypatch)
    table = at.dataframe[0].value
    assert list(table.index) == list(CANDIDATES)  # pipeline order: teachers first
    assert table.loc["senseflow_4", "fid_t paper"] == pytest.approx(13.38)
    assert table.loc["teacher_32", "best"] == "adherence, fid_t_probe"
    at.selectbox(key="lb_sort").set_value("fid_t_probe").run()
    by_fid = sorted(VALUES, key=lambda c: VALUES[c]["fid_t_probe"])
    assert list(at.dataframe[0].value.index) == by_fid
    at.checkbox(key="lb_reverse").check().run()
    assert list(at.dataframe[0].value.index) == by_fid[::-1]
    notes = [m.value for m in at.markdown]
    assert any("clip_score" in m and "needs real captions" in m for m in notes)


def test_samples_grid_search_filters_candidates_enlarge(tree, monkeypatch):
    at = open_page(tree, "Samples", monkeypatch)
    n_cands, n_prompts = len(CANDIDATES), len(PROMPTS)
    assert len(images(at)) == n_cands * n_prompts
    # per-image scores under each image, teacher first: prompt p0000 is right for candidate 0 (adherence 1)
    assert captions(at)[0].startswith("adherence 1 ")
    assert all(img.proto.imgs[0].url.endswith(".png") for img in images(at))
    at.text_input(key="s_search").input("red").run()
    assert len(images(at)) == n_cands * 2
    at.text_input(key="s_search").input("").run()
    at.multiselect(key="s_attr_background").select("white").run()
    prompts_shown = [m.value for m in at.markdown if m.value.startswith("`p")]
    assert [p.split("`")[1] for p in prompts_shown] == ["p0001", "p0004"]
    at.multiselect(key="s_candidates").set_value(["dmd2_4", "teacher_32"]).run()
    headers = [m.value for m in at.markdown if m.value.startswith("**")]
    assert headers == ["**teacher_32**", "**dmd2_4**"]  # the teacher is the first column
    assert len(images(at)) == 2 * 2
    at.selectbox(key="s_enlarge").set_value("p0004").run()
    assert len(images(at)) == 2 * 2 + 2


def test_samples_refuses_manifest_escape(tmp_path, monkeypatch):
    root = build_tree(tmp_path / "repo")
    folder = root / "build" / "samples" / "dmd2_4"
    records = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    records[0]["file"] = "../../../../../../etc/passwd"
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    at = open_page(root, "Samples", monkeypatch)
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "1 manifest entries not shown" in warnings[0] and "outside" in warnings[0]
    assert len(images(at)) == len(CANDIDATES) * len(PROMPTS) - 1


def test_partial_pipeline_shows_what_exists(tmp_path, monkeypatch):
    root = build_tree(tmp_path / "repo")
    (root / "results" / "summary.json").unlink()
    shutil.rmtree(root / "build" / "eval")  # sampled, not yet evaluated
    at = open_page(root, "Leaderboard", monkeypatch)
    assert "Nothing yet" in at.info[0].value
    at = open_page(root, "Samples", monkeypatch)
    assert len(images(at)) == len(CANDIDATES) * len(PROMPTS)  # still shown
    assert captions(at)[0] == "teacher_32"  # no scores yet: the candidate's name instead


def test_steps_metric_choice(tree, monkeypatch):
    at = open_page(tree, "Steps", monkeypatch)
    assert at.selectbox(key="st_metric").value == "adherence"
    table = at.dataframe[0].value
    assert set(table["value"]) == {v["adherence"] for v in VALUES.values()}
    at.selectbox(key="st_metric").set_value("fid_t").run()
    table = at.dataframe[0].value
    assert sorted(table["candidate"]) == ["dmd2_4", "senseflow_4"] and set(table["value"]) == {14.0, 16.5}
    assert len(at.get("vega_lite_chart")) == 1


def test_training_methods_and_groups(tree, monkeypatch):
    at = open_page(tree, "Training", monkeypatch)
    assert at.selectbox(key="t_curve").value == "fid_t"
    last = at.dataframe[0].value
    assert list(last.columns) == ["no_ida", "senseflow"] and list(last.index) == ["train/dmd", "train/fake"]
    assert last.loc["train/fake", "no_ida"] == pytest.approx(0.6)
    charts = len(at.get("vega_lite_chart"))
    assert charts == 3  # the eval curve and one chart per picked series
    at.multiselect(key="t_methods").set_value(["senseflow"]).run()
    assert list(at.dataframe[0].value.columns) == ["senseflow"]
    at.radio(key="t_group").set_value("gradient norms").run()
    assert list(at.dataframe[0].value.index) == ["train/grad_norm/dmd"]


def test_experiments_pick_two(tree, monkeypatch):
    at = open_page(tree, "Experiments", monkeypatch)
    assert {"main", "exp-lr", "workspace"} <= set(at.dataframe[0].value.index)
    assert (at.selectbox(key="e_a").value, at.selectbox(key="e_b").value) == ("main", "exp-lr")
    params = at.dataframe[1].value
    assert params.to_dict("records") == [{"param": "params.yaml:lr", "main": 0.1, "exp-lr": 0.5}]
    deltas = at.dataframe[2].value.set_index("metric")
    assert deltas.at["m.json:score", "delta"] == pytest.approx(0.8)
    at.selectbox(key="e_b").set_value("main").run()
    assert any("Pick two different" in i.value for i in at.info)
    paired = at.dataframe[-1].value.set_index("metric")
    assert paired.at["clip_score_embedded", "difference"] == pytest.approx(0.1)  # teacher_4 - teacher_32
    at.selectbox(key="p_b").set_value("no_ida_4").run()
    paired = at.dataframe[-1].value.set_index("metric")
    assert paired.at["clip_score_embedded", "difference"] == pytest.approx(0.4)


def test_gate_violations_first(tree, monkeypatch):
    at = open_page(tree, "Gate", monkeypatch)
    assert at.error[0].value == "Gate FAILED: 2 of 6 checks violated."
    rows = at.dataframe[0].value
    assert list(rows["status"]) == ["FAIL", "FAIL", "pass", "pass", "pass", "pass"]
    assert list(at.dataframe[1].value["metric"]) == ["adherence", "fid_t_probe"]


def test_malformed_summary_is_an_error_message(tmp_path, monkeypatch):
    root = build_tree(tmp_path / "repo")
    (root / "results" / "summary.json").write_text("{truncated")
    at = open_page(root, "Leaderboard", monkeypatch)
    assert "summary.json is not valid JSON" in at.error[0].value


def test_unreadable_image_is_reported_not_fatal(tmp_path, monkeypatch):
    root = build_tree(tmp_path / "repo")
    (root / "build" / "samples" / "dmd2_4" / "p0000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    at = open_page(root, "Samples", monkeypatch)
    assert len(images(at)) == len(CANDIDATES) * len(PROMPTS) - 1
    assert any("dmd2_4: unreadable image" in w.value for w in at.warning)
