"""Analysis of the learning dynamics (spec §2, §7, §8): the filter design space, the quadratic
model, and the trajectory probe that checks a running optimizer against the LTV recursion.

:mod:`~autosgm.analysis.filter` and :mod:`~autosgm.analysis.quadratic` need numpy (the ``experiments``
extra); :mod:`~autosgm.analysis.figures` also needs matplotlib. Names are resolved lazily, so that
importing a submodule (or ``autosgm`` itself) pulls in neither.
"""

from __future__ import annotations

import importlib
from typing import Any

_FILTER = ("DESIGN_POINTS", "LowpassFilter", "default_eta")
_QUADRATIC = (
    "MeanTrajectory",
    "OptimalDesign",
    "SimulationResult",
    "characteristic_polynomial",
    "is_mean_stable",
    "is_plain_change_level_stable",
    "is_plain_mean_square_stable",
    "mean_eigenvalues",
    "mean_matrix",
    "mean_square_operator",
    "mean_square_rate",
    "mean_square_trajectory",
    "mean_trajectory",
    "optimal_design",
    "plain_change_gain",
    "plain_change_level_bound",
    "plain_fastest_mean_alpha",
    "plain_matching_alpha",
    "plain_mean_rate",
    "plain_mean_square_bound",
    "plain_mean_square_rate",
    "simulate",
    "spectral_radius",
    "stability_region",
)
_PROBE = ("LTVCheck", "TrajectoryProbe", "ltv_residual", "trace_figure")
_HOME = {
    **{name: "filter" for name in _FILTER},
    **{name: "quadratic" for name in _QUADRATIC},
    **{name: "probe" for name in _PROBE},
}

__all__ = [*_FILTER, *_QUADRATIC, *_PROBE]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
