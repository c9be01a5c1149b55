"""The filter's closed forms (autosgm.analysis.filter) against direct simulation of the recursion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autosgm.analysis.filter import DESIGN_POINTS, LowpassFilter, default_eta

# (beta, gamma, eta): named points, negative zeros, the pure gain, explicit gains.
CASES = [
    (0.0, 0.0, 1.0),
    (0.9, 0.0, 1.0),
    (0.9, 0.9 / 1.9, 1.9),
    (0.9, 1.0 - math.sqrt(0.2), None),
    (0.99, 0.0, 0.01),
    (0.5, -0.7, None),
    (0.3, -2.5, 0.4),
    (0.0, -0.4, None),
    (0.7, 0.7, None),
    (0.6, 0.6, 2.0),
]


def _impulse(n: int) -> np.ndarray:
    x = np.zeros(n)
    x[0] = 1.0
    return x


def _reference(beta: float, gamma: float, eta: float, g: list[float]) -> list[float]:
    """The spec's transposed direct form II, in plain Python: v = η g + s;  s = β v − η γ g."""
    out, s = [], 0.0
    for x in g:
        v = eta * x + s
        s = beta * v - eta * gamma * x
        out.append(v)
    return out


@pytest.mark.parametrize("beta,gamma,eta", CASES)
def test_impulse_and_step_response_match_simulation(beta, gamma, eta):
    f = LowpassFilter(beta, gamma, eta)
    n = 200
    np.testing.assert_allclose(f.filter(_impulse(n)), f.impulse_response(n), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(f.filter(np.ones(n)), f.step_response(n), rtol=1e-12, atol=1e-14)
    # and the spec's one-buffer form gives the same output for a random input
    g = np.random.default_rng(1).standard_normal(64)
    np.testing.assert_allclose(f.filter(g), _reference(f.beta, f.gamma, f.eta, list(g)), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("beta,gamma,eta", CASES)
def test_step_response_is_the_spec_formula(beta, gamma, eta):
    f = LowpassFilter(beta, gamma, eta)
    s = f.step_response(30)
    for t in range(1, 31):
        expect = f.eta * ((1 - beta**t) - gamma * (1 - beta ** (t - 1))) / (1 - beta)
        assert s[t - 1] == pytest.approx(expect, rel=1e-13, abs=1e-15)
    assert s[0] == pytest.approx(f.eta)  # S[1] = η


@pytest.mark.parametrize("beta,gamma,eta", CASES)
def test_dc_gain_is_the_limit_of_the_step_response(beta, gamma, eta):
    f = LowpassFilter(beta, gamma, eta)
    assert f.dc_gain == pytest.approx(f.eta * (1 - gamma) / (1 - beta), rel=1e-14)
    n = 5000 if beta < 0.995 else 20000
    assert f.filter(np.ones(n))[-1] == pytest.approx(f.dc_gain, rel=1e-10)
    assert f.frequency_response(0.0) == pytest.approx(f.dc_gain, rel=1e-13)


@pytest.mark.parametrize("beta,gamma,eta", CASES)
def test_energy_is_the_sum_of_squared_simulated_impulse_response(beta, gamma, eta):
    f = LowpassFilter(beta, gamma, eta)
    h = f.filter(_impulse(6000))
    assert f.energy == pytest.approx(float(np.sum(h**2)), rel=1e-11)
    assert f.energy == pytest.approx(f.eta**2 * (1 + gamma**2 - 2 * gamma * beta) / (1 - beta**2), rel=1e-14)


def test_energy_is_the_output_variance_for_white_noise():
    f = LowpassFilter.mls(0.9)
    g = torch.randn(4000, 2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = f.filter(g)[500:]  # past the transient
    var = float(v.var())
    assert var == pytest.approx(f.energy, rel=0.02)
    assert f.energy < 1.0  # a unit-DC-gain low-pass filter reduces the variance


@pytest.mark.parametrize("beta,gamma,eta", CASES)
def test_frequency_response_is_the_dft_of_the_impulse_response(beta, gamma, eta):
    f = LowpassFilter(beta, gamma, eta)
    n = 4096
    h = f.filter(_impulse(n))
    omega = 2 * np.pi * np.arange(n) / n
    np.testing.assert_allclose(f.frequency_response(omega), np.fft.fft(h), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(f.magnitude_response(omega), np.abs(np.fft.fft(h)), rtol=1e-9, atol=1e-11)
    w = np.linspace(0.01, 3.1, 17)
    np.testing.assert_allclose(np.exp(1j * f.phase_response(w)) * f.magnitude_response(w), f.frequency_response(w))
    np.testing.assert_allclose(f.magnitude_response_db(w), 20 * np.log10(f.magnitude_response(w)))


@pytest.mark.parametrize("beta,gamma,eta", CASES)
def test_low_pass_dc_gain_at_least_nyquist_gain(beta, gamma, eta):
    f = LowpassFilter(beta, gamma, eta)
    assert abs(f.frequency_response(math.pi)) <= f.dc_gain * (1 + 1e-12)


def test_poles_zeros_and_pure_gain():
    f = LowpassFilter(0.9, 0.5, 1.0)
    assert f.poles == (0.9,) and f.zeros == (0.5,)
    g = LowpassFilter(0.7, 0.7)
    assert g.poles == () and g.zeros == () and g.eta == 1.0
    x = np.random.default_rng(0).standard_normal(20)
    np.testing.assert_allclose(g.filter(x), x, rtol=1e-15)  # γ = β: the pure gain H = η
    np.testing.assert_allclose(LowpassFilter(0.6, 0.6, 2.5).filter(x), 2.5 * x, rtol=1e-14)
    b, a = LowpassFilter(0.9, 0.5, 2.0).transfer_coefficients()
    assert b == (2.0, -1.0) and a == (1.0, -0.9)


def test_named_design_points():
    assert LowpassFilter.plain() == LowpassFilter(0.0, 0.0, 1.0)
    assert LowpassFilter.heavy_ball(0.8) == LowpassFilter(0.8, 0.0, 1.0)
    nag = LowpassFilter.nesterov(0.9)
    assert (nag.beta, nag.gamma, nag.eta) == pytest.approx((0.9, 0.9 / 1.9, 1.9))
    adam = LowpassFilter.adam(0.9)
    assert (adam.gamma, adam.eta, adam.dc_gain) == pytest.approx((0.0, 0.1, 1.0))
    mls = LowpassFilter.mls(0.9)
    assert mls.gamma == pytest.approx(0.5527864045, abs=1e-10)
    assert mls.eta == pytest.approx((1 - 0.9) / (1 - mls.gamma)) and mls.dc_gain == pytest.approx(1.0)
    assert set(DESIGN_POINTS) == {"plain", "phb", "nag", "adam", "mls"}
    assert DESIGN_POINTS["nag"](0.9) == nag and DESIGN_POINTS["plain"](0.9) == LowpassFilter.plain()
    with pytest.raises(TypeError):
        DESIGN_POINTS["new"] = LowpassFilter.plain  # type: ignore[index]
    # Adam's debias is 1/S[t] = 1/(1 − β^t)
    np.testing.assert_allclose(adam.step_response(10), 1 - 0.9 ** np.arange(1, 11), rtol=1e-14)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_nesterov_identity(beta):
    """torch's Nesterov direction g[t] + β q[t], q[t] = β q[t−1] + g[t], is the NAG filter's output."""
    g = torch.randn(300, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    q = torch.zeros(3, dtype=torch.float64)
    direction = []
    for x in g:
        q = beta * q + x
        direction.append(x + beta * q)
    out = LowpassFilter.nesterov(beta).filter(g)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.stack(direction), rtol=1e-12, atol=1e-12)
    # the heavy-ball point is q itself
    torch.testing.assert_close(LowpassFilter.heavy_ball(beta).filter(g)[-1], q, rtol=1e-12, atol=1e-12)


def test_filter_accepts_tensors_arrays_and_lists():
    f = LowpassFilter(0.5, 0.2, 1.0)
    x = [1.0, 2.0, -1.0]
    expect = _reference(0.5, 0.2, 1.0, x)
    np.testing.assert_allclose(f.filter(x), expect)
    np.testing.assert_allclose(f.filter(np.array(x, dtype=np.float32)), expect, rtol=1e-6)
    out = f.filter(torch.tensor(x, dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-6)
    assert f.filter(np.zeros((0, 2))).shape == (0, 2)
    assert f.impulse_response(0).shape == (0,) and f.step_response(0).shape == (0,)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="gamma"):
        LowpassFilter(0.5, 0.6)
    with pytest.raises(ValueError, match="beta"):
        LowpassFilter(1.0, 0.0)
    with pytest.raises(ValueError, match="beta"):
        LowpassFilter(-0.1, -0.2)
    with pytest.raises(ValueError, match="eta"):
        LowpassFilter(0.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        LowpassFilter(0.5, float("nan"))
    with pytest.raises(TypeError, match="beta"):
        LowpassFilter("0.5", 0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="eta"):
        LowpassFilter(0.5, 0.0, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gamma"):
        default_eta(0.2, 0.3)
    with pytest.raises(ValueError, match="n"):
        LowpassFilter.plain().impulse_response(-1)
    with pytest.raises(ValueError, match="time axis"):
        LowpassFilter.plain().filter(np.float64(1.0))
    with pytest.raises(TypeError):
        LowpassFilter.plain().filter(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="beta"):
        LowpassFilter.mls(1.0)
    f = LowpassFilter.plain()
    with pytest.raises(AttributeError):
        f.beta = 0.5  # type: ignore[misc]  # frozen


_betas = st.floats(0.0, 0.995, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(beta=_betas, frac=st.floats(0.0, 1.0), neg=st.floats(0.0, 3.0))
def test_default_gain_has_unit_dc_gain_and_the_step_response_tends_to_it(beta, frac, neg):
    gamma = frac * beta - neg  # any gamma in [beta − 3, beta]
    f = LowpassFilter(beta, gamma)
    assert f.dc_gain == pytest.approx(1.0, rel=1e-12)
    s = f.step_response(20000)
    assert s[-1] == pytest.approx(1.0, rel=1e-9)
    # the step response's error decays geometrically: |S[t] − 1| = |β − γ| β^(t−1) η/(1 − β)
    t = np.array([1, 5, 40])
    err = np.abs(s[t - 1] - 1.0)
    np.testing.assert_allclose(err, abs(beta - gamma) * beta ** (t - 1.0) * f.eta / (1 - beta), rtol=1e-8, atol=1e-12)
