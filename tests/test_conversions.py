import pytest
import torch

from senseflow.backbones import conversions as C
from senseflow.schedules import euler_sigmas, sample_train_sigmas, shift_sigma, unshift_sigma


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 3, 16, 16, generator=g)
    eps = torch.randn(8, 3, 16, 16, generator=g)
    sigma = torch.rand(8, generator=g) * 0.98 + 0.01
    return x0, eps, sigma


def test_flow_round_trips(batch):
    x0, eps, s = batch
    x_t = C.flow_add_noise(x0, eps, s)
    v = C.flow_velocity(x0, eps)
    torch.testing.assert_close(C.flow_x0_from_velocity(x_t, v, s), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(C.flow_eps_from_velocity(x_t, v, s), eps, atol=1e-5, rtol=0)
    torch.testing.assert_close(C.flow_velocity_from_x0(x_t, x0, s), v, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(C.flow_velocity_from_eps(x_t, eps, s), v, atol=1e-4, rtol=1e-5)


def test_flow_endpoints(batch):
    x0, eps, _ = batch
    ones, zeros = torch.ones(8), torch.zeros(8)
    torch.testing.assert_close(C.flow_add_noise(x0, eps, zeros), x0)
    torch.testing.assert_close(C.flow_add_noise(x0, eps, ones), eps)
    with pytest.raises(ValueError):
        C.flow_velocity_from_x0(x0, x0, zeros)
    with pytest.raises(ValueError):
        C.flow_velocity_from_eps(x0, eps, ones)


def test_euler_step_is_exact_on_straight_paths(batch):
    # The flow path is a straight line: one Euler step with the true velocity lands exactly on x0.
    x0, eps, s = batch
    x_t = C.flow_add_noise(x0, eps, s)
    out = C.flow_euler_step(x_t, C.flow_velocity(x0, eps), s, torch.zeros(8))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_epsilon_round_trips(batch):
    x0, eps, s = batch
    ab = 1 - s  # any alpha_bar in (0, 1)
    x_t = C.eps_add_noise(x0, eps, ab)
    torch.testing.assert_close(C.eps_x0_from_eps(x_t, eps, ab), x0, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(C.eps_eps_from_x0(x_t, x0, ab), eps, atol=1e-4, rtol=1e-5)


def test_half_precision_inputs_compute_in_float32(batch):
    x0, eps, s = batch
    out = C.flow_x0_from_velocity(x0.half(), eps.half(), s)
    assert out.dtype == torch.float32


def test_cfg_combine():
    c, u = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(C.cfg_combine(c, u, 1.0), c)
    torch.testing.assert_close(C.cfg_combine(c, u, 0.0), u)
    torch.testing.assert_close(C.cfg_combine(c, u, 3.0), u + 3 * (c - u))


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_shift_inverse(shift):
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(unshift_sigma(shift_sigma(s, shift), shift), s, atol=1e-12, rtol=0)
    assert shift_sigma(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)


def test_euler_sigmas():
    s = euler_sigmas(4, shift=3.0)
    assert s[0] == 1 and s[-1] == 0 and len(s) == 5
    assert torch.all(s[1:] < s[:-1])
    # shifted once, not twice: the 4-step SD3.5 anchors of method.md are 1.0, 0.9, 0.75, 0.5
    torch.testing.assert_close(s[:4], torch.tensor([1.0, 0.9, 0.75, 0.5]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        euler_sigmas(0)


def test_train_sigmas_density_and_determinism():
    a = sample_train_sigmas(4096, generator=torch.Generator().manual_seed(1))
    b = sample_train_sigmas(4096, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert 0 < a.min() and a.max() < 1
    assert abs(a.median().item() - 0.5) < 0.03  # logit-normal(0, 1) is centred at 0.5
    u = sample_train_sigmas(4096, density="uniform", generator=torch.Generator().manual_seed(1))
    assert abs(u.mean().item() - 0.5) < 0.03
    shifted = sample_train_sigmas(4096, shift=3.0, generator=torch.Generator().manual_seed(1))
    assert shifted.median() > 0.7
