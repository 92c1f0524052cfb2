"""COCO prompt-set variants, the published-list check and `senseflow-eval reference build` (items 6, 7)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from eval.cli import app

runner = CliRunner()


def _captions(path, image_ids, year="2017"):
    """A COCO captions file: two captions per image, the lower annotation id listed second."""
    anns = []
    for k, i in enumerate(image_ids):
        anns.append({"id": 10_000_000 + k, "image_id": i, "caption": f"second caption {i}"})
        anns.append({"id": k, "image_id": i, "caption": f" first caption {i} "})
    path.write_text(json.dumps({"images": [{"id": i} for i in image_ids], "annotations": anns}))
    return path


def test_coco2017_is_all_5000_val_images_in_id_order(tmp_path):
    from eval.prompts import PromptSetError, coco2017_prompts, coco_image_file, load_prompt_set

    ids = list(range(5000, 0, -1))
    ps = coco2017_prompts(_captions(tmp_path / "captions_val2017.json", ids))
    assert ps.name == "coco2017_5k" and len(ps.records) == 5000
    assert ps.records[0].id == "coco2017-1" and ps.records[0].prompt == "first caption 1"
    assert load_prompt_set("coco2017_5k", tmp_path / "captions_val2017.json").sha256 == ps.sha256
    assert coco_image_file("coco2017-42") == "000000000042.jpg"
    assert coco_image_file("coco-42") == "COCO_val2014_000000000042.jpg"
    with pytest.raises(PromptSetError, match="COCO-2017 val has 5,000"):
        coco2017_prompts(_captions(tmp_path / "small.json", [1, 2, 3]))


def test_published_list_is_compared_and_the_match_reported(tmp_path):
    from eval.prompts import coco_prompts

    src = _captions(tmp_path / "captions_val2014.json", list(range(1, 5101)))
    ps = coco_prompts(src, 5000)
    same = tmp_path / "dmd2.txt"
    same.write_text("\n".join(r.prompt for r in ps.records) + "\n")
    result = runner.invoke(app, ["prompts", "coco5k", "--source", str(src), "--published", str(same)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["identical"] and report["same_position"] == 5000
    other = tmp_path / "dmd2.json"
    rows = [{"caption": r.prompt} for r in ps.records]
    rows[7]["caption"] = "another caption"
    other.write_text(json.dumps(rows))
    result = runner.invoke(app, ["prompts", "coco5k", "--source", str(src), "--published", str(other)])
    assert result.exit_code == 1
    report = json.loads(result.output[result.output.index("{") :])
    assert report["same_position"] == 4999 and report["first_difference"]["index"] == 7
    assert report["first_difference"]["theirs"] == "another caption"


def test_reference_build_crops_resizes_and_writes_a_checked_folder(tmp_path):
    from eval.sample_folder import load_sample_folder

    src = tmp_path / "val2014"
    src.mkdir()
    rng = np.random.default_rng(0)
    pictures = {}
    for i, size in ((9, (640, 480)), (42, (480, 700)), (7, (600, 600))):
        name = f"COCO_val2014_{i:012d}.jpg"
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(src / name, quality=90)
        pictures[name] = Image.open(src / name).convert("RGB")
    prompts = tmp_path / "coco.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"coco-{i}", "prompt": f"caption {i}"}) + "\n" for i in (42, 9))
    )
    out = tmp_path / "ref"
    result = runner.invoke(
        app, ["reference", "build", "--source", str(src), "--out", str(out), "--prompts", str(prompts)]
    )
    assert result.exit_code == 0, result.output
    folder = load_sample_folder(out)
    assert [r["prompt"] for r in folder.records] == ["caption 42", "caption 9"]
    assert folder.images.shape == (2, 512, 512, 3)
    im = pictures["COCO_val2014_000000000042.jpg"]
    w, h = im.size
    expected = np.asarray(im.crop((0, (h - w) // 2, w, (h - w) // 2 + w)).resize((512, 512), Image.LANCZOS))
    np.testing.assert_array_equal(folder.images[0], expected)
    info = json.loads((out / "reference.json").read_text())
    assert info["protocol"] == "dmd2" and info["size"] == 512 and info["count"] == 2
    assert len(info["source_list_sha256"]) == 64
    # every image of the folder, sorted, without a prompt list
    runner.invoke(app, ["reference", "build", "--source", str(src), "--out", str(tmp_path / "all")])
    assert len(load_sample_folder(tmp_path / "all").records) == 3
