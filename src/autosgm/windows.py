r"""Window functions F[t] ∈ [x, 1]: the learning-rate schedules of AutoSGM (spec section 5).

A window is a pure function of the optimizer's 1-based step count ``t`` (and of the epoch
``(t - 1) // spe`` derived from it): it keeps no counters, so a run resumed from a checkpoint
sees exactly the same schedule.

Frame and position. The schedule is a sequence of frames of length ``L``; when a frame ends the
next one starts (a restart). With ``k`` the local index inside the current frame::

    unit "iteration"      (cfact 1): L = tau·spe steps,  k = (t - 1) mod L
    unit "epoch-restart"  (cfact 2): L = spe steps,      k = (t - 1) mod spe
    unit "epoch"          (cfact 0): L = tau epochs,     k = epoch mod tau,  epoch = (t - 1) // spe

Uniform input (inseq 0), value at local index k::

    half window:  f = k / L                      (anneal only; F(0) = 1)
    full window:  f = |2k - L| / L               (warm-up then anneal; F(k) = F(L - k) exactly,
                                                  F(0) = x is the frame's minimum)
    flat top:     F = 1                          if f < e
                  f <- (f - e) / (1 - e)         otherwise
    floor:        F = x + (1 - x) · shape(f)

Shapes (``rcm`` code = index in :data:`SHAPES`; each has shape(0) = 1 and shape(1) = 0)::

    0 constant        1                                         (inactive: F = 1)
    1 cosine          cos(π f / 2)^n                 n ≥ 1      (n = 2: (1 + cos π f) / 2)
    2 polynomial      (1 - f)^n                      n > 0      (n = 1: linear decay)
    3 beta-exp        (n^f - n) / (1 - n)            0 < n < 1
    4 simple-poly     (1 - f^n)^2                    n > 1
    5 logistic        (σ(f) - σ(1)) / (σ(0) - σ(1)), σ(f) = 1 / (1 + 2^(2n (f - 0.5)))    n > 0
    6 logistic-late   the same with the inflection at f = 0.875                            n > 0

Kronecker input (inseq 1): the uniform grid of positions is replaced by the low-discrepancy
points ``q_j = frac(j·φ)``, ``j = 0 … N-1``, ``φ = (√5 - 1)/2``. The profile
``P(q) = flat top, shape and floor applied to q`` (exactly the uniform map above) is evaluated at
every point and the N values are sorted non-increasing, ``h[0] ≥ h[1] ≥ … ≥ h[N-1]``; ``h[i]``
plays the role of the uniform ``P(i / L)``::

    half window:  N = L,        F(k) = h[k]
    full window:  N = L + 1,    F(k) = h[|2k - L|]

The full window is thus, for both input sequences, the half-window profile read at the folded
index ``d = |2k - L|`` (uniform: ``P(d / L)``): it rises, then falls, and ``F(k) = F(L - k)``
exactly. The flat top is the set of points with ``q < e`` (about a fraction e of them). The sorted
values are computed once per configuration and cached (8 bytes per value, O(N log N) once).
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
import warnings
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from ._checks import finite as _finite

__all__ = ["SHAPES", "UNITS", "PHI", "Window", "WindowLR", "shape_value", "kronecker_point"]

#: Window shapes; the index of a name is the seed's ``rcm`` code.
SHAPES: tuple[str, ...] = (
    "constant",
    "cosine",
    "polynomial",
    "beta-exp",
    "simple-poly",
    "logistic",
    "logistic-late",
)

#: Step units; the index of a name is the seed's ``cfact`` code.
UNITS: tuple[str, ...] = ("epoch", "iteration", "epoch-restart")

#: Golden-ratio conjugate used by the Kronecker input sequence, φ = (√5 − 1)/2.
PHI: float = (math.sqrt(5.0) - 1.0) / 2.0

_LN2 = math.log(2.0)
_INFLECTION = {"logistic": 0.5, "logistic-late": 0.875}
_ORDER_RULE = {
    "constant": ("any finite real number (unused)", lambda n: True),
    "cosine": ("n >= 1", lambda n: n >= 1.0),
    "polynomial": ("n > 0", lambda n: n > 0.0),
    "beta-exp": ("0 < n < 1", lambda n: 0.0 < n < 1.0),
    "simple-poly": ("n > 1", lambda n: n > 1.0),
    "logistic": ("n > 0", lambda n: n > 0.0),
    "logistic-late": ("n > 0", lambda n: n > 0.0),
}
_SEED_FIELDS = ("rcm", "inseq", "x", "n", "m", "tau", "spe", "cfact", "e")
_DICT_FIELDS = ("shape", "order", "floor", "full", "flat", "kronecker", "tau", "spe", "unit")


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def shape_value(shape: str, f: float, n: float) -> float:
    """The raw shape ``shape(f)`` for ``f ∈ [0, 1]``, with shape(0) = 1 and shape(1) = 0 exactly.

    ``cos(π f / 2)`` is computed as ``sin(π (1 - f) / 2)`` so that it is exactly 0 at f = 1.
    The logistic shapes use the identity ``1/(1 + 2^y) = (1 - tanh(y ln2 / 2)) / 2``, giving
    ``shape(f) = (tanh(a(1)) - tanh(a(f))) / (tanh(a(1)) - tanh(a(0)))``, ``a(f) = n ln2 (f - c)``,
    which neither overflows for large n nor loses precision for small n.
    """
    if shape == "cosine":
        return math.sin(0.5 * math.pi * (1.0 - f)) ** n
    if shape == "polynomial":
        return (1.0 - f) ** n
    if shape == "beta-exp":
        return (n**f - n) / (1.0 - n)
    if shape == "simple-poly":
        return (1.0 - f**n) ** 2
    if shape in _INFLECTION:
        c = _INFLECTION[shape]
        top = math.tanh(n * _LN2 * (1.0 - c))
        return (top - math.tanh(n * _LN2 * (f - c))) / (top - math.tanh(-n * _LN2 * c))
    if shape == "constant":
        return 1.0
    raise ValueError(f"shape must be one of {SHAPES}; got {shape!r}")


def kronecker_point(j: int) -> float:
    """The j-th point of the Kronecker (golden-ratio) sequence, ``frac(j·φ)`` (j = 0 gives 0)."""
    return (j * PHI) % 1.0


def _profile(shape: str, order: float, floor: float, flat: float, f: float) -> float:
    """Flat top, shape and floor applied to a position f ∈ [0, 1]: the half-window profile P(f)."""
    if f < flat:
        return 1.0
    if flat:
        f = (f - flat) / (1.0 - flat)
    # x + fl(1 - x) == 1 exactly for every x in [0, 1], so F ∈ [x, 1] holds in floating point.
    return floor + (1.0 - floor) * shape_value(shape, f, order)


@functools.lru_cache(maxsize=16)
def _kronecker_values(shape: str, order: float, floor: float, flat: float, count: int) -> array:
    """P(frac(j φ)) for j = 0 … count-1, sorted non-increasing (cached, read-only by convention)."""
    values = sorted(
        (_profile(shape, order, floor, flat, kronecker_point(j)) for j in range(count)),
        reverse=True,
    )
    return array("d", values)


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _check_int(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int (not bool); got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def _check_code(value: Any, names: tuple[str, ...], name: str) -> str:
    """A name from ``names`` or its integer code (index); returns the name."""
    if isinstance(value, str):
        if value not in names:
            raise ValueError(
                f"{name} must be one of {names} or an int code 0..{len(names) - 1}; got {value!r}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a str or an int code (not bool); got {type(value).__name__} {value!r}"
        )
    if not 0 <= int(value) < len(names):
        raise ValueError(f"{name} code must be in 0..{len(names) - 1}; got {value}")
    return names[int(value)]


def _check_step(step: Any, name: str = "step", minimum: int = 1) -> int:
    """An int-like count: an int, an integral-valued float or a one-element tensor holding one."""
    if isinstance(step, bool):
        raise TypeError(f"{name} must be an int (not bool); got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        if isinstance(step, torch.Tensor) and step.numel() == 1 and not step.is_complex():
            step = step.item()
        if isinstance(step, float) and step.is_integer():
            value = int(step)
        else:
            raise TypeError(f"{name} must be an int; got {type(step).__name__} {step!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Window
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A learning-rate window F(t) ∈ [floor, 1] (spec section 5); see the module docstring.

    Args:
        shape: a name from :data:`SHAPES` or its ``rcm`` code 0..6 (stored as the name).
        order: the shape parameter n (its valid range depends on the shape).
        floor: x ∈ [0, 1], the window's smallest value.
        full: True for a full window (warm-up then anneal, seed ``m = 0``), False for a half
            window (anneal only, ``m = 1``).
        flat: e ∈ [0, 1), the flat-top coverage (fraction of the folded position held at 1).
        kronecker: use the Kronecker (golden-ratio) input sequence (seed ``inseq = 1``).
        tau: epochs per frame (an int ≥ 1).
        spe: optimizer steps per epoch (an int ≥ 1); ``tau·spe ≥ 2``.
        unit: ``"epoch"``, ``"iteration"`` or ``"epoch-restart"``, or the ``cfact`` code 0, 1, 2.
    """

    shape: str = "constant"
    order: float = 2.0
    floor: float = 0.0
    full: bool = False
    flat: float = 0.0
    kronecker: bool = False
    tau: int = 1
    spe: int = 1000
    unit: str = "iteration"

    def __post_init__(self) -> None:
        shape = _check_code(self.shape, SHAPES, "Window.shape (rcm)")
        unit = _check_code(self.unit, UNITS, "Window.unit (cfact)")
        order = _finite("Window.order (n)", self.order)
        floor = _finite("Window.floor (x)", self.floor)
        flat = _finite("Window.flat (e)", self.flat)
        for name in ("full", "kronecker"):
            if not isinstance(getattr(self, name), bool):
                value = getattr(self, name)
                raise TypeError(f"Window.{name} must be a bool; got {type(value).__name__} {value!r}")
        tau = _check_int(self.tau, "Window.tau", 1)
        spe = _check_int(self.spe, "Window.spe", 1)
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"Window.floor (x) must lie in [0, 1]; got {floor}")
        if not 0.0 <= flat < 1.0:
            raise ValueError(f"Window.flat (e) must lie in [0, 1); got {flat}")
        rule, ok = _ORDER_RULE[shape]
        if not ok(order):
            raise ValueError(f"Window.order (n) must satisfy {rule} for shape {shape!r}; got {order}")
        if tau * spe < 2:
            raise ValueError(f"Window.tau * Window.spe must be >= 2; got tau={tau}, spe={spe}")
        if shape != "constant":
            if unit == "epoch" and tau < 2:
                raise ValueError(
                    f"Window.tau must be >= 2 with unit 'epoch' (the frame is tau epochs long); got {tau}"
                )
            if unit == "epoch-restart" and spe < 2:
                raise ValueError(
                    "Window.spe must be >= 2 with unit 'epoch-restart' (the frame is spe steps long); "
                    f"got {spe}"
                )
        for name, value in (("shape", shape), ("unit", unit), ("order", order), ("floor", floor),
                            ("flat", flat), ("tau", tau), ("spe", spe)):
            object.__setattr__(self, name, value)

    # -- basic properties --------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Frame length L: tau·spe steps ("iteration"), spe steps ("epoch-restart"), tau epochs ("epoch")."""
        if self.unit == "iteration":
            return self.tau * self.spe
        if self.unit == "epoch-restart":
            return self.spe
        return self.tau

    @property
    def active(self) -> bool:
        """False for the constant window (F = 1 at every step)."""
        return self.shape != "constant"

    # -- evaluation --------------------------------------------------------------------------

    def profile(self, f: float) -> float:
        """The half-window profile P(f) = x + (1 - x)·shape(f') at a position f ∈ [0, 1]
        (f' = (f - e)/(1 - e), and P = 1 on the flat top f < e)."""
        f = _finite("f", f)
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"f must lie in [0, 1]; got {f}")
        if not self.active:
            return 1.0
        return _profile(self.shape, self.order, self.floor, self.flat, f)

    def frame_value(self, k: int) -> float:
        """F at local index k of a frame, 0 ≤ k < L (see the module docstring)."""
        k = _check_step(k, "k", 0)
        big_l = self.length
        if k >= big_l:
            raise ValueError(f"k must be < the frame length {big_l}; got {k}")
        return self._at(k, big_l)

    def _at(self, k: int, big_l: int) -> float:
        if not self.active:
            return 1.0
        if self.kronecker:
            if self.full:  # the half-window list of L + 1 values at the folded index
                values = _kronecker_values(self.shape, self.order, self.floor, self.flat, big_l + 1)
                return values[abs(2 * k - big_l)]
            return _kronecker_values(self.shape, self.order, self.floor, self.flat, big_l)[k]
        f = abs(2 * k - big_l) / big_l if self.full else k / big_l
        return _profile(self.shape, self.order, self.floor, self.flat, f)

    def local_index(self, step: int, epoch: int | None = None) -> int:
        """The index k ∈ [0, L) of the optimizer's 1-based step count t inside its frame."""
        t = _check_step(step, "step", 1)
        if epoch is not None:
            epoch = _check_step(epoch, "epoch", 0)
        if self.unit == "iteration":
            return (t - 1) % (self.tau * self.spe)
        if self.unit == "epoch-restart":
            return (t - 1) % self.spe
        if epoch is None:
            epoch = (t - 1) // self.spe
        return epoch % self.tau

    def __call__(self, step: int) -> float:
        """F at the optimizer's 1-based step count t ≥ 1 (epoch = (t - 1) // spe); 1.0 if constant."""
        return self.value(step)

    def value(self, step: int, epoch: int | None = None) -> float:
        """F at step t ≥ 1; for unit "epoch" a given 0-based ``epoch`` replaces (t - 1) // spe.

        For the step units the epoch is not needed and is ignored (it is still type-checked).
        """
        k = self.local_index(step, epoch)
        return self._at(k, self.length)

    def frame_values(self) -> list[float]:
        """The L values F(0), …, F(L - 1) of one frame."""
        big_l = self.length
        if self.active and self.kronecker and not self.full:
            return list(_kronecker_values(self.shape, self.order, self.floor, self.flat, big_l))
        return [self._at(k, big_l) for k in range(big_l)]

    # -- conversions -------------------------------------------------------------------------

    @classmethod
    def from_seed(cls, rc_cfg: Sequence[Any]) -> Window:
        """Build from the seed's ``rc_cfg = (rcm, inseq, x, n, m, tau, spe, cfact, e)``.

        ``rcm`` ∈ 0..6 → shape, ``inseq`` ∈ {0, 1} → kronecker, ``x`` → floor, ``n`` → order,
        ``m`` ∈ {0, 1} → full = (m == 0), ``tau``, ``spe``, ``cfact`` ∈ {0, 1, 2} → unit,
        ``e`` → flat.
        """
        if isinstance(rc_cfg, (str, bytes)) or not isinstance(rc_cfg, Sequence):
            raise TypeError(f"rc_cfg must be a tuple of 9 items {_SEED_FIELDS}; got {type(rc_cfg).__name__}")
        if len(rc_cfg) != len(_SEED_FIELDS):
            raise ValueError(f"rc_cfg must have exactly 9 items {_SEED_FIELDS}; got {len(rc_cfg)}")
        rcm, inseq, x, n, m, tau, spe, cfact, e = rc_cfg
        rcm = _check_int(rcm, "rc_cfg[0] (rcm)")
        if not 0 <= rcm < len(SHAPES):
            raise ValueError(f"rc_cfg[0] (rcm) must be in 0..{len(SHAPES) - 1}; got {rcm}")
        inseq = _check_int(inseq, "rc_cfg[1] (inseq)")
        if inseq not in (0, 1):
            raise ValueError(f"rc_cfg[1] (inseq) must be 0 (uniform) or 1 (Kronecker); got {inseq}")
        m = _check_int(m, "rc_cfg[4] (m)")
        if m not in (0, 1):
            raise ValueError(f"rc_cfg[4] (m) must be 0 (full window) or 1 (half window); got {m}")
        cfact = _check_int(cfact, "rc_cfg[7] (cfact)")
        if not 0 <= cfact < len(UNITS):
            raise ValueError(f"rc_cfg[7] (cfact) must be in 0..{len(UNITS) - 1}; got {cfact}")
        return cls(
            shape=SHAPES[rcm],
            order=_finite("rc_cfg[3] (n)", n),
            floor=_finite("rc_cfg[2] (x)", x),
            full=(m == 0),
            flat=_finite("rc_cfg[8] (e)", e),
            kronecker=(inseq == 1),
            tau=_check_int(tau, "rc_cfg[5] (tau)", 1),
            spe=_check_int(spe, "rc_cfg[6] (spe)", 1),
            unit=UNITS[cfact],
        )

    def to_seed(self) -> tuple[int, int, float, float, int, int, int, int, float]:
        """The seed tuple ``(rcm, inseq, x, n, m, tau, spe, cfact, e)``; ``from_seed`` inverts it."""
        return (
            SHAPES.index(self.shape),
            int(self.kronecker),
            self.floor,
            self.order,
            0 if self.full else 1,
            self.tau,
            self.spe,
            UNITS.index(self.unit),
            self.flat,
        )

    def to_dict(self) -> dict[str, str | int | float | bool]:
        """Plain-python fields (safe for ``torch.load(weights_only=True)``)."""
        return {name: getattr(self, name) for name in _DICT_FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Window:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise TypeError(f"d must be a dict; got {type(d).__name__}")
        unknown = set(d) - set(_DICT_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown Window fields {sorted(map(str, unknown))}; expected a subset of {_DICT_FIELDS}"
            )
        return cls(**dict(d))


# ---------------------------------------------------------------------------------------------
# LR scheduler for any torch optimizer
# ---------------------------------------------------------------------------------------------


class WindowLR(LRScheduler):
    r"""Drive any torch optimizer's learning rates with a :class:`Window`.

    After ``s`` calls of :meth:`step` (one per ``optimizer.step()``), group i has

    .. math::  \mathrm{lr}_i = \mathrm{base\_lr}_i \cdot F(s + 1),

    so the first lr, before any ``step()``, is ``base_lr_i · F(1)``, and the lr used by the
    optimizer's t-th step is ``base_lr_i · F(t)``: the same schedule AutoSGM applies internally.
    The lr is a closed form of the step count (no recursion), so ``state_dict`` /
    ``load_state_dict`` resume it exactly; the window is stored as a plain dict.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, window: Window, last_epoch: int = -1) -> None:
        if not isinstance(window, Window):
            raise TypeError(f"window must be a Window; got {type(window).__name__}")
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, numbers.Integral):
            raise TypeError(f"last_epoch must be an int; got {type(last_epoch).__name__}")
        if last_epoch < -1:
            raise ValueError(f"last_epoch must be >= -1; got {last_epoch}")
        self.window = window
        super().__init__(optimizer, int(last_epoch))

    def get_lr(self) -> list[float | torch.Tensor]:
        """``base_lr_i · F(last_epoch + 1)`` for every param group."""
        if not self._get_lr_called_within_step:
            warnings.warn(
                "To get the last learning rate computed by the scheduler, please use `get_last_lr()`.",
                UserWarning,
                stacklevel=2,
            )
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        factor = self.window(self.last_epoch + 1)
        return [base_lr * factor for base_lr in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state; the window is stored as :meth:`Window.to_dict`."""
        state = super().state_dict()
        state["window"] = self.window.to_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (including its window)."""
        state = dict(state_dict)
        window = state.pop("window", None)
        if window is not None and not isinstance(window, Window):
            window = Window.from_dict(window)
        super().load_state_dict(state)
        if window is not None:
            self.window = window
