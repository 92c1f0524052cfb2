"""T2I-CompBench in the pipeline: plan, generation at seeds 42-51 per category, report beside the paper."""

from __future__ import annotations

import hashlib
import json

import pytest

from eval import compbench as cb
from senseflow import pipeline as pl
from senseflow.config import ConfigError, load_profile

CATS = {
    "color": ["a green bench and a red car", "a blue bowl"],
    "complex": ["a cat on the left of a dog. It sleeps", "a man riding a horse", "a red cat behind a car"],
}


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "T2I-CompBench" / "examples" / "dataset"
    folder.mkdir(parents=True)
    for cat, prompts in CATS.items():
        (folder / f"{cat}_val.txt").write_text("\n".join(prompts) + "\n")
    (folder / "complex_val_spatial.txt").write_text(CATS["complex"][0] + "\n")
    (folder / "complex_val_action.txt").write_text(CATS["complex"][1] + "\n")
    return folder


def profile(dataset, name: str = "tables_sdxl"):
    return load_profile(
        name, [f"pipeline.compbench.source={dataset}", "pipeline.compbench.categories=[color,complex]"]
    )


def test_plan_has_compbench_stages_for_every_4_step_model(dataset):
    from senseflow.dvc_plan import plan

    cfg = profile(dataset)
    names = pl.compbench_candidates(cfg)
    assert names == list(cfg.pipeline.registry_baselines)  # the teacher is not a row of the paper's table
    stages = plan(cfg)["stages"]
    for n in names:
        gen, ev = stages[f"compbench-generate-{n}"], stages[f"compbench-evaluate-{n}"]
        assert (
            gen["outs"] == [f"build/compbench/samples/{n}"]
            and ev["deps"][0] == f"build/compbench/samples/{n}"
        )
        assert "eval/metrics/t2i_compbench.py" in ev["deps"] and "eval/metrics/blip_vqa.py" in ev["deps"]
        assert f"build/compbench/eval/{n}" in stages["report"]["deps"]
    assert not [s for s in plan(load_profile("smoke"))["stages"] if "compbench" in s]
    with pytest.raises(ConfigError, match="embedded world's T2I-CompBench is pipeline.metrics"):
        pl.validate_pipeline(load_profile("smoke", [f"pipeline.compbench.source={dataset}"]))


def test_generate_samples_ten_images_per_prompt_at_seeds_42_to_51(dataset, tmp_path, monkeypatch):
    import senseflow.generate
    from senseflow import compbench_generate

    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_generate(model, prompts, out, *, fixed_seeds, steps, **kw):
        rows = [json.loads(x) for x in open(prompts)]
        calls.append((model, out.name, steps, rows, fixed_seeds))
        out.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(senseflow.generate, "generate", fake_generate)
    cfg = profile(dataset)
    outs = compbench_generate.generate(cfg, "dmd2_sdxl_4", progress=False)
    assert [str(o) for o in outs] == ["build/compbench/samples/dmd2_sdxl_4/color",
                                      "build/compbench/samples/dmd2_sdxl_4/complex"]  # fmt: skip
    model, category, steps, rows, seeds = calls[0]
    assert (model, category, steps) == ("dmd2_sdxl_4", "color", 4)
    assert len(rows) == 20 and rows[10] == {"id": "color-001-s0", "prompt": "a blue bowl"}
    assert [seeds[r["id"]] for r in rows[:10]] == list(range(42, 52)) == [seeds[r["id"]] for r in rows[10:]]
    card = cb.read_card(outs[1])
    data = (dataset / "complex_val.txt").read_bytes()
    assert (
        card["category"] == "complex" and card["files"]["complex_val.txt"] == hashlib.sha256(data).hexdigest()
    )
    assert set(card["files"]) == {"complex_val.txt", "complex_val_spatial.txt", "complex_val_action.txt"}
    kinds = card["complex_kinds"]
    assert [cb.complex_kind(p, kinds) for p in CATS["complex"]] == ["spatial", "action", "spatialaction"]
    limited = load_profile(
        "tables_sdxl", [f"pipeline.compbench.source={dataset}", "pipeline.compbench.n_prompts=1"]
    )
    records, _, card = compbench_generate.category_card(limited, "color")
    assert len(records) == 10 and card["n_prompts"] == 1


def test_report_puts_measured_compbench_beside_the_paper_rows(dataset, tmp_path):
    from eval.report import compbench_metrics, compbench_note, compbench_table

    cfg = profile(dataset)
    entry = {"status": "ok", "value": 0.61, "ci95": [0.58, 0.64], "n": 20}
    folder = tmp_path / pl.compbench_eval_dir("dmd2_sdxl_4") / "color"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"metrics": {"t2i_compbench_color": entry}}))
    got = compbench_metrics(cfg, "dmd2_sdxl_4", tmp_path)
    assert got == {"t2i_compbench_color": entry}
    assert compbench_metrics(cfg, "teacher_full", tmp_path) == {}
    summary = {
        "candidates": {"dmd2_sdxl_4": {"kind": "registry", "label": "DMD2-SDXL (4 steps, public weights)",
                                        "steps": 4, "metrics": {}, "compbench": got}},
        "paper": {"compbench": [{"method": "DMD2-SDXL", "color": 0.5811}]},
    }  # fmt: skip
    df = compbench_table(summary)
    assert list(df.source) == ["measured", "paper"] and df.iloc[0]["color"] == "0.61 [0.58, 0.64]"
    assert "OWLv2 instead of UniDet" in compbench_note(cfg)


@pytest.fixture
def full_dataset(tmp_path, monkeypatch):
    """300 prompts per category (the benchmark's count), pinned as if they were the published files."""
    from eval import prompts

    folder = tmp_path / "full" / "examples" / "dataset"
    folder.mkdir(parents=True)
    files = {f"{c}_val.txt": [f"a {c} thing number {i}" for i in range(300)] for c in ("color", "complex")}
    files |= {"complex_val_spatial.txt": files["complex_val.txt"][:58],
              "complex_val_action.txt": files["complex_val.txt"][58:270]}  # fmt: skip
    pins = {}
    for name, lines in files.items():
        data = ("\r\n".join(lines) + "\r\n").encode()
        (folder / name).write_bytes(data)
        pins[name] = {hashlib.sha256(data).hexdigest(): "test"}
    monkeypatch.setattr(prompts, "COMPBENCH_SHA256", pins)
    return folder


def test_preflight_checks_the_compbench_prompt_files(full_dataset, tmp_path, monkeypatch):
    from eval import prompts
    from senseflow import dvc_plan, stages
    from senseflow.errors import MissingArtefactError

    plain = tmp_path / "prompts.txt"
    plain.write_text("a red cat\n")
    base = [f"pipeline.compbench.source={full_dataset}", f"pipeline.prompts={{set: {plain}}}"]
    cfg = load_profile("tables_sdxl", [*base, "pipeline.compbench.categories=[color,complex]"])
    monkeypatch.setattr(dvc_plan, "stale_plan", lambda cfg: None)  # dvc.yaml is rendered for embedded
    # the weights have their own preflight tests (tests/test_weights_fetch_profile.py)
    monkeypatch.setattr(stages, "missing_weights", lambda cfg, weights_dir=None: [])
    monkeypatch.setattr(stages, "missing_registry_weights", lambda cfg, weights_dir=None, **kw: [])
    monkeypatch.chdir(tmp_path)
    assert stages.missing_compbench(cfg) == []
    assert stages.preflight(cfg)["profile"] == "tables_sdxl"  # good files pass

    color = full_dataset / "color_val.txt"
    good = color.read_bytes()
    color.unlink()
    with pytest.raises(MissingArtefactError) as exc:
        stages.preflight(cfg)
    (line,) = [x.strip() for x in str(exc.value).splitlines() if x.startswith("  ")]
    assert line.startswith(f"category color: t2i_compbench file {color} is missing")
    assert "git clone https://github.com/Karine-Huang/T2I-CompBench" in line
    assert f"pipeline.compbench.source = {full_dataset}" in line

    color.write_bytes(good.replace(b"a color thing number 7\r\n", b""))  # one line short
    (line,) = stages.missing_compbench(cfg)
    assert f"category color: {color}: 299 non-empty lines" in line and "has 300" in line

    color.write_bytes(good.replace(b"number 7", b"number \xff7"))  # a line that is not UTF-8
    (line,) = stages.missing_compbench(cfg)
    assert line.startswith(f"category color: {color}: not UTF-8")

    color.write_bytes(good.replace(b"number 7", b"number seven"))  # 300 lines, another file
    (line,) = stages.missing_compbench(cfg)
    assert f"category color: {color}: sha256 " in line and "none of the benchmark's published" in line
    assert "COMPBENCH_SHA256" in line

    color.write_bytes(good)
    (full_dataset / "complex_val_action.txt").unlink()  # the 3-in-1 sub-list the generate stage reads
    (line,) = stages.missing_compbench(cfg)
    assert line.startswith("category complex (3-in-1 sub-lists)")
    assert "complex_val_action.txt is missing" in line

    # a profile that keeps the first N prompts needs at least N; the published pins still apply
    monkeypatch.setattr(prompts, "COMPBENCH_SHA256", {})
    color.write_bytes(b"a red car\na blue bowl\n")
    few = [*base, "pipeline.compbench.categories=[color]", "pipeline.compbench.n_prompts"]
    assert stages.missing_compbench(load_profile("tables_sdxl", [*few[:-1], f"{few[-1]}=2"])) == []
    (line,) = stages.missing_compbench(load_profile("tables_sdxl", [*few[:-1], f"{few[-1]}=3"]))
    assert "2 non-empty lines" in line and "at least 3 (pipeline.compbench.n_prompts)" in line


def test_the_published_files_are_pinned_for_every_category():
    from eval.prompts import COMPBENCH_CATEGORIES, COMPBENCH_COMPLEX_FILES, COMPBENCH_SHA256

    names = {f"{c}_val.txt" for c in COMPBENCH_CATEGORIES} | set(COMPBENCH_COMPLEX_FILES.values())
    assert set(COMPBENCH_SHA256) == names
    assert len(COMPBENCH_SHA256["color_val.txt"]) == 2  # before and after the 2025-09-03 edit
    assert all(len(h) == 64 for pins in COMPBENCH_SHA256.values() for h in pins)
