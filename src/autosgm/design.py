r"""The filter's design points and formulas, defined once (spec §2).

``H(z) = η (1 − γ z⁻¹)/(1 − β z⁻¹)``. The optimizer's configuration, its named constructors, the
analysis toolkit and the experiments all take these from here. Every function accepts Python
floats or numpy arrays (plain arithmetic only).

=============  ======================  ======================  ========================================
point          γ(β)                    η                       torch.optim equivalent (constant oracle)
=============  ======================  ======================  ========================================
plain          0                       1                       ``SGD(lr)`` (β = 0)
heavy ball     0                       1                       ``SGD(lr, momentum=β)``
Nesterov       β/(1+β)                 1 + β                   ``SGD(lr, momentum=β, nesterov=True)``
Adam           0                       1 − β (default gain)    ``Adam``'s first moment (with debias)
MLS            1 − √(2(1 − β))         default gain            — (the research notes' point)
=============  ======================  ======================  ========================================
"""

from __future__ import annotations

import math
from typing import Any, Callable

__all__ = ["GAMMA_POINTS", "default_eta", "mls_gamma", "nesterov_eta", "nesterov_gamma", "step_response"]


def default_eta(beta: Any, gamma: Any) -> Any:
    """The unit-DC-gain filter gain ``η = (1 − β)/(1 − γ)`` (so that ``H(1) = 1``)."""
    return (1.0 - beta) / (1.0 - gamma)


def nesterov_gamma(beta: Any) -> Any:
    """Nesterov's filter zero ``γ = β/(1 + β)``."""
    return beta / (1.0 + beta)


def nesterov_eta(beta: Any) -> Any:
    """Nesterov's filter gain ``η = 1 + β`` (torch's ``SGD(nesterov=True)`` step)."""
    return 1.0 + beta


def mls_gamma(beta: Any) -> Any:
    """The research notes' filter zero ``γ = 1 − √(2(1 − β))`` (≈ 0.553 at β = 0.9)."""
    x = 2.0 * (1.0 - beta)
    return 1.0 - (math.sqrt(x) if isinstance(x, float) else x**0.5)


def step_response(beta: Any, gamma: Any, eta: Any, t: Any) -> Any:
    """Unit-step response ``S[t] = η [(1 − β^t) − γ (1 − β^(t−1))]/(1 − β)`` at step ``t ≥ 1``.

    The debias divisor of the filter output (spec §2). At Adam's point (γ = 0, η = 1 − β) the
    factor ``η/(1 − β)`` is 1 and is not applied, so that ``S[t] = 1 − β^t`` exactly as in torch.
    """
    s = (1.0 - beta**t) - gamma * (1.0 - beta ** (t - 1))
    if eta != 1.0 - beta:
        s = s * (eta / (1.0 - beta))
    return s


#: Named filter zeros: name -> γ(β).
GAMMA_POINTS: dict[str, Callable[[Any], Any]] = {
    "0": lambda beta: 0.0 * beta,
    "nag": nesterov_gamma,
    "mls": mls_gamma,
}
