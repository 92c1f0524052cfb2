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
    assert ref.std() > 100 * TOL  # the scores differ per pair, so agreement is not vacuous

    metric = HPSv2Score(version=version, checkpoint=ckpt, arch=tiny_open_clip)
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
    assert ref.std() > 100 * TOL  # the scores differ per pair, so agreement is not vacuous
    metric = PickScore(model_dir=model_dir, processor_dir=proc_dir)
    metric.update(images, PROMPTS)
    assert metric.compute().item() == pytest.approx(ref.mean().item(), abs=TOL)


def test_pickscore_missing_weights_are_named(tmp_path):
    from eval.metrics import load_pickscore_scorer

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(MissingArtefactError, match=r"model\.safetensors is missing.*weights fetch pickscore"):
        load_pickscore_scorer(tmp_path / "m", tmp_path / "p")


# ---------------------------------------------------------------- ImageReward

TINY_MED = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 64,
    "model_type": "bert",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 0,  # set to the tiny vocabulary's size + BLIP's two added tokens
    "encoder_width": 48,
    "add_cross_attention": True,
}
TINY_VIT = dict(image_size=224, patch_size=32, width=48, depth=2, heads=2)


def _bert_folder(tmp_path: Path) -> Path:
    """A bert-base-uncased style vocabulary over the test prompts' words, written offline."""
    words = sorted({w for p in PROMPTS for w in p.split()})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *("##" + c for c in letters)]
    folder = tmp_path / "bert-base-uncased"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return folder


@pytest.fixture
def imagereward_offline(monkeypatch, tmp_path):
    """The image-reward package made importable and offline under transformers 5, at tiny size.

    Its four transformers-5 breakages and its hub fetch are patched here: the helpers its BERT
    imports from ``transformers.modeling_utils`` are put back, the ViT-L is swapped for a tiny
    ViT, the MLP input follows the tiny BERT, and the bert-base-uncased tokenizer comes from a
    local folder.
    """
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        monkeypatch.setattr(mu, name, getattr(pu, name, lambda *a, **k: None), raising=False)
    import sys

    import ImageReward.models.BLIP.blip_pretrain as bp
    import ImageReward.models.BLIP.med as med

    # transformers 5's PreTrainedModel.init_weights expects what post_init sets up, which the
    # package's BERT never calls: initialise its modules directly (the checkpoint overwrites them)
    monkeypatch.setattr(med.BertModel, "init_weights", lambda self: self.apply(self._init_weights))
    monkeypatch.setattr(med.BertModel, "all_tied_weights_keys", {}, raising=False)

    def invert_attention_mask(self, mask):  # removed in transformers 5; transformers 4's definition
        ext = (mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]).to(self.dtype)
        return (1.0 - ext) * torch.finfo(self.dtype).min

    monkeypatch.setattr(med.BertModel, "invert_attention_mask", invert_attention_mask, raising=False)
    monkeypatch.setattr(
        med.BertModel,
        "get_head_mask",
        lambda self, head_mask, n: [None] * n if head_mask is None else head_mask,
        raising=False,
    )

    # the package's __init__ re-exports the class ImageReward over its submodule of that name
    ir_mod = sys.modules["ImageReward.ImageReward"]
    from ImageReward.models.BLIP.vit import VisionTransformer

    def tiny_vit(*args, **kwargs):
        vit = VisionTransformer(
            img_size=TINY_VIT["image_size"],
            patch_size=TINY_VIT["patch_size"],
            embed_dim=TINY_VIT["width"],
            depth=TINY_VIT["depth"],
            num_heads=TINY_VIT["heads"],
        )
        return vit, TINY_VIT["width"]

    monkeypatch.setattr(bp, "create_vit", tiny_vit)
    real_mlp = ir_mod.MLP
    monkeypatch.setattr(ir_mod, "MLP", lambda size: real_mlp(TINY_MED["hidden_size"]))
    folder = _bert_folder(tmp_path)

    def init_tokenizer():
        from transformers import BertTokenizer

        tok = BertTokenizer.from_pretrained(str(folder))
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        return tok

    monkeypatch.setattr(bp, "init_tokenizer", init_tokenizer)
    return ir_mod, folder


def test_imagereward_matches_the_image_reward_package(tmp_path, imagereward_offline, images):
    import ImageReward as RM

    from eval.metrics import ImageReward, imagereward_score
    from eval.metrics.imagereward import VisionConfig

    ir_mod, tok_folder = imagereward_offline
    n_vocab = len((tok_folder / "vocab.txt").read_text().split())
    med = tmp_path / "med_config.json"
    med.write_text(__import__("json").dumps({**TINY_MED, "vocab_size": n_vocab + 2}))
    torch.manual_seed(3)
    ref_model = ir_mod.ImageReward(med_config=str(med), device="cpu")
    with torch.no_grad():  # random positions and class token instead of the zeros they start at
        for p in (ref_model.blip.visual_encoder.pos_embed, ref_model.blip.visual_encoder.cls_token):
            p.normal_(0, 0.5)
        # the package initialises its head with tiny weights and zero biases (rewards ~ constant)
        for layer in ref_model.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 2 * layer.in_features**-0.5)
                layer.bias.normal_(0, 0.5)
    ckpt = tmp_path / "ImageReward.pt"
    torch.save(ref_model.state_dict(), ckpt)

    ref_model = RM.load(str(ckpt), device="cpu", med_config=str(med))
    ref = torch.tensor([ref_model.score(p, im) for im, p in zip(images, PROMPTS, strict=True)])

    kw = dict(checkpoint=ckpt, med_config=med, tokenizer_dir=tok_folder, vision=VisionConfig(**TINY_VIT))
    got = imagereward_score(images, PROMPTS, batch_size=2, **kw)
    assert torch.allclose(got, ref, atol=TOL), (got, ref)
    assert ref.std() > 100 * TOL  # the scores differ per pair, so agreement is not vacuous
    metric = ImageReward(**kw)
    metric.update(images, PROMPTS)
    assert metric.compute().item() == pytest.approx(ref.mean().item(), abs=TOL)
