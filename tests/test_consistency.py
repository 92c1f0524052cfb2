"""Consistency baselines: LCM / Hyper-SD maths, the w-conditioned student, the loop, export, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from senseflow.checkpoint import ResumeError
from senseflow.config import ConfigError, load_profile
from senseflow.consistency import consistency_distill
from senseflow.consistency_run import consistency_embedded
from senseflow.data import WorldData
from senseflow.errors import UserError
from senseflow.guidance_embedding import GuidanceConditioned
from senseflow.losses import (
    boundary_coefficients,
    consistency_distance,
    consistency_fn,
    lcm_loss,
    sample_segment_pairs,
    sample_skip_pairs,
    segment_edges,
    stage_segments,
    teacher_grid,
    teacher_step,
    tscd_loss,
)
from senseflow.student import load_student
from tests.conftest import ROOT
from tests.distill_script import tiny_teacher


# ----------------------------------------------------------------------------- toy flows
def _point_mass_velocity(c: torch.Tensor):
    """Exact flow velocity when every sample is the point ``c``: ``v = (x - c) / t``.

    Its ODE is affine in x with solution ``x_s = c + (s / t)(x_t - c)``, so one Euler step is
    exact and the exact consistency function is ``f(x, t) = c`` for every (x, t).
    """

    def v(x, t):
        return (x - c) / t.reshape(-1, 1, 1, 1)

    return v


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_teacher_euler_step_is_the_analytic_solution_of_a_linear_ode():
    c = torch.randn(1, 3, 4, 4, generator=_gen(1))
    x = torch.randn(5, 3, 4, 4, generator=_gen(2))
    t, s = torch.full((5,), 0.8), torch.tensor([0.6, 0.5, 0.3, 0.1, 0.0])
    out = teacher_step(_point_mass_velocity(c), x, t, s)
    torch.testing.assert_close(out, c + (s / t).reshape(-1, 1, 1, 1) * (x - c))


def test_lcm_target_equals_the_analytic_x0_and_the_exact_consistency_function_has_zero_loss():
    c = torch.randn(1, 3, 4, 4, generator=_gen(1))
    x0, eps = c.expand(6, -1, -1, -1), torch.randn(6, 3, 4, 4, generator=_gen(3))
    t_hi, t_lo = sample_skip_pairs(32, 2, 6, generator=_gen(4))
    v = _point_mass_velocity(c)
    x_hi = (1 - t_hi).reshape(-1, 1, 1, 1) * x0 + t_hi.reshape(-1, 1, 1, 1) * eps
    x_lo = teacher_step(v, x_hi, t_hi, t_lo)
    torch.testing.assert_close(consistency_fn(x_lo, v(x_lo, t_lo), t_lo), c.expand_as(x_lo))
    assert float(lcm_loss(v, v, v, x0, eps, t_hi, t_lo)) < 1e-10
    # a wrong target (a network that is off by a constant) gives exactly that squared error
    off = lambda x, t: v(x, t) - 0.1 / t.reshape(-1, 1, 1, 1)  # noqa: E731  f_off = c + 0.1
    assert math.isclose(float(lcm_loss(v, off, v, x0, eps, t_hi, t_lo)), 0.01, rel_tol=1e-4)
    t_b = torch.zeros(6)
    assert float(tscd_loss(v, v, v, x0, eps, t_hi, t_lo, t_b)) < 1e-10


@pytest.mark.parametrize("boundary", ["flow", "lcm"])
def test_consistency_function_boundary_condition(boundary):
    x, v = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    zero = torch.zeros(3)
    torch.testing.assert_close(consistency_fn(x, v, zero, boundary), x)
    c_skip, c_out = boundary_coefficients(torch.tensor([0.0, 0.5, 1.0]), boundary)
    assert c_skip[0] == 1 and c_out[0] == 0
    assert (c_skip[1:] < 1e-6).all() and (c_out[1:] > 1 - 1e-6).all()  # away from 0: the x0 prediction
    t = torch.full((3,), 0.5)
    torch.testing.assert_close(consistency_fn(x, v, t, boundary), x - 0.5 * v, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="unknown consistency boundary"):
        boundary_coefficients(t, "edm")


def test_distances_by_hand():
    a, b = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    b[1] = 0
    assert float(consistency_distance(a, b, "l2")) == pytest.approx(0.5)
    # per-sample norms: sample 0 has ||d||^2 = 4, sample 1 has 0
    assert float(consistency_distance(a, b, "pseudo_huber", huber_c=1.0)) == pytest.approx(
        (math.sqrt(5) - 1) / 2
    )
    c = 0.00054 * 2  # default c = 0.00054 sqrt(d), d = 4
    assert float(consistency_distance(a, b, "pseudo_huber")) == pytest.approx((math.sqrt(4 + c * c) - c) / 2)
    with pytest.raises(ValueError, match="unknown consistency distance"):
        consistency_distance(a, b, "l1")


def test_time_pairs_lie_on_the_grid_and_inside_their_segment():
    grid = teacher_grid(32)
    assert grid[0] == 0 and grid[-1] == 1 and (grid.diff() > 0).all()
    hi, lo = sample_skip_pairs(32, 4, 500, generator=_gen())
    idx_hi, idx_lo = (hi * 32).round(), (lo * 32).round()
    assert (idx_hi - idx_lo == 4).all() and lo.min() >= 0 and hi.max() <= 1
    for segs in (8, 4, 2, 1):
        hi, lo, edge = sample_segment_pairs(32, 3, segs, 500, generator=_gen(segs))
        assert (edge <= lo).all() and (lo < hi).all()
        # the edge is the segment's lower edge: hi in (edge, edge + 1/S]
        torch.testing.assert_close(edge, torch.ceil(hi * segs - 1e-4).sub(1).clamp(min=0) / segs)
        assert ((hi - lo) <= 3 / 32 + 1e-6).all()
    assert segment_edges(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="must divide"):
        sample_segment_pairs(32, 1, 3, 4)
    assert [stage_segments([8, 4, 2, 1], i, 8) for i in range(8)] == [8, 8, 4, 4, 2, 2, 1, 1]


class _Net(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * (1 + t.reshape(-1, 1, 1, 1))


def test_tscd_with_one_segment_is_lcm_and_gradients_reach_only_the_online_student():
    student, target, teacher = _Net(0), _Net(1), _Net(2)
    x0, eps = torch.randn(4, 3, 4, 4, generator=_gen(5)), torch.randn(4, 3, 4, 4, generator=_gen(6))
    hi, lo, edge = sample_segment_pairs(32, 2, 1, 4, generator=_gen(7))
    assert (edge == 0).all()
    l_tscd = tscd_loss(student, target, teacher, x0, eps, hi, lo, edge)
    l_lcm = lcm_loss(student, target, teacher, x0, eps, hi, lo, boundary="flow")
    torch.testing.assert_close(l_tscd, l_lcm)
    hi, lo, edge = sample_segment_pairs(32, 2, 4, 4, generator=_gen(7))
    for loss in (l_lcm, tscd_loss(student, target, teacher, x0, eps, hi, lo, edge, distance="pseudo_huber")):
        for net in (student, target, teacher):
            net.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        assert all(p.grad is None for net in (target, teacher) for p in net.parameters())
    with pytest.raises(ValueError, match="t_edge <= t_lo < t_hi"):
        tscd_loss(student, target, teacher, x0, eps, lo, hi, edge)


# ----------------------------------------------------------------------------- guidance-conditioned student
@pytest.fixture()
def teacher(world_dir):
    return tiny_teacher(str(world_dir))


def _call(backbone, net, w, x, t, cond):
    with net.at(w):
        return backbone.with_network(net).predict(x, t, cond)


def test_guidance_embedding_starts_as_the_teacher_and_bakes_into_a_plain_network(teacher):
    net = GuidanceConditioned(teacher.trainable_copy(), embed=True, dim=32)
    x, t = torch.randn(2, 3, 16, 16, generator=_gen()), torch.tensor([0.9, 0.4])
    cond = teacher.text.encode(["a red 3", "a blue 7"])
    ref = teacher.predict(x, t, cond)
    torch.testing.assert_close(_call(teacher, net, torch.tensor([2.0, 6.0]), x, t, cond), ref)
    with torch.no_grad():  # a trained embedding: w now changes the output
        for p in net.w_embedding.parameters():
            p.normal_(0, 0.5, generator=_gen(3))
    at2, at6 = _call(teacher, net, 2.0, x, t, cond), _call(teacher, net, 6.0, x, t, cond)
    assert (at2 - at6).abs().max() > 1e-3
    baked = net.bake(6.0)
    assert (
        type(baked) is type(teacher.network)
        and baked.state_dict().keys() == teacher.network.state_dict().keys()
    )
    torch.testing.assert_close(teacher.with_network(baked).predict(x, t, cond), at6, atol=1e-5, rtol=1e-5)
    copy = net.fresh_copy()  # the EMA target: same function, its own hook
    torch.testing.assert_close(_call(teacher, copy, 2.0, x, t, cond), at2)
    with pytest.raises(RuntimeError, match="outside"):
        teacher.with_network(net).predict(x, t, cond)


# ----------------------------------------------------------------------------- loop, export, resume
def _teacher_folder(teacher, path):
    teacher.network.save_pretrained(path / "transformer")
    (path / "recipe.json").write_text(json.dumps({"shift": 1.0}))
    return path


SMALL = ["baselines.lcm.global_batch=4", "baselines.hyper_sd.global_batch=4",
         "baselines.lcm.iterations=4", "baselines.hyper_sd.iterations=4"]  # fmt: skip


@pytest.mark.parametrize("variant", ["lcm", "hyper_sd"])
def test_smoke_baseline_trains_exports_a_loadable_student_and_logs(variant, teacher, world_dir, tmp_path):
    cfg = load_profile(str(ROOT / "experiments" / "smoke.yaml"), SMALL)
    folder = _teacher_folder(teacher, tmp_path / "teacher")
    summary = consistency_embedded(cfg, tmp_path / "run", variant=variant, world_dir=world_dir,
                                   teacher_dir=folder, progress=False)  # fmt: skip
    assert summary["iterations"] == 4 and summary["seconds_per_iteration"] > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["variant"] == variant
    metrics = json.loads((tmp_path / "run" / "dvclive" / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["train"]["loss"] > 0
    student = load_student(tmp_path / "run" / "student")
    recipe = student.recipe
    assert recipe["method"] == variant and recipe["sampler"] == ("x0" if variant == "lcm" else "euler")
    assert recipe["distilled_guidance"] == 4.0
    prompts = ["at the top left a red 3 on a black background"] * 2
    for steps, times in ((4, [1.0, 0.75, 0.5, 0.25]), (2, [1.0, 0.5]), (1, [1.0])):
        images = student.generate(prompts, [1, 2], steps=steps)
        assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
        assert student.last_times == times
    # the training moved the student away from the teacher
    trained = student.backbone.network.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in teacher.network.state_dict().items())


class _Interrupted(Exception):
    pass


class _StopAt(WorldData):
    """World data that raises at one iteration: a run interrupted after its last checkpoint."""

    def __init__(self, stop: int, **kw):
        super().__init__(**kw)
        self.stop = stop

    def batch(self, iteration, rank, batch_size):
        """The world's batch, or the interruption."""
        if iteration == self.stop:
            raise _Interrupted
        return super().batch(iteration, rank, batch_size)


@pytest.mark.parametrize("method", ["lcm", "hyper_sd"])
def test_interrupted_run_resumes_bit_identical(method, teacher, tmp_path):
    kw = dict(method=method, iterations=6, global_batch=4, lr=1e-3, teacher_steps=8, skip=2,
              guidance=(2.0, 6.0), segments=(4, 2), checkpoint_every=2, log_every=1,
              progress=False)  # fmt: skip
    data = dict(resolution=16, digit_counts={1: 0.5, 2: 0.5})
    straight = consistency_distill(tmp_path / "a", teacher=teacher, data=WorldData(**data), **kw)
    with pytest.raises(_Interrupted):
        consistency_distill(tmp_path / "b", teacher=teacher, data=_StopAt(3, **data), **kw)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["iteration"] == 2
    resumed = consistency_distill(tmp_path / "b", teacher=teacher, data=WorldData(**data), **kw)
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    moved = {k for k, v in teacher.network.state_dict().items() if not torch.equal(a[f"transformer.{k}"], v)}
    assert moved, "the student did not train"
    if method == "lcm":
        assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if k.startswith("w_embedding.2"))
    with pytest.raises(ResumeError, match="different configuration"):
        consistency_distill(tmp_path / "b", teacher=teacher, data=WorldData(**data), **{**kw, "lr": 5e-4})


def test_bad_baseline_settings_are_clear_errors(teacher, tmp_path, world_dir):
    with pytest.raises(ConfigError, match="segments .*divide teacher_steps"):
        load_profile(str(ROOT / "experiments" / "smoke.yaml"), ["baselines.hyper_sd.segments=[8, 3]"])
    with pytest.raises(ConfigError, match="export_guidance 9.0 lies outside"):
        load_profile(str(ROOT / "experiments" / "smoke.yaml"), ["baselines.lcm.export_guidance=9.0"])
    with pytest.raises(ConfigError, match="strictly decreasing"):
        load_profile(str(ROOT / "experiments" / "smoke.yaml"), ["baselines.hyper_sd.segments=[2, 4]"])
    with pytest.raises(UserError, match="unknown consistency method"):
        consistency_distill(
            tmp_path / "x",
            teacher=teacher,
            data=WorldData(resolution=16, digit_counts={1: 1.0}),
            method="ctm",
        )
    cfg = load_profile(str(ROOT / "experiments" / "smoke.yaml"), ["baselines.lcm=null"])
    with pytest.raises(UserError, match="no baselines.lcm section"):
        consistency_embedded(cfg, tmp_path / "y", variant="lcm", world_dir=world_dir, teacher_dir=tmp_path)


def test_cli_distill_variant_dispatches_to_the_baseline_loop(teacher, world_dir, tmp_path):
    from typer.testing import CliRunner

    from senseflow.cli import app

    folder = _teacher_folder(teacher, tmp_path / "teacher")
    args = ["distill", "--profile", "smoke", "--variant", "hyper_sd", "--out", str(tmp_path / "hsd"),
            "--world", str(world_dir), "--teacher", str(folder), "-q"]  # fmt: skip
    for s in SMALL:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "hsd" / "summary.json").read_text())["variant"] == "hyper_sd"
    assert load_student(tmp_path / "hsd" / "student").recipe["segments"] == [8, 4, 2, 1]
    res = CliRunner().invoke(app, [*args, "--init-from", str(tmp_path)])
    assert isinstance(res.exception, UserError) and "not supported by the hyper_sd" in str(res.exception)


def test_ema_target_moves_towards_the_student_after_one_step(teacher, tmp_path):
    """The target theta- is frozen (requires_grad False) yet must follow the student (issue 13.4).

    After one step it must equal ``mu theta-_0 + (1 - mu) theta_1`` with ``theta-_0`` the
    initial student; the old update (IDA's, which skips parameters without grad) left it at
    ``theta-_0``.
    """
    mu = 0.5
    kw = dict(method="lcm", iterations=1, global_batch=4, lr=1e-2, teacher_steps=8, skip=2,
              target_ema=mu, checkpoint_every=1, log_every=1, progress=False)  # fmt: skip
    start = GuidanceConditioned(teacher.trainable_copy(), embed=True, dim=256, seed=0).state_dict()
    result = consistency_distill(tmp_path / "a", teacher=teacher,
                                 data=WorldData(resolution=16, digit_counts={1: 1.0}), **kw)  # fmt: skip
    online, target = result.student.state_dict(), result.target.state_dict()
    names = dict(result.target.named_parameters())
    moved = [k for k in names if not torch.equal(target[k], start[k])]
    assert len(moved) > len(names) // 2, f"only {len(moved)} of {len(names)} target parameters moved"
    for k in names:
        torch.testing.assert_close(target[k], mu * start[k] + (1 - mu) * online[k])


def test_ema_update_blends_frozen_parameters_and_rejects_mismatches():
    from senseflow.losses import ema_update

    a, b = nn.Linear(3, 2).requires_grad_(False), nn.Linear(3, 2)
    w0 = a.weight.clone()
    assert ema_update(a, b, 0.9) == 2
    torch.testing.assert_close(a.weight, 0.9 * w0 + 0.1 * b.weight)
    with pytest.raises(ValueError, match="'weight'.*shape"):
        ema_update(nn.Linear(3, 2), nn.Linear(4, 2), 0.9)
    with pytest.raises(ValueError, match="mu must be in"):
        ema_update(a, b, 1.5)
