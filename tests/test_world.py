import hashlib
import json

import numpy as np
import pytest

from senseflow.world.sampling import write_real_scenes
from senseflow.world.scenes import (
    BACKGROUNDS,
    DIGIT_COLOURS,
    POSITIONS,
    DigitObject,
    Scene,
    caption,
    caption_split,
    instance_split,
    render,
    sample_batch,
    sample_scene,
    to_tensor_range,
    to_uint8,
)

COUNTS = {1: 0.5, 2: 0.5}


def test_caption_states_every_attribute():
    scene = Scene(
        "gray",
        (DigitObject(3, "red", "top left", 0), DigitObject(7, "blue", "bottom right", 5)),
    )
    assert caption(scene) == "at the top left a red 3 and at the bottom right a blue 7 on a gray background"


def test_sampling_is_deterministic_and_valid():
    a = [sample_scene(np.random.default_rng(5), digit_counts=COUNTS) for _ in range(3)]
    b = [sample_scene(np.random.default_rng(5), digit_counts=COUNTS) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, digit_counts=COUNTS) for _ in range(300)]
    counts = [len(s.objects) for s in scenes]
    assert set(counts) == {1, 2} and 100 < counts.count(1) < 200
    for s in scenes:
        cells = [o.position for o in s.objects]
        assert len(set(cells)) == len(cells)
        assert cells == sorted(cells, key=POSITIONS.index)  # reading order
        assert all(instance_split(o.instance) == "train" for o in s.objects)


def test_digits_read_without_sklearn_equal_load_digits(monkeypatch):
    """The CSV read that spares every stage the sklearn import gives load_digits' arrays; without
    the file, load_digits itself runs."""
    from sklearn.datasets import load_digits

    from senseflow.world import scenes

    assert scenes._digits_file() is not None  # the fast path is the one taken here
    data = load_digits()
    for path in (scenes._digits_file(), None):
        monkeypatch.setattr(scenes, "_digits_file", lambda p=path: p)
        scenes._digits.cache_clear()
        images, labels = scenes._digits()
        assert images.dtype == np.float32 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, (data.images / 16.0).astype(np.float32))
        np.testing.assert_array_equal(labels, data.target)
    scenes._digits.cache_clear()


def test_heldout_instances_and_digit_labels():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = sample_scene(rng, digit_counts={1: 1.0}, instances="heldout")
        o = s.objects[0]
        assert instance_split(o.instance) == "heldout"
        assert labels[o.instance] == o.digit


def test_caption_splits_are_fixed_and_respected():
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        for _ in range(20):
            s = sample_scene(rng, digit_counts=COUNTS, split=split)
            assert caption_split(caption(s)) == split
    # roughly 80/10/10 over many captions
    rng = np.random.default_rng(2)
    splits = [caption_split(caption(sample_scene(rng, digit_counts=COUNTS))) for _ in range(2000)]
    assert 0.75 < splits.count("train") / 2000 < 0.85


def test_render_places_colour_in_the_right_cell():
    scene = Scene("black", (DigitObject(0, "green", "bottom right", 0),))
    img = render(scene, 16)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert (img[:8, :8] == BACKGROUNDS["black"]).all()  # empty cells keep the background
    cell = img[8:, 8:].reshape(-1, 3).astype(int)
    brightest = cell[cell.sum(1).argmax()]
    nearest = min(DIGIT_COLOURS, key=lambda c: np.abs(brightest - np.array(DIGIT_COLOURS[c])).sum())
    assert nearest == "green"
    big = render(scene, 32)
    assert big.shape == (32, 32, 3) and (big[:16, :16] == BACKGROUNDS["black"]).all()
    with pytest.raises(ValueError):
        render(scene, 15)


def test_tensor_range_round_trip():
    images, _ = sample_batch(np.random.default_rng(0), 4, resolution=16, digit_counts=COUNTS)
    x = to_tensor_range(images)
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert (to_uint8(x) == images).all()


def test_world_sample_is_byte_identical(tmp_path):
    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    for name in ("a", "b"):
        write_real_scenes(tmp_path / name, n=6, seed=11, resolution=16, digit_counts=COUNTS)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    write_real_scenes(tmp_path / "c", n=6, seed=12, resolution=16, digit_counts=COUNTS)
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    lines = [json.loads(x) for x in (tmp_path / "a" / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and lines[0]["caption"] == caption(Scene.from_dict(lines[0]["scene"]))
