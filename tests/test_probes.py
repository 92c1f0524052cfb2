import numpy as np
import pytest
import torch

from senseflow.errors import UserError
from senseflow.world.probes import (
    EMPTY,
    AttributeProbe,
    ProbeOutput,
    judge,
    load_probe,
    scene_labels,
    summarise,
    train_probe,
)
from senseflow.world.scenes import COLOUR_NAMES, DigitObject, Scene, sample_batch

COUNTS = {1: 0.5, 2: 0.5}


def _oracle(scenes):
    """A ProbeOutput that says exactly what the scenes are (one-hot logits)."""
    lab = scene_labels(scenes)
    n = len(scenes)
    colour = lab["colour"].clamp(min=0)
    return ProbeOutput(
        features=torch.zeros(n, 4),
        background=torch.nn.functional.one_hot(lab["background"], 3).float(),
        digit=torch.nn.functional.one_hot(lab["digit"], EMPTY + 1).float(),
        colour=torch.nn.functional.one_hot(colour, len(COLOUR_NAMES)).float(),
    )


def test_judge_perfect_and_each_kind_of_mistake():
    scenes = [
        Scene("black", (DigitObject(3, "red", "top left", 0),)),
        Scene("white", (DigitObject(1, "blue", "top right", 1), DigitObject(7, "green", "bottom left", 2))),
    ]
    acc = summarise(judge(_oracle(scenes), scenes))
    assert all(v == 1.0 for v in acc.values())

    wrong_digit = _oracle(scenes)
    wrong_digit.digit[0, 0] = torch.nn.functional.one_hot(torch.tensor(8), EMPTY + 1).float()
    v = judge(wrong_digit, scenes)
    assert v["digit"].tolist() == [False, True, True] and v["all"].tolist() == [False, True]

    extra = _oracle(scenes)
    extra.digit[0, 3] = torch.nn.functional.one_hot(torch.tensor(5), EMPTY + 1).float()  # an extra digit
    v = judge(extra, scenes)
    assert v["count"].tolist() == [False, True] and v["all"].tolist() == [False, True]
    assert v["digit"].all()  # the asked-for digits are still right

    wrong_bg = _oracle(scenes)
    wrong_bg.background[1] = torch.tensor([1.0, 0, 0])
    assert judge(wrong_bg, scenes)["all"].tolist() == [True, False]


def test_probe_learns_and_round_trips(tmp_path):
    report = train_probe(
        tmp_path, resolution=16, digit_counts=COUNTS, steps=80, batch_size=32, eval_scenes=128, progress=False
    )
    # 80 steps learn the easiest attribute (chance: 1/3); benchmarks/probe_accuracy.py checks
    # that the profile's budget reaches 95% on every attribute
    assert report["background"] > 0.9 and report["steps"] == 80
    probe = load_probe(tmp_path / "probe.safetensors")
    images, scenes = sample_batch(np.random.default_rng(0), 8, resolution=16, digit_counts=COUNTS)
    from senseflow.world.scenes import to_tensor_range

    out = probe(to_tensor_range(images))
    assert out.features.shape == (8, 256) and out.digit.shape == (8, 4, 11)


def test_load_probe_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-probe"):
        load_probe(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a valid probe checkpoint"):
        load_probe(bad)


def test_probe_shapes_for_other_resolutions():
    out = AttributeProbe()(torch.zeros(2, 3, 32, 32))
    assert out.background.shape == (2, 3) and out.colour.shape == (2, 4, 5)
