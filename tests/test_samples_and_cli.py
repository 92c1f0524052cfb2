import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from senseflow.cli import app
from senseflow.samples import read_manifest, sample_to_folder
from senseflow.teacher import load_teacher, train_teacher
from senseflow.world.prompts import PromptFileError, load_prompt_file

from .conftest import ROOT
from .test_teacher import TINY

runner = CliRunner()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, world_dir):
    out = tmp_path_factory.mktemp("teacher")
    return train_teacher(out, world_dir=world_dir, steps=2, checkpoint_every=2, **TINY)


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("at the top left a red 3 on a black background\nsecond prompt\n")
    recs = load_prompt_file(tmp_path / "p.txt")
    assert [r.id for r in recs] == ["line-00001", "line-00002"]
    (tmp_path / "empty.txt").write_text("first\n\nthird\n")
    with pytest.raises(PromptFileError, match=r"empty\.txt:2: empty line"):
        load_prompt_file(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(PromptFileError, match="duplicate prompt id 'a'"):
        load_prompt_file(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"id": "a"\n')
    with pytest.raises(PromptFileError, match=r"broken\.jsonl:1: not valid JSON"):
        load_prompt_file(tmp_path / "broken.jsonl")


def test_sample_folder_resumes_without_rewriting(tmp_path, world_dir, teacher_dir):
    backbone, _ = load_teacher(teacher_dir, world_dir)
    records = load_prompt_file(world_dir / "prompts" / "test.jsonl")[:6]
    out = tmp_path / "samples"
    kw = dict(shape=(3, 16, 16), steps=2, cfg=2.0, batch_size=4, progress=False)
    first = sample_to_folder(backbone, records[:4], out, **kw)  # an "interrupted" run: 4 of 6 done
    mtimes = {r["file"]: (out / r["file"]).stat().st_mtime_ns for r in first}
    full = sample_to_folder(backbone, records, out, **kw)
    assert [r["id"] for r in full] == [r.id for r in records]
    assert all((out / f).stat().st_mtime_ns == t for f, t in mtimes.items())  # never rewritten
    assert len(read_manifest(out)) == 6 and full[0]["nfe"] == 4 and "scene" in full[0]
    # same seeds, same images: a fresh folder reproduces the bytes
    again = sample_to_folder(backbone, records, tmp_path / "again", **kw)
    assert [r["sha256"] for r in again] == [r["sha256"] for r in full]


def _run(*args):
    result = runner.invoke(app, list(args))
    return result


def test_cli_config_show_and_list(monkeypatch):
    monkeypatch.chdir(ROOT)
    r = _run("config", "show", "--profile", "smoke", "--set", "teacher.train.lr=0.002")
    assert r.exit_code == 0 and "name: smoke" in r.output and "lr: 0.002" in r.output
    r = _run("config", "list")
    assert r.exit_code == 0 and "flux_dev" in r.output and "embedded" in r.output


def _cli(*args, cwd=ROOT):
    """Run the real console entry point (errors become one line on stderr, exit code 2)."""
    return subprocess.run(
        [sys.executable, "-c", "from senseflow.cli import main; main()", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["config", "show", "--profile", "nope"], "unknown profile 'nope'"),
        (
            ["config", "show", "--profile", "smoke", "--set", "teacher.train.steps=many"],
            "teacher.train.steps: expected an integer",
        ),
    ],
)
def test_cli_bad_profiles_are_one_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_cli_bad_inputs(tmp_path, world_dir, teacher_dir):
    prompts = tmp_path / "p.txt"
    prompts.write_text("at the top left a red 3 on a black background\n\n")
    # `senseflow sample` is gone: `senseflow generate --candidate teacher` is the one way to sample
    r = _cli("generate", "--candidate", "teacher", "--teacher", str(teacher_dir), "--prompts", str(prompts),
             "--world", str(world_dir), "--out", str(tmp_path / "o"))  # fmt: skip
    assert r.returncode == 2 and "p.txt:2: empty line" in r.stderr
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    target = locked / "sub"
    r = _cli("world", "sample", "--n", "2", "--out", str(target))
    if r.returncode == 0:  # running as root: permissions do not bind, use a path under a file instead
        (tmp_path / "file").write_text("x")
        r = _cli("world", "sample", "--n", "2", "--out", str(tmp_path / "file" / "sub"))
    assert r.returncode == 2 and "cannot write to output directory" in r.stderr
    ckpt_dir = tmp_path / "teach"
    ckpt_dir.mkdir()
    (ckpt_dir / "checkpoint.pt").write_bytes(b"\x00truncated")
    r = _cli(
        "train-teacher", "--profile", "smoke", "--world", str(world_dir), "--out", str(ckpt_dir), "--quiet"
    )
    assert r.returncode == 2 and "checkpoint.pt is corrupt" in r.stderr and "delete it" in r.stderr
    good = tmp_path / "good.txt"
    good.write_text("at the top left a red 3 on a black background\n")
    r = _cli("generate", "--candidate", str(tmp_path), "--prompts", str(good), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "recipe.json is missing" in r.stderr


def test_cli_world_sample_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert (
            _cli("world", "sample", "--seed", "3", "--n", "4", "--out", str(tmp_path / name)).returncode == 0
        )
    a = sorted((tmp_path / "a").iterdir())
    assert [p.read_bytes() for p in a] == [(tmp_path / "b" / p.name).read_bytes() for p in a]
    caps = [json.loads(x) for x in (tmp_path / "a" / "captions.jsonl").read_text().splitlines()]
    assert len(caps) == 4
