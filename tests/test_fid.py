"""FID: independent scipy reference, self-distance, reference cache, variants, bad input."""

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch

from eval.metrics import (
    FIDInputError,
    InceptionFeatures,
    PatchCrops,
    ProbeFeatures,
    check_images,
    check_pairing,
    feature_statistics,
    fid_from_features,
    fid_protocol,
    fid_t,
    frechet_distance,
    image_features,
    reference_statistics,
)
from eval.metrics.frechet import check_features
from senseflow.errors import MissingArtefactError, UserError
from senseflow.samples import png_bytes, write_manifest
from senseflow.world.probes import AttributeProbe
from senseflow.world.scenes import sample_batch, to_tensor_range


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula, written independently: sqrtm of the product, real part."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


class PoolFeatures:
    """A cheap deterministic extractor: 2x2 average-pooled pixels in [0, 1] (12-d); counts its calls.

    Fewer dimensions than images, so covariances have full rank and FID(x, x) is 0 to round-off.
    """

    dim, resize = 12, "none"

    def __init__(self, tag: str = "pool"):
        self.id, self.calls = tag, 0

    def __call__(self, images):
        self.calls += 1
        return torch.nn.functional.adaptive_avg_pool2d(images.double() / 255, 2).flatten(1)


def scenes(n: int, seed: int) -> torch.Tensor:
    images, _ = sample_batch(np.random.default_rng(seed), n, resolution=16, digit_counts={1: 0.5, 2: 0.5})
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def small_probe() -> AttributeProbe:
    torch.manual_seed(0)
    return AttributeProbe(width=8, feature_dim=16).eval()


# ----------------------------------------------------------------------------- maths


def test_matches_independent_scipy_fid_both_routes():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    b = rng.normal(size=(260, 16)) @ rng.normal(size=(16, 16)) * 0.3 + 0.5
    ref = scipy_fid(a, b)
    assert fid_from_features(a, b) == pytest.approx(ref, rel=1e-6)  # covariance route
    assert fid_from_features(torch.from_numpy(a), b.astype(np.float32)) == pytest.approx(ref, rel=1e-6)
    # fewer samples than dimensions: the SVD route, against the covariance formula
    c, d = rng.normal(size=(20, 64)), rng.normal(size=(24, 64)) + 0.3
    assert fid_from_features(c, d) == pytest.approx(
        frechet_distance(*feature_statistics(c), *feature_statistics(d))
    )


def test_fid_of_a_set_against_itself_is_zero_with_probe_features():
    images = scenes(64, 1)
    ext = ProbeFeatures(small_probe())
    fake = image_features(images, ext)
    real = image_features(to_tensor_range(images.permute(0, 2, 3, 1).numpy()), ext)  # float [-1, 1] form
    torch.testing.assert_close(fake, real)  # float images are quantised as a PNG would be
    assert fake.dtype == torch.float64 and fake.shape == (64, ext.dim)
    # an untrained probe's features are small (another draw is ~2e-7 away): compare relatively
    other = fid_from_features(fake, image_features(scenes(64, 2), ext))
    assert abs(fid_from_features(fake, real)) < 1e-6 * other


# ----------------------------------------------------------------------------- reference cache


def test_reference_cache_hit_miss_and_corruption(tmp_path, caplog):
    images, cache = scenes(32, 4), tmp_path / "ref.npz"
    ext = PoolFeatures()
    first = reference_statistics(images, ext, cache, batch_size=8)
    assert not first.from_cache and ext.calls == 4 and first.n == 32
    assert (first.extractor_id, first.protocol) == ("pool", "resize=none")
    assert (tmp_path / "ref.npz.sha256").read_text().split()[0] == first.sha256
    # batched running sums equal the one-shot statistics, and the set is at distance 0 from itself
    mu, sigma = feature_statistics(PoolFeatures()(images))
    np.testing.assert_allclose(first.mu, mu, rtol=1e-12)
    np.testing.assert_allclose(first.sigma, sigma, rtol=1e-9, atol=1e-15)
    assert frechet_distance(first.mu, first.sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    again = reference_statistics(images, ext, cache)
    assert again.from_cache and ext.calls == 4 and again.sha256 == first.sha256
    np.testing.assert_array_equal(again.sigma, first.sigma)
    # each part of the key invalidates: another image set, another extractor, another crop protocol
    assert not reference_statistics(scenes(32, 5), ext, cache).from_cache
    assert not reference_statistics(scenes(32, 5), PoolFeatures("other"), cache).from_cache
    big = torch.randint(
        0, 256, (2, 3, 300, 300), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    whole = reference_statistics(big, ext, tmp_path / "big.npz")
    patch = reference_statistics(big, ext, tmp_path / "big.npz", patches=PatchCrops("grid"))
    assert not patch.from_cache and patch.protocol == "resize=none;patch=grid299" and patch.n == 8
    assert not np.allclose(patch.mu, whole.mu)
    cache.write_bytes(cache.read_bytes()[:-1] + b"x")  # bytes no longer match the recorded sha256
    assert not reference_statistics(scenes(32, 5), PoolFeatures("other"), cache).from_cache
    assert "recomputing" in caplog.text
    with pytest.raises(FIDInputError, match="at least 2 images per set, got 1"):
        reference_statistics(scenes(1, 0), ext, tmp_path / "one.npz")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 3, 8, 8, dtype=torch.int64), "dtype torch.int64"),
        (torch.zeros(2, 1, 8, 8), r"must be \(B, 3, H, W\), got shape \(2, 1, 8, 8\)"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), r"got shape \(8, 8, 3\)"),
        (torch.full((2, 3, 8, 8), 255.0), r"range is \[255, 255\], expected \[-1, 1\]"),
        (torch.full((2, 3, 8, 8), float("nan")), "non-finite pixels"),
        (np.zeros((2, 3, 8, 8), dtype=np.uint8), "must be a torch.Tensor, got ndarray"),
    ],
)
def test_bad_images_are_named(images, match):
    with pytest.raises(FIDInputError, match=match):
        check_images(images)
    with pytest.raises(FIDInputError, match=match):
        image_features(images, PoolFeatures())


def test_bad_features_are_named():
    feats = np.ones((4, 12))
    feats[2, 5] = np.nan
    with pytest.raises(FIDInputError, match=r"non-finite features .* 1 of 4 rows \(first row 2\)"):
        check_features(feats)
    with pytest.raises(FIDInputError, match=r"b has non-finite features .* 1 of 4 rows"):
        fid_from_features(np.ones((4, 12)), feats)
    with pytest.raises(FIDInputError, match=r"must be \(N, D\) features, got shape \(12,\)"):
        fid_from_features(np.ones(12), np.ones((4, 12)))
    with pytest.raises(ValueError, match="shapes do not match"):
        fid_from_features(np.random.default_rng(0).normal(size=(4, 12)), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"features must be \(N >= 2, D\)"):
        fid_from_features(np.ones((1, 12)), np.ones((3, 12)))


# ----------------------------------------------------------------------------- patch FID


def test_patch_crops_grid_random_and_small_images():
    images = torch.randint(
        0, 256, (2, 3, 320, 700), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    grid = PatchCrops("grid", size=299)(images)
    assert grid.shape == (2 * 2 * 3, 3, 299, 299)  # ceil(320/299) x ceil(700/299) per image
    torch.testing.assert_close(grid[5], images[0, :, 21:, 401:])  # last tile touches the corner
    rand = PatchCrops("random", per_image=3, seed=1)
    one_by_one = torch.cat([rand(images[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(rand(images), one_by_one)  # offsets do not depend on batching
    assert not torch.equal(rand(images), PatchCrops("random", per_image=3, seed=2)(images))
    assert PatchCrops("center")(images).shape == (2, 3, 299, 299)
    with pytest.raises(FIDInputError, match="at least 299x299, got 16x16"):
        PatchCrops("grid")(scenes(2, 0))
    with pytest.raises(FIDInputError, match="at least 299x299, got 16x16"):
        image_features(scenes(2, 0), PoolFeatures(), patches=PatchCrops("center"))
    with pytest.raises(UserError, match="unknown patch mode 'tiles'"):
        PatchCrops("tiles")


# ----------------------------------------------------------------------------- FID-T pairing


def _folder(path, images, seeds, prompts=None):
    path.mkdir()
    records = []
    for i, (img, seed) in enumerate(zip(images.permute(0, 2, 3, 1).numpy(), seeds, strict=True)):
        (path / f"p{i}.png").write_bytes(png_bytes(img))
        prompt = prompts[i] if prompts else f"prompt {i}"
        records.append({"id": f"p{i}", "prompt": prompt, "seed": seed, "file": f"p{i}.png"})
    write_manifest(path, records)
    return path


def test_fid_t_pairs_by_prompt_id_and_seed(tmp_path):
    seeds = list(range(16))
    student = _folder(tmp_path / "student", scenes(16, 6), seeds)
    teacher = _folder(tmp_path / "teacher", scenes(16, 7), seeds)
    assert check_pairing(student, teacher) == 16
    ext = PoolFeatures()
    assert fid_t(student, teacher, ext, batch_size=5) == pytest.approx(
        fid_from_features(ext(scenes(16, 6)), ext(scenes(16, 7))), rel=1e-6
    )
    other_seed = _folder(tmp_path / "seed", scenes(16, 6), [*seeds[:3], 99, *seeds[4:]])
    with pytest.raises(UserError, match="prompt id p3 has seed 99 in .*seed but 3 in .*teacher"):
        fid_t(other_seed, teacher, ext)
    fewer = _folder(tmp_path / "fewer", scenes(15, 6), seeds[:15])
    with pytest.raises(UserError, match="1 ids are in only one of .* \\(e.g. p15\\)"):
        check_pairing(fewer, teacher)
    with pytest.raises(MissingArtefactError, match="manifest.jsonl is missing"):
        check_pairing(tmp_path / "nowhere", teacher)


# ----------------------------------------------------------------------------- Inception


def save_random_inception(folder: Path) -> Path:
    """Random-init Inception weights saved under the real file's name in ``folder`` (never downloaded)."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    torch.manual_seed(0)
    # the constructor always loads a state dict: skip that to keep the random initialisation
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception", ["2048"])
    # the default init leaves features near 1e-8; He-scaled convolutions give features of order 1,
    # so that protocol and resize differences show in the numbers
    g = torch.Generator().manual_seed(0)
    state = net.state_dict()
    for k, v in state.items():
        if k.endswith("weight") and v.ndim == 4:
            v.copy_(torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5)
    path = Path(folder) / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Random-init Inception weights saved to a local file (the real file is never downloaded)."""
    return save_random_inception(tmp_path_factory.mktemp("weights"))


def test_inception_reads_the_local_file_and_resize_protocols_differ(inception_weights):
    image = torch.randint(
        0, 256, (1, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    clean = InceptionFeatures(inception_weights, resize="clean")
    bilinear = InceptionFeatures(inception_weights, resize="torchmetrics")
    state = torch.load(inception_weights)
    torch.testing.assert_close(
        clean.net.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"]
    )
    a, b = clean(image), bilinear(image)
    assert a.shape == (1, 2048) and torch.isfinite(a).all()
    torch.testing.assert_close(clean(image), a, rtol=0, atol=0)
    torch.testing.assert_close(bilinear(image), b, rtol=0, atol=0)
    assert not torch.allclose(a, b, rtol=1e-3, atol=0)  # random weights: tiny features, so relative
    assert fid_protocol(clean) == "resize=clean" and fid_protocol(bilinear) == "resize=torchmetrics"
    assert fid_protocol(clean, PatchCrops("center")) == "resize=clean;patch=center299"
    dmd2 = InceptionFeatures(inception_weights)  # the paper's protocol is the default
    assert dmd2.resize == "dmd2" and not torch.allclose(dmd2(image), a, rtol=1e-3, atol=0)


def test_inception_missing_weights_and_bad_protocol(tmp_path):
    with pytest.raises(MissingArtefactError, match=r"missing at .*nowhere\.pth: put pt_inception-2015-12-05"):
        InceptionFeatures(tmp_path / "nowhere.pth")
    with pytest.raises(UserError, match="unknown FID resize protocol 'lanczos'"):
        InceptionFeatures(tmp_path / "nowhere.pth", resize="lanczos")


def test_fid_runs_through_senseflow_eval_evaluate(inception_weights, tmp_path, monkeypatch, world_dir):
    import json
    import shutil

    from eval.evaluate import evaluate
    from senseflow.world.prompts import load_prompt_file
    from tests.test_eval_cli import make_folder, noise, rendered

    root = tmp_path / "weights"
    (root / "inception_fid").mkdir(parents=True)
    shutil.copy(inception_weights, root / "inception_fid" / inception_weights.name)
    monkeypatch.setenv("SENSEFLOW_WEIGHTS", str(root))
    import dataclasses

    records = load_prompt_file(world_dir / "prompts" / "test.jsonl")[:8]
    real = [dataclasses.replace(r, scene=None) for r in records]  # Inception FID is for real-image sets
    samples = make_folder(tmp_path / "samples", real, noise(records, 0))
    reference = make_folder(tmp_path / "reference", real, rendered(records))
    evaluate(samples, ["fid"], tmp_path / "out", reference=reference, n_boot_set=5)
    got = json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"]["fid"]
    ex = InceptionFeatures(inception_weights, resize="dmd2")

    def feats(images):
        return ex(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()).double().numpy()

    expected = fid_from_features(feats(noise(records, 0)), feats(rendered(records)))
    assert got["value"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert got["protocol"]["resize"].startswith("dmd2") and got["n"] == 8
    assert got["protocol"]["protocol"] == "dmd2" and len(got["protocol"]["weights_sha256"]) == 64
    assert got["ci95"][0] <= got["value"] <= got["ci95"][1]  # half-sampling interval: around the estimate


@pytest.mark.parametrize("name", ["fid_t", "patch_fid_t", "patch_fid_t_grid"])
def test_fid_t_pairs_with_teacher_samples_by_prompt_id(name, inception_weights, tmp_path, monkeypatch):
    import json
    import shutil

    from eval.evaluate import evaluate
    from eval.registry import MetricError
    from senseflow.world.prompts import PromptRecord
    from tests.test_eval_cli import make_folder

    root = tmp_path / "weights"
    (root / "inception_fid").mkdir(parents=True)
    shutil.copy(inception_weights, root / "inception_fid" / inception_weights.name)
    monkeypatch.setenv("SENSEFLOW_WEIGHTS", str(root))
    # patch FID crops 299 px at full resolution: one centre crop (the paper's), or the grid
    # variant's 1x2 crops per 299x320 image
    size = (299, 320) if name.startswith("patch") else (32, 32)
    rng = np.random.default_rng(0)
    records = [PromptRecord(f"p{i}", f"prompt {i}") for i in range(4)]
    student = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in records]
    teacher = [rng.integers(0, 128, (*size, 3), dtype=np.uint8) for _ in records]
    # the teacher folder lists the prompts in another order, plus one the student lacks
    extra = PromptRecord("p9", "prompt 9")
    ref = make_folder(tmp_path / "teacher", [*records[::-1], extra], [*teacher[::-1], teacher[0]])
    samples = make_folder(tmp_path / "samples", records, student)
    evaluate(samples, [name], tmp_path / "out", reference=ref, n_boot_set=5)
    got = json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"][name]
    ex = InceptionFeatures(inception_weights, resize="dmd2")
    mode = {"patch_fid_t": "center", "patch_fid_t_grid": "grid"}.get(name)

    def feats(images):
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        if mode is None:
            return ex(x).double().numpy()
        return ex.forward_prepared(PatchCrops(mode=mode)(x).float()).double().numpy()

    expected = max(0.0, fid_from_features(feats(student), feats(teacher)))
    assert got["value"] == pytest.approx(expected, rel=1e-6)
    assert got["n"] == 4 and got["details"]["crops"] == (2 if name == "patch_fid_t_grid" else 1)
    other = make_folder(tmp_path / "other", [extra], [teacher[0]])
    with pytest.raises(MetricError, match="shares 0 prompt ids"):
        evaluate(samples, [name], tmp_path / "out2", reference=other)
