"""`senseflow generate` on the embedded world: determinism, resume, refusals, students, two ranks."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from senseflow.cli import app
from senseflow.errors import UserError
from senseflow.generate import generate
from senseflow.samples import SampleFolderMismatch, generate_to_folder
from senseflow.world.prompts import PromptFileError, PromptRecord

from .conftest import ROOT
from .distill_script import tiny_teacher
from .test_distill import _torchrun

ANCHORS = [1.0, 0.75, 0.5, 0.25]
N = 6


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, world_dir):
    """An exported embedded teacher folder (transformer/ + recipe.json) with random weights."""
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    tiny_teacher(str(world_dir)).network.save_pretrained(folder / "transformer")
    recipe = {"steps": 2, "cfg": 2.0, "channels": 3, "resolution": 16, "shift": 1.0}
    (folder / "recipe.json").write_text(json.dumps(recipe))
    return folder


@pytest.fixture(scope="module")
def students(tmp_path_factory, world_dir):
    """The same tiny generator exported twice, with the x0 re-noise and the Euler sampler."""
    from senseflow.export import export_student

    teacher = tiny_teacher(str(world_dir))
    root = tmp_path_factory.mktemp("students")
    return {
        s: export_student(
            root / s,
            teacher.network.state_dict(),
            teacher,
            {"anchors": ANCHORS, "sampler": s, "resolution": 16},
        )
        for s in ("x0", "euler")
    }


@pytest.fixture(scope="module")
def prompts(world_dir):
    return str(world_dir / "prompts" / "test.jsonl")


def _gen(candidate, prompts, out, world_dir, teacher_dir, **kw):
    kw = {"steps": 2, "batch_size": 4, "limit": N, **kw}
    return generate(
        candidate,
        prompts,
        out,
        profile="smoke",
        world_dir=world_dir,
        teacher_dir=teacher_dir,
        device="cpu",
        progress=False,
        **kw,
    )


def _manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_teacher_folder_is_complete_and_byte_identical_on_rerun(tmp_path, world_dir, teacher_dir, prompts):
    a = _gen("teacher", prompts, tmp_path / "a", world_dir, teacher_dir)
    _gen("teacher", prompts, tmp_path / "b", world_dir, teacher_dir)
    assert a["images"] == N and a["nfe"] == 4  # 2 Euler steps, CFG 4.0 of the smoke profile: 2 passes each
    assert _files(tmp_path / "a") == _files(tmp_path / "b") and len(_files(tmp_path / "a")) == N
    rec = _manifest(tmp_path / "a")[0]
    assert set(rec) >= {
        "id",
        "prompt",
        "seed",
        "file",
        "sha256",
        "steps",
        "nfe",
        "seconds_per_image",
        "scene",
    }
    header = json.loads((tmp_path / "a" / "generation.json").read_text())["identity"]
    assert header["candidate"] == "teacher" and header["steps"] == 2 and header["seed"] == 0
    assert len(header["prompt_set_sha256"]) == 64
    speed = json.loads((tmp_path / "a" / "speed.json").read_text())
    assert speed["nfe"] == 4 and speed["batch_size"] == 4 and speed["resolution"] == 16
    assert speed["device"].startswith("cpu") and speed["seconds_per_image"] > 0
    assert speed["timed_images"] == 2 and speed["warmup_excluded"]  # the first batch of 4 is warm-up


def test_interrupted_run_resumes_without_rewriting(tmp_path, world_dir, teacher_dir, prompts):
    out = tmp_path / "o"

    def die(batch):
        raise KeyboardInterrupt  # killed right after its first batch was recorded

    with pytest.raises(KeyboardInterrupt):
        _gen("teacher", prompts, out, world_dir, teacher_dir, on_batch=die)
    first = _manifest(out)
    assert len(first) == 4 and not (out / "speed.json").exists()
    stamps = {r["file"]: (out / r["file"]).stat().st_mtime_ns for r in first}
    _gen("teacher", prompts, out, world_dir, teacher_dir)
    assert all((out / f).stat().st_mtime_ns == t for f, t in stamps.items()), "a finished image was rewritten"
    assert len(_manifest(out)) == N
    _gen("teacher", prompts, tmp_path / "straight", world_dir, teacher_dir)
    assert _files(out) == _files(tmp_path / "straight")


def test_folder_of_another_candidate_steps_or_seed_is_refused(
    tmp_path, world_dir, teacher_dir, prompts, students
):
    out = tmp_path / "o"
    _gen("teacher", prompts, out, world_dir, teacher_dir)
    before = _files(out)
    for kw, message in [
        ({"seed": 1}, "seed: 0 there, 1 now"),
        ({"steps": 3}, "steps: 2 there, 3 now"),
        ({"limit": 5}, "prompt_set_sha256"),
    ]:
        with pytest.raises(SampleFolderMismatch, match=message):
            _gen("teacher", prompts, out, world_dir, teacher_dir, **kw)
    with pytest.raises(SampleFolderMismatch, match="candidate: 'teacher' there"):
        _gen(str(students["x0"]), prompts, out, world_dir, teacher_dir, steps=None)
    assert _files(out) == before


def test_students_sample_at_their_anchors_with_their_sampler(
    tmp_path, world_dir, teacher_dir, prompts, students
):
    import senseflow.candidates as cands

    seen = {}
    real = cands.StudentCandidate.render

    def spy(self, p, s):
        out = real(self, p, s)
        seen[(self.sampler, self.steps)] = self.last_schedule["sigmas"]
        return out

    cands.StudentCandidate.render = spy
    try:
        for sampler, folder in students.items():
            for steps in (4, 2, 1):
                res = _gen(
                    str(folder), prompts, tmp_path / f"{sampler}{steps}", world_dir, teacher_dir, steps=steps
                )
                assert res["nfe"] == steps
        with pytest.raises(UserError, match="samples at \\[1, 2, 4\\] steps, not 3"):
            _gen(str(students["x0"]), prompts, tmp_path / "bad", world_dir, teacher_dir, steps=3)
    finally:
        cands.StudentCandidate.render = real
    for sampler in students:
        assert (
            seen[(sampler, 4)] == ANCHORS and seen[(sampler, 2)] == [1.0, 0.5] and seen[(sampler, 1)] == [1.0]
        )
    rec = _manifest(tmp_path / "x04")[0]
    assert rec["sampler"] == "x0" and rec["nfe"] == 4 and "scene" in rec
    assert _files(tmp_path / "x04") != _files(tmp_path / "euler4")  # x0 re-noises with fresh noise
    assert _files(tmp_path / "x01") == _files(tmp_path / "euler1")  # one step: no re-noise, same image


def test_duplicate_prompt_ids_are_refused(tmp_path, world_dir, teacher_dir):
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(PromptFileError, match="duplicate prompt id 'a'"):
        _gen("teacher", str(dup), tmp_path / "o", world_dir, teacher_dir)
    records = [PromptRecord("a", "at the top left a red 3 on a black background")] * 2
    with pytest.raises(UserError, match="duplicate prompt id 'a'"):
        generate_to_folder(object(), records, tmp_path / "o2")


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-c", "from senseflow.cli import main; main()", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_generate_unknown_candidate_and_baselines_commands(tmp_path, world_dir, prompts):
    r = _cli(
        "generate",
        "--candidate",
        "nope",
        "--prompts",
        prompts,
        "--out",
        str(tmp_path / "o"),
        "--profile",
        "smoke",
        "--world",
        str(world_dir),
    )
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "unknown candidate 'nope'; known: teacher, sdxl_teacher_40" in line[0]
    r = _cli(
        "generate",
        "--candidate",
        "teacher",
        "--prompts",
        prompts,
        "--out",
        str(tmp_path / "o"),
        "--profile",
        "smoke",
        "--world",
        str(world_dir),
        "--teacher",
        str(tmp_path / "none"),
    )
    assert r.returncode == 2 and "recipe.json is missing" in r.stderr
    runner = CliRunner()
    res = runner.invoke(app, ["baselines", "list"])
    assert res.exit_code == 0 and "hyper_sdxl_unified_1" in res.output and "TCDScheduler" in res.output
    res = runner.invoke(app, ["baselines", "show", "dmd2_sdxl_4"])
    assert res.exit_code == 0 and "timesteps:\n- 999\n- 749\n- 499\n- 249" in res.output
    assert "CC BY-NC-SA 4.0" in res.output


@pytest.mark.slow
def test_two_ranks_split_the_prompts_and_merge_one_manifest(tmp_path, world_dir, teacher_dir, prompts):
    args = [
        "generate",
        "--candidate",
        "teacher",
        "--teacher",
        str(teacher_dir),
        "--steps",
        "2",
        "--prompts",
        prompts,
        "--limit",
        str(N),
        "--batch-size",
        "2",
        "--profile",
        "smoke",
        "--world",
        str(world_dir),
        "--device",
        "cpu",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [*_torchrun(), "senseflow.cli", *args, "--out", str(tmp_path / "two")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    one = _cli(*args, "--out", str(tmp_path / "one"), env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    assert _files(tmp_path / "two") == _files(tmp_path / "one") and len(_files(tmp_path / "two")) == N
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in recs]  # noqa: E731
    assert strip(_manifest(tmp_path / "two")) == strip(_manifest(tmp_path / "one"))
    assert not list((tmp_path / "two").glob("manifest.rank*")) and not list(
        (tmp_path / "two").glob(".speed*")
    )
    assert json.loads((tmp_path / "two" / "speed.json").read_text())["ranks"] == 2
