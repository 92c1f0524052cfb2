import pytest
import torch
from torch import nn

from senseflow.losses import (
    IDAMismatchError,
    dmd_gradient,
    dmd_loss,
    epsilon_fake_score_loss,
    fake_score_loss,
    flow_fake_score_loss,
    ida_update,
    sample_fake_score_sigmas,
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
