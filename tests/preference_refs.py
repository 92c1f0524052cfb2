"""Reference implementations of the learned metrics, runnable offline at tiny size.

Used by tests/test_preference.py (equivalence) and benchmarks/preference_throughput.py
(speed). Every patch of a reference package's known breakage (missing BPE file, downloads,
transformers 5) lives here, applied through a ``pytest.MonkeyPatch`` so it is undone after
use; none of it is in the product.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROMPTS = ["a red 3 on a black background", "a photo of a cat", "concept art of a castle at dusk"]

# open_clip config, registered as "tiny-clip" in open_clip and as "ViT-H-14" inside hpsv2
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_NAME = "tiny-clip"

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


def random_images(n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` random RGB images of varied sizes (resize, crop and padding all act)."""
    rng = np.random.default_rng(seed)
    sizes = [(48, 40), (37, 64), (32, 32)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


def register_tiny_open_clip(mp) -> str:
    """Register the tiny config in open_clip; returns its name."""
    import open_clip.factory

    mp.setitem(open_clip.factory._MODEL_CONFIGS, TINY_CLIP_NAME, TINY_CLIP)
    return TINY_CLIP_NAME


# ---------------------------------------------------------------- hpsv2


def hpsv2_package(mp):
    """The hpsv2 package's ``img_score`` module, importable and offline, its ViT-H-14 made tiny.

    The wheel lacks ``bpe_simple_vocab_16e6.txt.gz`` (open_clip ships the identical file) and
    ``initialize_model`` downloads the laion2B weights: both are patched.
    """
    import open_clip.tokenizer

    real_gzip_open = gzip.open
    bundled = open_clip.tokenizer.default_bpe()

    def gzip_open(path, *args, **kwargs):
        if str(path).endswith("bpe_simple_vocab_16e6.txt.gz") and not Path(path).exists():
            path = bundled
        return real_gzip_open(path, *args, **kwargs)

    mp.setattr(gzip, "open", gzip_open)
    import hpsv2.img_score as img_score
    import hpsv2.src.open_clip.factory as hps_factory

    mp.setitem(hps_factory._MODEL_CONFIGS, "ViT-H-14", TINY_CLIP)
    real_create = img_score.create_model_and_transforms
    mp.setattr(
        img_score, "create_model_and_transforms", lambda name, pretrained, **kw: real_create(name, None, **kw)
    )
    mp.setattr(img_score, "model_dict", {})
    return img_score


def save_tiny_hps(path: Path, seed: int = 1) -> Path:
    """A tiny HPS checkpoint (``{"state_dict": ...}``) built with hpsv2's own open_clip."""
    from hpsv2.src.open_clip import create_model_and_transforms

    torch.manual_seed(seed)
    model = create_model_and_transforms("ViT-H-14", None, precision="fp32", device="cpu", output_dict=True)[0]
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def hpsv2_reference(img_score, images, prompts, checkpoint: Path, version: str) -> torch.Tensor:
    """``hpsv2.score`` once per (image, prompt), as its users call it."""
    out = []
    for im, p in zip(images, prompts, strict=True):
        out.extend(img_score.score(im, p, cp=str(checkpoint), hps_version=version))
    return torch.tensor(np.array(out, dtype=np.float32))


# ---------------------------------------------------------------- PickScore


def save_tiny_pickscore(folder: Path, seed: int = 2) -> tuple[Path, Path]:
    """A tiny random CLIPModel and a CLIPProcessor (real CLIP BPE, built offline), saved to disk."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from tests.tiny_pipelines import clip_tokenizer

    torch.manual_seed(seed)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(
        text_config={**layers, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        projection_dim=16,
        logit_scale_init_value=3.1,
    )
    model_dir, proc_dir = folder / "PickScore_v1", folder / "processor"
    CLIPModel(cfg).eval().save_pretrained(model_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer(77)).save_pretrained(proc_dir)
    return model_dir, proc_dir


def pickscore_recipe(model_dir: Path, proc_dir: Path):
    """The PickScore README's recipe, one prompt per call; transformers 5 returns output objects."""
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(proc_dir)
    model = AutoModel.from_pretrained(model_dir).eval()

    def calc_probs(prompt, images):
        image_inputs = processor(
            images=images, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        text_inputs = processor(
            text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        with torch.no_grad():
            image_embs = model.get_image_features(**image_inputs).pooler_output
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text_inputs).pooler_output
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            return model.logit_scale.exp() * (text_embs @ image_embs.T)[0]

    return calc_probs


def pickscore_reference(calc_probs, images, prompts) -> torch.Tensor:
    """The recipe once per (image, prompt)."""
    return torch.stack([calc_probs(p, [im])[0] for im, p in zip(images, prompts, strict=True)])


# ---------------------------------------------------------------- ImageReward


def bert_folder(folder: Path) -> Path:
    """A bert-base-uncased style vocabulary over the test prompts' words, written offline."""
    words = sorted({w for p in PROMPTS for w in p.split()})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *("##" + c for c in letters)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return folder


def imagereward_package(mp, tokenizer_folder: Path):
    """The image-reward package's ``ImageReward`` module, working under transformers 5, tiny.

    Its four transformers-5 breakages and its hub fetch are patched: the helpers its BERT
    imports from ``transformers.modeling_utils`` are put back, ``init_weights`` no longer
    needs ``post_init``'s set-up, ``invert_attention_mask`` / ``get_head_mask`` (removed) are
    given transformers 4's definitions, and the bert-base-uncased tokenizer comes from a
    local folder. The ViT-L is swapped for a tiny ViT and the MLP follows the tiny BERT.
    """
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        mp.setattr(mu, name, getattr(pu, name, lambda *a, **k: None), raising=False)
    import ImageReward.models.BLIP.blip_pretrain as bp
    import ImageReward.models.BLIP.med as med
    from ImageReward.models.BLIP.vit import VisionTransformer

    # the package's __init__ re-exports the class ImageReward over its submodule of that name
    ir_mod = sys.modules["ImageReward.ImageReward"]
    # transformers 5's init_weights expects what post_init sets up, which this BERT never calls;
    # initialise its modules directly (the checkpoint overwrites them anyway)
    mp.setattr(med.BertModel, "init_weights", lambda self: self.apply(self._init_weights))
    mp.setattr(med.BertModel, "all_tied_weights_keys", {}, raising=False)

    def invert_attention_mask(self, mask):
        ext = (mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]).to(self.dtype)
        return (1.0 - ext) * torch.finfo(self.dtype).min

    mp.setattr(med.BertModel, "invert_attention_mask", invert_attention_mask, raising=False)
    mp.setattr(
        med.BertModel,
        "get_head_mask",
        lambda self, head_mask, n: [None] * n if head_mask is None else head_mask,
        raising=False,
    )

    def tiny_vit(*args, **kwargs):
        t = TINY_VIT
        vit = VisionTransformer(
            img_size=t["image_size"],
            patch_size=t["patch_size"],
            embed_dim=t["width"],
            depth=t["depth"],
            num_heads=t["heads"],
        )
        return vit, t["width"]

    mp.setattr(bp, "create_vit", tiny_vit)
    real_mlp = ir_mod.MLP
    mp.setattr(ir_mod, "MLP", lambda size: real_mlp(TINY_MED["hidden_size"]))

    def init_tokenizer():
        from transformers import BertTokenizer

        tok = BertTokenizer.from_pretrained(str(tokenizer_folder))
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        return tok

    mp.setattr(bp, "init_tokenizer", init_tokenizer)
    return ir_mod


def save_tiny_imagereward(ir_mod, folder: Path, tokenizer_folder: Path, seed: int = 3) -> tuple[Path, Path]:
    """``ImageReward.pt`` and ``med_config.json`` of a tiny random package model."""
    n_vocab = len((tokenizer_folder / "vocab.txt").read_text().split())
    med = folder / "med_config.json"
    med.write_text(json.dumps({**TINY_MED, "vocab_size": n_vocab + 2}))
    torch.manual_seed(seed)
    model = ir_mod.ImageReward(med_config=str(med), device="cpu")
    with torch.no_grad():  # random positions and class token instead of the zeros they start at
        for p in (model.blip.visual_encoder.pos_embed, model.blip.visual_encoder.cls_token):
            p.normal_(0, 0.5)
        # the package initialises its head with tiny weights and zero biases (rewards ~ constant)
        for layer in model.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 2 * layer.in_features**-0.5)
                layer.bias.normal_(0, 0.5)
    ckpt = folder / "ImageReward.pt"
    torch.save(model.state_dict(), ckpt)
    return ckpt, med


def imagereward_reference(model, images, prompts) -> torch.Tensor:
    """``model.score(prompt, image)`` once per pair, as the package's users call it."""
    return torch.tensor([model.score(p, im) for im, p in zip(images, prompts, strict=True)])
