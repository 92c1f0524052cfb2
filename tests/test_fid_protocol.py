"""The paper's evaluation protocol, pinned (issue 15, items 2, 3, 4, 8).

- DMD2's FID protocol end to end against clean-fid (installed as a test dependency): the same
  generated PNGs, the same Inception weights loaded locally (random He-scaled weights: the
  real file is never downloaded), clean-fid's own file reading, float bicubic resize, batching
  and Fréchet distance on one side; ``senseflow-eval evaluate --metrics fid`` on the other.
- patch FID-T is one centre crop; CLIP score's DMD2 prefix at token level and LANCZOS 256;
  scorer precisions; the pinned Inception hash; FID-T pairing on prompt text and seed; the
  gate's interval regression and library patch versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from senseflow.world.prompts import PromptRecord
from tests import preference_refs as refs
from tests.test_eval_cli import make_folder
from tests.test_fid import save_random_inception


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return save_random_inception(tmp_path_factory.mktemp("inception"))


@pytest.fixture
def weights_root(tmp_path, monkeypatch, inception_file):
    import shutil

    root = tmp_path / "weights"
    (root / "inception_fid").mkdir(parents=True)
    shutil.copy(inception_file, root / "inception_fid" / inception_file.name)
    monkeypatch.setenv("SENSEFLOW_WEIGHTS", str(root))
    return root


def _smooth_images(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Generated-looking images: smooth gradients plus noise, non-square (the crop acts)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        base = np.stack(
            [np.sin(xx / rng.uniform(5, 40) + c) * np.cos(yy / rng.uniform(5, 40)) for c in range(3)], 2
        )
        img = (base + 1) * 110 + rng.normal(0, 12, (h, w, 3))
        out.append(img.clip(0, 255).astype(np.uint8))
    return out


def _dmd2_eval_res(img: np.ndarray) -> np.ndarray:
    """Transcription of DMD2's evaluation step: centre square of the long edge, LANCZOS to 512."""
    im = Image.fromarray(img)
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.array(im.resize((512, 512), resample=Image.LANCZOS))


def _clean_fid_model(inception_file: Path):
    """clean-fid's Inception (pytorch-fid layout) with the same local weights.

    clean-fid feeds x / 255 and the network computes 2y - 1; the TF graph computes (x - 128) / 128,
    which is the same network fed y = x / 256.
    """
    import cleanfid.inception_pytorch as ip

    state = torch.load(inception_file, map_location="cpu")
    with mock.patch.object(ip, "load_state_dict_from_url", lambda *a, **k: state):
        model = ip.InceptionV3(output_blocks=[3], resize_input=False).eval()

    def fn(x):
        with torch.no_grad():
            return model(x / 256)[0].squeeze(-1).squeeze(-1)

    return fn


def test_dmd2_fid_equals_clean_fid_end_to_end(tmp_path, weights_root, inception_file):
    from cleanfid import fid as cfid

    from eval.evaluate import evaluate
    from eval.metrics.fid import InceptionFeatures
    from eval.weights import require

    records = [PromptRecord(f"p{i}", f"prompt {i}") for i in range(6)]
    gen, real = _smooth_images(6, (600, 800), 0), _smooth_images(6, (600, 800), 1)
    samples = make_folder(tmp_path / "samples", records, gen)
    reference = make_folder(tmp_path / "reference", records, real)
    evaluate(samples, ["fid"], tmp_path / "out", reference=reference, n_boot_set=10)
    got = json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"]["fid"]

    model = _clean_fid_model(inception_file)

    def clean_feats(folder: Path) -> np.ndarray:
        files = [
            str(folder / json.loads(line)["file"])
            for line in (folder / "manifest.jsonl").read_text().split("\n")
            if line
        ]
        return cfid.get_files_features(
            files, model=model, num_workers=0, batch_size=4, device=torch.device("cpu"), mode="clean",
            custom_image_tranform=_dmd2_eval_res, verbose=False,
        )  # fmt: skip

    ref_gen, ref_real = clean_feats(samples), clean_feats(reference)
    ours = InceptionFeatures(require("inception_fid"))  # dmd2 is the default
    x = torch.from_numpy(np.stack(gen)).permute(0, 3, 1, 2).contiguous()
    np.testing.assert_allclose(ours(x).numpy(), ref_gen, rtol=1e-4, atol=1e-4)
    assert np.std(ref_gen) > 0.05  # features of order 1: agreement is not vacuous
    expected = cfid.fid_from_feats(ref_gen, ref_real)
    assert got["value"] == pytest.approx(expected, rel=1e-3)
    card = got["protocol"]
    assert card["protocol"] == "dmd2" and card["precision"] == "fp32"
    assert card["resize"].startswith("dmd2: centre crop, PIL LANCZOS to 512")
    # the former uint8 path is measurably off clean-fid; the float resize is not
    from eval.image_protocols import clean_resize_float

    img = np.asarray(Image.fromarray(gen[0]).resize((299, 299), Image.BICUBIC)).astype(np.float32)
    assert np.abs(img - clean_resize_float(gen[0])).max() > 0.4


def test_patch_fid_t_is_one_centre_crop_at_full_resolution():
    from eval.image_protocols import center_patch

    img = np.arange(400 * 500 * 3, dtype=np.int64).reshape(400, 500, 3).astype(np.uint8)
    patch = center_patch(img)
    assert patch.shape == (299, 299, 3)
    np.testing.assert_array_equal(patch, img[50:349, 100:399])
    from eval.registry import get

    get("patch_fid_t")  # registered, and the grid kept under its own name
    get("patch_fid_t_grid")


def test_clip_score_dmd2_prefix_at_token_level_and_lanczos_256(tmp_path, monkeypatch):
    import open_clip

    from eval.metrics import load_clip_scorer

    tiny = refs.register_tiny_open_clip(monkeypatch)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny)
    ckpt = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), ckpt)
    images = refs.random_images(3)
    prompts = ["A cat.", "two  dogs", "x " * 100]
    scorer = load_clip_scorer(tiny, ckpt, protocol="dmd2", device="cpu")
    tok = open_clip.get_tokenizer(tiny)
    ids = scorer.tokens(prompts)
    head = [tok.sot_token_id, *tok.encode("A photo depicts ")]
    assert ids[0, : len(head)].tolist() == head
    assert ids[0, len(head) : len(head) + len(tok.encode("A cat."))].tolist() == tok.encode("A cat.")
    assert ids[2, -1].item() == tok.eot_token_id  # truncated: the end token is kept
    model = model.eval()
    with torch.no_grad():
        pix = torch.stack([preprocess(im.resize((256, 256), Image.LANCZOS)) for im in images])
        a, b = model.encode_image(pix), model.encode_text(ids)
    ref = torch.nn.functional.cosine_similarity(a, b)
    torch.testing.assert_close(scorer(images, prompts), ref, atol=1e-5, rtol=0)
    card = scorer.protocol()
    assert card["prefix"] == "A photo depicts " and card["prefix_level"] == "token"
    assert card["pre_resize"] == "LANCZOS to 256" and card["precision"] == "fp32"
    plain = load_clip_scorer(tiny, ckpt, protocol="clean", device="cpu")
    assert plain.prefix == "" and plain.pre_resize is None


def test_scorer_precision_defaults_follow_the_references():
    import inspect

    from eval.metrics import (
        load_clip_scorer,
        load_hpsv2_scorer,
        load_imagereward_scorer,
        load_pickscore_scorer,
    )
    from eval.metrics._preference import autocast

    defaults = {
        f.__name__: inspect.signature(f).parameters["precision"].default
        for f in (load_clip_scorer, load_hpsv2_scorer, load_imagereward_scorer, load_pickscore_scorer)
    }
    assert defaults == {
        "load_clip_scorer": "fp32",
        "load_hpsv2_scorer": "fp16",
        "load_imagereward_scorer": "fp32",
        "load_pickscore_scorer": "fp32",
    }
    assert not isinstance(autocast(torch.device("cuda"), "fp32"), torch.autocast)
    ctx = autocast(torch.device("cuda"), "fp16")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16
    with pytest.raises(ValueError, match="unknown scorer precision 'fp8'"):
        autocast(torch.device("cpu"), "fp8")


def test_inception_hash_is_pinned_in_full():
    from eval.weights import load_manifest

    f = load_manifest().artefacts["inception_fid"].files[0]
    assert f.sha256 == "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def test_fid_t_pairing_checks_prompt_text_and_seed(tmp_path, weights_root):
    from eval.evaluate import evaluate
    from eval.registry import MetricError

    records = [PromptRecord(f"p{i}", f"prompt {i}") for i in range(4)]
    images = _smooth_images(4, (40, 40), 0)
    samples = make_folder(tmp_path / "s", records, images)
    other_text = make_folder(tmp_path / "t", [PromptRecord("p0", "another"), *records[1:]], images)
    with pytest.raises(MetricError, match="prompt id 'p0' has prompt 'prompt 0' .* but 'another'"):
        evaluate(samples, ["fid_t"], tmp_path / "o1", reference=other_text, n_boot_set=10)
    from senseflow.samples import read_manifest, write_manifest

    reseeded = make_folder(tmp_path / "r", records, images)
    write_manifest(reseeded, [{**r, "seed": r["seed"] + 1} for r in read_manifest(reseeded)])
    with pytest.raises(MetricError, match="has seed"):
        evaluate(samples, ["fid_t"], tmp_path / "o2", reference=reseeded, n_boot_set=10)
    # the noise-floor set is sampled with other seeds by design
    evaluate(samples, ["fid_t"], tmp_path / "o3", reference=reseeded, n_boot_set=10, paired_seeds=False)


def _entry(value, ci, versions=None):
    card = {"metric": "m", "library_versions": versions or {"torch": "2.14.1", "numpy": "2.4.6"}}
    return {"status": "ok", "value": value, "ci95": list(ci), "higher_is_better": True, "protocol": card}


def test_gate_regression_uses_the_intervals_and_ignores_library_patch_versions():
    from eval.gate import MetricRule, Thresholds, check_metric

    rule = MetricRule(direction="higher", regression_abs=0.01)
    th = Thresholds(metrics={"m": rule})
    base = _entry(0.50, (0.48, 0.52))
    # the point regression (0.03) exceeds 0.01, but the intervals overlap: noise, not a regression
    _, problems = check_metric("m", rule, _entry(0.47, (0.45, 0.515)), base, th)
    assert problems == []
    _, problems = check_metric("m", rule, _entry(0.40, (0.38, 0.42)), base, th)
    assert problems and "between the 95% intervals" in problems[0]
    patch = _entry(0.50, (0.48, 0.52), {"torch": "2.14.2+cu130", "numpy": "2.4.7"})
    assert check_metric("m", rule, patch, base, th)[1] == []
    minor = _entry(0.50, (0.48, 0.52), {"torch": "2.15.0", "numpy": "2.4.6"})
    assert (
        "protocol mismatch with the baseline: library_versions"
        in check_metric("m", rule, minor, base, th)[1][0]
    )
    strict = Thresholds(metrics={"m": rule}, strict_library_versions=True)
    assert check_metric("m", rule, patch, base, strict)[1]
