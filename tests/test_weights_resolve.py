"""Every scorer's default path resolves through eval/weights_manifest.yaml (issue 15, item 1).

``senseflow weights fetch --metrics coco`` runs with the hub download mocked (it writes tiny
random weights where the real files would land); then every scorer is loaded WITHOUT an
explicit path, so each finds its files at ``<weights dir>/<artefact>/<file>`` through
``eval.weights.require``. Before the fix the scorers looked under ``./weights`` in other
folders and this test failed on the first load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from eval import weights as W
from senseflow.cli import app
from senseflow.errors import MissingArtefactError
from tests import preference_refs as refs

runner = CliRunner()


def _tiny_sources(tmp: Path, tiny_clip: str) -> dict[str, Path]:
    """Tiny random stand-ins of every evaluation artefact, keyed by manifest name (a file or a folder)."""
    import open_clip

    from eval.metrics.imagereward import ImageRewardModel, VisionConfig
    from tests.test_fid import save_random_inception

    src = tmp / "src"
    src.mkdir()
    torch.manual_seed(0)
    clip = open_clip.create_model(tiny_clip)
    torch.save(clip.state_dict(), src / "open_clip.bin")
    torch.save({"state_dict": clip.state_dict()}, src / "hps.pt")
    model_dir, proc_dir = refs.save_tiny_pickscore(src)
    from transformers import CLIPProcessor

    # the hub repository holds preprocessor_config.json (the file the manifest checks)
    CLIPProcessor.from_pretrained(proc_dir).image_processor.save_pretrained(proc_dir)
    tok = refs.bert_folder(src / "bert")
    (tok / "tokenizer_config.json").write_text("{}")
    (tok / "config.json").write_text("{}")
    from eval.metrics.imagereward import load_blip_tokenizer

    med = {
        **refs.TINY_MED,
        "vocab_size": len(load_blip_tokenizer(tok)),
        "encoder_width": refs.TINY_VIT["width"],
    }
    (src / "med_config.json").write_text(json.dumps(med))
    torch.save(ImageRewardModel(med, VisionConfig(**refs.TINY_VIT)).state_dict(), src / "ImageReward.pt")
    inception = save_random_inception(src)
    return {
        "clip_vitg14": src / "open_clip.bin",
        "hpsv2": src / "hps.pt",
        "hpsv2_1": src / "hps.pt",
        "pickscore": model_dir,
        "pickscore_processor": proc_dir,
        "imagereward": src,  # ImageReward.pt + med_config.json
        "bert_base_uncased": tok,
        "inception_fid": inception,
    }


@pytest.fixture
def fetched(tmp_path, monkeypatch):
    """A weights root filled by `senseflow weights fetch --metrics coco` with a mocked hub."""
    import huggingface_hub

    tiny = refs.register_tiny_open_clip(monkeypatch)
    sources = _tiny_sources(tmp_path, tiny)
    manifest = W.load_manifest()
    by_repo_file = {(a.repo, f.path): a.name for a in manifest.artefacts.values() for f in a.files}
    by_repo = {a.repo: a.name for a in manifest.artefacts.values() if a.snapshot}

    def hf_hub_download(repo, filename, revision=None, local_dir=None, **kw):
        src = sources[by_repo_file[(repo, filename)]]
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / filename if src.is_dir() else src, dest)
        return str(dest)

    def snapshot_download(repo, revision=None, local_dir=None, allow_patterns=None, **kw):
        shutil.copytree(sources[by_repo[repo]], local_dir, dirs_exist_ok=True)
        return str(local_dir)

    def download_url(url, dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sources["inception_fid"], dest)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(W, "_download_url", download_url)
    root = tmp_path / "root"
    monkeypatch.setenv(W.ENV_VAR, str(root))
    result = runner.invoke(app, ["weights", "fetch", "--metrics", "coco", "--weights-dir", str(root)])
    # the random Inception has another sha256 than the pinned one: fetch reports it (and deletes it)
    assert "inception_fid" in result.output, result.output
    if not (root / "inception_fid").exists() or not any((root / "inception_fid").iterdir()):
        (root / "inception_fid").mkdir(parents=True, exist_ok=True)
        shutil.copy(sources["inception_fid"], root / "inception_fid" / sources["inception_fid"].name)
    return root, tiny


def test_fetch_then_every_scorer_loads_from_its_default_path(fetched):
    from eval.metrics import (
        load_clip_scorer,
        load_hpsv2_scorer,
        load_imagereward_scorer,
        load_pickscore_scorer,
    )
    from eval.metrics.fid import InceptionFeatures
    from eval.metrics.imagereward import VisionConfig

    root, tiny = fetched
    images, prompts = refs.random_images(2), refs.PROMPTS[:2]
    clip = load_clip_scorer(model_name=tiny, device="cpu")
    assert clip.protocol()["weights"] == "open_clip_pytorch_model.bin"
    for version, artefact in (("v2.0", "hpsv2"), ("v2.1", "hpsv2_1")):
        hps = load_hpsv2_scorer(version, arch=tiny, device="cpu")
        assert hps.weights_file.parent == root / artefact
    pick = load_pickscore_scorer(device="cpu")
    assert pick.weights_file.parent == root / "pickscore"
    ir = load_imagereward_scorer(vision=VisionConfig(**refs.TINY_VIT), device="cpu")
    assert ir.weights_file == root / "imagereward" / "ImageReward.pt"
    for scorer in (clip, hps, pick, ir):
        scores = scorer(images, prompts)
        assert scores.shape == (2,) and torch.isfinite(scores).all()
    inception = InceptionFeatures(W.require("inception_fid"))
    feats = inception(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert feats.shape == (1, 2048)


def test_every_artefact_is_fetchable_by_name_and_every_metric_set_resolves():
    m = W.load_manifest()
    for name in m.artefacts:
        assert [a.name for a in m.select(artefacts=[name])] == [name]
    coco = {a.name for a in m.for_metrics("coco")}
    assert coco == set(m.evaluation)
    assert {a.name for a in m.for_metrics("pickscore,imagereward")} == {
        "pickscore", "pickscore_processor", "imagereward", "bert_base_uncased"
    }  # fmt: skip
    with pytest.raises(W.WeightsError, match="unknown metric set 'nope'.*known: .*coco"):
        m.for_metrics("nope")
    with pytest.raises(W.WeightsError, match="unknown artefact 'nope'.*known: .*clip_vitg14"):
        m.select(artefacts=["nope"])
    with pytest.raises(W.WeightsError, match="nothing selected"):
        m.select()


def test_missing_default_weights_suggest_a_command_that_works(tmp_path, monkeypatch):
    from eval.metrics import (
        load_clip_scorer,
        load_hpsv2_scorer,
        load_imagereward_scorer,
        load_pickscore_scorer,
    )

    monkeypatch.setenv(W.ENV_VAR, str(tmp_path))
    cases = [
        (load_clip_scorer, "clip_vitg14"),
        (lambda: load_hpsv2_scorer("v2.0"), "hpsv2"),
        (load_hpsv2_scorer, "hpsv2_1"),
        (load_pickscore_scorer, "pickscore"),
        (load_imagereward_scorer, "imagereward"),
    ]
    for load, artefact in cases:
        with pytest.raises(MissingArtefactError) as exc:
            load()
        msg = str(exc.value)
        assert f"senseflow weights fetch --artefact {artefact} --weights-dir {tmp_path}" in msg
        assert str(tmp_path / artefact) in msg
        # the suggested command is a valid selection of the CLI (it fails here only for lack of network)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        result = runner.invoke(
            app, ["weights", "fetch", "--artefact", artefact, "--weights-dir", str(tmp_path)]
        )
        assert isinstance(result.exception, W.WeightsError) and "HF_HUB_OFFLINE" in str(result.exception)
        assert f"--artefact {artefact}" in str(result.exception)


def test_cli_check_selects_artefacts_and_metric_sets(tmp_path):
    result = runner.invoke(app, ["weights", "check", "--artefact", "hpsv2", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 1 and "hpsv2" in result.output and "pickscore" not in result.output
    assert "senseflow weights fetch --artefact hpsv2" in result.output
    result = runner.invoke(
        app, ["weights", "check", "--metrics", "pickscore", "--weights-dir", str(tmp_path)]
    )
    assert "pickscore_processor" in result.output and "clip_vitg14" not in result.output
    result = runner.invoke(app, ["weights", "check", "--weights-dir", str(tmp_path)])
    assert isinstance(result.exception, W.WeightsError) and "nothing selected" in str(result.exception)
