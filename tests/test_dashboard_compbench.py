"""The dashboard's T2I-CompBench page under ``streamlit.testing`` (AppTest) and its data module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.pages import compbench as cd

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
PAGE = "T2I-CompBench"


def _entry(value: float) -> dict:
    card = {"prompt_files": {"color_val.txt": "ab" * 32}, "parser": "spacy 3.8, en_core_web_sm"}
    return {"status": "ok", "value": value, "ci95": [value - 0.02, value + 0.02], "n": 3000, "protocol": card}


SUMMARY = {
    "profile": "tables_sdxl",
    "candidates": {
        "teacher_full": {"kind": "teacher", "label": "Teacher (full steps)", "steps": 40, "metrics": {}},
        "dmd2_sdxl_4": {"kind": "registry", "label": "DMD2-SDXL (4 steps)", "steps": 4, "metrics": {},
                        "compbench": {"t2i_compbench_color": _entry(0.61),
                                      "t2i_compbench_spatial": _entry(0.2)}},
        "lcm_sdxl_4": {"kind": "registry", "label": "LCM-SDXL (4 steps)", "steps": 4, "metrics": {},
                       "compbench": {"t2i_compbench_color": _entry(0.55)}},
    },
    "paper": {"compbench": [{"method": "DMD2-SDXL", "color": 0.5811, "spatial": 0.2124, "texture": 0.5175}]},
}  # fmt: skip


def write(root: Path, summary: dict) -> Path:
    (root / "results").mkdir(parents=True, exist_ok=True)
    (root / "results" / "summary.json").write_text(json.dumps(summary))
    return root


def open_page(root: Path, monkeypatch) -> AppTest:
    for var in ("SENSEFLOW_RESULTS", "SENSEFLOW_BUILD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SENSEFLOW_REPO", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["page"] = PAGE
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [h.value for h in at.header] == [PAGE]
    return at


def test_frame_keeps_4_step_rows_and_the_paper():
    long = cd.compbench_frame(SUMMARY)
    measured = long[long.source == "measured"]
    assert sorted(measured.method.unique()) == ["DMD2-SDXL (4 steps)", "LCM-SDXL (4 steps)"]  # no teacher
    wide = cd.compbench_wide(long)
    assert list(wide.columns) == ["color", "texture", "spatial"]  # the paper's order
    assert wide.loc[("measured", "DMD2-SDXL (4 steps)"), "color"] == pytest.approx(0.61)
    assert wide.loc[("paper", "DMD2-SDXL"), "texture"] == pytest.approx(0.5175)
    assert list(wide.index.get_level_values(0)) == ["measured", "measured", "paper"]
    cards = cd.compbench_cards(long)
    assert cards.loc[0, "prompt_files"] == "color_val.txt abababababab" and cards.loc[0, "n"] == 3000


def test_page_shows_measured_beside_paper_and_filters(tmp_path, monkeypatch):
    at = open_page(write(tmp_path, SUMMARY), monkeypatch)
    table = at.dataframe[0].value
    assert table.shape == (3, 3) and table.loc[("paper", "DMD2-SDXL"), "spatial"] == pytest.approx(0.2124)
    at.multiselect(key="cb_sources").set_value(["paper"]).run()
    assert list(at.dataframe[0].value.index) == [("paper", "DMD2-SDXL")]
    at.selectbox(key="cb_category").set_value("spatial").run()
    assert not at.exception
    assert at.dataframe[-1].value.shape[0] == 3  # one card per measured metric, whatever is shown


def test_page_says_what_to_run_without_results_or_rows(tmp_path, monkeypatch):
    at = open_page(tmp_path / "empty", monkeypatch)
    assert at.info and "Nothing yet" in at.info[0].value and "make run" in at.info[0].value
    bare = {
        "profile": "embedded",
        "candidates": {"senseflow_4": {"kind": "student", "steps": 4, "metrics": {}}},
    }
    at = open_page(write(tmp_path / "bare", bare), monkeypatch)
    assert "no T2I-CompBench rows" in at.info[0].value
