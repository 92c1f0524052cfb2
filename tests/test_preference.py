"""Learned metrics (CLIP score, HPSv2, PickScore, ImageReward) against their reference code.

Every equivalence test saves ONE set of tiny random weights to disk and scores 3 images x 3
prompts with the adapter and with the reference implementation (the hpsv2 package, the
PickScore recipe written out with transformers, the image-reward package). The reference
packages' known breakages are patched in tests/preference_refs.py, never in the product.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from senseflow.errors import MissingArtefactError
from tests import preference_refs as refs

PROMPTS = refs.PROMPTS
TOL = 1e-4


@pytest.fixture(scope="module")
def images():
    """Three random RGB images of different sizes, so that resize, crop and padding all act."""
    return refs.random_images(3)


@pytest.fixture
def tiny_open_clip(monkeypatch):
    """The tiny config registered in open_clip."""
    return refs.register_tiny_open_clip(monkeypatch)


# ---------------------------------------------------------------- common


def test_missing_checkpoint_names_file_path_and_command(tmp_path, monkeypatch):
    from eval.metrics import load_clip_scorer, load_hpsv2_scorer, load_imagereward_scorer

    with pytest.raises(
        MissingArtefactError,
        match=r"HPS_v2\.1_compressed\.pt is missing: expected at .*fetch --artefact hpsv2_1",
    ):
        load_hpsv2_scorer("v2.1", checkpoint=tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(
        MissingArtefactError,
        match=r"open_clip_pytorch_model\.bin; .*senseflow weights fetch --artefact clip_vitg14",
    ):
        monkeypatch.setenv("SENSEFLOW_WEIGHTS", str(tmp_path))
        load_clip_scorer()
    with pytest.raises(
        MissingArtefactError,
        match=r"'imagereward' is missing: .*ImageReward\.pt.*fetch --artefact imagereward",
    ):
        load_imagereward_scorer(checkpoint=__file__)


def test_autocast_only_when_asked_and_on_cuda_only():
    from eval.metrics._preference import autocast

    # fp32 is the default (the references run fp32; hpsv2 asks for fp16 itself)
    assert not isinstance(autocast(torch.device("cuda")), torch.autocast)
    ctx = autocast(torch.device("cuda"), "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert not isinstance(autocast(torch.device("cpu"), "bf16"), torch.autocast)


def test_every_module_has_a_functional_score():
    import eval.metrics.clip_score as c
    import eval.metrics.hpsv2 as h
    import eval.metrics.imagereward as i
    import eval.metrics.pickscore as p

    assert (c.score, h.score, p.score, i.score) == (
        c.clip_scores,
        h.hpsv2_scores,
        p.pickscores,
        i.imagereward_scores,
    )


# ---------------------------------------------------------------- CLIP score


def test_clip_score_matches_open_clip_by_hand_and_metric_averages(tmp_path, tiny_open_clip, images):
    import open_clip

    from eval.metrics import CLIPScore, clip_scores

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_open_clip)
    ckpt = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), ckpt)
    tok = open_clip.get_tokenizer(tiny_open_clip)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]))
        txt = model.encode_text(tok(["a photo of " + p for p in PROMPTS]))
    ref = torch.nn.functional.cosine_similarity(img, txt) * 100

    kw = dict(model_name=tiny_open_clip, checkpoint=ckpt, scale=100, prefix="a photo of ", batch_size=2)
    got = clip_scores(images, PROMPTS, **kw)
    assert torch.allclose(got, ref, atol=TOL * 100), (got, ref)

    metric = CLIPScore(**kw)
    metric.update(images[:2], PROMPTS[:2])
    metric.update(images[2:], PROMPTS[2:])
    assert metric.compute().item() == pytest.approx(ref.mean().item(), abs=1e-2)
    assert metric.higher_is_better and metric.protocol()["prefix"] == "a photo of "
    assert metric.protocol()["scale"] == 100
    # per-image scores are concatenated across ranks before the mean (not means of means)
    from torchmetrics.utilities import dim_zero_cat

    assert metric._reductions["scores"] is dim_zero_cat
    assert metric.scores[0].shape == (2,)
    metric.reset()
    assert metric.scores == []


def test_clip_scorer_wraps_any_open_clip_model_and_tensor_inputs(tiny_open_clip, images):
    import open_clip

    from eval.metrics import OpenClipScorer

    model, _, preprocess = open_clip.create_model_and_transforms(tiny_open_clip)
    model.train()
    scorer = OpenClipScorer(model, open_clip.get_tokenizer(tiny_open_clip), preprocess)
    u8 = torch.from_numpy(np.stack([np.asarray(images[2])])).permute(0, 3, 1, 2)
    as_float = u8.float() / 127.5 - 1  # the suite's [-1, 1] convention
    a, b, c = scorer([images[2]], PROMPTS[:1]), scorer(u8, PROMPTS[:1]), scorer(as_float, PROMPTS[:1])
    assert torch.allclose(a, b) and torch.allclose(a, c)
    # a model still in training stays in training mode and keeps its gradients
    assert model.training and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        scorer(images[:2], PROMPTS[:1])


# ---------------------------------------------------------------- HPSv2


@pytest.mark.parametrize("version", ["v2.0", "v2.1"])
def test_hpsv2_matches_the_hpsv2_package(tmp_path, monkeypatch, tiny_open_clip, images, version):
    from eval.metrics import HPSv2Score, hpsv2_scores
    from eval.metrics.hpsv2 import HPS_FILES

    img_score = refs.hpsv2_package(monkeypatch)
    ckpt = refs.save_tiny_hps(tmp_path / HPS_FILES[version])
    ref = refs.hpsv2_reference(img_score, images, PROMPTS, ckpt, version)
    got = hpsv2_scores(images, PROMPTS, version, checkpoint=ckpt, arch=tiny_open_clip, batch_size=2)
    assert torch.allclose(got, ref, atol=TOL), (got, ref)
    assert ref.std() > 100 * TOL  # the scores differ per pair, so agreement is not vacuous

    metric = HPSv2Score(version=version, checkpoint=ckpt, arch=tiny_open_clip)
    metric.update(images, PROMPTS)
    assert metric.compute().item() == pytest.approx(ref.mean().item(), abs=TOL)
    protocol = metric.protocol()
    assert protocol["version"] == version and protocol["weights"] == ckpt.name
    assert protocol["weights_sha256"] == __import__("hashlib").sha256(ckpt.read_bytes()).hexdigest()


def test_hpsv2_tokens_equal_the_packages_on_long_and_messy_prompts(monkeypatch):
    import open_clip

    refs.hpsv2_package(monkeypatch)
    # the real architecture too: hpsv2's vendored ViT-H-14 config is open_clip's, so the HPS
    # checkpoint's keys and shapes fit open_clip's model
    import hpsv2.src.open_clip.factory as hps_factory
    from hpsv2.src.open_clip import get_tokenizer

    monkeypatch.undo()
    assert hps_factory._MODEL_CONFIGS["ViT-H-14"] == open_clip.factory._MODEL_CONFIGS["ViT-H-14"]
    prompts = ["A Highly-detailed,  photo of a   cat " * 30 + " &amp; caf\u00e9", "x", ""]
    assert torch.equal(get_tokenizer("ViT-H-14")(prompts), open_clip.get_tokenizer("ViT-H-14")(prompts))


# ---------------------------------------------------------------- PickScore


def test_pickscore_matches_the_published_recipe(tmp_path, images):
    from eval.metrics import PickScore, pickscores

    model_dir, proc_dir = refs.save_tiny_pickscore(tmp_path)
    ref = refs.pickscore_reference(refs.pickscore_recipe(model_dir, proc_dir), images, PROMPTS)
    got = pickscores(images, PROMPTS, model_dir=model_dir, processor_dir=proc_dir, batch_size=3)
    assert torch.allclose(got, ref, atol=TOL), (got, ref)
    assert ref.std() > 100 * TOL
    metric = PickScore(model_dir=model_dir, processor_dir=proc_dir)
    metric.update(images, PROMPTS)
    assert metric.compute().item() == pytest.approx(ref.mean().item(), abs=TOL)
    assert len(metric.protocol()["weights_sha256"]) == 64


def test_pickscore_missing_weights_are_named(tmp_path):
    from eval.metrics import load_pickscore_scorer

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(
        MissingArtefactError, match=r"model\.safetensors is missing.*weights fetch --artefact pickscore`"
    ):
        load_pickscore_scorer(tmp_path / "m", tmp_path / "p")


# ---------------------------------------------------------------- ImageReward


def test_imagereward_matches_the_image_reward_package(tmp_path, monkeypatch, images):
    from eval.metrics import ImageReward, imagereward_scores
    from eval.metrics.imagereward import VisionConfig

    tok_folder = refs.bert_folder(tmp_path / "bert-base-uncased")
    ir_mod = refs.imagereward_package(monkeypatch, tok_folder)
    ckpt, med = refs.save_tiny_imagereward(ir_mod, tmp_path, tok_folder)
    import ImageReward as RM

    ref = refs.imagereward_reference(RM.load(str(ckpt), device="cpu", med_config=str(med)), images, PROMPTS)
    kw = dict(checkpoint=ckpt, med_config=med, tokenizer_dir=tok_folder, vision=VisionConfig(**refs.TINY_VIT))
    got = imagereward_scores(images, PROMPTS, batch_size=2, **kw)
    assert torch.allclose(got, ref, atol=TOL), (got, ref)
    assert ref.std() > 100 * TOL
    metric = ImageReward(**kw)
    metric.update(images, PROMPTS)
    assert metric.compute().item() == pytest.approx(ref.mean().item(), abs=TOL)
    assert metric.protocol()["weights"] == "ImageReward.pt" and len(metric.protocol()["weights_sha256"]) == 64


def test_scorer_metrics_run_through_senseflow_eval_evaluate(tiny_open_clip, tmp_path, world_dir):
    import json

    import open_clip

    from eval import registry
    from eval.evaluate import evaluate
    from eval.metrics import OpenClipScorer
    from eval.metrics._preference import register_scorer_metric
    from senseflow.world.prompts import load_prompt_file
    from tests.test_eval_cli import make_folder, rendered

    assert {"clip_score", "hpsv2", "pickscore", "imagereward"} <= set(registry.known())
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_open_clip)
    scorer = OpenClipScorer(model.eval(), open_clip.get_tokenizer(tiny_open_clip), preprocess)
    register_scorer_metric("tiny_clip_score", lambda: scorer, "test/1")
    records = load_prompt_file(world_dir / "prompts" / "test.jsonl")[:6]
    folder = make_folder(tmp_path / "samples", records, rendered(records))
    summary = evaluate(folder, ["tiny_clip_score"], tmp_path / "out", n_boot=50)
    expected = scorer(np.stack(rendered(records)), [r.prompt for r in records]).mean().item()
    got = json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"]["tiny_clip_score"]
    assert got["value"] == pytest.approx(expected, rel=1e-5)
    assert got["protocol"]["version"] == "test/1" and summary
