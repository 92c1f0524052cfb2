"""T2I-CompBench's scoring rules, transcribed (issue 15, T2I-CompBench part): values computed by hand."""

from __future__ import annotations

import hashlib

import pytest

from eval import compbench as cb


def test_prompts_are_read_locally_with_their_hash_and_planned_at_seeds_42_to_51(tmp_path):
    from eval.prompts import (
        PromptSetError,
        load_prompt_set,
        t2i_compbench_complex_kinds,
        t2i_compbench_prompts,
    )
    from senseflow.samples import per_seed_records

    data = b"a green bench and a red car\n\na blue bowl and a yellow cup\n"
    (tmp_path / "color_val.txt").write_bytes(data)
    ps = t2i_compbench_prompts(tmp_path, ["color"])
    assert [r.prompt for r in ps.records] == ["a green bench and a red car", "a blue bowl and a yellow cup"]
    assert [r.id for r in ps.records] == ["color-000", "color-001"] and ps.name == "t2i_compbench"
    assert ps.files == (("color_val.txt", hashlib.sha256(data).hexdigest()),)
    records, seeds = per_seed_records(list(ps.records), cb.SEEDS)
    assert len(records) == 20 and [seeds[r.id] for r in records[:10]] == list(range(42, 52))
    assert records[10].id == "color-001-s0" and seeds[records[10].id] == 42  # prompt i owns 10i .. 10i+9
    with pytest.raises(cb.MissingArtefactError, match="shape_val.txt is missing.*Karine-Huang/T2I-CompBench"):
        load_prompt_set("t2i_compbench", tmp_path)  # every category by default: shape's file is absent
    with pytest.raises(PromptSetError, match="unknown T2I-CompBench category 'colour'"):
        t2i_compbench_prompts(tmp_path, ["colour"])
    (tmp_path / "complex_val_spatial.txt").write_text("A cat on the left of a dog. Extra\n")
    with pytest.raises(cb.MissingArtefactError, match="complex_val_action.txt is missing"):
        t2i_compbench_complex_kinds(tmp_path)
    (tmp_path / "complex_val_action.txt").write_text("a man riding a horse\n")
    kinds, files = t2i_compbench_complex_kinds(tmp_path)
    assert cb.complex_kind("a cat on the left of a dog. Other", kinds) == "spatial"
    assert cb.complex_kind("A man riding a horse", kinds) == "action"
    assert cb.complex_kind("a red cat behind a blue car", kinds) == "spatialaction"
    assert [f for f, _ in files] == ["complex_val_spatial.txt", "complex_val_action.txt"]


def test_questions_objects_and_complex_text_follow_the_parse():
    class Parsed:
        noun_chunks = ["A green bench", "the left", "a red car", "top"]
        tokens = [("a", "DET"), ("green", "ADJ"), ("bench", "NOUN"), ("near", "ADP"), ("a", "DET"),
                  ("red", "ADJ"), ("car", "NOUN")]  # fmt: skip

    assert cb.vqa_questions(Parsed) == ["a green bench?", "a red car?"]  # 'the left' and 'top' dropped
    assert cb.spatial_objects(Parsed) == ("bench", "car")
    assert cb.without_adjectives(Parsed) == "a bench near a car"
    many = type("P", (), {"noun_chunks": [f"thing {i}" for i in range(10)], "tokens": []})
    assert len(cb.vqa_questions(many)) == cb.NP_NUM == 8
    assert cb.spatial_objects(many) == (None, None)


def test_blip_vqa_scores():
    assert cb.vqa_answer_probability(0.3, 0.1) == 0.75
    assert cb.vqa_answer_probability(2 / 3, 1 / 3) == 0.6667  # rounded to 4 decimals
    assert cb.blip_vqa_image_score([0.75, 0.5]) == pytest.approx(0.375)
    assert cb.blip_vqa_image_score([]) == 1.0
    assert cb.vqa_question('A "Green" bench!') == "a green bench?"


def test_spatial_rule_matches_the_benchmark_geometry():
    left, right = (0, 0, 100, 100), (200, 10, 300, 110)  # centres 50,50 and 250,60
    assert cb.find_relation("a cat on the left of a dog") == "on the left of"
    assert cb.find_relation("a cat on top of a dog") == "on top of"
    assert cb.relation_probability("on the left of", left, right) == 1.0
    assert cb.relation_probability("on the right of", left, right) == 0.0
    assert cb.relation_probability("on top of", (0, 0, 10, 10), (0, 50, 10, 60)) == 0.0  # no branch
    # overlapping boxes: 0.1 / IoU
    a, b = (0, 0, 100, 100), (20, 0, 120, 100)  # IoU = 8000 / 12000
    assert cb.relation_probability("on the left of", a, b) == pytest.approx(0.1 / (8000 / 12000))
    # near: |dy| < 150 gives 1; far in both gives 150 / max
    assert cb.relation_probability("near", (0, 0, 10, 10), (400, 100, 410, 110)) == 1.0
    assert cb.relation_probability("near", (0, 0, 10, 10), (400, 300, 410, 310)) == pytest.approx(150 / 400)
    dets = {"person": (0.9, left), "dog": (0.8, right)}
    assert cb.spatial_image_score("girl", "dog", "on the left of", dets) == pytest.approx(0.25 * 1.7 + 0.5)
    assert cb.spatial_image_score("girl", "dog", "on the right of", dets) == 0.0  # 0.425 < 0.5 -> 0
    assert cb.spatial_image_score("girl", "cow", "on the left of", dets) == 0.0  # one object: 0.225 -> 0


def test_three_in_one():
    assert cb.three_in_one(0.6, 0.5, 0.3, "spatial") == pytest.approx(0.55)
    assert cb.three_in_one(0.6, 0.5, 0.3, "action") == pytest.approx(0.45)
    assert cb.three_in_one(0.6, 0.5, 0.3, "spatialaction") == pytest.approx(1.4 / 3)


def test_report_writes_the_compbench_table_beside_the_paper_rows():
    from eval.report import compbench_table, to_markdown
    from tests.test_pipeline_layout import _summary

    s = _summary()
    entry = {"status": "ok", "value": 0.5, "ci95": [0.4, 0.6]}
    s["candidates"]["senseflow_4"]["metrics"]["compbench_colour"] = entry
    s["paper"]["compbench"] = [{"backbone": "sdxl", "method": "DMD2-SDXL", "color": 0.5812, "shape": 0.4400}]
    df = compbench_table(s)
    assert list(df.source) == ["measured", "paper"]
    assert df.iloc[0]["color"] == "0.5 [0.4, 0.6]" and df.iloc[1]["color"] == "0.5812"
    assert "| paper | DMD2-SDXL |" in to_markdown(df, "T2I-CompBench")
