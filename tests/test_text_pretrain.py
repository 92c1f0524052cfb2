"""The world's text encoder pre-training (world/text_pretrain.py) and its wiring into the world stage."""

import json
import math

import pytest
import torch

from senseflow.config import load_profile
from senseflow.errors import UserError
from senseflow.world.build import build_world
from senseflow.world.text import WorldTextEncoder, build_text_encoder
from senseflow.world.text_pretrain import pretrain_text_encoder
from senseflow.world.vocab import build_tokenizer

DIGITS = {1: 0.5, 2: 0.5}


def _encoder():
    return build_text_encoder(hidden_size=32, num_layers=1, num_heads=2, max_length=24, seed=0)


def test_pretraining_learns_captions_and_leaves_the_encoder_frozen():
    torch.set_num_threads(1)
    model, tok = _encoder(), build_tokenizer(24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = 64
    report = pretrain_text_encoder(model, tok, resolution=16, digit_counts=DIGITS, steps=40,
                                   batch_size=batch, vision_width=32, vision_layers=1, eval_scenes=64,
                                   progress=False)  # fmt: skip
    # InfoNCE at chance is about ln(batch); the encoder must have learned to tell captions apart
    assert report["final_loss"] < 0.9 * math.log(batch), report
    assert report["text_to_image_retrieval"] > report["text_to_image_retrieval_untrained"], report
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if "position_ids" not in k)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_parse_pretraining_reads_held_out_captions_and_leaves_the_encoder_frozen():
    """The parse objective: heads on the EOS state recover every attribute of test-split captions
    (attribute combinations never trained on), from near chance before training."""
    torch.set_num_threads(1)
    model, tok = _encoder(), build_tokenizer(24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    short = pretrain_text_encoder(model, tok, objective="parse", digit_counts=DIGITS, steps=2,
                                  eval_scenes=128, progress=False)  # fmt: skip
    # the profile's encoder size: 300 steps read 81% of held-out captions whole (1,500: 100%)
    model2 = build_text_encoder(hidden_size=64, num_layers=2, num_heads=2, max_length=24, seed=0)
    report = pretrain_text_encoder(model2, tok, objective="parse", digit_counts=DIGITS, steps=300,
                                   eval_scenes=128, progress=False)  # fmt: skip
    assert short["parse_accuracy"] < 0.05, short  # 4 cells x (11 digits, 5 colours) + background
    assert report["parse_accuracy"] > 0.5, report
    assert report["objective"] == "parse" and report["final_loss"] < short["final_loss"]
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "position_ids" not in k)
    for m in (model, model2):
        assert not m.training and not any(p.requires_grad for p in m.parameters())


def test_an_unknown_pretrain_objective_fails_when_the_profile_is_read():
    with pytest.raises(UserError, match="objective"):
        load_profile("embedded", ["world.text.pretrain.objective=lm"])


def test_the_world_stage_writes_the_pretrained_encoder_and_its_report(tmp_path):
    torch.set_num_threads(1)
    common = dict(digit_counts=DIGITS, prompts_per_split={"train": 4, "val": 2, "test": 2},
                  text_hidden_size=32, text_num_layers=1, text_num_heads=2, text_max_length=24,
                  text_seed=0, seed=0,
                  text_pooling="eos", progress=False)  # fmt: skip
    pre = {"steps": 5, "batch_size": 16, "vision_width": 32, "vision_layers": 1, "eval_scenes": 16}
    build_world(tmp_path / "a", text_pretrain=pre, **common)
    build_world(tmp_path / "b", **common)  # steps 0: the frozen random encoder, as before
    report = json.loads((tmp_path / "a" / "text_encoder_report.json").read_text())
    assert report["steps"] == 5 and "train_seconds" not in report  # no wall clock in a dependency
    assert not (tmp_path / "b" / "text_encoder_report.json").exists()
    a, b = WorldTextEncoder.load(tmp_path / "a"), WorldTextEncoder.load(tmp_path / "b")
    assert a.pooling == "eos" and a.pooled_size == 32
    caps = ["at the top left a red 3 on a black background"]
    assert not torch.allclose(a.encode(caps).hidden, b.encode(caps).hidden)
    random = WorldTextEncoder(build_tokenizer(24), _encoder())
    assert torch.equal(b.encode(caps).hidden, random.encode(caps).hidden)


def test_a_pretrain_patch_that_does_not_tile_the_scene_fails_when_the_profile_is_read():
    with pytest.raises(UserError, match="patch_size 5 does not divide scenes.resolution 16"):
        load_profile("embedded", ["world.text.pretrain.patch_size=5"])
    with pytest.raises(UserError, match="vision_width 63 must be a multiple of num_heads 2"):
        load_profile("embedded", ["world.text.pretrain.vision_width=63"])
