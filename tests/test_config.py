import pytest
import yaml

from senseflow.config import ConfigError, apply_override, dump_profile, load_profile

from .conftest import ROOT

PROFILES = ["embedded", "smoke", "sdxl", "sd35_large", "sd35_medium", "flux_dev"]


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_validates(name):
    cfg = load_profile(str(ROOT / "experiments" / f"{name}.yaml"))
    assert cfg.name == name
    assert len(cfg.distill.anchors) == cfg.distill.steps_student


def test_method_hyperparameters_are_carried():
    flux = load_profile(str(ROOT / "experiments" / "flux_dev.yaml")).distill
    assert flux.anchors == [1.0, 0.904, 0.759, 0.512] and flux.gan.weight == 2.0 and flux.ida.lam == 0.97
    assert flux.guidance_embed and flux.lr_warmup == 500
    sd35m = load_profile(str(ROOT / "experiments" / "sd35_medium.yaml")).distill
    assert sd35m.ida.lam == 0.98 and sd35m.isg.weight == 0.5 and sd35m.ttur == 10
    sdxl = load_profile(str(ROOT / "experiments" / "sdxl.yaml")).distill
    assert (
        sdxl.anchors == [999, 749, 499, 249] and sdxl.anchor_units == "ddpm_index" and sdxl.isg.weight == 0.2
    )


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def raw():
    return yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())


def test_dump_round_trips(tmp_path):
    cfg = load_profile(str(ROOT / "experiments" / "embedded.yaml"))
    assert load_profile(str(_write(tmp_path / "p.yaml", dump_profile(cfg)))) == cfg


def test_unknown_key_names_file_and_path(tmp_path, raw):
    raw["teacher"]["train"]["learning_rate"] = 1e-3
    path = _write(tmp_path / "bad.yaml", yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    assert str(path) in str(err.value) and "teacher.train.learning_rate: unknown key" in str(err.value)


def test_wrong_type_names_expected_type(tmp_path, raw):
    raw["teacher"]["train"]["lr"] = "fast"
    path = _write(tmp_path / "bad.yaml", yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"teacher\.train\.lr: expected a number, got 'fast'"):
        load_profile(str(path))


def test_missing_required_value(tmp_path, raw):
    del raw["distill"]["anchors"]
    path = _write(tmp_path / "bad.yaml", yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"distill\.anchors: required value is missing"):
        load_profile(str(path))


def test_semantic_checks(tmp_path, raw):
    raw["distill"]["anchors"] = [0.5, 0.75, 1.0, 0.25]
    with pytest.raises(ConfigError, match="decreasing"):
        load_profile(str(_write(tmp_path / "bad.yaml", yaml.safe_dump(raw))))


def test_unknown_profile_lists_known_ones(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=r"unknown profile 'nope'.*embedded.*smoke"):
        load_profile("nope")


def test_malformed_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_profile(str(_write(tmp_path / "bad.yaml", "name: [unclosed\n")))
    with pytest.raises(ConfigError, match="file is empty"):
        load_profile(str(_write(tmp_path / "empty.yaml", "")))
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(str(tmp_path / "missing.yaml"))


def test_overrides_are_validated_like_the_file():
    cfg = load_profile(
        str(ROOT / "experiments" / "smoke.yaml"), ["teacher.train.lr=3e-4", "world.scenes.resolution=24"]
    )
    assert cfg.teacher.train.lr == 3e-4 and cfg.world.scenes.resolution == 24
    with pytest.raises(ConfigError, match=r"teacher\.train\.lr: expected a number"):
        load_profile(str(ROOT / "experiments" / "smoke.yaml"), ["teacher.train.lr=abc"])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        apply_override({}, "no-equals-sign")
