"""The distillation engine on the embedded world: iteration terms, loop, resume, export, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from senseflow import distill as terms
from senseflow.backbones.conversions import flow_euler_step
from senseflow.checkpoint import CHECKPOINT, ResumeError, load_checkpoint
from senseflow.config import ConfigError, load_profile
from senseflow.data import WorldData
from senseflow.distributed import resolve_parallel
from senseflow.errors import UserError
from senseflow.export import anchors_for_steps, export_student
from senseflow.loop_tools import TrainingDivergedError
from senseflow.losses import d_logistic_loss, g_logistic_loss, isg_loss
from senseflow.student import load_student
from senseflow.train import distill
from tests.conftest import ROOT
from tests.conftest import torchrun as _torchrun
from tests.distill_script import tiny_teacher

FAST = dict(global_batch=4, ttur=1, generator_lr=1e-3, fake_lr=1e-3, gan_lr=1e-3, log_every=1, progress=False)


@pytest.fixture()
def teacher(world_dir):
    """A random tiny embedded teacher on the smoke world's text encoder."""
    return tiny_teacher(str(world_dir))


def _data():
    return WorldData(resolution=16, digit_counts={1: 0.5, 2: 0.5})


# ----------------------------------------------------------------------------- iteration terms
def test_generator_inputs_first_anchor_is_noise_and_real_inputs_are_forward_noised(teacher):
    prompts, images = _data().batch(0, 0, 16)
    cond = teacher.text.encode(prompts)
    anchors = [1.0, 0.75, 0.5, 0.25]
    gen = torch.Generator().manual_seed(3)
    inp = terms.generator_inputs(teacher, images, cond, anchors, backward_simulation_prob=0.0, gen=gen)
    assert not inp.simulated.any()
    # replay the draws: k, simulation coin, eps
    g2 = torch.Generator().manual_seed(3)
    k = torch.randint(4, (16,), generator=g2)
    torch.rand(16, generator=g2)
    eps = torch.randn(images.shape, generator=g2)
    times = torch.tensor(anchors + [0.0])
    expected = (1 - times[k]).view(-1, 1, 1, 1) * images + times[k].view(-1, 1, 1, 1) * eps
    assert torch.equal(inp.k, k)
    torch.testing.assert_close(inp.x, expected)
    assert torch.equal(inp.t_next, times[k + 1])
    # with simulation always on, every sample past the first anchor is simulated, none at the first
    inp = terms.generator_inputs(teacher, images, cond, anchors, backward_simulation_prob=1.0,
                                 gen=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(inp.simulated, inp.k > 0)
    assert not torch.allclose(inp.x[inp.simulated], expected[inp.simulated])


def test_isg_term_reuses_the_anchor_prediction_and_matches_isg_loss(teacher):
    prompts, images = _data().batch(1, 0, 6)
    cond, uncond = teacher.text.encode(prompts), teacher.text.encode([""] * 6)
    gnet = teacher.trainable_copy()
    G = teacher.with_network(gnet)
    inp = terms.generator_inputs(G, images, cond, [1.0, 0.5], backward_simulation_prob=0.5,
                                 gen=torch.Generator().manual_seed(0))  # fmt: skip
    cfg = torch.full((6,), 3.0)
    pred = G.predict(inp.x, inp.t, cond)
    calls = []
    orig = G.predict
    G.predict = lambda *a: calls.append(1) or orig(*a)
    loss = terms.isg_term(teacher, G, inp, pred, cond, uncond, cfg=cfg, margin=0.05, distance="l2",
                          gen=torch.Generator().manual_seed(1))  # fmt: skip
    assert len(calls) == 1, "ISG must reuse the generator's anchor prediction (one extra no-grad call)"
    mid = terms.sample_isg_mid(inp.t, inp.t_next, 0.05, generator=torch.Generator().manual_seed(1))

    def teacher_fn(x, s):
        return teacher.guided_predict(x, s, cond, uncond, cfg)

    ref = isg_loss(inp.x, inp.t, inp.t_next, mid, teacher_fn, lambda x, s: orig(x, s, cond))
    torch.testing.assert_close(loss, ref)
    (g1,) = torch.autograd.grad(loss, pred)
    assert g1.abs().sum() > 0


def test_renoise_step_euler_is_the_flow_euler_step(teacher):
    x = torch.randn(3, 3, 16, 16)
    x0 = torch.randn(3, 3, 16, 16)
    t, t_next = torch.tensor([1.0, 0.75, 0.5]), torch.tensor([0.75, 0.5, 0.25])
    v = (x - x0) / t.view(-1, 1, 1, 1)
    out = terms.renoise_step(teacher, x, x0, t, t_next, sampler="euler")
    torch.testing.assert_close(out, flow_euler_step(x, v, t, t_next))
    noise = torch.randn_like(x)
    out = terms.renoise_step(teacher, x, x0, t, t_next, sampler="x0", noise=noise)
    torch.testing.assert_close(out, teacher.add_noise(x0, noise, t_next))


def test_logistic_gan_losses_by_hand():
    real, fake = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, -1.0]])
    sp = torch.nn.functional.softplus
    expected = (sp(torch.tensor(0.0)) + sp(torch.tensor(-2.0))) / 2 + (
        sp(torch.tensor(1.0)) + sp(torch.tensor(-1.0))
    ) / 2
    torch.testing.assert_close(d_logistic_loss(real, fake), expected)
    torch.testing.assert_close(g_logistic_loss(fake), (sp(torch.tensor(-1.0)) + sp(torch.tensor(1.0))) / 2)


# ----------------------------------------------------------------------------- the loop
def test_ida_pulls_the_fake_model_onto_the_generator(teacher, tmp_path):
    # lam = 0: after the generator step phi == theta; a zero fake LR keeps it there
    distill(tmp_path, teacher=teacher, data=_data(), iterations=1, gan=False, ida_lam=0.0,
            checkpoint_every=1, **{**FAST, "fake_lr": 1e-30})  # fmt: skip
    g, f = teacher.trainable_copy(), teacher.trainable_copy()
    load_checkpoint(tmp_path / CHECKPOINT, {"generator": (g, None), "fake": (f, None)}, None, None,
                     models_only=True)  # fmt: skip
    moved = any(
        not torch.equal(a, b) for a, b in zip(g.parameters(), teacher.network.parameters(), strict=True)
    )
    assert moved
    for (name, a), b in zip(g.named_parameters(), f.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_training_from_the_prompt_cache_never_runs_the_text_encoder(
    teacher, world_dir, tmp_path, monkeypatch
):
    from senseflow.backbones.flow import SD3FlowBackbone
    from senseflow.cache import CachedPromptEncoder, build_prompt_cache
    from senseflow.world.prompts import load_prompt_file

    records = load_prompt_file(world_dir / "prompts" / "train.jsonl")
    build_prompt_cache(
        teacher.text, [r.prompt for r in records], tmp_path / "cache", encoder_id="w", progress=False
    )
    data = WorldData(resolution=16, digit_counts={1: 0.5}, prompts=records)
    prompts, images = data.batch(0, 0, 8)
    assert set(prompts) <= {r.prompt for r in records} and images.shape == (8, 3, 16, 16)
    cached = SD3FlowBackbone(teacher.transformer, CachedPromptEncoder(tmp_path / "cache"))
    monkeypatch.setattr(type(teacher.text), "encode", lambda *a: pytest.fail("text encoder ran"))
    distill(tmp_path / "run", teacher=cached, data=data, iterations=2, gan=False, **FAST)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["iteration"] == 2


def test_dmd2_variant_trains_the_fake_feature_head(teacher, tmp_path):
    distill(tmp_path, teacher=teacher, data=_data(), iterations=2, gan_head="fake_features",
            gan_loss="logistic", ida=False, isg=False, checkpoint_every=2, **FAST)  # fmt: skip
    metrics = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())["train"]
    assert {"gan_g", "gan_d", "dmd", "fake"} <= set(metrics) and "isg" not in metrics


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(teacher, tmp_path):
    orig = teacher.guided_predict
    calls = {"n": 0}

    def poisoned(*a, **kw):
        calls["n"] += 1
        out = orig(*a, **kw)
        return out * float("nan") if calls["n"] > 4 else out

    teacher.guided_predict = poisoned
    with pytest.raises(TrainingDivergedError, match="non-finite.*Last good checkpoint.*iteration 2"):
        distill(tmp_path, teacher=teacher, data=_data(), iterations=10, gan=False, checkpoint_every=2, **FAST)
    assert json.loads((tmp_path / "state.json").read_text())["iteration"] == 2


def test_resume_refuses_a_different_configuration(teacher, tmp_path):
    distill(tmp_path, teacher=teacher, data=_data(), iterations=1, gan=False, checkpoint_every=1, **FAST)
    with pytest.raises(ResumeError, match="ida_lam: 0.97 -> 0.5"):
        distill(tmp_path, teacher=teacher, data=_data(), iterations=2, gan=False, ida_lam=0.5, **FAST)


def test_bad_loop_settings_are_clear_errors(teacher, tmp_path):
    with pytest.raises(UserError, match="strictly decreasing"):
        distill(tmp_path, teacher=teacher, data=_data(), anchors=(0.5, 1.0), **FAST)
    with pytest.raises(UserError, match="no discriminator"):
        distill(tmp_path, teacher=teacher, data=_data(), gan=True, gan_head="vfm", **FAST)
    with pytest.raises(UserError, match="torchrun"):
        resolve_parallel("fsdp", 1)


def test_profile_variants_and_anchor_errors(tmp_path):
    cfg = load_profile("smoke")
    assert {"no_ida", "no_isg", "no_gan", "vanilla_dmd", "dmd2", "senseflow_1step"} <= set(cfg.variants)
    v = cfg.variant("vanilla_dmd")
    assert not (v.ida.enabled or v.isg.enabled or v.gan.enabled)
    assert cfg.variant("senseflow_1step").anchors == [1.0]
    assert cfg.variant("dmd2").gan.head == "fake_features"
    with pytest.raises(ConfigError, match="no variant 'nope'"):
        cfg.variant("nope")
    text = (ROOT / "experiments" / "smoke.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("anchors: [1.0, 0.75, 0.5, 0.25]", "anchors: [1.0, 0.5, 0.75, 0.25]"))
    with pytest.raises(ConfigError, match="strictly decreasing"):
        load_profile(str(bad))
    bad.write_text(text.replace("margin: 0.05", "margin: 0.2"))
    with pytest.raises(ConfigError, match="narrower than 2 \\* isg.margin"):
        load_profile(str(bad))
    bad.write_text(text.replace("no_ida: [ida.enabled=false]", "no_ida: [ida.lamb=0.5]"))
    with pytest.raises(ConfigError, match="variant 'no_ida'.*ida.lamb"):
        load_profile(str(bad))


# ----------------------------------------------------------------------------- export
def test_export_and_load_student_uses_the_training_anchors(teacher, tmp_path):
    anchors = [1.0, 0.75, 0.5, 0.25]
    folder = export_student(tmp_path / "student", teacher.network.state_dict(), teacher,
                            {"anchors": anchors, "sampler": "euler", "resolution": 16})  # fmt: skip
    student = load_student(folder)
    prompts = ["at the top left a red 3 on a black background"] * 2
    images = student.generate(prompts, [1, 2])
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1
    assert student.last_times == anchors
    student.generate(prompts, [1, 2], steps=2)
    assert student.last_times == [1.0, 0.5]
    with pytest.raises(UserError, match="samples at \\[1, 2, 4\\] steps, not 3"):
        student.generate(prompts, [1, 2], steps=3)
    # same seed, same image, whatever the batch
    torch.testing.assert_close(student.generate(prompts[:1], [1]), images[:1])
    # the exported diffusers scheduler passes the anchors through unshifted (no double shift)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(sigmas=anchors)
    torch.testing.assert_close(sched.sigmas[:-1], torch.tensor(anchors))
    shifted = FlowMatchEulerDiscreteScheduler(shift=3.0)
    shifted.set_timesteps(sigmas=anchors)
    assert not torch.allclose(shifted.sigmas[:-1], torch.tensor(anchors)), "the trap the export avoids"
    assert anchors_for_steps(anchors, 1) == [1.0]


# ----------------------------------------------------------------------------- kill / torchrun
def _script(world_dir, out, iterations, *extra, launcher=None, wait=True):
    cmd = [
        *(launcher or [sys.executable, "-m"]),
        "tests.distill_script",
        str(world_dir),
        str(out),
        str(iterations),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _weights(path):
    return torch.load(path, weights_only=True)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.mark.slow
def test_sigkill_then_rerun_ends_with_the_uninterrupted_weights(world_dir, tmp_path):
    _script(world_dir, tmp_path / "straight", 6)
    proc = _script(world_dir, tmp_path / "killed", 6, "--sleep", "0.5", wait=False)
    state = tmp_path / "killed" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["iteration"] >= 2):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(state.read_text())["iteration"] < 6, "the run finished before it was killed"
    _script(world_dir, tmp_path / "killed", 6)
    _assert_same(
        _weights(tmp_path / "straight" / "final-rank0.pt"), _weights(tmp_path / "killed" / "final-rank0.pt")
    )


@pytest.mark.slow
def test_two_process_ddp_ranks_agree_and_checkpoints_move_between_world_sizes(world_dir, tmp_path):
    torchrun = _torchrun(29531)
    _script(world_dir, tmp_path / "ddp", 4, launcher=torchrun)
    r0, r1 = _weights(tmp_path / "ddp" / "final-rank0.pt"), _weights(tmp_path / "ddp" / "final-rank1.pt")
    _assert_same(r0, r1)
    # two ranks wrote it, one process resumes it (iteration 4 of 4: nothing left to train)
    _script(world_dir, tmp_path / "ddp", 4)
    _assert_same(r0, _weights(tmp_path / "ddp" / "final-rank0.pt"))
    # one process wrote it, two ranks resume and train on from it
    _script(world_dir, tmp_path / "single", 2)
    _script(world_dir, tmp_path / "single", 4, launcher=torchrun)
    s0, s1 = (
        _weights(tmp_path / "single" / "final-rank0.pt"),
        _weights(tmp_path / "single" / "final-rank1.pt"),
    )
    _assert_same(s0, s1)
    assert json.loads((tmp_path / "single" / "state.json").read_text())["iteration"] == 4


@pytest.mark.slow
def test_two_process_fsdp2_ranks_agree_and_resume_in_one_process(world_dir, tmp_path):
    torchrun = _torchrun(29532)
    _script(world_dir, tmp_path / "fsdp", 4, "--parallel", "fsdp", launcher=torchrun)
    r0, r1 = _weights(tmp_path / "fsdp" / "final-rank0.pt"), _weights(tmp_path / "fsdp" / "final-rank1.pt")
    _assert_same(r0, r1)
    _script(world_dir, tmp_path / "fsdp", 4)  # sharded checkpoint, one process: same weights
    _assert_same(r0, _weights(tmp_path / "fsdp" / "final-rank0.pt"))
    _script(world_dir, tmp_path / "fsdp", 6)  # and it trains on
    assert json.loads((tmp_path / "fsdp" / "state.json").read_text())["iteration"] == 6


def test_lora_run_trains_adapters_only_and_exports_merged_and_lora_weights(teacher, tmp_path):
    from senseflow.export import LORA_FILE

    base = {k: v.clone() for k, v in teacher.network.state_dict().items()}
    res = distill(tmp_path / "run", teacher=teacher, data=_data(), iterations=2, gan=False, lora_rank=4,
                  checkpoint_every=1, **FAST)  # fmt: skip
    assert res.lora_state and all("lora" in k for k in res.lora_state)
    assert res.generator_state.keys() == base.keys(), "merged weights have the base architecture"
    changed = [k for k in base if not torch.equal(base[k], res.generator_state[k])]
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out")) for k in changed)
    folder = export_student(tmp_path / "student", res.generator_state, teacher,
                            {"anchors": [1.0, 0.5], "sampler": "euler", "resolution": 16},
                            lora_state=res.lora_state)  # fmt: skip
    # the LoRA file on the base model reproduces the merged student
    net = teacher.trainable_copy()
    net.load_lora_adapter(str(folder / "lora" / LORA_FILE), prefix="transformer")
    net.fuse_lora()
    net.unload_lora()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, res.generator_state[k], atol=1e-5, rtol=1e-5, msg=k)
    import senseflow

    assert senseflow.load_student(folder).recipe["lora"] == f"lora/{LORA_FILE}"


def test_ema_bf16_and_gradient_checkpointing_options_run(teacher, tmp_path):
    import importlib.util

    raw = distill(tmp_path / "raw", teacher=teacher, data=_data(), iterations=2, gan=False, **FAST)
    ema = distill(
        tmp_path / "ema", teacher=teacher, data=_data(), iterations=2, gan=False, ema_decay=0.5, **FAST
    )
    # EMA weights are exported: they lag the raw generator of the same run
    assert any(not torch.equal(raw.generator_state[k], v) for k, v in ema.generator_state.items())
    low = distill(tmp_path / "bf16", teacher=teacher, data=_data(), iterations=2, gan=False, precision="bf16",
                  grad_checkpointing=True, **FAST)  # fmt: skip
    assert all(torch.isfinite(v).all() for v in low.generator_state.values())
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(UserError, match="bitsandbytes is not installed"):
            distill(tmp_path / "8bit", teacher=teacher, data=_data(), iterations=1, gan=False,
                    optimizer="adamw8bit", **FAST)  # fmt: skip
