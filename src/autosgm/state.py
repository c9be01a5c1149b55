r"""A parameter's state: which buffers a configuration keeps, and the checks of a state that the
optimizer is given (replaced by hand, loaded from a checkpoint, kept across a change of settings).

:func:`buffer_layout` and :func:`buffer_shapes` say what :meth:`AutoSGM._init_state
<autosgm.AutoSGM>` creates; :func:`state_mismatch` says, naming the setting, why a given state
cannot be stepped with a configuration. The step itself (:mod:`autosgm.step`) reads the buffers
by name and knows nothing of this.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import torch
from torch import Tensor

from .config import AutoSGMConfig
from .ops import plain_value
from .step import MATRIX_NUMERATOR_BUFFERS, NUMERATOR_BUFFERS, PER_TENSOR_STATS, gets_matrix_step

__all__ = ["STATE_NAMES", "NUMERATOR_OF_BUFFERS", "buffer_layout", "buffer_shapes", "buffer_structure",
           "filter_conversion", "real_view", "correlation_start", "state_shape", "state_mismatch", "step_problem",
           "step_tensor", "normalize_steps"]

#: Every name a parameter's state may hold.
STATE_NAMES = frozenset({"step", "filter_state", "moment", "matrix_m", "num_a"}).union(*NUMERATOR_BUFFERS.values())
#: The numerator whose buffers (besides ``num_a``) are exactly these.
NUMERATOR_OF_BUFFERS = {frozenset(names): name for name, names in NUMERATOR_BUFFERS.items()}


def buffer_layout(cfg: AutoSGMConfig, matrix: bool = False) -> dict[str, str]:
    """The buffers of a parameter's state under ``cfg`` (besides ``step``), each with its kind:
    ``"element"`` (the parameter's shape), ``"tensor"`` (0-d, one value per tensor) or ``"matrix"``
    (``n × n`` for a parameter viewed as ``n × m``, ``n ≤ m``). ``matrix``: the parameter is stepped
    with the matrix oracle (:func:`~autosgm.step.gets_matrix_step`): no ``moment``; ``M`` when averaged."""
    if matrix:
        layout = {"filter_state": "element"} if cfg.has_filter_state else {}
        if cfg.matrix_averaged:
            layout["matrix_m"] = "matrix"
        for name in MATRIX_NUMERATOR_BUFFERS[cfg.numerator]:
            layout[name] = "matrix" if name == "num_c" else "tensor"
        return layout
    layout = {}
    if cfg.has_filter_state:
        layout["filter_state"] = "element"
    if cfg.normalize:
        layout["moment"] = "element"
    per_tensor = cfg.numerator_mode == "tensor"
    names = NUMERATOR_BUFFERS[cfg.numerator]
    if per_tensor and cfg.numerator != "unity":
        names = names + ("num_a",)
    for name in names:
        layout[name] = "tensor" if per_tensor and name in PER_TENSOR_STATS else "element"
    return layout


def buffer_shapes(cfg: AutoSGMConfig, p: Tensor) -> dict[str, tuple[int, ...]]:
    """The buffers of ``p``'s state under ``cfg`` (besides ``step``) with their shapes (:func:`buffer_layout`)."""
    matrix = gets_matrix_step(p, cfg)
    n = min(p.shape[0], math.prod(p.shape[1:])) if matrix else 0
    shapes = {"element": state_shape(p), "tensor": (), "matrix": (n, n)}
    return {name: shapes[kind] for name, kind in buffer_layout(cfg, matrix).items()}


def buffer_structure(cfg: AutoSGMConfig) -> tuple:
    """The settings that decide which buffers a group's state holds (see :func:`buffer_layout`)."""
    mode = cfg.numerator_mode if cfg.numerator != "unity" else None
    matrix = (cfg.oracle, cfg.matrix_averaged) if cfg.oracle == "matrix" else None
    return cfg.has_filter_state, cfg.normalize, cfg.numerator, mode, matrix


def filter_conversion(old: AutoSGMConfig, new: AutoSGMConfig) -> float | None:
    """The factor that carries the filter buffer from ``old``'s form into ``new``'s, or None.

    For γ = 0 the buffer is the filter's output ``v = η Σ βᵏ g``; for γ ≠ 0 the input's average
    ``u = (1 − β) Σ βᵏ g`` (so ``u = v (1 − β)/η``).
    """
    if not (old.has_filter_state and new.has_filter_state) or (old.gamma == 0.0) == (new.gamma == 0.0):
        return None
    factor = (1.0 - old.beta) / old.eta if old.gamma == 0.0 else new.eta / (1.0 - new.beta)
    return None if factor == 1.0 else factor


def real_view(t: Tensor) -> Tensor:
    """``t``, or its real view when complex (a complex parameter is stepped as pairs of reals)."""
    return torch.view_as_real(t) if t.is_complex() else t


def correlation_start(cfg: AutoSGMConfig, w: Tensor) -> float:
    """Where the partial-correlation accumulator ``c`` of ``w`` starts: ``c₀ = zero_tensor_start``
    when ``w`` is all zero, else 0 (spec §4).

    ``x = w · v̄`` is 0 while ``w`` is, so from ``c = 0`` a zero-initialised tensor (biases, norm
    shifts) would keep ``a = 0`` and never move. Started at ``c₀`` it steps with ``a ≈ c₀`` until
    its own correlation takes over; a tensor with any non-zero weight starts at 0 and steps exactly
    by the spec's formulas. Read once, when the state is created (for a sharded parameter, over the
    whole tensor).
    """
    c0 = cfg.zero_tensor_start
    if c0 == 0.0 or not cfg.numerator.startswith("parcor"):
        return 0.0
    return 0.0 if bool(plain_value(torch.count_nonzero(w))) else c0


def state_shape(p: Tensor) -> tuple[int, ...]:
    """The shape of ``p``'s element-wise buffers (complex parameters are stepped as their real view)."""
    return tuple(p.shape) + ((2,) if p.is_complex() else ())


def state_mismatch(state: Any, cfg: AutoSGMConfig, p: Tensor) -> str | None:
    """Why the ``state`` of the parameter ``p`` cannot be stepped with ``cfg``, or None.

    The reason names the setting that asks for other buffers, e.g. ``numerator (the state is that
    of 'unity', the settings say 'corr')``.
    """
    if not isinstance(state, dict):
        return f"the state is a {type(state).__name__}, not a dict of buffers"
    foreign = sorted(str(k) for k in state if k not in STATE_NAMES)
    if foreign:
        return f"the state holds buffers AutoSGM does not keep ({', '.join(foreign)}): is it another optimizer's state?"
    if "step" not in state:
        return "the state has no step count"
    problem = step_problem(state["step"])
    if problem is not None:
        return problem
    have, want = set(state) - {"step"}, buffer_shapes(cfg, p)
    if gets_matrix_step(p, cfg) or "matrix_m" in have or ("num_c" in have and "moment" not in have):
        settings = _matrix_mismatch(have, want, cfg, gets_matrix_step(p, cfg))
        return settings or _buffer_mismatch(state, have, want)
    settings = []
    if ("filter_state" in have) != ("filter_state" in want):
        settings.append("betas[0] and gamma (the state " + (
            "holds a filter buffer, the settings β = γ = 0 keep none)" if "filter_state" in have
            else "holds no filter buffer (β = γ = 0), the settings need one)"))  # fmt: skip
    if ("moment" in have) != ("moment" in want):
        settings.append(f"normalize (the state was made with normalize={'moment' in have}, "
                        f"the settings say {cfg.normalize})")
    numerator = NUMERATOR_OF_BUFFERS.get(frozenset(have - {"filter_state", "moment", "num_a"}))
    if numerator != cfg.numerator:
        held = f"that of {numerator!r}" if numerator else "no numerator's buffers"
        settings.append(f"numerator (the state is {held}, the settings say {cfg.numerator!r})")
    elif numerator != "unity" and ("num_a" in have) != (cfg.numerator_mode == "tensor"):
        mode = "tensor" if "num_a" in have else "element"
        settings.append(f"numerator_mode (the state is per {mode}, the settings say {cfg.numerator_mode!r})")
    if settings:
        return "; ".join(settings)
    return _buffer_mismatch(state, have, want)


def _matrix_mismatch(have: set[str], want: dict[str, Any], cfg: AutoSGMConfig, matrix: bool) -> str | None:
    """Which setting makes a matrix-oracle state (or a state for one) differ from ``cfg``'s, or None."""
    made_matrix = "moment" not in have and ("matrix_m" in have or "num_c" in have or cfg.normalize)
    if matrix != made_matrix:
        return (f"oracle (the state is that of the {'matrix' if made_matrix else 'element-wise'} oracle, the "
                f"settings give this tensor the {'matrix' if matrix else 'element-wise'} oracle)")  # fmt: skip
    settings = []
    if ("filter_state" in have) != ("filter_state" in want):
        settings.append("betas[0] and gamma (the filter's memory differs)")
    if ("matrix_m" in have) != ("matrix_m" in want):
        settings.append(f"matrix_pole (the state {'holds' if 'matrix_m' in have else 'holds no'} average of V Vᵀ, "
                        f"the settings say matrix_pole={cfg.matrix_pole})")  # fmt: skip
    nums = have - {"filter_state", "matrix_m"}
    if nums != set(want) - {"filter_state", "matrix_m"}:
        settings.append(f"numerator (the state holds the numerator buffers {sorted(nums)}, the settings say "
                        f"{cfg.numerator!r})")  # fmt: skip
    return "; ".join(settings) or None


def _buffer_mismatch(state: dict[str, Any], have: set[str], want: dict[str, tuple[int, ...]]) -> str | None:
    """Why the buffers ``have`` of ``state`` are not those ``want``ed, with their shapes, or None."""
    if have != set(want):
        return f"the state holds the buffers {sorted(have)}, the settings need {sorted(want)}"
    for name, need in want.items():
        value = state[name]
        if not isinstance(value, Tensor):
            return f"{name} is a {type(value).__name__}, not a tensor"
        if tuple(value.shape) != need:
            return f"{name} has shape {tuple(value.shape)}, the parameter needs {need}"
    return None


def step_problem(value: Any) -> str | None:
    """Why ``value`` is not a step count (a whole number >= 0, as a number or a one-element tensor)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return f"step has {value.numel()} elements, not one"
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"step is {type(value).__name__} {value!r}, not a number"
    if not (math.isfinite(value) and value >= 0 and float(value).is_integer()):
        return f"step must be a whole number >= 0, got {value}"
    return None


def step_tensor(value: Any, copy: bool = False) -> Tensor:
    """A step count as the step keeps it: a 0-d float32 CPU tensor (``value`` itself if it is one)."""
    if isinstance(value, Tensor):
        if not copy and value.dtype == torch.float32 and value.device.type == "cpu" and value.dim() == 0:
            return value
        return value.detach().to(device="cpu", dtype=torch.float32, copy=True).reshape(())
    return torch.tensor(float(value), dtype=torch.float32)


def normalize_steps(states: Iterable[Any]) -> None:
    """Make every ``state["step"]`` a 0-d float32 CPU tensor (older checkpoints hold numbers)."""
    for state in states:
        if isinstance(state, dict) and "step" in state:
            state["step"] = step_tensor(state["step"])
