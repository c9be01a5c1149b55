"""The gradient-smoothing filter H as an object of analysis (spec §2).

A first-order low-pass filter with pole ``β``, zero ``γ`` and gain ``η``::

    H(z) = η (1 − γ z⁻¹) / (1 − β z⁻¹),      0 ≤ β < 1,  γ ≤ β,  η > 0

    v[t] = β v[t−1] + η (g[t] − γ g[t−1]),    v[0] = g[0] = 0

Momentum methods are points of this design space (plain SGD, Polyak's heavy ball, Nesterov,
Adam's first moment, and the ``γ = 1 − √(2(1 − β))`` point), see :data:`DESIGN_POINTS`.

Everything here is a closed form in float64 (numpy); :meth:`LowpassFilter.filter` runs the
recursion itself so that the closed forms can be checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Real
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .. import design

__all__ = ["LowpassFilter", "DESIGN_POINTS", "default_eta"]


def _real(name: str, value: Any) -> float:
    """``value`` as a finite float; TypeError for non-reals (and bools), ValueError for inf/nan."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _check_pole_zero(beta: float, gamma: float) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must satisfy 0 <= beta < 1, got {beta}")
    if gamma > beta:
        raise ValueError(
            f"gamma must satisfy gamma <= beta (a zero above the pole is not low-pass), "
            f"got gamma={gamma} > beta={beta}"
        )


def default_eta(beta: float, gamma: float) -> float:
    """The unit-DC-gain filter gain ``η = (1 − β) / (1 − γ)`` (so that ``H(1) = 1``)."""
    beta = _real("beta", beta)
    gamma = _real("gamma", gamma)
    _check_pole_zero(beta, gamma)
    return design.default_eta(beta, gamma)


@dataclass(frozen=True)
class LowpassFilter:
    """``H(z) = η (1 − γ z⁻¹) / (1 − β z⁻¹)`` with zero initial conditions.

    ``eta=None`` selects the default gain ``η = (1 − β)/(1 − γ)`` (DC gain 1). ``γ = β`` is the pure
    gain ``H = η``; ``γ > β`` is refused (not low-pass). ``γ`` may be negative.

    Time index: sample ``k = 0, 1, …`` of every sequence here is step ``t = k + 1`` of the spec.
    """

    beta: float
    gamma: float = 0.0
    eta: float | None = field(default=None)

    def __post_init__(self) -> None:
        beta = _real("beta", self.beta)
        gamma = _real("gamma", self.gamma)
        _check_pole_zero(beta, gamma)
        if self.eta is None:
            eta = design.default_eta(beta, gamma)
        else:
            eta = _real("eta", self.eta)
            if eta <= 0.0:
                raise ValueError(f"eta must be > 0 (or None for the default gain), got {eta}")
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "eta", eta)

    # ----------------------------------------------------------------- named design points
    @classmethod
    def plain(cls) -> LowpassFilter:
        """No smoothing: ``β = γ = 0``, ``η = 1`` (``H = 1``, plain SGD)."""
        return cls(0.0, 0.0, 1.0)

    @classmethod
    def heavy_ball(cls, beta: float) -> LowpassFilter:
        """Polyak's heavy ball (torch ``SGD(momentum=β)``): ``γ = 0``, ``η = 1``."""
        return cls(beta, 0.0, 1.0)

    @classmethod
    def nesterov(cls, beta: float) -> LowpassFilter:
        """Nesterov (torch ``SGD(momentum=β, nesterov=True)``): ``γ = β/(1+β)``, ``η = 1 + β``."""
        beta = _real("beta", beta)
        return cls(beta, design.nesterov_gamma(beta), design.nesterov_eta(beta))

    @classmethod
    def adam(cls, beta: float) -> LowpassFilter:
        """Adam's first moment (an EMA): ``γ = 0``, ``η = 1 − β``."""
        beta = _real("beta", beta)
        return cls(beta, 0.0, 1.0 - beta)

    @classmethod
    def mls(cls, beta: float) -> LowpassFilter:
        """The research notes' point ``γ = 1 − √(2(1 − β))`` (≈ 0.553 at β = 0.9), default gain."""
        beta = _real("beta", beta)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must satisfy 0 <= beta < 1, got {beta}")
        return cls(beta, design.mls_gamma(beta), None)

    # ----------------------------------------------------------------- closed forms
    @property
    def _eta(self) -> float:
        assert self.eta is not None  # set in __post_init__
        return self.eta

    @property
    def poles(self) -> tuple[float, ...]:
        """Poles of ``H`` in ``z`` (``(β,)``; empty when the zero cancels the pole, ``γ = β``)."""
        return () if self.gamma == self.beta else (self.beta,)

    @property
    def zeros(self) -> tuple[float, ...]:
        """Zeros of ``H`` in ``z`` (``(γ,)``; empty when ``γ = β``)."""
        return () if self.gamma == self.beta else (self.gamma,)

    @property
    def dc_gain(self) -> float:
        """``H(1) = η (1 − γ)/(1 − β)``: the output for a constant unit input, in the limit."""
        return self._eta * (1.0 - self.gamma) / (1.0 - self.beta)

    @property
    def energy(self) -> float:
        """``Σ_k h[k]² = η² (1 + γ² − 2γβ)/(1 − β²)``.

        The output variance of white unit-variance input: the filter's variance-reduction factor.
        """
        b, g = self.beta, self.gamma
        return self._eta**2 * (1.0 + g * g - 2.0 * g * b) / (1.0 - b * b)

    def impulse_response(self, n: int) -> np.ndarray:
        """``h[0] = η``, ``h[k] = η (β − γ) β^(k−1)`` for ``k ≥ 1``; first ``n`` samples."""
        n = _count("n", n)
        k = np.arange(n, dtype=np.float64)
        h = self._eta * (self.beta - self.gamma) * np.power(self.beta, np.maximum(k - 1.0, 0.0))
        if n:
            h[0] = self._eta
        return h

    def step_response(self, n: int) -> np.ndarray:
        """Unit-step response ``S[t] = η [(1 − β^t) − γ (1 − β^(t−1))]/(1 − β)``, ``t = 1 … n``.

        This is the spec's debias divisor; ``S[t] → dc_gain`` as ``t → ∞``.
        """
        n = _count("n", n)
        return design.step_response(self.beta, self.gamma, self._eta, np.arange(1, n + 1, dtype=np.float64))

    def frequency_response(self, omega: Any) -> np.ndarray:
        """``H(e^{jω}) = η (1 − γ e^{−jω})/(1 − β e^{−jω})`` (complex, ω in rad/sample)."""
        zinv = np.exp(-1j * np.asarray(omega, dtype=np.float64))
        return self._eta * (1.0 - self.gamma * zinv) / (1.0 - self.beta * zinv)

    def magnitude_response(self, omega: Any) -> np.ndarray:
        """``|H(e^{jω})|``."""
        return np.abs(self.frequency_response(omega))

    def magnitude_response_db(self, omega: Any) -> np.ndarray:
        """``20 log10 |H(e^{jω})|``."""
        return 20.0 * np.log10(self.magnitude_response(omega))

    def phase_response(self, omega: Any) -> np.ndarray:
        """``arg H(e^{jω})`` in radians, in (−π, π]."""
        return np.angle(self.frequency_response(omega))

    def transfer_coefficients(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(b, a)`` with ``H(z) = (b0 + b1 z⁻¹)/(a0 + a1 z⁻¹)`` (scipy.signal convention)."""
        return (self._eta, -self._eta * self.gamma), (1.0, -self.beta)

    # ----------------------------------------------------------------- simulation
    def filter(self, x: Any) -> Any:
        """Run ``v[t] = β v[t−1] + η (g[t] − γ g[t−1])`` from zero state along axis 0.

        A torch tensor gives a float64 tensor (on the input's device); anything else (numpy
        array, sequence) gives a float64 numpy array. Trailing axes are independent channels.
        """
        if isinstance(x, torch.Tensor):
            if x.is_complex() or not (x.is_floating_point() or x.dtype in _INT_DTYPES):
                raise TypeError(f"x must be a real tensor, got dtype {x.dtype}")
            g = x.to(torch.float64)
        else:
            g = np.asarray(x)
            if g.dtype.kind not in "biuf":
                raise TypeError(f"x must be real numbers, got dtype {g.dtype}")
            g = g.astype(np.float64)
        if g.ndim == 0:
            raise ValueError("x must have a time axis (ndim >= 1)")
        out = g * 0.0
        if g.shape[0] == 0:
            return out
        b, c, e = self.beta, self.gamma, self._eta
        v = g[0] * 0.0
        g_prev = g[0] * 0.0
        for k in range(g.shape[0]):
            v = b * v + e * (g[k] - c * g_prev)
            out[k] = v
            g_prev = g[k]
        return out


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _plain_point(beta: float) -> LowpassFilter:
    """Plain SGD has no smoothing at any β; ``beta`` is validated and otherwise unused."""
    beta = _real("beta", beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must satisfy 0 <= beta < 1, got {beta}")
    return LowpassFilter.plain()


#: Named points of the design space, each a function of the pole ``β``:
#: ``plain`` (identity for every β), ``phb`` (heavy ball), ``nag`` (Nesterov), ``adam``, ``mls``.
DESIGN_POINTS: Mapping[str, Callable[[float], LowpassFilter]] = MappingProxyType(
    {
        "plain": _plain_point,
        "phb": LowpassFilter.heavy_ball,
        "nag": LowpassFilter.nesterov,
        "adam": LowpassFilter.adam,
        "mls": LowpassFilter.mls,
    }
)
