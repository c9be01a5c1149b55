"""The quadratic model (autosgm.analysis.quadratic): closed forms against simulation (spec §8)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autosgm.analysis import quadratic as q
from autosgm.analysis.filter import LowpassFilter

LAM = 2.0

# (beta, gamma, eta, alpha): mean- and mean-square-stable designs, so that sampling errors are sane.
STABLE = {
    "plain": (0.0, 0.0, 1.0, 0.2),
    "phb": (0.6, 0.0, 1.0, 0.05),
    "nag": (0.9, 0.9 / 1.9, 1.9, 0.03),
    "mls": (0.9, LowpassFilter.mls(0.9).gamma, None, 0.5),
    "adam": (0.8, 0.0, 0.2, 0.4),
    "negative-zero": (0.5, -0.5, None, 0.3),
}


def _direct_mean(beta, gamma, eta, alpha, lam, eps0, steps):
    """The mean of the filtered recursion written directly: p = E v, m = E ε, E g = λ m."""
    eta = (1 - beta) / (1 - gamma) if eta is None else eta
    m, p, m_prev, out = eps0, 0.0, 0.0, [eps0]
    for _ in range(steps):
        p = beta * p + eta * lam * (m - gamma * m_prev)
        m_prev, m = m, m - alpha * p
        out.append(m)
    return np.array(out)


# ----------------------------------------------------------------------------- plain SGM
@pytest.mark.parametrize("alpha", [0.05, 0.2, 0.45, 0.9])
def test_plain_mean_rate_closed_form_and_monte_carlo(alpha):
    assert q.plain_mean_rate(alpha, LAM) == pytest.approx(1 - alpha * LAM)
    traj = q.mean_trajectory(0.0, 0.0, 1.0, alpha, LAM, eps0=1.5, steps=12)
    np.testing.assert_allclose(traj.error, 1.5 * (1 - alpha * LAM) ** np.arange(13), rtol=1e-12, atol=1e-15)
    sim = q.simulate(0.0, 0.0, 1.0, alpha, LAM, eps0=1.5, steps=6, n_paths=100_000, seed=3)
    assert np.all(np.abs(sim.mean - traj.error[:7]) <= 5 * sim.mean_se + 1e-15)
    assert q.plain_fastest_mean_alpha(LAM) == pytest.approx(1 / LAM)
    assert q.plain_mean_rate(q.plain_fastest_mean_alpha(LAM), LAM) == pytest.approx(0.0, abs=1e-15)


def test_plain_mean_square_factor_is_exact():
    """E ε[t]² = (1 − 2αλ + 3α²λ²)^t ε0², checked by Monte Carlo and against the 9×9 operator."""
    alpha = 0.2
    rate = q.plain_mean_square_rate(alpha, LAM)
    assert rate == pytest.approx(1 - 2 * alpha * LAM + 3 * alpha**2 * LAM**2)
    assert q.mean_square_rate(0.0, 0.0, 1.0, alpha, LAM) == pytest.approx(rate, rel=1e-12)
    exact = q.mean_square_trajectory(0.0, 0.0, 1.0, alpha, LAM, eps0=1.0, steps=8)
    np.testing.assert_allclose(exact, rate ** np.arange(9), rtol=1e-12)
    sim = q.simulate(0.0, 0.0, 1.0, alpha, LAM, eps0=1.0, steps=8, n_paths=200_000, seed=5)
    assert np.all(np.abs(sim.mean_square - exact) <= 5 * sim.mean_square_se + 1e-15)


def test_change_level_gain_and_the_spec_boundary():
    """The spec's change-level pole 3α²λ² = E Δ[t+1]²/E ε[t]²; below 1 iff α < 1/(√3 λ)."""
    bound = q.plain_change_level_bound(LAM)
    assert bound == pytest.approx(1 / (math.sqrt(3) * LAM))
    assert q.plain_change_gain(bound, LAM) == pytest.approx(1.0, rel=1e-14)
    for alpha in (0.5 * bound, 0.99 * bound, bound * (1 - 1e-9)):
        assert q.plain_change_gain(alpha, LAM) < 1.0 and q.is_plain_change_level_stable(alpha, LAM)
    for alpha in (bound * (1 + 1e-9), 1.01 * bound, 2 * bound):
        assert q.plain_change_gain(alpha, LAM) > 1.0 and not q.is_plain_change_level_stable(alpha, LAM)
    # Monte Carlo: E Δ[1]² = α² E u⁴ ε0² = 3α²λ² ε0², and E Δ[2]² = 3α²λ² E ε[1]²
    for alpha in (0.9 * bound, 1.1 * bound):
        sim = q.simulate(0.0, 0.0, 1.0, alpha, LAM, eps0=1.0, steps=3, n_paths=400_000, seed=11)
        assert sim.change_mean_square[1] == pytest.approx(q.plain_change_gain(alpha, LAM), rel=0.03)
        ratio = sim.change_mean_square[2] / q.mean_square_trajectory(0.0, 0.0, 1.0, alpha, LAM, 1.0, 1)[1]
        assert ratio == pytest.approx(q.plain_change_gain(alpha, LAM), rel=0.1)
    # it is a sufficient condition: inside the exact mean-square range 0 < α < 2/(3λ)
    ms_bound = q.plain_mean_square_bound(LAM)
    assert ms_bound == pytest.approx(2 / (3 * LAM)) and bound < ms_bound
    assert q.plain_mean_square_rate(ms_bound, LAM) == pytest.approx(1.0, rel=1e-14)
    assert q.is_plain_mean_square_stable(bound, LAM)
    assert q.is_plain_mean_square_stable(0.999 * ms_bound, LAM)
    assert not q.is_plain_mean_square_stable(1.001 * ms_bound, LAM)


def test_matching_rates():
    a = q.plain_matching_alpha(LAM)
    assert a == pytest.approx(1 / (3 * LAM))
    # the spec's matching equation |1 − 3α²λ²| = |1 − αλ| holds, with α = 1/(3λ) its smallest positive root
    assert abs(1 - 3 * a**2 * LAM**2) == pytest.approx(abs(1 - a * LAM), rel=1e-14)
    grid = np.linspace(1e-4, 0.99 * a, 500)
    assert np.all(np.abs(np.abs(1 - 3 * grid**2 * LAM**2) - np.abs(1 - grid * LAM)) > 0)
    # the exact mean-square rate equals the mean rate there (2/3) and is smallest there
    assert q.plain_mean_square_rate(a, LAM) == pytest.approx(q.plain_mean_rate(a, LAM), rel=1e-14)
    assert q.plain_mean_rate(a, LAM) == pytest.approx(2 / 3)
    for other in (0.8 * a, 0.95 * a, 1.05 * a, 1.5 * a):
        assert q.plain_mean_square_rate(other, LAM) > q.plain_mean_square_rate(a, LAM)
    # and it is the correlation/moment oracle E[ε g]/E[g²], estimated by Monte Carlo
    rng = np.random.default_rng(0)
    eps = rng.standard_normal(400_000)
    g = LAM * rng.standard_normal(400_000) ** 2 * eps
    assert np.mean(eps * g) / np.mean(g * g) == pytest.approx(a, rel=0.02)


# ----------------------------------------------------------------------------- filtered SGM, mean
@pytest.mark.parametrize("name", list(STABLE))
def test_mean_trajectory_reproduces_the_mean_recursion_and_deterministic_simulation(name):
    beta, gamma, eta, alpha = STABLE[name]
    traj = q.mean_trajectory(beta, gamma, eta, alpha, LAM, eps0=-0.7, steps=40)
    np.testing.assert_allclose(traj.error, _direct_mean(beta, gamma, eta, alpha, LAM, -0.7, 40), rtol=1e-10, atol=1e-14)
    det = q.simulate(beta, gamma, eta, alpha, LAM, eps0=-0.7, steps=40, n_paths=2, deterministic=True)
    np.testing.assert_allclose(det.mean, traj.error, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(traj.change[1:], np.diff(traj.error))
    assert traj.change[0] == 0.0


@pytest.mark.parametrize("name", list(STABLE))
def test_monte_carlo_mean_matches_closed_form_within_sampling_error(name):
    beta, gamma, eta, alpha = STABLE[name]
    steps = 30
    traj = q.mean_trajectory(beta, gamma, eta, alpha, LAM, eps0=1.0, steps=steps)
    sim = q.simulate(beta, gamma, eta, alpha, LAM, eps0=1.0, steps=steps, n_paths=40_000, seed=2024)
    assert sim.n_paths == 40_000 and sim.mean.shape == (steps + 1,)
    assert sim.mean[0] == 1.0 and sim.mean_se[0] == 0.0
    assert np.all(np.abs(sim.mean - traj.error) <= 5 * sim.mean_se + 1e-12)
    # and the mean square matches the exact second-moment recursion, early on (heavy tails later)
    exact_ms = q.mean_square_trajectory(beta, gamma, eta, alpha, LAM, eps0=1.0, steps=steps)
    early = slice(0, 11)
    assert np.all(np.abs(sim.mean_square[early] - exact_ms[early]) <= 5 * sim.mean_square_se[early] + 1e-12)


def test_monte_carlo_detects_a_wrong_closed_form():
    """The 5·se check has power: a small error in the pole is rejected."""
    beta, gamma, eta, alpha = STABLE["nag"]
    sim = q.simulate(beta, gamma, eta, alpha, LAM, eps0=1.0, steps=30, n_paths=40_000, seed=2024)
    wrong = q.mean_trajectory(beta + 0.02, gamma, eta, alpha, LAM, eps0=1.0, steps=30)
    assert np.any(np.abs(sim.mean - wrong.error) > 5 * sim.mean_se)


def test_matrix_and_characteristic_polynomial():
    beta, gamma, eta, alpha, lam = 0.8, 0.3, 1.4, 0.25, 1.7
    kappa = alpha * eta * lam
    a = q.mean_matrix(beta, gamma, eta, alpha, lam)
    np.testing.assert_allclose(a, [[beta - kappa, -kappa * (1 - gamma)], [1.0, 1.0]])
    coeffs = q.characteristic_polynomial(beta, gamma, eta, alpha, lam)
    np.testing.assert_allclose(coeffs, [1.0, -(1 + beta - kappa), beta - kappa * gamma], rtol=1e-14)
    np.testing.assert_allclose(np.poly(a), coeffs, rtol=1e-12, atol=1e-14)
    z = q.mean_eigenvalues(beta, gamma, eta, alpha, lam)
    np.testing.assert_allclose(np.sort_complex(z), np.sort_complex(np.linalg.eigvals(a)), atol=1e-12)
    assert q.spectral_radius(beta, gamma, eta, alpha, lam) == pytest.approx(np.max(np.abs(np.linalg.eigvals(a))))
    # eta=None is the default gain
    np.testing.assert_allclose(
        q.mean_matrix(beta, gamma, None, alpha, lam), q.mean_matrix(beta, gamma, (1 - beta) / (1 - gamma), alpha, lam)
    )


def test_asymptotic_decay_of_the_mean_is_the_spectral_radius():
    beta, gamma, eta, alpha = STABLE["phb"]
    err = q.mean_trajectory(beta, gamma, eta, alpha, LAM, steps=400).error
    rho = q.spectral_radius(beta, gamma, eta, alpha, LAM)
    assert abs(err[400]) ** (1 / 400) == pytest.approx(rho, rel=0.02)


@settings(max_examples=150, deadline=None)
@given(
    beta=st.floats(0.0, 0.99),
    frac=st.floats(-2.0, 1.0),
    kappa=st.floats(0.01, 6.0),
)
def test_jury_conditions_agree_with_the_eigenvalues(beta, frac, kappa):
    gamma = frac * beta if frac >= 0 else frac
    stable_jury = kappa * (1 - gamma) > 0 and kappa * (1 + gamma) < 2 * (1 + beta) and abs(beta - kappa * gamma) < 1
    rho = q.spectral_radius(beta, gamma, 1.0, kappa, 1.0)
    if abs(rho - 1.0) > 1e-9:  # away from the boundary itself
        assert (rho < 1.0) == stable_jury
        assert q.is_mean_stable(beta, gamma, 1.0, kappa, 1.0) == stable_jury


def test_stability_region_grid():
    betas = np.linspace(0.0, 0.99, 30)
    gammas = np.linspace(-1.0, 1.0, 41)
    b, g = np.meshgrid(betas, gammas)
    region = q.stability_region(b, g, 1.0 + b, 1.0, eta=1.0)
    assert region.shape == b.shape and region.dtype == bool
    assert not region[g > b].any()  # not low-pass: excluded
    # at κ = 1 + β the region is exactly (β − 1)/(1 + β) < γ ≤ β
    expect = (g <= b) & (g > (b - 1) / (1 + b))
    near = np.abs(g - (b - 1) / (1 + b)) < 1e-9
    assert np.array_equal(region[~near], expect[~near])
    # an (α, β) grid at fixed γ = 0: heavy ball is mean-stable iff 0 < αλ < 2(1 + β)
    alphas = np.linspace(0.05, 5.0, 50)
    a2, b2 = np.meshgrid(alphas, betas)
    region2 = q.stability_region(b2, 0.0, a2, 1.0, eta=1.0)
    edge = np.abs(a2 - 2 * (1 + b2)) < 1e-9
    assert np.array_equal(region2[~edge], (a2 < 2 * (1 + b2))[~edge])
    assert np.isnan(q.spectral_radius(0.2, 0.5, 1.0, 1.0, 1.0))  # γ > β


# ----------------------------------------------------------------------------- two-step design
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("eta", [None, "nesterov", 0.37])
def test_optimal_design_converges_in_two_steps(beta, eta):
    eta_value = 1 + beta if eta == "nesterov" else eta
    d = q.optimal_design(beta, LAM, eta_value)
    assert d.gamma == pytest.approx(beta / (1 + beta))
    assert d.alpha * d.eta * LAM == pytest.approx(1 + beta)
    if eta is None:
        assert d.eta == pytest.approx(1 - beta**2) and d.alpha == pytest.approx(1 / ((1 - beta) * LAM))
    if eta == "nesterov":
        assert d.alpha == pytest.approx(1 / LAM)
    z = q.mean_eigenvalues(d.beta, d.gamma, d.eta, d.alpha, LAM)
    assert np.all(np.abs(z) < 1e-7)  # a double root at 0 (square-root sensitivity)
    a = q.mean_matrix(d.beta, d.gamma, d.eta, d.alpha, LAM)
    np.testing.assert_allclose(a @ a, 0.0, atol=1e-12)
    traj = q.mean_trajectory(d.beta, d.gamma, d.eta, d.alpha, LAM, eps0=1.0, steps=10)
    assert traj.error[1] == pytest.approx(-beta, abs=1e-12)  # E ε[1] = (1 − κ) ε0 = −β ε0
    assert np.all(np.abs(traj.error[2:]) < 1e-12)
    det = q.simulate(d.beta, d.gamma, d.eta, d.alpha, LAM, eps0=1.0, steps=10, n_paths=2, deterministic=True)
    assert np.all(np.abs(det.mean[2:]) < 1e-12)
    assert abs(det.mean[1]) == pytest.approx(beta, abs=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9, 0.99])
def test_heavy_ball_has_no_two_step_design_unless_beta_is_zero(beta):
    kappas = np.linspace(0.01, 2 * (1 + beta), 2001)
    z = q.mean_eigenvalues(beta, 0.0, 1.0, kappas, 1.0)
    np.testing.assert_allclose(z[:, 0] * z[:, 1], beta, rtol=1e-9)  # product of eigenvalues = det = β
    assert np.min(np.abs(z[:, 0])) >= math.sqrt(beta) * (1 - 1e-12)  # best heavy-ball rate is √β > 0
    traj = q.mean_trajectory(beta, 0.0, 1.0, (1 + beta), 1.0, steps=6)  # κ = 1 + β, as for NAG
    assert np.all(np.abs(traj.error[2:]) > 1e-3)
    # β = 0 (plain) with κ = 1: both eigenvalues vanish
    np.testing.assert_allclose(q.mean_eigenvalues(0.0, 0.0, 1.0, 1.0, 1.0), 0.0, atol=1e-15)


def test_two_step_requires_the_nesterov_zero():
    for gamma in (0.0, 0.3, 0.5):  # β = 0.9, κ = 1.9: only γ = β/(1+β) ≈ 0.474 gives ρ = 0
        assert q.spectral_radius(0.9, gamma, 1.0, 1.9, 1.0) > 0.1


# ----------------------------------------------------------------------------- mean square, filtered
def test_mean_square_rate_depends_on_kappa_only_and_broadcasts():
    r1 = q.mean_square_rate(0.9, 0.4, 1.0, 0.2, 1.0)
    r2 = q.mean_square_rate(0.9, 0.4, 4.0, 0.025, 2.0)
    assert r1 == pytest.approx(r2, rel=1e-10)
    assert r1 == pytest.approx(np.max(np.abs(np.linalg.eigvals(q.mean_square_operator(0.9, 0.4, 1.0, 0.2, 1.0)))))
    grid = q.mean_square_rate(np.array([0.0, 0.9]), 0.0, 1.0, np.array([[0.1], [0.2]]), 1.0)
    assert grid.shape == (2, 2)
    assert grid[0, 0] == pytest.approx(q.plain_mean_square_rate(0.1, 1.0))
    assert np.isnan(q.mean_square_rate(0.3, 0.5, 1.0, 0.1, 1.0))


def test_mean_optimal_design_is_not_mean_square_stable():
    """The two-step (mean) design amplifies the gradient noise: like plain SGM at α = 1/λ."""
    for beta in (0.0, 0.5, 0.9):
        d = q.optimal_design(beta, LAM)
        assert q.mean_square_rate(d.beta, d.gamma, d.eta, d.alpha, LAM) > 1.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="gamma"):
        q.mean_matrix(0.5, 0.6, None, 0.1, 1.0)
    with pytest.raises(ValueError, match="lam"):
        q.plain_mean_rate(0.1, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        q.plain_mean_square_rate(-0.1, 1.0)
    with pytest.raises(ValueError, match="eta"):
        q.is_mean_stable(0.5, 0.0, -1.0, 0.1, 1.0)
    with pytest.raises(ValueError, match="beta"):
        q.optimal_design(1.0, 1.0)
    with pytest.raises(ValueError, match="n_paths"):
        q.simulate(0.5, 0.0, None, 0.1, 1.0, n_paths=1)
    with pytest.raises(TypeError, match="steps"):
        q.mean_trajectory(0.5, 0.0, None, 0.1, 1.0, steps=2.0)
    with pytest.raises(TypeError, match="deterministic"):
        q.simulate(0.5, 0.0, None, 0.1, 1.0, deterministic=1)
    with pytest.raises(TypeError, match="lam"):
        q.plain_mean_rate(0.1, None)


def test_simulation_is_reproducible_by_seed():
    a = q.simulate(0.9, 0.3, None, 0.5, 1.0, steps=5, n_paths=1000, seed=4)
    b = q.simulate(0.9, 0.3, None, 0.5, 1.0, steps=5, n_paths=1000, seed=4)
    c = q.simulate(0.9, 0.3, None, 0.5, 1.0, steps=5, n_paths=1000, seed=5)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert not np.array_equal(a.mean, c.mean)


# ----------------------------------------------------------------------------- figures
def test_figures_main_writes_both_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from autosgm.analysis import figures

    assert figures.main([str(tmp_path / "out"), "--beta", "0.8", "--dpi", "60", "--trace-steps", "30"]) == 0
    for name in ("design_space.png", "responses.png", "traces.png"):
        path = tmp_path / "out" / name
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 10_000
    assert "design_space.png" in capsys.readouterr().out
    assert (tmp_path / "out" / "trajectory.csv").read_text().startswith("step,param")


def test_figure_functions_return_their_paths(tmp_path):
    pytest.importorskip("matplotlib")
    from autosgm.analysis import figures

    p = figures.design_space_figure(tmp_path / "d.png", resolution=40, dpi=50)
    assert p == tmp_path / "d.png" and p.stat().st_size > 10_000
    r = figures.responses_figure(tmp_path / "r.png", beta=0.5, lam=2.0, steps=20, n_paths=500, dpi=50)
    assert r.stat().st_size > 10_000


def test_figure_comparison_designs():
    from autosgm.analysis import figures

    designs = {d.name: d for d in figures.comparison_designs(0.9, 2.0)}
    assert list(designs) == ["RAW", "PHB", "NAG", "MLS", "OPT"]
    for name in ("PHB", "NAG", "MLS"):
        assert designs[name].filter.dc_gain == pytest.approx(1.0)
        assert designs[name].alpha == pytest.approx(1 / 6)
    assert designs["OPT"].alpha * designs["OPT"].eta * 2.0 == pytest.approx(1.9)


def test_importing_autosgm_analysis_does_not_import_matplotlib():
    src = Path(q.__file__).parents[2]
    code = (
        "import sys; from autosgm.analysis import LowpassFilter, simulate, optimal_design; "
        "print('matplotlib' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
