"""The number checks shared by the settings (:mod:`autosgm.config`) and the windows
(:mod:`autosgm.windows`): a bad value is a ``TypeError`` or ``ValueError`` naming the setting."""

from __future__ import annotations

import math
import numbers
from typing import Any


def real(name: str, value: Any) -> float:
    """``value`` as a float: a real number (not a bool), not NaN; ±inf allowed."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def finite(name: str, value: Any) -> float:
    """``value`` as a float: a finite real number (not a bool)."""
    value = real(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value
