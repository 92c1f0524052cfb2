"""ImageReward's batched preprocessing and token cache equal the per-image path they replace."""

import numpy as np
import torch
from PIL import Image

from eval.metrics.imagereward import imagereward_pixels, imagereward_preprocess
from tests import preference_refs as refs


def test_batched_pixels_equal_the_packages_per_image_transform():
    images = refs.random_images(5, seed=3)
    rng = np.random.default_rng(0)
    images.append(Image.fromarray(rng.integers(0, 256, (300, 250), dtype=np.uint8), mode="L"))
    images.append(Image.fromarray(rng.integers(0, 256, (230, 231, 4), dtype=np.uint8), mode="RGBA"))
    tf = imagereward_preprocess(224)
    expected = torch.stack([tf(im.convert("RGB")) for im in images])
    got = imagereward_pixels(images, 224)
    assert got.shape == expected.shape == (7, 3, 224, 224)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_tokens_are_cached_and_equal_a_direct_call(tmp_path):
    from eval.metrics.imagereward import (
        MAX_TOKENS,
        ImageRewardModel,
        ImageRewardScorer,
        VisionConfig,
        load_blip_tokenizer,
    )

    tok = load_blip_tokenizer(refs.bert_folder(tmp_path / "bert"))
    model = ImageRewardModel({**refs.TINY_MED, "vocab_size": len(tok)}, VisionConfig(**refs.TINY_VIT))
    scorer = ImageRewardScorer(model, tok, device="cpu")
    prompts = [refs.PROMPTS[0], refs.PROMPTS[1], refs.PROMPTS[0]]
    ids, mask = scorer.tokens(prompts)
    direct = tok(prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    assert torch.equal(ids, direct["input_ids"]) and torch.equal(mask, direct["attention_mask"])
    assert set(scorer._token_cache) == set(prompts)
