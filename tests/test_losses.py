import math
from typing import get_args

import pytest
import torch
from torch import nn

from senseflow.backbones.conversions import eps_eps_from_x0
from senseflow.config import GANConfig, ISGConfig
from senseflow.losses import (
    CHARBONNIER_C,
    GAN_WEIGHT_CURVES,
    ISG_DISTANCES,
    IDAMismatchError,
    d_hinge_loss,
    dmd_gradient,
    dmd_loss,
    epsilon_fake_score_loss,
    fake_score_loss,
    flow_fake_score_loss,
    g_hinge_loss,
    gan_weight,
    ida_update,
    isg_distance,
    isg_loss,
    isg_loss_ddim,
    sample_fake_score_sigmas,
    sample_isg_mid,
)


@pytest.fixture
def trio():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))


# ----------------------------------------------------------------------------- DMD
def _hand_dmd_grad(x, real, fake):
    x, real, fake = (t.double() for t in (x, real, fake))
    w = (x - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    return (fake - real) / w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dmd_gradient_on_x_is_grad_over_numel(trio, dtype):
    x, real, fake = (t.to(dtype) for t in trio)
    x.requires_grad_(True)
    loss = dmd_loss(x, real, fake)
    assert loss.dtype == torch.float32
    loss.backward()
    expected = _hand_dmd_grad(x.detach(), real, fake) / x.numel()
    assert x.grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(x.grad.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_dmd_loss_value(trio):
    # 0.5 * mean(grad^2): the surrogate's value is the squared norm of the step it encodes
    x, real, fake = trio
    grad = _hand_dmd_grad(x, real, fake)
    torch.testing.assert_close(
        dmd_loss(x, real, fake).double(), 0.5 * grad.square().mean(), rtol=1e-5, atol=0
    )


def test_dmd_zero_and_nonfinite_normaliser_give_finite_grads(trio):
    x, _, fake = trio
    real = x.clone()
    real[1] = float("nan")  # a broken teacher estimate for sample 1
    x = x.clone().requires_grad_(True)
    dmd_loss(x, real, fake).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[1] == 0).all()  # the NaN sample contributes nothing
    # sample 0 had a zero normaliser: clamped, so its gradient is large but finite
    assert x.grad[0].abs().max() > 0
    assert torch.isfinite(dmd_gradient(x.detach(), x.detach(), fake)).all()


def test_dmd_rejects_mismatched_shapes(trio):
    x, real, fake = trio
    with pytest.raises(ValueError, match="shapes differ"):
        dmd_loss(x, real[:2], fake)


# ----------------------------------------------------------------------------- fake score
def test_flow_fake_score_loss_hand_value():
    x0 = torch.tensor([[1.0, 2.0]])
    eps = torch.tensor([[0.5, -1.0]])
    v = torch.tensor([[0.0, 0.0]], dtype=torch.bfloat16)  # target eps - x0 = (-0.5, -3)
    out = flow_fake_score_loss(v, x0, eps)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx((0.25 + 9.0) / 2)
    assert fake_score_loss("flow", v, x0, eps).item() == pytest.approx(4.625)


def test_epsilon_fake_score_loss_hand_value():
    eps = torch.tensor([1.0, -1.0, 2.0])
    pred = torch.tensor([0.0, 0.0, 0.0])
    assert epsilon_fake_score_loss(pred, eps).item() == pytest.approx(2.0)
    assert fake_score_loss("epsilon", pred, torch.zeros(3), eps).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="flow, epsilon"):
        fake_score_loss("x0", pred, pred, eps)


def test_fake_score_sigmas_are_reproducible_and_in_range():
    a = sample_fake_score_sigmas(64, generator=torch.Generator().manual_seed(1))
    b = sample_fake_score_sigmas(64, generator=torch.Generator().manual_seed(1))
    assert a.shape == (64,) and torch.equal(a, b)
    assert ((a > 0) & (a < 1)).all()


# ----------------------------------------------------------------------------- IDA
def _pair(seed_fake=0, seed_gen=1):
    torch.manual_seed(seed_fake)
    fake = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    torch.manual_seed(seed_gen)
    gen = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    gen[1].running_mean.fill_(5.0)
    return fake, gen


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_ida_hand_values():
    fake, gen = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        fake.weight.fill_(1.0), fake.bias.fill_(0.0)
        gen.weight.fill_(3.0), gen.bias.fill_(-2.0)
    assert ida_update(fake, gen, 0.75) == 2
    assert fake.weight.item() == pytest.approx(0.75 * 1 + 0.25 * 3)
    assert fake.bias.item() == pytest.approx(0.25 * -2)
    assert gen.weight.item() == 3.0  # the generator is never written


def test_ida_endpoints_and_buffers():
    fake, gen = _pair()
    before = _snapshot(fake)
    ida_update(fake, gen, 1.0)
    for k, v in fake.state_dict().items():
        assert torch.equal(v, before[k])
    ida_update(fake, gen, 0.0)
    for name, p in fake.named_parameters():
        assert torch.equal(p, dict(gen.named_parameters())[name])
    # BatchNorm statistics are buffers, not parameters: untouched
    assert torch.equal(fake[1].running_mean, torch.zeros(2))


def test_ida_skips_frozen_fake_parameters():
    fake, gen = _pair()
    fake[0].bias.requires_grad_(False)
    bias = fake[0].bias.detach().clone()
    assert ida_update(fake, gen, 0.0) == 3
    assert torch.equal(fake[0].bias, bias)
    assert torch.equal(fake[0].weight, gen[0].weight)


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_ida_rejects_lam_outside_unit_interval(lam):
    fake, gen = _pair()
    with pytest.raises(ValueError, match="lam"):
        ida_update(fake, gen, lam)


def test_ida_mismatch_names_first_parameter_and_changes_nothing():
    fake, gen = _pair()
    gen[1] = nn.BatchNorm1d(3)  # "1.weight" (the first mismatch) and "1.bias" differ in shape
    before = _snapshot(fake)
    with pytest.raises(IDAMismatchError, match=r"'1\.weight'.*\(2,\).*\(3,\)"):
        ida_update(fake, gen, 0.5)
    for k, v in fake.state_dict().items():
        assert torch.equal(v, before[k])  # layer 0, checked before the failure, is unchanged too


def test_ida_missing_name_on_either_side():
    fake, gen = _pair()
    with pytest.raises(IDAMismatchError, match="'2.weight' of the generator"):
        ida_update(fake, nn.Sequential(*gen, nn.Linear(2, 2)), 0.5)
    with pytest.raises(IDAMismatchError, match="'2.weight' of the fake model"):
        ida_update(nn.Sequential(*fake, nn.Linear(2, 2)), gen, 0.5)
    assert issubclass(IDAMismatchError, ValueError)


def test_ida_on_dtensor_shards():
    dist = pytest.importorskip("torch.distributed")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs a fresh, available torch.distributed")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        fake, gen = nn.Linear(2, 4), nn.Linear(2, 4)
        for m in (fake, gen):
            m.weight = nn.Parameter(distribute_tensor(m.weight.detach(), mesh, [Shard(0)]))
        expected = 0.5 * fake.weight.full_tensor() + 0.5 * gen.weight.full_tensor()
        ida_update(fake, gen, 0.5)
        torch.testing.assert_close(fake.weight.full_tensor(), expected)
        before = fake.weight.full_tensor().clone()
        gen.weight = nn.Parameter(distribute_tensor(gen.weight.full_tensor().detach(), mesh, [Replicate()]))
        with pytest.raises(IDAMismatchError, match="placements"):
            ida_update(fake, gen, 0.5)
        assert torch.equal(fake.weight.full_tensor(), before)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- ISG
def test_isg_distance_names_match_config():
    assert set(ISG_DISTANCES) == set(get_args(ISGConfig.model_fields["distance"].annotation))


def test_charbonnier_hand_values():
    c = CHARBONNIER_C
    assert c == 1e-3
    x = torch.tensor([0.0, 0.75e-3, 2.4e-3])
    # sqrt(d^2 + c^2) - c: 0, sqrt(0.5625e-6 + 1e-6) - 1e-3 = 0.25e-3, sqrt(5.76e-6 + 1e-6) - 1e-3 = 1.6e-3
    out = isg_distance(x, torch.zeros(3), "charbonnier")
    assert out.item() == pytest.approx((0.0 + 0.25e-3 + 1.6e-3) / 3, rel=1e-4)
    assert isg_distance(x, torch.zeros(3), "l2").item() == pytest.approx((0.75e-3**2 + 2.4e-3**2) / 3)
    with pytest.raises(ValueError, match="l2, charbonnier"):
        isg_distance(x, x, "l1")


def _straight_field(c):
    """The exact velocity field of a one-point data distribution at ``c``: v = (x - c) / s."""
    return lambda x, s: (x - c) / s.view(-1, 1, 1, 1)


def test_isg_is_zero_for_an_exact_straight_field(trio):
    x_tau, c, _ = trio
    field = _straight_field(c)
    s_tau = torch.tensor([1.0, 0.9, 0.75])
    s_prev = torch.tensor([0.9, 0.75, 0.0])
    s_mid = sample_isg_mid(s_tau, s_prev, 0.02, torch.Generator().manual_seed(0))
    loss = isg_loss(x_tau, s_tau, s_prev, s_mid, field, field)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_isg_gradient_flows_only_through_the_direct_branch():
    # teacher v = b x, generator v = a x (a scaled identity):
    #   x_mid = (1 + (sm - st) b) x,   x_tar = (1 + (sp - sm) a) x_mid,   x_dir = (1 + (sp - st) a) x
    # L = mean((x_dir - x_tar)^2); with x_tar detached, dL/da = mean(2 (x_dir - x_tar) (sp - st) x)
    a = torch.tensor(0.7, requires_grad=True)
    b, st, sm, sp = 1.3, 0.9, 0.6, 0.3
    x = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 3.0]]]])
    loss = isg_loss(x, st, sp, sm, lambda y, s: b * y, lambda y, s: a * y)
    loss.backward()
    av = a.item()
    x_tar = (1 + (sp - sm) * av) * (1 + (sm - st) * b) * x
    x_dir = (1 + (sp - st) * av) * x
    assert loss.item() == pytest.approx((x_dir - x_tar).square().mean().item(), rel=1e-5)
    expected = (2 * (x_dir - x_tar) * (sp - st) * x).mean().item()
    assert a.grad.item() == pytest.approx(expected, rel=1e-5)
    # had the target kept its graph, the gradient would include -2 (x_dir - x_tar) dx_tar/da
    leaked = expected - (2 * (x_dir - x_tar) * (sp - sm) * (1 + (sm - st) * b) * x).mean().item()
    assert a.grad.item() != pytest.approx(leaked, rel=1e-3)


def test_isg_rejects_mid_outside_segment(trio):
    x, c, _ = trio
    with pytest.raises(ValueError, match="sigma_prev <= sigma_mid <= sigma_tau"):
        isg_loss(x, 0.9, 0.5, 0.95, _straight_field(c), _straight_field(c))


def test_sample_isg_mid_bounds_and_errors():
    s_tau = torch.full((256,), 0.9)
    mid = sample_isg_mid(s_tau, 0.75, 0.05, torch.Generator().manual_seed(0))
    assert mid.shape == (256,)
    assert (mid >= 0.8 - 1e-6).all() and (mid <= 0.85 + 1e-6).all()
    assert mid.std() > 0  # per-sample draws
    with pytest.raises(ValueError, match="narrower than 2 \\* margin"):
        sample_isg_mid(torch.tensor([0.9, 0.8]), torch.tensor([0.75, 0.75]), 0.05)
    with pytest.raises(ValueError, match="narrower"):
        sample_isg_mid(0.8, 0.75, 0.05)  # scalars too
    with pytest.raises(ValueError, match="margin"):
        sample_isg_mid(s_tau, 0.75, -0.1)


# ----------------------------------------------------------------------------- ISG, DDIM
@pytest.fixture
def alphas_cumprod():
    # SD / SDXL "scaled_linear" betas, 1000 steps
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def _exact_eps_field(c, alphas_cumprod):
    """Exact eps field of a one-point data distribution at ``c``: DDIM follows it without error."""
    return lambda x, t: eps_eps_from_x0(x, c, alphas_cumprod[t])


def test_isg_ddim_zero_for_a_shared_exact_eps_field(trio, alphas_cumprod):
    x0, eps, c = trio
    t = torch.tensor([999, 749, 249])
    x_t = (
        torch.sqrt(alphas_cumprod[t]).float().view(-1, 1, 1, 1) * c
        + torch.sqrt(1 - alphas_cumprod[t]).float().view(-1, 1, 1, 1) * eps
    )
    field = _exact_eps_field(c, alphas_cumprod)
    t_prev, t_mid = torch.tensor([749, 499, -1]), torch.tensor([870, 600, 100])
    loss = isg_loss_ddim(x_t, t, t_prev, t_mid, alphas_cumprod, field, field)
    assert loss.item() == pytest.approx(0.0, abs=1e-8)


def test_isg_ddim_goes_through_t_mid(trio, alphas_cumprod):
    x_t, c1, c2 = trio
    teacher, gen = _exact_eps_field(c1, alphas_cumprod), _exact_eps_field(c2, alphas_cumprod)
    t, t_prev = torch.full((3,), 749), torch.full((3,), 499)
    a = isg_loss_ddim(x_t, t, t_prev, torch.full((3,), 700), alphas_cumprod, teacher, gen)
    b = isg_loss_ddim(x_t, t, t_prev, torch.full((3,), 550), alphas_cumprod, teacher, gen)
    assert a.item() > 0 and b.item() > 0
    assert not math.isclose(a.item(), b.item(), rel_tol=1e-3)


def test_isg_ddim_last_segment_hand_values_and_direct_gradient(alphas_cumprod):
    # x_t = sqrt(ab) c + sqrt(1 - ab) e, teacher exact, generator eps = k * e on this line.
    # With r(t) = sqrt((1 - ab_t) / ab_t), a DDIM step to t_prev = -1 gives x0 = c + r (1 - k) e:
    #   x_tar = c + r(t_mid) (1 - k) e (teacher lands on the line at t_mid),  x_dir = c + r(t) (1 - k) e
    # L = mean((x_dir - x_tar)^2); target detached: dL/dk = mean(2 (x_dir - x_tar) (-r(t) e))
    c, e = torch.full((1, 1, 1, 2), 0.5), torch.tensor([[[[1.0, -1.0]]]])
    t, t_mid = 249, 100
    r = {k: math.sqrt((1 - alphas_cumprod[k].item()) / alphas_cumprod[k].item()) for k in (t, t_mid)}
    ab = alphas_cumprod[t].item()
    x_t = math.sqrt(ab) * c + math.sqrt(1 - ab) * e
    exact = _exact_eps_field(c, alphas_cumprod)
    k = torch.tensor(1.0, requires_grad=True)
    gen = lambda x, tt: k * exact(x, tt)
    assert isg_loss_ddim(x_t, t, -1, t_mid, alphas_cumprod, exact, gen).item() == pytest.approx(0, abs=1e-10)
    with torch.no_grad():
        k.fill_(0.5)
    loss = isg_loss_ddim(x_t, t, -1, t_mid, alphas_cumprod, exact, gen)
    loss.backward()
    diff = (r[t] - r[t_mid]) * 0.5 * e
    assert loss.item() == pytest.approx(diff.square().mean().item(), rel=1e-4)
    assert k.grad.item() == pytest.approx((2 * diff * -r[t] * e).mean().item(), rel=1e-4)
    with pytest.raises(ValueError, match="t_prev < t_mid <= t"):
        isg_loss_ddim(x_t, t, -1, -1, alphas_cumprod, exact, exact)
    with pytest.raises(TypeError, match="integers"):
        isg_loss_ddim(x_t, t, -1, 100.0, alphas_cumprod, exact, exact)


# ----------------------------------------------------------------------------- adversarial
def test_hinge_losses_hand_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r): 0, 0.5, 2 -> mean 2.5 / 3
    fake = torch.tensor([[-2.0, 0.0], [1.0, -0.5]])  # relu(1 + f): 0, 1, 2, 0.5 -> mean 0.875
    assert d_hinge_loss(real, fake).item() == pytest.approx(2.5 / 3 + 0.875)
    assert g_hinge_loss(fake).item() == pytest.approx(-(-2.0 + 0.0 + 1.0 - 0.5) / 4)


def test_g_hinge_per_sample_weights_broadcast_over_logit_maps():
    fake = torch.tensor([[[1.0, 3.0]], [[-2.0, 4.0]]])  # (B=2, 1, 2) logit maps
    w = torch.tensor([0.5, 2.0])
    # -(0.5 * (1 + 3) + 2 * (-2 + 4)) / 4 = -(2 + 4) / 4
    assert g_hinge_loss(fake, w).item() == pytest.approx(-1.5)
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        g_hinge_loss(fake, torch.ones(3))


def test_gan_weight_curves():
    s = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(gan_weight(s), torch.tensor([1.0, 0.5625, 0.0]))
    torch.testing.assert_close(gan_weight(s, "one_minus_sigma"), torch.tensor([1.0, 0.75, 0.0]))
    torch.testing.assert_close(gan_weight(s, "sigma"), s)
    torch.testing.assert_close(gan_weight(s, "constant"), torch.ones(3))
    with pytest.raises(
        ValueError,
        match="one_minus_sigma_sq, mirrored_sigma_sq, sqrt_alpha_bar, one_minus_sigma, sigma, constant",
    ):
        gan_weight(s, "cosine")


def test_gan_curve_names_match_config():
    assert set(GAN_WEIGHT_CURVES) == set(get_args(GANConfig.model_fields["weight_curve"].annotation))
