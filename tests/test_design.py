"""The design points and filter formulas of :mod:`autosgm.design`, used by every other module."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autosgm import design
from autosgm.analysis.filter import LowpassFilter
from autosgm.config import AutoSGMConfig
from autosgm.experiments.optimizers import resolve_gamma


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_named_points_are_the_spec_formulas(beta):
    assert design.nesterov_gamma(beta) == beta / (1 + beta)
    assert design.nesterov_eta(beta) == 1 + beta
    assert design.mls_gamma(beta) == 1 - math.sqrt(2 * (1 - beta))
    assert design.default_eta(beta, 0.3) == (1 - beta) / (1 - 0.3)
    for name in ("0", "nag", "mls"):  # the experiments' names read the same functions
        assert resolve_gamma(name, beta) == design.GAMMA_POINTS[name](beta)


def test_arrays_give_the_same_values_as_numbers():
    betas = np.array([0.0, 0.5, 0.9, 0.99])
    for f in (design.nesterov_gamma, design.nesterov_eta, design.mls_gamma):
        np.testing.assert_allclose(f(betas), [f(float(b)) for b in betas], rtol=0, atol=1e-15)


def test_step_response_is_adams_correction_exactly_at_adams_point():
    for t in range(1, 50):
        assert design.step_response(0.9, 0.0, 1.0 - 0.9, t) == 1.0 - 0.9**t
    s = design.step_response(0.9, 0.4, 0.3, np.arange(1, 1000, dtype=np.float64))
    assert abs(s[0] - 0.3) < 1e-15 and abs(s[-1] - 0.3 * 0.6 / 0.1) < 1e-12  # η at t = 1, H(1) as t → ∞


def test_the_optimizer_and_the_analysis_share_the_step_response():
    cfg = AutoSGMConfig(beta=0.8, gamma=0.2, eta=0.5)
    f = LowpassFilter(0.8, 0.2, 0.5)
    np.testing.assert_allclose([cfg.filter_debias(t) for t in range(1, 20)], f.step_response(19), rtol=1e-15)
