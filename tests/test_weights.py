import hashlib

import pytest
import yaml
from typer.testing import CliRunner

from eval import weights as W
from senseflow.cli import app
from senseflow.config import load_profile
from senseflow.errors import MissingArtefactError

runner = CliRunner()


def _tiny_manifest(tmp_path, sha=None, prefix=None):
    raw = {
        "artefacts": {
            "one": {
                "kind": "test",
                "repo": "org/one",
                "files": [{"path": "w.bin", "sha256": sha, "sha256_prefix": prefix}],
                "licence": "MIT",
            },
            "pipe": {
                "kind": "teacher",
                "repo": "org/pipe",
                "snapshot": True,
                "files": [{"path": "model_index.json", "sha256": None}],
                "licence": "MIT",
            },
        },
        "evaluation": ["one"],
        "profiles": {"real": ["pipe"], "embedded": []},
    }
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(raw))
    return W.load_manifest(path)


def test_manifest_covers_real_profiles_and_pins_nothing_invented():
    m = W.load_manifest()
    for profile in ("sdxl", "sd35_large", "sd35_medium", "flux_dev"):
        cfg = load_profile(profile)
        arts = m.for_profile(profile)
        repos = {a.repo for a in arts}
        assert cfg.teacher.pretrained.model_id in repos  # the teacher the profile loads
        assert {"dinov2_vitl14", "inception_fid", "clip_vitg14", "hpsv2", "hpsv2_1", "pickscore"} <= {
            a.name for a in arts
        }
        assert all(a.licence for a in arts)
    assert m.for_profile("embedded") == [] and m.for_profile("smoke") == []
    inception = m.artefacts["inception_fid"].files[0]
    assert inception.path == "pt_inception-2015-12-05-6726825d.pth" and inception.sha256_prefix == "6726825d"
    assert {f.path for f in m.artefacts["imagereward"].files} == {"ImageReward.pt", "med_config.json"}
    with pytest.raises(W.WeightsError, match="unknown profile 'nope'"):
        m.for_profile("nope")


def test_weights_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert W.weights_dir() == tmp_path / "cache" / "senseflow" / "weights"
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path / "env"))
    assert W.weights_dir() == tmp_path / "env"
    assert W.weights_dir(tmp_path / "flag") == tmp_path / "flag"


def test_require_names_path_and_command(tmp_path):
    m = _tiny_manifest(tmp_path)
    with pytest.raises(MissingArtefactError) as exc:
        W.require("one", tmp_path / "w", m)
    msg = str(exc.value)
    assert "'one'" in msg and str(tmp_path / "w" / "one" / "w.bin") in msg
    assert "senseflow weights fetch --artefact one" in msg
    (tmp_path / "w" / "one").mkdir(parents=True)
    (tmp_path / "w" / "one" / "w.bin").write_bytes(b"abc")
    assert W.require("one", tmp_path / "w", m) == tmp_path / "w" / "one" / "w.bin"
    with pytest.raises(W.WeightsError, match="unknown artefact 'two'.*known: one, pipe"):
        W.require("two", tmp_path / "w", m)


def test_check_statuses(tmp_path):
    data = b"weights"
    good = hashlib.sha256(data).hexdigest()
    root = tmp_path / "w"
    (root / "one").mkdir(parents=True)
    (root / "one" / "w.bin").write_bytes(data)
    rows = W.check("real", root, _tiny_manifest(tmp_path, sha=good))
    assert {r.artefact: r.status for r in rows} == {"pipe": "missing", "one": "ok"}
    assert [r.status for r in W.check("real", root, _tiny_manifest(tmp_path, sha="0" * 64))][1] == "mismatch"
    assert W.check("real", root, _tiny_manifest(tmp_path))[1].status == "unpinned"
    assert W.check("real", root, _tiny_manifest(tmp_path, prefix=good[:8]))[1].status == "unpinned"
    assert W.check("real", root, _tiny_manifest(tmp_path, prefix="ffffffff"))[1].status == "mismatch"
    table = W.render_check(rows, root, "real")
    assert "missing" in table and "1 missing or wrong" in table and "senseflow weights fetch real" in table


def test_cli_check_exit_codes(tmp_path):
    result = runner.invoke(app, ["weights", "check", "sdxl", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "sdxl_base" in result.output and "missing" in result.output
    result = runner.invoke(app, ["weights", "check", "embedded", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 0 and "nothing to check" in result.output


def test_fetch_fails_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(W.WeightsError, match="HF_HUB_OFFLINE.*senseflow weights fetch sdxl"):
        W.fetch("sdxl", tmp_path)
    result = runner.invoke(app, ["weights", "fetch", "sdxl", "--weights-dir", str(tmp_path)])
    assert isinstance(result.exception, W.WeightsError)


def test_fetch_verifies_hashes_and_reports_failures(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = b"the real weights"
    m = _tiny_manifest(tmp_path, sha=hashlib.sha256(data).hexdigest())
    root = tmp_path / "w"
    payload = {"one": data}

    def fake_fetch(art, root_):
        folder = root_ / art.name
        folder.mkdir(parents=True, exist_ok=True)
        for f in art.files:
            (folder / f.path).write_bytes(payload.get(art.name, b"{}"))

    monkeypatch.setattr(W, "fetch_artefact", fake_fetch)
    rows = W.fetch("real", root, m)
    assert {r.artefact: r.status for r in rows} == {"pipe": "unpinned", "one": "ok"}
    payload["one"] = b"tampered"
    (root / "one" / "w.bin").unlink()
    rows = W.fetch("real", root, m)
    assert [r.status for r in rows if r.artefact == "one"] == ["mismatch"]
    assert not (root / "one" / "w.bin").exists()  # deleted: the next fetch downloads it again

    def broken(art, root_):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(W, "fetch_artefact", broken)
    with pytest.raises(W.WeightsError, match="downloading one .*ConnectionError.*rerun to resume"):
        W.fetch("real", root, m)
