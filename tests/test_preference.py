"""Learned metrics (CLIP score, HPSv2, PickScore, ImageReward) against their reference code.

Every equivalence test saves ONE set of tiny random weights to disk and scores 3 images x 3
prompts with the adapter and with the reference implementation (the hpsv2 package, the
PickScore recipe written out with transformers, the image-reward package). The reference
packages' known breakages (missing BPE file, downloads, transformers 5) are patched here,
inside the test, never in the product.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from senseflow.errors import MissingArtefactError

PROMPTS = ["a red 3 on a black background", "a photo of a cat", "concept art of a castle at dusk"]
TOL = 1e-4

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Three random RGB images of different sizes, so that resize and crop both act."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(48, 40), (37, 64), (32, 32)]
    ]


@pytest.fixture
def tiny_open_clip(monkeypatch):
    """Register the tiny config in open_clip under the name 'tiny-clip'."""
    import open_clip.factory

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-clip", TINY_CLIP)
    return "tiny-clip"


# ---------------------------------------------------------------- common


def test_missing_checkpoint_names_file_path_and_command(tmp_path):
    from eval.metrics import load_clip_scorer, load_hpsv2_scorer

    with pytest.raises(
        MissingArtefactError, match=r"HPS_v2\.1_compressed\.pt is missing: expected at .*weights fetch"
    ):
        load_hpsv2_scorer("v2.1", checkpoint=tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(
        MissingArtefactError, match=r"open_clip_pytorch_model\.bin .*senseflow weights fetch clip_score"
    ):
        os.environ["SENSEFLOW_WEIGHTS"] = str(tmp_path)
        try:
            load_clip_scorer()
        finally:
            del os.environ["SENSEFLOW_WEIGHTS"]


# ---------------------------------------------------------------- CLIP score


def test_clip_score_matches_open_clip_by_hand_and_metric_averages(tmp_path, tiny_open_clip, images):
    import open_clip

    from eval.metrics import CLIPScore, clip_score

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
    got = clip_score(images, PROMPTS, **kw)
    assert torch.allclose(got, ref, atol=TOL * 100), (got, ref)

    metric = CLIPScore(**kw)
    metric.update(images[:2], PROMPTS[:2])
    metric.update(images[2:], PROMPTS[2:])
    assert metric.compute().item() == pytest.approx(ref.mean().item(), abs=1e-2)
    assert metric.higher_is_better and metric.protocol()["prefix"] == "a photo of "
    assert metric.protocol()["scale"] == 100
    metric.reset()
    assert metric.scores == []


def test_clip_scorer_wraps_any_open_clip_model_and_tensor_inputs(tiny_open_clip, images):
    import open_clip

    from eval.metrics import OpenClipScorer

    model, _, preprocess = open_clip.create_model_and_transforms(tiny_open_clip)
    scorer = OpenClipScorer(model, open_clip.get_tokenizer(tiny_open_clip), preprocess)
    u8 = torch.from_numpy(np.stack([np.asarray(images[2])])).permute(0, 3, 1, 2)
    as_float = u8.float() / 127.5 - 1  # the suite's [-1, 1] convention
    a, b, c = scorer([images[2]], PROMPTS[:1]), scorer(u8, PROMPTS[:1]), scorer(as_float, PROMPTS[:1])
    assert torch.allclose(a, b) and torch.allclose(a, c)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        scorer(images[:2], PROMPTS[:1])


# ---------------------------------------------------------------- HPSv2


@pytest.fixture
def hpsv2_offline(monkeypatch, tiny_open_clip):
    """The hpsv2 package, importable and offline, with its ViT-H-14 replaced by the tiny config.

    The wheel lacks ``bpe_simple_vocab_16e6.txt.gz`` (open_clip ships the identical file) and
    ``initialize_model`` downloads the laion2B weights: both are patched here.
    """
    import open_clip.tokenizer

    real_gzip_open = gzip.open
    bundled = open_clip.tokenizer.default_bpe()

    def gzip_open(path, *args, **kwargs):
        if str(path).endswith("bpe_simple_vocab_16e6.txt.gz") and not Path(path).exists():
            path = bundled
        return real_gzip_open(path, *args, **kwargs)

    monkeypatch.setattr(gzip, "open", gzip_open)
    import hpsv2.img_score as img_score
    import hpsv2.src.open_clip.factory as hps_factory

    monkeypatch.setitem(hps_factory._MODEL_CONFIGS, "ViT-H-14", TINY_CLIP)
    real_create = img_score.create_model_and_transforms
    monkeypatch.setattr(
        img_score, "create_model_and_transforms", lambda name, pretrained, **kw: real_create(name, None, **kw)
    )
    monkeypatch.setattr(img_score, "model_dict", {})
    return img_score


@pytest.mark.parametrize("version", ["v2.0", "v2.1"])
def test_hpsv2_matches_the_hpsv2_package(tmp_path, hpsv2_offline, tiny_open_clip, images, version):
    from hpsv2.src.open_clip import create_model_and_transforms

    from eval.metrics import HPSv2Score, hpsv2_score
    from eval.metrics.hpsv2 import HPS_FILES

    torch.manual_seed(1)
    model = create_model_and_transforms("ViT-H-14", None, precision="fp32", device="cpu", output_dict=True)[0]
    with torch.no_grad():  # a non-trivial logit scale and projections, as a fine-tuned model has
        model.logit_scale.fill_(3.0)
    ckpt = tmp_path / HPS_FILES[version]
    torch.save({"state_dict": model.state_dict()}, ckpt)

    ref = []
    for im, p in zip(images, PROMPTS, strict=True):
        ref.extend(hpsv2_offline.score(im, p, cp=str(ckpt), hps_version=version))
    ref = torch.tensor(np.array(ref, dtype=np.float32))
    got = hpsv2_score(images, PROMPTS, version, checkpoint=ckpt, arch=tiny_open_clip, batch_size=2)
    assert torch.allclose(got, ref, atol=TOL), (got, ref)

    metric = HPSv2Score(version, checkpoint=ckpt, arch=tiny_open_clip)
    metric.update(images, PROMPTS)
    assert metric.compute().item() == pytest.approx(ref.mean().item(), abs=TOL)
    assert metric.protocol()["version"] == version


# ---------------------------------------------------------------- PickScore


def _pickscore_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny random CLIPModel and a CLIPProcessor (real CLIP BPE, built offline), saved to disk."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from tests.tiny_pipelines import clip_tokenizer

    torch.manual_seed(2)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(
        text_config={**text, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={**vision, "image_size": 32, "patch_size": 8},
        projection_dim=16,
        logit_scale_init_value=3.1,
    )
    model_dir, proc_dir = tmp_path / "PickScore_v1", tmp_path / "processor"
    CLIPModel(cfg).eval().save_pretrained(model_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer(77)).save_pretrained(proc_dir)
    return model_dir, proc_dir


def test_pickscore_matches_the_published_recipe(tmp_path, images):
    from transformers import AutoModel, AutoProcessor

    from eval.metrics import PickScore, pickscore

    model_dir, proc_dir = _pickscore_folders(tmp_path)
    # The PickScore README's recipe, one prompt per call; transformers 5 returns output objects.
    processor = AutoProcessor.from_pretrained(proc_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    ref = []
    for im, prompt in zip(images, PROMPTS, strict=True):
        image_inputs = processor(
            images=[im], padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        text_inputs = processor(
            text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        with torch.no_grad():
            image_embs = model.get_image_features(**image_inputs).pooler_output
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text_inputs).pooler_output
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            ref.append((model.logit_scale.exp() * (text_embs @ image_embs.T)[0])[0])
    ref = torch.stack(ref)

    got = pickscore(images, PROMPTS, model_dir=model_dir, processor_dir=proc_dir, batch_size=3)
    assert torch.allclose(got, ref, atol=TOL), (got, ref)
    metric = PickScore(model_dir=model_dir, processor_dir=proc_dir)
    metric.update(images, PROMPTS)
    assert metric.compute().item() == pytest.approx(ref.mean().item(), abs=TOL)


def test_pickscore_missing_weights_are_named(tmp_path):
    from eval.metrics import load_pickscore_scorer

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(MissingArtefactError, match=r"model\.safetensors is missing.*weights fetch pickscore"):
        load_pickscore_scorer(tmp_path / "m", tmp_path / "p")
