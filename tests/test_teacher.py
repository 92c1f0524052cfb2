import json

import pytest
import torch

from senseflow.backbones.base import Backbone
from senseflow.checkpoint import ResumeError
from senseflow.samplers import NFECounter, euler_flow, prompt_noise, prompt_seed, sample_prompts
from senseflow.schedules import euler_sigmas
from senseflow.teacher import load_teacher, teacher_sources, train_teacher

real_sources = teacher_sources

TINY = dict(
    resolution=16,
    patch_size=4,
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=8,
    batch_size=4,
    warmup_steps=1,
    log_every=2,
    sample_steps=2,
    progress=False,
)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "teacher" / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_killed_run_resumes_to_the_same_weights(tmp_path, world_dir, monkeypatch):
    import senseflow.teacher as teacher

    train_teacher(tmp_path / "straight", world_dir=world_dir, steps=6, checkpoint_every=3, **TINY)

    real_save = teacher.atomic_torch_save

    def save_then_die(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt  # the process is killed right after its first checkpoint

    monkeypatch.setattr(teacher, "atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(tmp_path / "killed", world_dir=world_dir, steps=6, checkpoint_every=3, **TINY)
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["step"] == 3
    assert not (tmp_path / "killed" / "teacher").exists()
    monkeypatch.setattr(teacher, "atomic_torch_save", real_save)
    # rerunning the same command continues from step 3 with the same data, noise and optimiser state
    train_teacher(tmp_path / "killed", world_dir=world_dir, steps=6, checkpoint_every=3, **TINY)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_configuration_is_refused(tmp_path, world_dir):
    run = tmp_path / "run"
    train_teacher(run, world_dir=world_dir, steps=2, checkpoint_every=1, **TINY)
    with pytest.raises(ResumeError, match=r"steps: 2 -> 3.*delete it"):
        train_teacher(run, world_dir=world_dir, steps=3, checkpoint_every=1, **TINY)
    # only bookkeeping knobs changed: resumes (nothing left to do) and re-exports
    train_teacher(run, world_dir=world_dir, steps=2, checkpoint_every=2, **{**TINY, "log_every": 1})


def test_restart_stale_reexports_a_finished_run_and_retrains_a_foreign_one(tmp_path, world_dir, monkeypatch):
    import shutil

    import senseflow.teacher as teacher

    run = tmp_path / "run"
    train_teacher(run, world_dir=world_dir, steps=2, checkpoint_every=1, **TINY)
    first = _weights(run)
    steps_run = []
    real_save = teacher.atomic_torch_save
    monkeypatch.setattr(
        teacher, "atomic_torch_save", lambda o, p: (steps_run.append(o["step"]), real_save(o, p))
    )
    # the export deleted by hand (dvc then reruns the stage): the finished run is exported again
    shutil.rmtree(run / "teacher")
    train_teacher(run, world_dir=world_dir, steps=2, checkpoint_every=1, restart_stale=True, **TINY)
    assert steps_run == []
    b = _weights(run)
    assert first.keys() == b.keys() and all(torch.equal(first[k], b[k]) for k in first)
    # another sampling recipe (CFG scale) only re-exports too, with the new recipe
    train_teacher(run, world_dir=world_dir, steps=2, checkpoint_every=1, restart_stale=True,
                  **{**TINY, "sample_cfg": 6.5})  # fmt: skip
    assert steps_run == []
    assert json.loads((run / "teacher" / "recipe.json").read_text())["cfg"] == 6.5
    # other settings: retrained under the new ones instead of refused
    train_teacher(run, world_dir=world_dir, steps=3, checkpoint_every=1, restart_stale=True, **TINY)
    assert steps_run == [1, 2, 3]
    # other code (or world files) under the same settings: retrained as well
    steps_run.clear()
    extra = tmp_path / "code.py"
    extra.write_text("x = 1\n")
    monkeypatch.setattr(teacher, "teacher_sources", lambda w: [*real_sources(w), extra])
    train_teacher(run, world_dir=world_dir, steps=3, checkpoint_every=1, restart_stale=True, **TINY)
    assert steps_run == [1, 2, 3]  # the digest now covers code.py: the old checkpoint is foreign
    steps_run.clear()
    train_teacher(run, world_dir=world_dir, steps=3, checkpoint_every=1, restart_stale=True, **TINY)
    assert steps_run == []  # unchanged since: re-export only
    extra.write_text("x = 2\n")
    train_teacher(run, world_dir=world_dir, steps=3, checkpoint_every=1, restart_stale=True, **TINY)
    assert steps_run == [1, 2, 3]


def test_teacher_sources_are_the_teacher_stage_deps():
    """The fingerprint's code list is what dvc.yaml's teacher stage tracks, less the CLI dispatch."""
    import yaml

    from senseflow.code_deps import ROOT, as_deps, closure
    from senseflow.dvc_plan import GLUE
    from senseflow.teacher import teacher_sources

    def files(paths) -> set[str]:  # a dep may name a whole package folder
        out = set()
        for p in paths:
            p = ROOT / p
            out |= (
                {str(f.relative_to(ROOT)) for f in p.rglob("*.py")}
                if p.is_dir()
                else {str(p.relative_to(ROOT))}
            )
        return out

    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["teacher"]["deps"]
    code = files(as_deps([p for p in teacher_sources("build/world") if p.is_relative_to(ROOT)]))
    glue_only = files(as_deps(closure(["senseflow.teacher"], GLUE))) - code
    tracked = files(d for d in deps if d.startswith(("senseflow", "eval")))
    assert code <= tracked  # dvc reruns the stage whenever a fingerprinted file changes
    assert tracked - code <= glue_only  # and the fingerprint misses nothing but the dispatch files


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, world_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="delete it to restart"):
        train_teacher(out, world_dir=world_dir, steps=2, checkpoint_every=1, **TINY)


def test_export_loads_as_a_backbone_and_samples(tmp_path, world_dir):
    folder = train_teacher(tmp_path, world_dir=world_dir, steps=2, checkpoint_every=2, **TINY)
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["prediction"] == "flow" and recipe["steps"] == 2
    backbone, _ = load_teacher(folder, world_dir)
    assert isinstance(backbone, Backbone)
    prompts = ["at the top left a red 3 on a black background"] * 2
    cond = backbone.text.encode(prompts)
    x = torch.randn(2, 3, 16, 16)
    s = torch.full((2,), 0.5)
    # CFG at scale 1 is the conditional velocity; batched CFG equals two separate calls
    torch.testing.assert_close(
        backbone.guided_predict(x, s, cond, backbone.text.encode(["", ""]), 1.0),
        backbone.predict(x, s, cond),
    )
    unc = backbone.text.encode(["", ""])
    v_c, v_u = backbone.predict(x, s, cond), backbone.predict(x, s, unc)
    torch.testing.assert_close(
        backbone.guided_predict(x, s, cond, unc, 3.0), v_u + 3 * (v_c - v_u), atol=1e-5, rtol=1e-4
    )
    # NFE: 2 per step with CFG, 1 without
    images, nfe = sample_prompts(backbone, prompts, [1, 2], steps=3, cfg=4.0, shape=(3, 16, 16))
    assert images.shape == (2, 3, 16, 16) and nfe == 6
    _, nfe = sample_prompts(backbone, prompts, [1, 2], steps=3, cfg=1.0, shape=(3, 16, 16))
    assert nfe == 3


def test_sampling_is_batch_size_independent(tmp_path, world_dir):
    folder = train_teacher(tmp_path, world_dir=world_dir, steps=1, checkpoint_every=1, **TINY)
    backbone, _ = load_teacher(folder, world_dir)
    prompts = [f"at the top left a red {d} on a black background" for d in range(5)]
    seeds = [prompt_seed(0, f"p{i}") for i in range(5)]
    a, _ = sample_prompts(backbone, prompts, seeds, steps=2, cfg=2.0, shape=(3, 16, 16), batch_size=5)
    b, _ = sample_prompts(backbone, prompts, seeds, steps=2, cfg=2.0, shape=(3, 16, 16), batch_size=2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_euler_flow_integrates_a_known_field():
    # v = eps - x0 with a fixed x0 target: the ODE ends exactly at x0 whatever the steps
    x0 = torch.randn(3, 2)
    noise = torch.randn(3, 2)
    counter = NFECounter(lambda x, s: (x - x0) / s)
    out = euler_flow(counter, noise, euler_sigmas(5))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert counter.nfe == 5


def test_prompt_seeds_are_stable():
    assert prompt_seed(0, "test-00001") == prompt_seed(0, "test-00001")
    assert prompt_seed(0, "test-00001") != prompt_seed(1, "test-00001")
    torch.testing.assert_close(prompt_noise([7], (2, 2)), prompt_noise([7], (2, 2)))
