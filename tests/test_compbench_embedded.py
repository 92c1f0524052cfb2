"""The embedded world's T2I-CompBench metrics: per-object probe verdicts aggregated per image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_eval_cli import make_folder, probe_file, records, rendered  # noqa: F401  (fixtures)


def test_per_image_scores_from_object_verdicts():
    from eval.metrics.compbench_embedded import per_image_scores

    verdicts = {
        "digit": np.array([True, True, False]),
        "colour": np.array([True, False, True]),
        "position": np.array([True, True, True]),
        "all": np.array([False, False]),
    }
    got = per_image_scores(verdicts, [2, 1])  # scene 0 has two objects, scene 1 one
    np.testing.assert_allclose(got["compbench_colour"], [0.5, 0.0])
    np.testing.assert_allclose(got["compbench_shape"], [1.0, 0.0])
    np.testing.assert_allclose(got["compbench_spatial"], [1.0, 1.0])
    np.testing.assert_allclose(got["compbench_complex"], [0.0, 0.0])


def test_compbench_embedded_runs_through_evaluate(tmp_path, records, probe_file):  # noqa: F811
    from eval.evaluate import evaluate

    folder = make_folder(tmp_path / "s", records, rendered(records))
    names = ["compbench_colour", "compbench_shape", "compbench_spatial", "compbench_complex", "adherence"]
    evaluate(folder, names, tmp_path / "o", probe=probe_file, n_boot=50)
    got = json.loads((tmp_path / "o" / "summary.json").read_text())["metrics"]
    for n in names[:4]:
        assert got[n]["status"] == "ok" and 0 <= got[n]["value"] <= 1 and got[n]["n"] == len(records)
    assert got["compbench_complex"]["value"] == pytest.approx(got["adherence"]["value"])
