"""The embedded world's tiny CLIP (senseflow world train-clip) and the clip_score_embedded metric."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eval.evaluate import evaluate
from eval.registry import MetricError
from senseflow.cli import app as senseflow_app
from senseflow.config import load_profile
from senseflow.errors import MissingArtefactError, UserError
from senseflow.world.clip import (
    CLIP_FILE,
    CONFIG_FILE,
    REPORT_FILE,
    WorldClip,
    build_clip,
    clip_config,
    contrastive_loss,
    load_clip,
    save_clip,
    train_clip_for_profile,
)
from senseflow.world.prompts import load_prompt_file
from senseflow.world.text import WorldTextEncoder

from .conftest import ROOT
from .test_eval_cli import make_folder, noise, rendered

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(world_dir, tmp_path_factory):
    """The smoke profile's CLIP run (120 steps, ~10 s on one core)."""
    cfg = load_profile(str(ROOT / "experiments" / "smoke.yaml"))
    out = tmp_path_factory.mktemp("clip") / "clip"
    report = train_clip_for_profile(cfg, world_dir, out, progress=False)
    return out, report


@pytest.fixture(scope="module")
def records(world_dir):
    return load_prompt_file(world_dir / "prompts" / "test.jsonl")[:16]


def test_training_lifts_heldout_retrieval_far_above_chance(trained):
    out, report = trained
    r, before = report["retrieval"], report["retrieval_untrained"]
    assert r["n"] == 64 and 0 < r["chance"] < 0.05
    # untrained: about chance; trained: many times chance on held-out captions and handwriting
    assert before["image_to_text"] < 4 * r["chance"]
    assert r["image_to_text"] > 5 * r["chance"] and r["text_to_image"] > 5 * r["chance"]
    assert r["image_to_text"] > before["image_to_text"] + 0.1
    assert np.isfinite(report["final_loss"]) and report["final_loss"] < np.log(64)
    assert {p.name for p in out.iterdir()} == {CLIP_FILE, CONFIG_FILE, REPORT_FILE, "tokenizer"}
    assert json.loads((out / REPORT_FILE).read_text()) == report
    # reloaded from disk it retrieves exactly as reported
    from senseflow.world.clip import retrieval_accuracy, scene_batch

    images, captions = scene_batch([0, 10**6], 64, resolution=16, digit_counts={1: 0.5, 2: 0.5},
                               instances="heldout", split="test")  # fmt: skip
    assert retrieval_accuracy(load_clip(out / CLIP_FILE), images, captions) == r


def test_contrastive_loss_shares_repeated_captions():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    # perfect alignment: each image equals its text embedding; captions 0 and 2 are the same text
    caps = ["a", "b", "a", "c"]
    txt = img.clone()
    txt[2] = txt[0]
    img[2] = img[0]
    scale = torch.tensor(100.0)
    loss = contrastive_loss(img, txt, scale, caps)
    # the repeated pair splits its target over both columns, so its best loss is log 2, not 0
    assert loss.item() == pytest.approx(0.5 * (2 * np.log(2)) / 4 * 2, abs=1e-3)
    wrong = contrastive_loss(img, txt.roll(1, 0), scale, caps)
    assert wrong > loss + 10


def test_metric_equals_direct_cosine_and_cli(trained, records, tmp_path):
    out, _ = trained
    folder = make_folder(tmp_path / "s", records, rendered(records))
    summary = evaluate(folder, ["clip_score_embedded"], tmp_path / "e", clip=out, n_boot=50)
    m = summary["metrics"]["clip_score_embedded"]
    clip = load_clip(out)
    img, txt = clip.embed(np.stack(rendered(records)), [r.prompt for r in records])
    direct = (img * txt).sum(-1).numpy()
    import pandas as pd

    per_image = pd.read_parquet(tmp_path / "e" / "scores.parquet")["clip_score_embedded"].to_numpy()
    np.testing.assert_allclose(per_image, direct, rtol=0, atol=1e-6)
    assert m["value"] == pytest.approx(direct.mean(), abs=1e-6) and m["n"] == len(records)
    card = m["protocol"]
    assert card["scale"] == 1.0 and card["prefix"] is None and card["score"] == "cosine"
    assert card["config_sha256"] in card["backbone"]
    import hashlib

    assert card["weights_sha256"] == hashlib.sha256((out / CLIP_FILE).read_bytes()).hexdigest()
    # the trained CLIP prefers a scene's own caption to another scene's
    shuffled = [records[(i + 1) % len(records)].prompt for i in range(len(records))]
    _, wrong = clip.embed(np.stack(rendered(records)), shuffled)
    assert direct.mean() > (img * wrong).sum(-1).mean() + 0.1
    # the command line takes --clip
    from eval.cli import app as eval_app

    args = ["--samples", str(folder), "--metrics", "clip_score_embedded", "--clip", str(out)]
    res = runner.invoke(eval_app, ["evaluate", *args, "--out", str(tmp_path / "cli"), "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "clip_score_embedded" in res.output
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())["metrics"]["clip_score_embedded"]
    assert cli["value"] == m["value"]


def test_not_applicable_missing_and_bad_weights(trained, records, tmp_path):
    out, _ = trained
    real = [type(r)(r.id, r.prompt, None) for r in records]
    folder = make_folder(tmp_path / "real", real, noise(real, 0))
    s = evaluate(folder, ["clip_score_embedded"], tmp_path / "e1", clip=out)
    assert s["metrics"]["clip_score_embedded"]["status"] == "not_applicable"
    emb = make_folder(tmp_path / "emb", records, rendered(records))
    with pytest.raises(MetricError, match="--clip"):
        evaluate(emb, ["clip_score_embedded"], tmp_path / "e2")
    with pytest.raises(MissingArtefactError, match="senseflow world train-clip"):
        evaluate(emb, ["clip_score_embedded"], tmp_path / "e3", clip=tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CLIP_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a usable embedded CLIP"):
        evaluate(emb, ["clip_score_embedded"], tmp_path / "e4", clip=broken)
    assert not (tmp_path / "e4" / "summary.json").exists()


def test_wrong_resolution_is_named(world_dir, records, tmp_path):
    tok = WorldTextEncoder.load(world_dir).tokenizer
    cfg = clip_config(resolution=8, context_length=tok.model_max_length, vision_width=16, text_width=16,
                      embed_dim=8, vision_layers=1, text_layers=1)  # fmt: skip
    path = save_clip(WorldClip(build_clip(cfg), tok, cfg), tmp_path / "c8")
    emb = make_folder(tmp_path / "emb", records, rendered(records))
    with pytest.raises(MetricError, match="16x16 images.*8x8"):
        evaluate(emb, ["clip_score_embedded"], tmp_path / "e", clip=path)


def test_cli_train_clip(world_dir, tmp_path):
    out = tmp_path / "clip"
    res = runner.invoke(
        senseflow_app,
        ["world", "train-clip", "--profile", "smoke", "--world", str(world_dir), "--out", str(out), "--quiet",
         "--set", "clip.steps=3", "--set", "clip.eval_scenes=16"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((out / REPORT_FILE).read_text())["steps"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    bad = runner.invoke(senseflow_app, ["world", "train-clip", "--profile", "smoke", "--world",
                                        str(tmp_path / "none"), "--out", str(tmp_path / "c2")])  # fmt: skip
    assert bad.exit_code != 0 and not (tmp_path / "c2").exists()
