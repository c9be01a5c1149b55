r"""The quadratic model of the learning dynamics (spec §8).

One coordinate, loss ``f = ½ u² ε²`` with error ``ε = w − w*`` and a fresh ``u[t] ~ N(0, λ)`` at every
step, so the gradient is ``g[t] = u[t]² ε[t]`` with ``E u² = λ``, ``E u⁴ = 3λ²`` and, since ``u[t]``
is independent of ``ε[t]``, ``E g[t] = λ E ε[t]``.  The optimizer is the filtered gradient step::

    v[t]   = β v[t−1] + η (g[t] − γ g[t−1]),        v[−1] = g[−1] = 0
    ε[t+1] = ε[t] + Δ[t+1],    Δ[t+1] = −α v[t]

(sample ``t = 0`` is the first step; ``ε[0] = eps0``).

Plain SGM (``β = γ = 0``, ``η = 1``): ``ε[t+1] = (1 − α u²) ε[t]``.

* mean:         ``E ε[t+1] = (1 − αλ) E ε[t]``; fastest (one step) at ``α = 1/λ``.
* mean square:  ``E ε[t+1]² = (1 − 2αλ + 3α²λ²) E ε[t]²`` (exact); stable iff ``0 < α < 2/(3λ)``,
  fastest at ``α = 1/(3λ) = E[ε g]/E[g²]`` where it equals the mean rate ``1 − αλ = 2/3``.
* change level: ``E Δ[t+1]² = 3α²λ² E ε[t]²``. The spec's "change-level pole" ``3α²λ²`` is this
  mean-square gain from the error to the next parameter change; it is below 1 — the step cannot
  overshoot the optimum in mean square — iff ``0 < α < 1/(√3 λ)``, the spec's stability range.
  Because ``1/√3 < 2/3`` this range is inside the exact mean-square range (a sufficient condition).
  Matching the rates as the spec writes it, ``|1 − 3α²λ²| = |1 − αλ|``, gives ``α = 1/(3λ)`` as
  its smallest positive root, the same point as above.

Filtered SGM, mean: with ``κ = αηλ`` the state ``x[t] = (E Δ[t+1], E ε[t])`` obeys
``x[t] = A x[t−1]`` for ``t ≥ 1`` with::

    A = [[β_p, k_p], [1, 1]],   β_p = β − κ,   k_p = −κ (1 − γ),
    det(zI − A) = z² − (1 + β_p) z + (β − κγ),
    x[0] = (−κ eps0, eps0)      (the first step sees no g[−1] and no v[−1]).

Both eigenvalues vanish — ``E ε[t] = 0`` for ``t ≥ 2`` — iff ``γ = β/(1+β)`` and ``κ = 1 + β``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import design

from .filter import _count, _real, default_eta

__all__ = [
    "plain_mean_rate",
    "plain_mean_square_rate",
    "plain_change_gain",
    "plain_fastest_mean_alpha",
    "plain_mean_square_bound",
    "plain_change_level_bound",
    "plain_matching_alpha",
    "is_plain_mean_square_stable",
    "is_plain_change_level_stable",
    "mean_matrix",
    "characteristic_polynomial",
    "mean_eigenvalues",
    "spectral_radius",
    "is_mean_stable",
    "stability_region",
    "OptimalDesign",
    "optimal_design",
    "MeanTrajectory",
    "mean_square_operator",
    "mean_square_rate",
    "mean_square_trajectory",
    "mean_trajectory",
    "SimulationResult",
    "simulate",
]


# --------------------------------------------------------------------------- validation
def _lam(lam: Any) -> float:
    lam = _real("lam", lam)
    if lam <= 0.0:
        raise ValueError(f"lam must be > 0, got {lam}")
    return lam


def _alpha(alpha: Any) -> float:
    alpha = _real("alpha", alpha)
    if alpha <= 0.0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return alpha


def _design(beta: Any, gamma: Any, eta: Any) -> tuple[float, float, float]:
    """Validated ``(β, γ, η)``; ``eta=None`` is the default gain ``(1 − β)/(1 − γ)``."""
    beta = _real("beta", beta)
    gamma = _real("gamma", gamma)
    eta_d = default_eta(beta, gamma)  # validates 0 <= beta < 1, gamma <= beta
    if eta is None:
        return beta, gamma, eta_d
    eta = _real("eta", eta)
    if eta <= 0.0:
        raise ValueError(f"eta must be > 0 (or None for the default gain), got {eta}")
    return beta, gamma, eta


# --------------------------------------------------------------------------- plain SGM
def plain_mean_rate(alpha: float, lam: float) -> float:
    """Mean pole of plain SGM: ``E ε[t+1] / E ε[t] = 1 − αλ``."""
    return 1.0 - _alpha(alpha) * _lam(lam)


def plain_mean_square_rate(alpha: float, lam: float) -> float:
    """Exact mean-square factor: ``E ε[t+1]² / E ε[t]² = E (1 − α u²)² = 1 − 2αλ + 3α²λ²``."""
    a = _alpha(alpha) * _lam(lam)
    return 1.0 - 2.0 * a + 3.0 * a * a


def plain_change_gain(alpha: float, lam: float) -> float:
    """Change-level mean-square gain (the spec's change-level pole): ``E Δ[t+1]²/E ε[t]² = 3α²λ²``."""
    a = _alpha(alpha) * _lam(lam)
    return 3.0 * a * a


def plain_fastest_mean_alpha(lam: float) -> float:
    """``α = 1/λ``: the mean error vanishes after one step."""
    return 1.0 / _lam(lam)


def plain_mean_square_bound(lam: float) -> float:
    """``2/(3λ)``: ``E ε²`` decays iff ``0 < α < 2/(3λ)`` (exact)."""
    return 2.0 / (3.0 * _lam(lam))


def plain_change_level_bound(lam: float) -> float:
    """``1/(√3 λ)``: the change-level gain ``3α²λ²`` is < 1 iff ``0 < α < 1/(√3 λ)`` (spec §8)."""
    return 1.0 / (math.sqrt(3.0) * _lam(lam))


def plain_matching_alpha(lam: float) -> float:
    """``α = 1/(3λ) = E[ε g]/E[g²]``: mean and mean-square rates match (both 2/3) and the
    mean-square rate is smallest; also the smallest positive root of ``|1 − 3α²λ²| = |1 − αλ|``."""
    return 1.0 / (3.0 * _lam(lam))


def is_plain_mean_square_stable(alpha: float, lam: float) -> bool:
    """``E ε²`` contracts: ``1 − 2αλ + 3α²λ² < 1``."""
    return plain_mean_square_rate(alpha, lam) < 1.0


def is_plain_change_level_stable(alpha: float, lam: float) -> bool:
    """The spec's criterion: change-level gain ``3α²λ² < 1``."""
    return plain_change_gain(alpha, lam) < 1.0


# --------------------------------------------------------------------------- filtered SGM, mean
def mean_matrix(beta: float, gamma: float, eta: float | None, alpha: float, lam: float) -> np.ndarray:
    """``A = [[β − κ, −κ(1 − γ)], [1, 1]]``, ``κ = αηλ``.

    ``x[t] = A x[t−1]`` for the state ``x[t] = (E Δ[t+1], E ε[t])``.
    """
    beta, gamma, eta = _design(beta, gamma, eta)
    kappa = _alpha(alpha) * eta * _lam(lam)
    return np.array([[beta - kappa, -kappa * (1.0 - gamma)], [1.0, 1.0]], dtype=np.float64)


def characteristic_polynomial(
    beta: float, gamma: float, eta: float | None, alpha: float, lam: float
) -> tuple[float, float, float]:
    """Coefficients ``(1, −(1 + β − κ), β − κγ)`` of ``det(zI − A)``, highest power first."""
    beta, gamma, eta = _design(beta, gamma, eta)
    kappa = _alpha(alpha) * eta * _lam(lam)
    return 1.0, -(1.0 + beta - kappa), beta - kappa * gamma


def _grid(beta: Any, gamma: Any, eta: Any, alpha: Any, lam: Any) -> tuple[np.ndarray, ...]:
    """Broadcast arrays; ``eta=None`` is the default gain point-wise; invalid points masked."""
    beta, gamma, alpha, lam = (np.asarray(a, dtype=np.float64) for a in (beta, gamma, alpha, lam))
    valid = (beta >= 0.0) & (beta < 1.0) & (gamma <= beta)
    if eta is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            eta = np.where(valid, (1.0 - beta) / np.where(valid, 1.0 - gamma, 1.0), np.nan)
    eta = np.asarray(eta, dtype=np.float64)
    beta, gamma, eta, alpha, lam = np.broadcast_arrays(beta, gamma, eta, alpha, lam)
    valid = (beta >= 0.0) & (beta < 1.0) & (gamma <= beta) & (eta > 0.0) & (alpha > 0.0) & (lam > 0.0)
    return beta, gamma, eta, alpha, lam, valid


def mean_eigenvalues(beta: Any, gamma: Any, eta: Any, alpha: Any, lam: Any) -> np.ndarray:
    """Eigenvalues of ``A`` (complex, last axis of length 2, larger modulus first).

    Arguments broadcast (numpy); ``eta=None`` is the default gain. Invalid designs (``γ > β``,
    ``β ∉ [0, 1)``, non-positive ``η, α, λ``) give ``nan``.
    """
    beta, gamma, eta, alpha, lam, valid = _grid(beta, gamma, eta, alpha, lam)
    kappa = alpha * eta * lam
    s = 1.0 + beta - kappa  # trace
    p = beta - kappa * gamma  # determinant
    root = np.sqrt((s * s - 4.0 * p).astype(np.complex128))
    z1, z2 = (s + root) / 2.0, (s - root) / 2.0
    swap = np.abs(z2) > np.abs(z1)
    z = np.stack([np.where(swap, z2, z1), np.where(swap, z1, z2)], axis=-1)
    return np.where(valid[..., None], z, np.nan + 0j)


def spectral_radius(beta: Any, gamma: Any, eta: Any, alpha: Any, lam: Any) -> Any:
    """``max |z|`` over the eigenvalues of ``A`` (the asymptotic mean convergence rate); broadcasts."""
    r = np.abs(mean_eigenvalues(beta, gamma, eta, alpha, lam))[..., 0]
    return float(r) if r.ndim == 0 else r


def is_mean_stable(beta: float, gamma: float, eta: float | None, alpha: float, lam: float) -> bool:
    """``E ε[t] → 0`` from every start: spectral radius of ``A`` below 1 (validated scalars).

    Equivalently (Jury): ``κ(1 − γ) > 0``, ``κ(1 + γ) < 2(1 + β)`` and ``|β − κγ| < 1``.
    """
    beta, gamma, eta = _design(beta, gamma, eta)
    return bool(spectral_radius(beta, gamma, eta, _alpha(alpha), _lam(lam)) < 1.0)


def stability_region(beta: Any, gamma: Any, alpha: Any, lam: Any, eta: Any = None) -> np.ndarray:
    """Boolean array: valid low-pass design with a mean-stable ``A``; arguments broadcast.

    Grid it with ``np.meshgrid``, e.g. over (β, γ) at fixed ``α, λ`` or over (α, β) at fixed ``γ``.
    Points that are not valid designs (``γ > β``, …) are ``False``.
    """
    with np.errstate(invalid="ignore"):
        r = np.abs(mean_eigenvalues(beta, gamma, eta, alpha, lam))[..., 0]
        return np.asarray(r < 1.0)


# --------------------------------------------------------------------------- optimal design
@dataclass(frozen=True)
class OptimalDesign:
    """Two-step mean convergence: ``γ = β/(1+β)``, ``αηλ = 1 + β`` (so ``A² = 0``)."""

    beta: float
    gamma: float
    eta: float
    alpha: float


def optimal_design(beta: float, lam: float, eta: float | None = None) -> OptimalDesign:
    """The unique design with both eigenvalues of ``A`` at 0 for pole ``β``.

    ``γ = β/(1+β)``; ``η`` as given or the default ``(1 − β)/(1 − γ) = 1 − β²``;
    ``α = (1 + β)/(ηλ)``. With Nesterov's ``η = 1 + β`` this is ``α = 1/λ``.
    """
    beta = _real("beta", beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must satisfy 0 <= beta < 1, got {beta}")
    lam = _lam(lam)
    gamma = design.nesterov_gamma(beta)
    beta, gamma, eta = _design(beta, gamma, eta)
    return OptimalDesign(beta, gamma, eta, (1.0 + beta) / (eta * lam))


# --------------------------------------------------------------------------- trajectories
@dataclass(frozen=True)
class MeanTrajectory:
    """``error[t] = E ε[t]`` for ``t = 0 … steps`` and ``change[t] = E Δ[t] = E ε[t] − E ε[t−1]``
    (``change[0] = 0``)."""

    error: np.ndarray
    change: np.ndarray


def mean_trajectory(
    beta: float,
    gamma: float,
    eta: float | None,
    alpha: float,
    lam: float,
    eps0: float = 1.0,
    steps: int = 50,
) -> MeanTrajectory:
    """Exact mean error ``E ε[t] = [0 1] A^t x[0]``, ``x[0] = (−αηλ eps0, eps0)``, ``t = 0 … steps``.

    Equivalently ``E ε[t] = (1 + β − κ) E ε[t−1] − (β − κγ) E ε[t−2]`` for ``t ≥ 2`` with
    ``E ε[1] = (1 − κ) eps0``.
    """
    beta, gamma, eta = _design(beta, gamma, eta)
    alpha, lam = _alpha(alpha), _lam(lam)
    eps0 = _real("eps0", eps0)
    steps = _count("steps", steps)
    a = mean_matrix(beta, gamma, eta, alpha, lam)
    x = np.array([-alpha * eta * lam * eps0, eps0])
    err = np.empty(steps + 1)
    err[0] = eps0
    for t in range(1, steps + 1):
        x = a @ x
        err[t] = x[1]
    change = np.zeros(steps + 1)
    change[1:] = np.diff(err)
    return MeanTrajectory(err, change)


# --------------------------------------------------------------------------- filtered SGM, mean square
def _step_matrices(beta: float, gamma: float, eta: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``s[t+1] = (M0 + u[t]² M1) s[t]`` for the full state ``s[t] = (ε[t], v[t−1], g[t−1])``."""
    m0 = np.array(
        [[1.0, -alpha * beta, alpha * eta * gamma], [0.0, beta, -eta * gamma], [0.0, 0.0, 0.0]]
    )
    m1 = np.array([[-alpha * eta, 0.0, 0.0], [eta, 0.0, 0.0], [1.0, 0.0, 0.0]])
    return m0, m1


def mean_square_operator(
    beta: float, gamma: float, eta: float | None, alpha: float, lam: float
) -> np.ndarray:
    """The 9×9 matrix ``L`` with ``vec P[t+1] = L vec P[t]``, ``P[t] = E s[t] s[t]ᵀ`` (exact).

    ``s[t] = (ε[t], v[t−1], g[t−1])`` evolves as ``s[t+1] = (M0 + u² M1) s[t]`` with a fresh ``u``,
    so ``P[t+1] = M0 P M0ᵀ + λ (M0 P M1ᵀ + M1 P M0ᵀ) + 3λ² M1 P M1ᵀ`` (row-major ``vec``).
    """
    beta, gamma, eta = _design(beta, gamma, eta)
    alpha, lam = _alpha(alpha), _lam(lam)
    m0, m1 = _step_matrices(beta, gamma, eta, alpha)
    return (
        np.kron(m0, m0)
        + lam * (np.kron(m0, m1) + np.kron(m1, m0))
        + 3.0 * lam * lam * np.kron(m1, m1)
    )


def mean_square_rate(beta: Any, gamma: Any, eta: Any, alpha: Any, lam: Any) -> Any:
    """Asymptotic per-step factor of ``E ε²``: the spectral radius of :func:`mean_square_operator`.

    Mean-square stable iff it is ``< 1``; for plain SGM it is ``1 − 2αλ + 3α²λ²``. It depends on
    ``(β, γ, κ = αηλ)`` only. Arguments broadcast like :func:`spectral_radius` (``eta=None`` is the
    default gain; invalid designs give ``nan``); a float for scalar arguments.
    """
    beta, gamma, eta, alpha, lam, valid = _grid(beta, gamma, eta, alpha, lam)
    shape = beta.shape
    b, c, k = (np.where(valid, a, 0.0).reshape(-1) for a in (beta, gamma, alpha * eta * lam))
    # kappa-scaled state (ε, αv, αη g): s' = (N0 + (u²/λ) N1) s with N0, N1 functions of (β, γ, κ).
    n = b.size
    n0 = np.zeros((n, 3, 3))
    n0[:, 0, 0], n0[:, 0, 1], n0[:, 0, 2] = 1.0, -b, c
    n0[:, 1, 1], n0[:, 1, 2] = b, -c
    n1 = np.zeros((n, 3, 3))
    n1[:, 0, 0], n1[:, 1, 0], n1[:, 2, 0] = -k, k, k

    def kron(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.einsum("nij,nkl->nikjl", x, y).reshape(n, 9, 9)

    op = kron(n0, n0) + kron(n0, n1) + kron(n1, n0) + 3.0 * kron(n1, n1)
    r = np.abs(np.linalg.eigvals(op)).max(axis=-1).reshape(shape)
    r = np.where(valid, r, np.nan)
    return float(r) if r.ndim == 0 else r


def mean_square_trajectory(
    beta: float,
    gamma: float,
    eta: float | None,
    alpha: float,
    lam: float,
    eps0: float = 1.0,
    steps: int = 50,
) -> np.ndarray:
    """Exact ``E ε[t]²`` for ``t = 0 … steps`` from ``s[0] = (eps0, 0, 0)``."""
    op = mean_square_operator(beta, gamma, eta, alpha, lam)
    eps0 = _real("eps0", eps0)
    steps = _count("steps", steps)
    p = np.zeros(9)
    p[0] = eps0 * eps0
    out = np.empty(steps + 1)
    out[0] = p[0]
    for t in range(1, steps + 1):
        p = op @ p
        out[t] = p[0]
    return out


# --------------------------------------------------------------------------- Monte Carlo
@dataclass(frozen=True)
class SimulationResult:
    """Per-step statistics over ``n_paths`` paths, index ``t = 0 … steps`` (float64 numpy).

    ``mean`` ``E ε[t]``, ``mean_square`` ``E ε[t]²``, ``mean_se``/``mean_square_se`` their standard
    errors (sample sd / √n), ``change_mean_square`` ``E Δ[t]²`` (``0`` at ``t = 0``).
    """

    mean: np.ndarray
    mean_square: np.ndarray
    mean_se: np.ndarray
    mean_square_se: np.ndarray
    change_mean_square: np.ndarray
    n_paths: int


def simulate(
    beta: float,
    gamma: float,
    eta: float | None,
    alpha: float,
    lam: float,
    eps0: float = 1.0,
    steps: int = 50,
    n_paths: int = 10_000,
    seed: int = 0,
    *,
    deterministic: bool = False,
) -> SimulationResult:
    """Run the stochastic filtered-gradient recursion on ``n_paths`` independent paths (torch float64).

    ``g[t] = u[t]² ε[t]`` with ``u[t] ~ N(0, λ)`` i.i.d. (``deterministic=True``: ``u[t]² = λ``, the
    mean gradient), ``v[t] = β v[t−1] + η (g[t] − γ g[t−1])`` from zero state,
    ``ε[t+1] = ε[t] − α v[t]``. ``seed`` fixes the ``torch.Generator``.
    """
    beta, gamma, eta = _design(beta, gamma, eta)
    alpha, lam = _alpha(alpha), _lam(lam)
    eps0 = _real("eps0", eps0)
    steps = _count("steps", steps)
    n_paths = _count("n_paths", n_paths)
    if n_paths < 2:
        raise ValueError(f"n_paths must be >= 2 (standard errors need two paths), got {n_paths}")
    seed = _count("seed", seed)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")

    gen = torch.Generator().manual_seed(seed)
    kw: dict[str, Any] = {"dtype": torch.float64}
    stats = torch.zeros(5, steps + 1, **kw)  # mean, mean square, sd, sd of square, E Δ²
    eps = torch.full((n_paths,), eps0, **kw)
    v = torch.zeros(n_paths, **kw)
    g_prev = torch.zeros(n_paths, **kw)

    def record(t: int, delta: torch.Tensor | None) -> None:
        sq = eps.square()
        stats[0, t], stats[1, t] = eps.mean(), sq.mean()
        stats[2, t], stats[3, t] = eps.std(), sq.std()
        if delta is not None:
            stats[4, t] = delta.square().mean()

    record(0, None)
    for t in range(steps):
        if deterministic:
            u2 = torch.full((n_paths,), lam, **kw)
        else:
            u2 = lam * torch.randn(n_paths, generator=gen, **kw).square()
        g = u2 * eps
        v = beta * v + eta * (g - gamma * g_prev)
        delta = -alpha * v
        eps = eps + delta
        g_prev = g
        record(t + 1, delta)
    out = stats.numpy()
    root_n = math.sqrt(n_paths)
    return SimulationResult(
        mean=out[0].copy(),
        mean_square=out[1].copy(),
        mean_se=out[2] / root_n,
        mean_square_se=out[3] / root_n,
        change_mean_square=out[4].copy(),
        n_paths=n_paths,
    )
