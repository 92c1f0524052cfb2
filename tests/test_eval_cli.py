import hashlib
import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from eval import registry
from eval.cli import app
from eval.evaluate import ScoreError, compare, evaluate, read_scores
from eval.gate import GateFileError, run_gate
from eval.prompts import PromptSetError, coco_prompts, load_prompt_set, prompt_set_hash
from eval.sample_folder import SampleFolderError, load_sample_folder
from eval.stats import bootstrap_mean_ci, paired_difference
from senseflow.errors import MissingArtefactError
from senseflow.io import atomic_save_safetensors
from senseflow.samples import png_bytes, write_manifest
from senseflow.world.probes import AttributeProbe
from senseflow.world.prompts import load_prompt_file
from senseflow.world.scenes import render

from .conftest import ROOT

runner = CliRunner()


# ----------------------------------------------------------------------------- helpers
def make_folder(path, records, images):
    """A sample folder written like `senseflow sample` does: PNGs + manifest.jsonl."""
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for rec, img in zip(records, images, strict=True):
        data = png_bytes(img)
        (path / f"{rec.id}.png").write_bytes(data)
        row = {
            "id": rec.id,
            "prompt": rec.prompt,
            "seed": int(hashlib.sha256(rec.id.encode()).hexdigest()[:6], 16),
        }
        row |= {"file": f"{rec.id}.png", "sha256": hashlib.sha256(data).hexdigest(), "steps": 4, "nfe": 4}
        if rec.scene is not None:
            row["scene"] = rec.scene.to_dict()
        rows.append(row)
    write_manifest(path, rows)
    return path


@pytest.fixture(scope="module")
def records(world_dir):
    return load_prompt_file(world_dir / "prompts" / "test.jsonl")[:16]


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("probe") / "probe.safetensors"
    meta = {"width": "4", "feature_dim": "8", "resolution": "16"}
    atomic_save_safetensors(AttributeProbe(4, 8).state_dict(), path, metadata=meta)
    return path


def rendered(records):
    return [render(r.scene, 16) for r in records]


def noise(records, seed, scale=255):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, scale + 1, (16, 16, 3), dtype=np.uint8) for _ in records]


@pytest.fixture
def brightness_metric():
    """A per-image metric registered by a test, the way other metric modules register theirs."""

    def build():
        def metric(ctx):
            values = np.asarray(ctx.samples.images).reshape(len(ctx.samples.images), -1).mean(1) / 255
            card = registry.protocol_card(
                ctx,
                metric="brightness",
                version="1",
                backbone="none",
                weights_sha256="",
                image_count=len(values),
            )
            return registry.MetricResult(card, higher_is_better=True, per_image=values)

        return metric

    registry.register("brightness", build)
    yield "brightness"
    registry._REGISTRY.pop("brightness", None)


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_is_seeded_and_covers():
    v = np.random.default_rng(1).random(100)
    assert bootstrap_mean_ci(v, seed=3) == bootstrap_mean_ci(v, seed=3)
    assert bootstrap_mean_ci(v, seed=3)[1] != bootstrap_mean_ci(v, seed=4)[1]
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(100):  # Bernoulli(0.3), n = 150: the 95% interval should hold p most of the time
        _, (lo, hi) = bootstrap_mean_ci(rng.random(150) < 0.3, n_boot=400, seed=int(rng.integers(1 << 30)))
        hits += lo <= 0.3 <= hi
    assert 85 <= hits <= 100
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean_ci([0.1, float("nan")])


def test_paired_difference_significance():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    assert paired_difference(a, a + 0.05 + 0.01 * rng.standard_normal(200))["significant"]
    assert not paired_difference(a, a + 0.01 * rng.standard_normal(200))["significant"]


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_adherence_fid_and_not_applicable(tmp_path, records, probe_file):
    student = make_folder(tmp_path / "student", records, noise(records, 0))
    teacher = make_folder(tmp_path / "teacher", records, rendered(records))
    kw = dict(reference=teacher, probe=probe_file, n_boot=200, n_boot_set=20)
    metrics = ["adherence", "fid_t_probe", "hpsv2", "pickscore", "imagereward", "clip_score", "fid"]
    s = evaluate(student, metrics, tmp_path / "out", **kw)
    adh, fid = s["metrics"]["adherence"], s["metrics"]["fid_t_probe"]
    assert adh["status"] == "ok" and 0 <= adh["ci95"][0] <= adh["value"] <= adh["ci95"][1] <= 1
    assert adh["n"] == 16 and adh["kind"] == "per_image" and "digit" in adh["details"]
    assert fid["status"] == "ok" and fid["value"] > 0 and fid["n"] == 16 and not fid["higher_is_better"]
    card = fid["protocol"]
    assert card["resolution"] == "16x16" and card["image_count"] == 16 and card["reference_stats_sha256"]
    assert card["prompt_set_sha256"] == prompt_set_hash((r.id, r.prompt) for r in records)
    assert card["weights_sha256"] == hashlib.sha256(probe_file.read_bytes()).hexdigest()
    assert "torch" in card["library_versions"] and card["seed"] == 0
    for name in ("hpsv2", "pickscore", "imagereward", "clip_score", "fid"):
        m = s["metrics"][name]
        assert m["status"] == "not_applicable" and "embedded world" in m["reason"] and "value" not in m
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["metrics"]["adherence"] == json.loads(json.dumps(adh))
    table = read_scores(tmp_path / "out")
    assert list(table["id"]) == [r.id for r in records] and "adherence" in table
    again = evaluate(student, metrics, tmp_path / "again", **kw)  # seeded: identical intervals
    assert again["metrics"]["fid_t_probe"]["ci95"] == fid["ci95"] and again["metrics"]["adherence"] == adh


def test_metric_inputs_and_applicability(tmp_path, records, probe_file):
    student = make_folder(tmp_path / "s", records, noise(records, 0))
    with pytest.raises(registry.MetricError, match="--reference"):
        evaluate(student, ["fid_t_probe"], tmp_path / "o", probe=probe_file)
    with pytest.raises(registry.MetricError, match="--probe"):
        evaluate(student, ["adherence"], tmp_path / "o")
    with pytest.raises(registry.MetricError, match="unknown metric 'nope'"):
        evaluate(student, ["nope"], tmp_path / "o")
    with pytest.raises(registry.MetricError, match="not available yet"):
        registry.MODULES["ghost"] = "eval.metrics.ghost_that_nobody_wrote"
        try:
            evaluate(student, ["ghost"], tmp_path / "o")
        finally:
            registry.MODULES.pop("ghost")
    # prompts without scenes (a real profile's folder): the embedded metrics do not apply
    plain = [type(r)(r.id, r.prompt) for r in records]
    real = make_folder(tmp_path / "real", plain, noise(plain, 1))
    s = evaluate(real, ["adherence", "fid_t_probe"], tmp_path / "o2", probe=probe_file)
    assert {m["status"] for m in s["metrics"].values()} == {"not_applicable"}
    # a teacher folder sharing no prompt id cannot serve as the FID-T reference
    other = make_folder(tmp_path / "other", records[8:], noise(records[8:], 2))
    with pytest.raises(registry.MetricError, match="shares 0 prompt ids"):
        evaluate(make_folder(tmp_path / "half", records[:8], noise(records, 3)[:8]), ["fid_t_probe"],
                 tmp_path / "o3", reference=other, probe=probe_file)  # fmt: skip


def _png(img, mode="RGB"):
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _rewrite(folder, name, data, fix_sha=True):
    (folder / name).write_bytes(data)
    if fix_sha:  # the manifest agrees with the file: only the property under test is wrong
        lines = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
        for r in lines:
            if r["file"] == name:
                r["sha256"] = hashlib.sha256(data).hexdigest()
        write_manifest(folder, lines)


BAD_CASES = {
    "truncated": (lambda f, good: _rewrite(f, "x.png", good[: len(good) // 2]), "corrupt or truncated"),
    "not_png": (lambda f, good: _rewrite(f, "x.png", b"hello"), "corrupt or truncated"),
    "extra_file": (lambda f, good: (f / "zz-extra.png").write_bytes(good), "not in manifest.jsonl"),
    "missing_file": (lambda f, good: (f / "x.png").unlink(), "listed in manifest.jsonl but missing"),
    "wrong_size": (
        lambda f, good: _rewrite(f, "x.png", _png(np.zeros((8, 8, 3), np.uint8))),
        "is 8x8, the folder's images are 16x16",
    ),
    "wrong_mode": (
        lambda f, good: _rewrite(f, "x.png", _png(np.zeros((16, 16, 3), np.uint8), "L")),
        "mode L",
    ),
    "sha_mismatch": (
        lambda f, good: _rewrite(f, "x.png", _png(np.full((16, 16, 3), 7, np.uint8)), fix_sha=False),
        "sha256 that differs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_named_or_skipped(tmp_path, records, case):
    recs = [type(r)("x" if i == 3 else r.id, r.prompt, r.scene) for i, r in enumerate(records[:6])]
    folder = make_folder(tmp_path / "f", recs, noise(recs, 0))
    damage, message = BAD_CASES[case]
    damage(folder, (folder / "x.png").read_bytes())
    with pytest.raises(SampleFolderError, match=message) as exc:
        load_sample_folder(folder)
    assert "png" in str(exc.value) and "--skip-bad" in str(exc.value)
    loaded = load_sample_folder(folder, skip_bad=True)
    assert len(loaded.skipped) == 1 and message.split()[0] in loaded.skipped[0]["reason"]
    assert len(loaded.records) == (6 if case == "extra_file" else 5)


def test_duplicate_id_and_cli_skip_bad(tmp_path, records, probe_file):
    folder = make_folder(tmp_path / "f", records[:6], noise(records, 0)[:6])
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    (folder / "manifest.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")
    with pytest.raises(SampleFolderError, match="repeats id"):
        load_sample_folder(folder)
    args = ["evaluate", "--samples", str(folder), "--metrics", "adherence", "--probe", str(probe_file)]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, SampleFolderError)
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--skip-bad", "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_images"] == 6 and summary["skipped"][0]["reason"].startswith("repeats id")
    assert "skipped 1 bad files" in result.output


def test_nan_scores(tmp_path, records):
    def build():
        def metric(ctx):
            v = np.ones(len(ctx.samples.records))
            v[2] = np.nan
            return registry.MetricResult({}, higher_is_better=True, per_image=v)

        return metric

    registry.register("nanny", build)
    try:
        folder = make_folder(tmp_path / "f", records[:5], noise(records, 0)[:5])
        with pytest.raises(ScoreError, match=rf"{records[2].id}\.png: metric nanny scored it nan"):
            evaluate(folder, ["nanny"], tmp_path / "o")
        s = evaluate(folder, ["nanny"], tmp_path / "o", skip_bad=True, n_boot=50)
        assert s["metrics"]["nanny"]["n"] == 4 and s["skipped"][0]["file"] == f"{records[2].id}.png"
    finally:
        registry._REGISTRY.pop("nanny")


# ----------------------------------------------------------------------------- compare
def test_compare_clear_and_no_difference(tmp_path, records, brightness_metric):
    dark = [np.clip(x, 0, 100).astype(np.uint8) for x in noise(records, 0, 100)]
    bright = [(x + 100).astype(np.uint8) for x in noise(records, 1, 100)]
    similar = noise(records, 2, 100)
    for name, imgs in {"dark": dark, "bright": bright, "similar": similar}.items():
        evaluate(
            make_folder(tmp_path / name, records, imgs),
            [brightness_metric],
            tmp_path / f"e-{name}",
            n_boot=50,
        )
    clear = compare(tmp_path / "e-dark", tmp_path / "e-bright", n_boot=300)["brightness"]
    assert clear["significant"] and clear["difference"] > 0.3 and clear["n"] == 16
    assert clear["protocol_differences"] == []
    same = compare(tmp_path / "e-dark", tmp_path / "e-similar", n_boot=300)["brightness"]
    assert not same["significant"] and same["ci_low"] < 0 < same["ci_high"]
    result = runner.invoke(app, ["compare", str(tmp_path / "e-dark"), str(tmp_path / "e-bright")])
    assert result.exit_code == 0 and "significant" in result.output and "brightness" in result.output
    # no shared (id, seed): nothing to pair
    other = [type(r)(r.id + "-x", r.prompt, r.scene) for r in records]
    evaluate(make_folder(tmp_path / "o", other, similar), [brightness_metric], tmp_path / "e-o", n_boot=50)
    with pytest.raises(SampleFolderError, match="share 0"):
        compare(tmp_path / "e-dark", tmp_path / "e-o")


def test_scores_fall_back_to_csv_without_pyarrow(tmp_path, records, brightness_metric, monkeypatch):
    import eval.evaluate as E

    monkeypatch.setattr(E, "_parquet_available", lambda: False)
    s = evaluate(make_folder(tmp_path / "f", records, noise(records, 0)), [brightness_metric], tmp_path / "e")
    assert s["scores_file"] == "scores.csv" and not (tmp_path / "e" / "scores.parquet").exists()
    table = read_scores(tmp_path / "e")
    assert list(table["id"]) == [r.id for r in records] and len(table["brightness"]) == 16


# ----------------------------------------------------------------------------- gate
def _summary(path, metrics, candidate="cand"):
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, (value, higher) in metrics.items():
        card = {"metric": name, "image_count": 512, "library_versions": {"torch": "2"}}
        entries[name] = {"status": "ok", "value": value, "higher_is_better": higher, "protocol": card}
    path.write_text(json.dumps({"candidate": candidate, "metrics": entries}))
    return path


THRESHOLDS = ROOT / "experiments" / "thresholds" / "embedded.yaml"


def test_gate_bounds_and_direction(tmp_path):
    good = _summary(tmp_path / "good.json", {"adherence": (0.08, True), "fid_t_probe": (200.0, False)})
    assert all(r.passed for r in run_gate([good], THRESHOLDS))
    low = _summary(tmp_path / "low.json", {"adherence": (0.01, True), "fid_t_probe": (500.0, False)})
    rows = {r.metric: r for r in run_gate([low], THRESHOLDS)}
    assert "< min" in rows["adherence"].problems[0] and "> max" in rows["fid_t_probe"].problems[0]
    flipped = _summary(tmp_path / "flip.json", {"adherence": (0.08, False), "fid_t_probe": (200.0, False)})
    assert "direction" in run_gate([flipped], THRESHOLDS)[0].problems[0]
    result = runner.invoke(
        app, ["gate", "--summary", str(good), "--summary", str(low), "--thresholds", str(THRESHOLDS)]
    )
    assert result.exit_code == 1 and "PASSED" not in result.output and "FAIL" in result.output
    ok = runner.invoke(app, ["gate", "--summary", str(good), "--thresholds", str(THRESHOLDS)])
    assert ok.exit_code == 0 and "gate: PASSED" in ok.output


def test_gate_beats_compares_with_another_candidate_of_the_same_run(tmp_path):
    rules = tmp_path / "t.yaml"
    rules.write_text(yaml.safe_dump({"candidates": {"student": {
        "adherence": {"direction": "higher", "beats": "teacher_4"},
        "fid_t_probe": {"direction": "lower", "beats": "teacher_4"}}}}))  # fmt: skip

    def summary(name, student, teacher):
        def metrics(adh, fid):
            return {"adherence": {"status": "ok", "value": adh, "higher_is_better": True},
                    "fid_t_probe": {"status": "ok", "value": fid, "higher_is_better": False}}  # fmt: skip

        path = tmp_path / name
        cands = {"student": {"metrics": metrics(*student)}}
        if teacher is not None:
            cands["teacher_4"] = {"metrics": metrics(*teacher)}
        path.write_text(json.dumps({"candidates": cands}))
        return path

    assert all(r.passed for r in run_gate([summary("a.json", (0.3, 90.0), (0.2, 100.0))], rules))
    rows = {r.metric: r for r in run_gate([summary("b.json", (0.2, 110.0), (0.2, 100.0))], rules)}
    assert "does not beat teacher_4 (0.2)" in rows["adherence"].problems[0]  # a tie is no win
    assert "does not beat teacher_4 (100)" in rows["fid_t_probe"].problems[0]
    rows = run_gate([summary("c.json", (0.3, 90.0), None)], rules)
    assert all("cannot compare: teacher_4" in r.problems[0] for r in rows)


def test_gate_regression_tolerances(tmp_path):
    base = _summary(tmp_path / "base.json", {"adherence": (0.10, True), "fid_t_probe": (200.0, False)})
    # allowed: adherence 0.02 + 0.1 * 0.10 = 0.03; FID 10 + 0.1 * 200 = 30
    within = _summary(tmp_path / "w.json", {"adherence": (0.075, True), "fid_t_probe": (229.0, False)})
    assert all(r.passed for r in run_gate([within], THRESHOLDS, base))
    beyond = _summary(tmp_path / "b.json", {"adherence": (0.065, True), "fid_t_probe": (231.0, False)})
    rows = run_gate([beyond], THRESHOLDS, base)
    assert all("regressed" in r.problems[0] for r in rows)
    better = _summary(tmp_path / "g.json", {"adherence": (0.5, True), "fid_t_probe": (100.0, False)})
    assert all(r.passed for r in run_gate([better], THRESHOLDS, base))


def test_gate_missing_unreadable_and_protocol(tmp_path):
    missing = _summary(tmp_path / "m.json", {"adherence": (0.08, True)})
    rows = {r.metric: r for r in run_gate([missing], THRESHOLDS)}
    assert rows["fid_t_probe"].problems[0].startswith("missing")
    (tmp_path / "bad.json").write_text("{not json")
    rows = run_gate([tmp_path / "bad.json"], THRESHOLDS)
    assert "unreadable" in rows[0].problems[0] and "bad.json" in rows[0].problems[0]
    result = runner.invoke(
        app, ["gate", "--summary", str(tmp_path / "bad.json"), "--thresholds", str(THRESHOLDS)]
    )
    assert result.exit_code == 1
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"metrics": {"adherence": {"direction": "up"}}}))
    with pytest.raises(GateFileError, match=r"t\.yaml: metrics\.adherence\.direction"):
        run_gate([missing], tmp_path / "t.yaml")
    result = runner.invoke(
        app, ["gate", "--summary", str(missing), "--thresholds", str(tmp_path / "none.yaml")]
    )
    assert result.exit_code == 1 and "none.yaml" in result.output
    base = _summary(tmp_path / "base.json", {"adherence": (0.08, True), "fid_t_probe": (200.0, False)})
    cand = json.loads(base.read_text())
    cand["metrics"]["adherence"]["protocol"]["image_count"] = 256
    (tmp_path / "c.json").write_text(json.dumps(cand))
    rows = {r.metric: r for r in run_gate([tmp_path / "c.json"], THRESHOLDS, base)}
    assert "protocol mismatch with the baseline: image_count" in rows["adherence"].problems[0]
    assert rows["fid_t_probe"].passed
    for name in ("embedded", "smoke"):  # the shipped files load
        assert run_gate([base], ROOT / "experiments" / "thresholds" / f"{name}.yaml")


# ----------------------------------------------------------------------------- prompt sets
def test_prompt_sets(tmp_path, world_dir):
    images = [{"id": i} for i in range(1, 31)]
    anns = [{"id": 100 + i, "image_id": i, "caption": f" a photo number {i} "} for i in range(1, 31)]
    anns += [{"id": 1, "image_id": 5, "caption": "first caption of image 5"}]
    (tmp_path / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    c20 = coco_prompts(tmp_path / "captions_val2014.json", n=20)
    c10 = coco_prompts(tmp_path / "captions_val2014.json", n=10)
    assert [r.id for r in c20.records[:10]] == [r.id for r in c10.records] and len(set(c20.records)) == 20
    order = np.arange(1, 31)
    np.random.RandomState(123).shuffle(order)
    assert [r.id for r in c20.records] == [f"coco-{i}" for i in order[:20]]
    by_id = {r.id: r.prompt for r in coco_prompts(tmp_path / "captions_val2014.json", n=30).records}
    assert by_id["coco-5"] == "first caption of image 5" and by_id["coco-6"] == "a photo number 6"
    assert c20.sha256 == coco_prompts(tmp_path / "captions_val2014.json", n=20).sha256 != c10.sha256
    with pytest.raises(PromptSetError, match="30 captioned images, 10000 needed"):
        load_prompt_set("coco10k", tmp_path / "captions_val2014.json")
    for style in ("anime", "concept-art", "paintings", "photo"):
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} one", f"{style} two"]))
    hps = load_prompt_set("hpsv2", tmp_path)
    assert len(hps.records) == 8 and hps.records[2].id == "concept-art-00000"
    (tmp_path / "PartiPrompts.tsv").write_text("Prompt\tCategory\tChallenge\tNote\na cat\tAnimals\tBasic\t\n")
    parti = load_prompt_set("parti", tmp_path / "PartiPrompts.tsv")
    assert [(r.id, r.prompt) for r in parti.records] == [("parti-00000", "a cat")]
    world = load_prompt_set("world_test", world_dir)
    assert len(world.records) == 24 and world.records[0].scene is not None
    with pytest.raises(MissingArtefactError, match="PartiPrompts.tsv"):
        load_prompt_set("parti", tmp_path / "nope.tsv")
    with pytest.raises(MissingArtefactError, match="senseflow world build"):
        load_prompt_set("world_test", tmp_path)
    result = runner.invoke(
        app, ["prompts", "hpsv2", "--source", str(tmp_path), "--out", str(tmp_path / "h.jsonl")]
    )
    assert result.exit_code == 0 and hps.sha256 in result.output
    assert [r.id for r in load_prompt_file(tmp_path / "h.jsonl")] == [r.id for r in hps.records]
