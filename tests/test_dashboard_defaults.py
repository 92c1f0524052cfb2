"""What the dashboard opens on when the reference teacher draws from other seeds (issue 13.8).

The pipeline samples the full-step reference teacher with other seeds than every candidate
(independent noise for FID-T/KID-T) and adds ``teacher_reseed``, the full-step teacher on the
candidates' seeds. The Samples page must open on that teacher beside every 4-step candidate,
show every chosen candidate's images (none of them "no image"), and the paired comparison must
open on two candidates that share seeds (a non-empty table).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dashboard.pages import samples as samples_data
from tests.dashboard_fixtures import PROMPTS, build_tree
from tests.test_dashboard_app import captions, images, open_page


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("dashseeds") / "repo", independent_reference=True)


def _no_image(at) -> list[str]:
    return [c.value for c in at.caption if "no image" in c.value]


def test_samples_open_on_full_step_teacher_beside_every_four_step_candidate(tree, monkeypatch):
    at = open_page(tree, "Samples", monkeypatch)
    assert at.multiselect(key="s_candidates").value == [
        "teacher_32",
        "teacher_4",
        "senseflow_4",
        "dmd2_4",
        "no_ida_4",
    ]
    headers = [m.value for m in at.markdown if m.value.startswith("**")]
    assert headers[0] == "**teacher_32**"
    # the reference's seeds differ from the others' and it still shows an image in every row
    assert not _no_image(at)
    assert len(images(at)) == 5 * len(PROMPTS)


def test_teacher_reseed_shows_its_images(tree, monkeypatch):
    at = open_page(tree, "Samples", monkeypatch)
    at.multiselect(key="s_candidates").set_value(["teacher_32", "teacher_reseed", "senseflow_4"]).run()
    assert not at.exception
    assert not _no_image(at)
    assert len(images(at)) == 3 * len(PROMPTS)
    assert all(c for c in captions(at))


def test_paired_comparison_opens_on_a_pair_that_shares_seeds(tree, monkeypatch):
    at = open_page(tree, "Experiments", monkeypatch)
    a, b = at.selectbox(key="p_a").value, at.selectbox(key="p_b").value
    assert "teacher_32" not in (a, b)  # the reference shares no seed with any candidate
    table = at.dataframe[-1].value
    assert not table.empty and set(table["n"]) == {len(PROMPTS)}


def test_nth_seed_ranks_within_each_candidate():
    grid = pd.DataFrame({"id": ["a", "a", "a"], "seed": [5, 900, 901], "candidate": ["x", "ref", "ref"]})
    assert samples_data.seeds_per_prompt(grid) == 2
    assert sorted(samples_data.nth_seed(grid, 0)["candidate"]) == ["ref", "x"]
    assert list(samples_data.nth_seed(grid, 1)["seed"]) == [901]


def test_default_sample_candidates_without_four_steps_falls_back_to_the_first_five():
    names = ["teacher_full", "teacher_2", "senseflow_2", "dmd2_2", "lcm_2", "hyper_sd_2"]
    assert samples_data.default_sample_candidates(names) == names[:5]
    names = ["teacher_full", "teacher_reseed", "teacher_4", "senseflow_4", "senseflow_2"]
    info = {
        "teacher_full": {"kind": "teacher", "steps": 32},
        "teacher_reseed": {"kind": "teacher", "steps": 32},
    }
    assert samples_data.default_sample_candidates(names, info) == ["teacher_full", "teacher_4", "senseflow_4"]
