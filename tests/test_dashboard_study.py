"""The Leaderboard shows `make run-study`'s table: means and intervals over seeds, paired tests."""

from __future__ import annotations

import json

import numpy as np

from dashboard import data
from dashboard.pages import leaderboard as leaderboard_data
from senseflow.study import study_table


def _cells() -> dict:
    rng = np.random.default_rng(0)
    cells = {}
    for method, shift in (("senseflow", 0.0), ("dmd2", 5.0)):
        cells[method] = {
            seed: {
                "adherence": 0.5 - shift / 100 + 0.01 * seed,
                "fid_t_probe": 100.0 + shift + seed,
                "kid_t_probe": 10.0 + shift,
                "adherence_images": (rng.random(32) < 0.5 - shift / 100).astype(float),
            }
            for seed in (0, 1, 2)
        }
    return cells


def test_study_frames_read_the_study_table(tmp_path):
    roots = data.Roots(results=tmp_path / "results", build=tmp_path / "build", repo=tmp_path)
    assert leaderboard_data.study_frames(roots) is None  # no study yet: the page says nothing about it
    path = tmp_path / "build" / leaderboard_data.STUDY
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(study_table(_cells())))
    per_method, tests = leaderboard_data.study_frames(roots)
    row = per_method.set_index("method").loc["dmd2"]
    assert row["seeds"] == 3 and row["fid_t_probe"].startswith("106 [")  # mean 106, t interval beside it
    fid = tests[(tests["comparison"] == "senseflow - dmd2") & (tests["metric"] == "fid_t_probe")].iloc[0]
    assert fid["difference"].startswith("-5") and fid["test"] == "paired t over seeds"
    assert "paired bootstrap over images" in set(tests["test"])  # adherence over (seed, prompt) images
