"""``senseflow weights fetch PROFILE`` fetches exactly what the profile loads, and ``preflight``
names what is missing or changed, one line each, before anything is sampled (issue 17).

The hub is mocked: every download writes a small file where the real one would land and is
recorded, so the test sees exactly which (repository, file) pairs a profile asks for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval import weights as W
from senseflow.baselines import get_recipe, load_registry, profile_artefacts, recipe_refs
from senseflow.cli import app
from senseflow.config import load_profile
from senseflow.errors import MissingArtefactError

runner = CliRunner()
TABLES = ("tables_sdxl", "tables_sd35", "tables_flux")
# what the tables profiles' metrics (fid_t, patch_fid_t, clip_score, hpsv2, pickscore, imagereward)
# load, per docs/evaluation.md: Inception (a URL), open_clip ViT-g-14, HPSv2.1 only, PickScore and its
# processor, ImageReward and its BERT tokenizer
METRIC_FILES = {
    ("laion/CLIP-ViT-g-14-laion2B-s12B-b42K", "open_clip_pytorch_model.bin"),
    ("xswu/HPSv2", "HPS_v2.1_compressed.pt"),
    ("yuvalkirstain/PickScore_v1", "*"),
    ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "*"),
    ("THUDM/ImageReward", "ImageReward.pt"),
    ("THUDM/ImageReward", "med_config.json"),
    ("google-bert/bert-base-uncased", "vocab.txt"),
    ("google-bert/bert-base-uncased", "tokenizer_config.json"),
    ("google-bert/bert-base-uncased", "config.json"),
}
# T2I-CompBench's judges (BLIP-VQA, CLIP ViT-B/32, OWLv2 snapshots; the spaCy model wheel)
COMPBENCH_FILES = {
    ("Salesforce/blip-vqa-capfilt-large", "*"),
    ("openai/clip-vit-base-patch32", "*"),
    ("google/owlv2-base-patch16-ensemble", "*"),
    ("spacy/en_core_web_sm", "en_core_web_sm-any-py3-none-any.whl"),
}


@pytest.fixture
def hub(monkeypatch):
    """A mocked hub: records every request and writes a small file per listed manifest file."""
    import huggingface_hub

    manifest = W.load_manifest()
    calls: list[tuple[str, str]] = []

    def hf_hub_download(repo, filename, revision=None, local_dir=None, **kw):
        calls.append((repo, filename))
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f"{repo}/{filename}".encode())
        return str(dest)

    def snapshot_download(repo, revision=None, local_dir=None, allow_patterns=None, **kw):
        calls.append((repo, "*"))
        for art in manifest.artefacts.values():
            if art.repo == repo and art.snapshot:
                for f in art.files:
                    dest = Path(local_dir) / f.path
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(f"{repo}/{f.path}".encode())
        return str(local_dir)

    def download_url(url, dest):
        calls.append((url, "*"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"inception")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(W, "_download_url", download_url)
    # the random stand-in cannot carry the real Inception's pinned hash
    inception = manifest.artefacts["inception_fid"]
    files = tuple(dataclasses.replace(f, sha256=None, sha256_prefix=None) for f in inception.files)
    manifest.artefacts["inception_fid"] = dataclasses.replace(inception, files=files)
    monkeypatch.setattr(W, "load_manifest", lambda *a, **k: manifest)
    return calls, manifest


def _expected_requests(profile: str) -> set[tuple[str, str]]:
    """What the profile loads, read from its YAML and its recipes (not from the manifest's lists)."""
    cfg = load_profile(profile)
    want = {(cfg.teacher.pretrained.model_id, "*")} | METRIC_FILES
    want.add((W.load_manifest().artefacts["inception_fid"].url, "*"))
    if cfg.pipeline.compbench is not None:  # T2I-CompBench's judges (eval/compbench.py names them)
        want |= COMPBENCH_FILES
    for name in cfg.pipeline.registry_baselines:
        for _, ref in recipe_refs(get_recipe(name)):
            if ref.file:
                want.add((ref.repo, f"{ref.subfolder}/{ref.file}" if ref.subfolder else ref.file))
            else:
                want.add((ref.repo, "*"))  # a diffusers folder: a snapshot
    return want


@pytest.mark.parametrize("profile", TABLES)
def test_fetch_profile_requests_exactly_the_profiles_set(hub, tmp_path, profile):
    calls, _ = hub
    root = tmp_path / "weights"
    result = runner.invoke(app, ["weights", "fetch", profile, "--weights-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert set(calls) == _expected_requests(profile)
    assert len(calls) == len(set(calls))  # each file once
    # nothing the profile does not load: no discriminator backbone, no HPSv2.0
    assert not {c for c in calls if c[0] in ("facebook/dinov2-large",) or c[1] == "HPS_v2_compressed.pt"}
    # a second fetch finds everything in place and downloads nothing
    calls.clear()
    assert runner.invoke(app, ["weights", "fetch", profile, "--weights-dir", str(root)]).exit_code == 0
    assert calls == []


def test_fetch_records_the_hash_of_unpinned_files_and_check_uses_it(hub, tmp_path):
    calls, manifest = hub
    root = tmp_path / "weights"
    cfg = load_profile("tables_sdxl")
    W.fetch(None, root, artefacts=list(profile_artefacts(cfg)))
    lora = root / "pcm_sdxl_4step_lora" / "sdxl" / "pcm_sdxl_smallcfg_4step_converted.safetensors"
    record = json.loads((root / "pcm_sdxl_4step_lora" / W.RECORD_FILE).read_text())
    assert record == {
        "sdxl/pcm_sdxl_smallcfg_4step_converted.safetensors": hashlib.sha256(lora.read_bytes()).hexdigest()
    }
    art = manifest.artefacts["pcm_sdxl_4step_lora"]
    assert W.verify_file(art, art.files[0], root).status == "unpinned"  # matches its record
    lora.write_bytes(b"another LoRA under the same name")
    status = W.verify_file(art, art.files[0], root)
    assert status.status == "mismatch" and "recorded at its first fetch" in status.detail


def _preflight(profile: str, root: Path, tmp_path: Path, monkeypatch):
    """Run the first stage on ``profile`` with its prompt set on disk (the plan check aside)."""
    from senseflow import dvc_plan, stages

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\n")
    cfg = load_profile(profile, [f"pipeline.prompts={{set: {prompts}}}"])
    monkeypatch.setattr(dvc_plan, "stale_plan", lambda cfg: None)  # dvc.yaml is rendered for embedded
    # the T2I-CompBench prompt files have their own preflight test (tests/test_compbench_pipeline.py)
    monkeypatch.setattr(stages, "missing_compbench", lambda cfg: [])
    monkeypatch.chdir(tmp_path)
    return stages.preflight(cfg, root)


def _problem_lines(message: str) -> list[str]:
    return [line.strip() for line in message.splitlines() if line.startswith("  ")]


def test_preflight_names_each_missing_file_in_one_line(hub, tmp_path, monkeypatch):
    root = tmp_path / "weights"
    cfg = load_profile("tables_sdxl")
    needed = profile_artefacts(cfg)
    with pytest.raises(MissingArtefactError) as exc:
        _preflight("tables_sdxl", root, tmp_path, monkeypatch)
    message = str(exc.value)
    lines = _problem_lines(message)
    n_files = sum(len(W.load_manifest().artefacts[a].files) for a in needed)
    assert len(lines) == n_files and f"{n_files} problem(s)" in message
    assert all(": missing (" in line and "; needed by " in line for line in lines)
    for name in cfg.pipeline.registry_baselines:  # every public model's weights are named
        assert any(line.endswith(name) or f" {name}," in line or f"by {name}" in line for line in lines), name
    assert "senseflow weights fetch tables_sdxl --weights-dir" in message
    assert not (tmp_path / "build").exists()  # nothing written before the stop
    # fetched, the same stage passes and writes its record
    runner.invoke(app, ["weights", "fetch", "tables_sdxl", "--weights-dir", str(root)])
    assert _preflight("tables_sdxl", root, tmp_path, monkeypatch)["profile"] == "tables_sdxl"


def test_a_lora_changed_after_its_fetch_stops_preflight_in_one_line(hub, tmp_path, monkeypatch):
    root = tmp_path / "weights"
    runner.invoke(app, ["weights", "fetch", "tables_flux", "--weights-dir", str(root)])
    lora = root / "flux_turbo_alpha_lora" / "diffusion_pytorch_model.safetensors"
    lora.write_bytes(b"a LoRA of another model")
    with pytest.raises(MissingArtefactError) as exc:
        _preflight("tables_flux", root, tmp_path, monkeypatch)
    lines = _problem_lines(str(exc.value))
    assert len(lines) == 1, lines
    assert lines[0].startswith("flux_turbo_alpha_lora/diffusion_pytorch_model.safetensors: mismatch (")
    assert lines[0].endswith("needed by flux_turbo_alpha_4")


def test_a_lora_whose_hash_differs_from_the_manifest_stops_preflight(hub, tmp_path, monkeypatch):
    _, manifest = hub
    root = tmp_path / "weights"
    runner.invoke(app, ["weights", "fetch", "tables_sdxl", "--weights-dir", str(root)])
    art = manifest.artefacts["flash_sdxl_lora"]
    manifest.artefacts[art.name] = dataclasses.replace(
        art, files=tuple(dataclasses.replace(f, sha256="0" * 64) for f in art.files)
    )  # pinned to another file than the one on disk
    with pytest.raises(MissingArtefactError) as exc:
        _preflight("tables_sdxl", root, tmp_path, monkeypatch)
    (line,) = _problem_lines(str(exc.value))
    assert line.startswith("flash_sdxl_lora/pytorch_lora_weights.safetensors: mismatch (sha256 ")
    assert "expected 0000000000000000..." in line and line.endswith("needed by flash_sdxl_4")


def test_every_registry_weight_is_a_manifest_artefact():
    # `weights fetch PROFILE` can only fetch what the manifest describes: each recipe's base,
    # network and LoRA name an artefact of the same repository that lists the file it loads
    manifest = W.load_manifest()
    for name, recipe in load_registry().items():
        for role, ref in recipe_refs(recipe):
            assert ref.artefact in manifest.artefacts, f"{name}.{role}"
            art = manifest.artefacts[ref.artefact]
            assert art.repo == ref.repo, f"{name}.{role}"
            rel = "/".join(p for p in (ref.subfolder, ref.file) if p)
            paths = {f.path for f in art.files}
            assert (rel in paths) if ref.file else (art.snapshot and (not rel or any(
                p.startswith(rel + "/") for p in paths))), f"{name}.{role}"  # fmt: skip


def test_fetch_profile_offline_names_the_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["weights", "fetch", "tables_sd35", "--weights-dir", str(tmp_path)])
    assert isinstance(result.exception, W.WeightsError)
    assert "senseflow weights fetch tables_sd35` on a connected machine" in str(result.exception)
