"""KID-T of the embedded world: the unbiased polynomial-kernel MMD and its registration (issue 13.2)."""

from __future__ import annotations

import numpy as np
import pytest

from eval.metrics.kid import mmd2_unbiased, polynomial_kernel


def _brute_force(x, y):
    """The U-statistic written out pair by pair."""
    k = lambda a, b: (a @ b / len(a) + 1.0) ** 3  # noqa: E731
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_pairwise_u_statistic():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.5, 1.0, size=(6, 5))
    assert mmd2_unbiased(x, y) == pytest.approx(_brute_force(x, y), rel=1e-10)
    assert polynomial_kernel(x, y).shape == (7, 6)


def test_mmd2_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    same = [mmd2_unbiased(rng.normal(size=(20, 8)), rng.normal(size=(20, 8))) for _ in range(400)]
    spread = np.std(same) / np.sqrt(len(same))
    # the biased (V-statistic) estimator sits well above 0 here; the unbiased one averages 0
    assert abs(np.mean(same)) < 3 * spread
    assert min(same) < 0 < max(same)
    shifted = mmd2_unbiased(rng.normal(size=(200, 8)), rng.normal(0.5, 1.0, size=(200, 8)))
    assert shifted > 20 * spread


def test_paired_mmd2_is_unbiased_when_rows_share_a_prompt():
    """Rows i of both sets drawn around one shared centre (one caption): same distribution, paired."""
    rng = np.random.default_rng(2)
    paired, unpaired = [], []
    for _ in range(300):
        centres = rng.normal(size=(20, 6))
        x, y = centres + 0.3 * rng.normal(size=(20, 6)), centres + 0.3 * rng.normal(size=(20, 6))
        paired.append(mmd2_unbiased(x, y, paired=True))
        unpaired.append(mmd2_unbiased(x, y))
    spread = np.std(paired) / np.sqrt(len(paired))
    assert abs(np.mean(paired)) < 3 * spread
    # keeping the k(x_i, y_i) cross terms reads far below 0 (what KID-T did before)
    assert np.mean(unpaired) < -10 * spread
    with pytest.raises(ValueError, match="as many rows"):
        mmd2_unbiased(np.zeros((3, 2)), np.zeros((4, 2)), paired=True)


def test_mmd2_rejects_single_items():
    with pytest.raises(ValueError, match="at least 2"):
        mmd2_unbiased(np.zeros((1, 3)), np.zeros((4, 3)))


def test_kid_t_probe_is_registered_for_the_embedded_world():
    from eval import registry

    spec = registry.get("kid_t_probe")
    assert spec is registry.get("kid_t_probe")
    assert "kid_t_probe" in registry.known()


def test_kid_t_probe_through_evaluate(tmp_path, world_dir):
    """Through ``evaluate`` (an untrained probe): noise scores above 0, the reference itself 0."""
    import torch

    from eval.evaluate import evaluate
    from senseflow.io import atomic_save_safetensors
    from senseflow.world.probes import AttributeProbe
    from senseflow.world.prompts import load_prompt_file
    from tests.test_eval_cli import make_folder, noise, rendered

    records = load_prompt_file(world_dir / "prompts" / "test.jsonl")[:16]
    torch.manual_seed(0)
    probe = tmp_path / "probe.safetensors"
    meta = {"width": "4", "feature_dim": "8", "resolution": "16"}
    atomic_save_safetensors(AttributeProbe(4, 8).state_dict(), probe, metadata=meta)
    reference = make_folder(tmp_path / "ref", records, rendered(records))
    kw = dict(reference=reference, probe=probe, n_boot_set=20)
    far = evaluate(
        make_folder(tmp_path / "noise", records, noise(records, 0)), ["kid_t_probe"], tmp_path / "o1", **kw
    )
    near = evaluate(
        make_folder(tmp_path / "same", records, rendered(records)), ["kid_t_probe"], tmp_path / "o2", **kw
    )
    k_far, k_near = far["metrics"]["kid_t_probe"], near["metrics"]["kid_t_probe"]
    assert k_far["status"] == "ok" and k_far["n"] == 16 and k_far["higher_is_better"] is False
    assert k_far["ci95"][0] <= k_far["value"] <= k_far["ci95"][1]
    # identical paired sets: every term of the paired U-statistic cancels
    assert k_near["value"] == pytest.approx(0.0, abs=1e-9)
    assert k_far["value"] > 1e-9
