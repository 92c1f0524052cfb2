import pytest
import torch

from senseflow.losses import (
    dmd_gradient,
    dmd_loss,
    epsilon_fake_score_loss,
    fake_score_loss,
    flow_fake_score_loss,
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
