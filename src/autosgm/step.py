r"""The AutoSGM step in the spec's terms, top to bottom (spec §1-§6).

    g ─► [gradient input] ─► [filter H] ─► v ─┐
                 │                             ├─► [numerator a] ─► [update: Δ = −μ F a (v̂/d + ρ_d w)]
                 └──────► [moment d] ─────────┘

:func:`tensor_step` runs the stages in order; each stage is a small function with its math in
its docstring. The stages compute with the element-wise primitives of an ``ops`` object that the
caller passes (:mod:`autosgm.ops`): for one tensor they are torch's own functions, for a list of
tensors ``torch._foreach_*`` kernels, inside ``torch.compile`` plain arithmetic, on a pack of
small tensors the same with per-tensor quantities as vectors. Which one runs is the caller's
business: the math here is written once and does not know. Two results are written, with ``out=``,
into a temporary of the step that is spent (v̄ into the denominator's, ``|c|`` into ``x``'s), each
after its last reader; an ops set may ignore ``out`` (lists, compiled code), and the values do not
depend on it.

The step's scalars (``μF[t]``, ``S[t]``, the moment's debias) are computed once per step by
:func:`step_scalars`: Python floats, or 0-d tensors in compiled code (new values are new data,
not a new program).

A *per-tensor* quantity (one value per tensor: the smoothed numerator, the prefilter statistics
in ``numerator_mode="tensor"``) is a 0-d tensor for one tensor and a vector with an entry per
tensor for a list or a pack.

State buffers (per parameter, created only when the configuration needs them):

=================  ==============================================================================
``filter_state``   γ = 0: v[t] (torch's ``exp_avg``); γ ≠ 0: u[t] = β u[t−1] + (1 − β) g[t]
``moment``         m[t] = β_a m[t−1] + (1 − β_a)(g[t]² [+ ε²])
``num_c``          numerator accumulator (partial correlation) or EMA of ḡ² (``corr``)
``num_w2``         E[w²], normalized EMA with pole β_n (cap of codes 2-4)
``num_absx``       E|x| (Markov prefilter), pole β_a
``num_xmean``      E[x] and ``num_xvar`` Var[x] (Chebyshev prefilter), pole β_a
``num_a``          per-tensor numerator after the short smoothing filter (pole 0.1), 0-d
=================  ==============================================================================

A weight matrix in a group with ``oracle="matrix"`` (:func:`gets_matrix_step`) is stepped by
:func:`matrix_step` instead (spec §9): the same gradient input and filter, then the matrix oracle
``M^(−1/2)`` in place of the moment ``d``. Its state has no ``moment``; it keeps ``matrix_m``
(``M``, ``n × n``, when ``matrix_pole > 0``) and, for a partial-correlation numerator, the
``n × n`` accumulator ``num_c`` (:data:`MATRIX_NUMERATOR_BUFFERS`).

State dtype (:func:`state_dtype`): the parameter's dtype, except float16/bfloat16 parameters,
whose state is float32 and whose step is computed in float32 (the result is rounded into the
parameter once). A float16/bfloat16 state would not work: with β_a = 0.999 the moment's pole
itself rounds to 1 in bfloat16 (8 significant bits), so the estimate would never decay, and
increments below 2⁻⁸ of the state are lost.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence, Union

import torch
from torch import Tensor

from . import matrix as _matrix
from .config import AutoSGMConfig
from .design import default_eta

__all__ = [
    "NUMERATOR_BUFFERS",
    "PER_TENSOR_STATS",
    "ROBUST_K",
    "SHORT_POLE",
    "PARCOR",
    "StepScalars",
    "step_scalars",
    "state_dtype",
    "tensor_step",
    "gradient_input",
    "FilterOutput",
    "lowpass",
    "form",
    "lowpass_finish",
    "moment",
    "markov_clip",
    "chebyshev_clip",
    "cap_one",
    "cap_weight",
    "partial_correlation",
    "mean_square",
    "numerator",
    "apply_update",
    "MATRIX_NUMERATOR_BUFFERS",
    "gets_matrix_step",
    "matrix_step",
    "lowpass_whole",
    "matrix_direction",
    "matrix_numerator",
    "matrix_update",
]

TensorLike = Union[Tensor, Sequence[Tensor]]

#: The prefilters' clipping constant k (Markov: P(|x| > k E|x|) ≤ 1/k; Chebyshev: ≤ 1/k²).
ROBUST_K = 4.0
#: Pole of the short filter that smooths a per-tensor numerator.
SHORT_POLE = 0.1

#: Element-wise numerator buffers each numerator needs (in addition to the 0-d ``num_a`` of the
#: per-tensor mode). In per-tensor mode the prefilter statistics are 0-d (statistics of the
#: tensor's values), in element-wise mode they are element-wise.
NUMERATOR_BUFFERS: dict[str, tuple[str, ...]] = {
    "unity": (),
    "corr": ("num_c",),
    "parcor-bounded": ("num_c", "num_xmean", "num_xvar"),
    "parcor-maxbound": ("num_c", "num_w2"),
    "parcor-markov": ("num_c", "num_w2", "num_absx"),
    "parcor-chebyshev": ("num_c", "num_w2", "num_xmean", "num_xvar"),
}
#: The numerator buffers of a tensor with the matrix oracle: ``num_c`` is the ``n × n`` accumulator C,
#: ``num_w2`` (the cap of codes 2-4) and ``num_a`` are 0-d (:func:`matrix_numerator`).
MATRIX_NUMERATOR_BUFFERS: dict[str, tuple[str, ...]] = {
    "unity": (),
    "parcor-bounded": ("num_c", "num_a"),
    "parcor-maxbound": ("num_c", "num_w2", "num_a"),
    "parcor-markov": ("num_c", "num_w2", "num_a"),
    "parcor-chebyshev": ("num_c", "num_w2", "num_a"),
}
#: Buffers that are 0-d (one value per tensor) in per-tensor mode.
PER_TENSOR_STATS = frozenset({"num_absx", "num_xmean", "num_xvar", "num_a"})

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the state (and of the step's arithmetic) for a parameter of ``dtype``."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


class StepScalars(NamedTuple):
    """The scalars of one step at count ``t``: Python floats, or 0-d tensors in compiled code.

    The last three are derived from the first three on the host, once per step, so that a
    compiled kernel does not divide by them for every element.
    """

    scale: Any  #: μ F[t]
    debias: Any  #: S[t], the filter's unit-step response (1 without debias)
    root_moment_debias: Any  #: sqrt(1 − β_a^t) (1 without debias)
    step_size: Any  #: μ F[t] / S[t]
    inv_root: Any  #: 1 / sqrt(1 − β_a^t)
    denom_scale: Any  #: S[t] / sqrt(1 − β_a^t)


def step_scalars(cfg: AutoSGMConfig, t: int, mu: float) -> tuple[StepScalars, float]:
    """The step's scalars at count ``t`` with ``μ = mu``, and the window value ``F[t]``."""
    F = cfg.window(t) if cfg.window is not None else 1.0
    root = math.sqrt(cfg.moment_debias(t)) if cfg.debias else 1.0
    scale, S = mu * F, cfg.filter_debias(t)
    return StepScalars(scale, S, root, scale / S, 1.0 / root, S / root), F


# ----------------------------------------------------------------------------------------------
# the step: the stages in order
# ----------------------------------------------------------------------------------------------
def tensor_step(
    ops,
    w: TensorLike,
    grad: TensorLike,
    state: dict[str, Any],
    cfg: AutoSGMConfig,
    scalars: StepScalars,
    record: Callable[..., None] | None = None,
) -> None:
    """One AutoSGM step of ``w`` (a tensor, or what ``ops`` computes on), in place.

    ``state`` maps buffer names to the buffer of ``w``; ``scalars`` holds the step's scalars. A
    float16/bfloat16 ``w`` is stepped in float32 (its state's dtype) and rounded once.
    ``record(v, d, a)``, if given, sees the filter output, the denominator and the numerator
    before the parameter moves (the trajectory hooks).
    """
    dtype = ops.dtype(w)
    work = w
    if state_dtype(dtype) != dtype:
        work, grad = ops.to(w, state_dtype(dtype)), ops.to(grad, state_dtype(dtype))
    s = state.get("filter_state")
    g = gradient_input(ops, grad, work, cfg)  # g ← −g (maximize); g ← g + ρw (coupled)
    v = lowpass(ops, s, g, cfg)  # v = H{g}
    if cfg.numerator == "unity":
        d = moment(ops, state["moment"], g, cfg, scalars) if cfg.normalize else None  # d = √m̂ + ε
        if record is not None:
            record(form(ops, v), d, None)
        apply_update(ops, work, v, d, None, cfg, scalars)  # w ← w − (μF/S) v/d
    else:
        # the numerator needs v̂/d = v/(S d): fold S into the denominator, d̃ = S d
        d = moment(ops, state["moment"], g, cfg, scalars, scaled=True)
        v = form(ops, v)
        S = scalars.debias if cfg.debias else 1.0
        gbar = ops.div(g, d) if cfg.numerator == "corr" else None  # g/d̃ (for corr only)
        seen = ops.div(d, S) if record is not None else None  # d, for the record
        vbar = ops.div(v, d, out=d)  # v̄ = v̂/d = v/d̃, in d̃'s memory (d̃ is not read again)
        a = numerator(ops, state, work, gbar, vbar, cfg, S)  # a ≈ E[w v̄] ...
        if record is not None:
            record(v, seen, a)
        apply_update(ops, work, v, None, a, cfg, scalars, vbar)  # w ← w − μF a (v̄ + ρ_d w)
    lowpass_finish(ops, s, g, cfg)
    if work is not w:
        ops.copy_(w, work)


# ----------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------
def gradient_input(ops, g: TensorLike, w: TensorLike, cfg: AutoSGMConfig) -> TensorLike:
    """Filter input: ``g ← −g`` when maximizing, then coupled (L2) decay ``g ← g + ρ w``.

    Weight decay still shrinks the weights when maximizing (as in torch.optim). The caller's
    gradient is never modified.
    """
    coupled = cfg.weight_decay != 0.0 and not cfg.decoupled_weight_decay
    if cfg.maximize:
        g = ops.neg(g)
        if coupled:
            ops.add_(g, w, alpha=cfg.weight_decay)
    elif coupled:
        g = ops.add(g, w, alpha=cfg.weight_decay)
    return g


class FilterOutput(NamedTuple):
    """The filter output ``v = a·g + b·u`` for γ ≠ 0, as its two terms: a consumer that reads
    ``v`` once (the parameter step) reads ``g`` and ``u`` instead of writing ``v`` first."""

    a: float  #: η
    g: TensorLike  #: the filter input g[t]
    b: float  #: K = η(β − γ)/(1 − β)
    u: TensorLike  #: the state u[t−1]


def lowpass(ops, s: TensorLike | None, g: TensorLike, cfg: AutoSGMConfig) -> TensorLike | FilterOutput:
    """Low-pass filter ``v[t] = β v[t−1] + η (g[t] − γ g[t−1])``, zero initial conditions.

    One buffer. For γ = 0 it is ``v`` itself (torch's ``momentum_buffer``/``exp_avg``), updated in
    place: ``v ← β v + η g`` (a ``lerp`` when η = 1 − β). For γ ≠ 0 it is ``u[t]``, the average
    of the input with the pole, ``u[t] = β u[t−1] + (1 − β) g[t]``, and

        v[t] = η g[t] + K u[t−1],    K = η (β − γ) / (1 − β):

    ``v[t] − β v[t−1] = η g[t] − βη g[t−1] + K (u[t−1] − β u[t−2]) = η g[t] + (K (1 − β) − βη) g[t−1]
    = η (g[t] − γ g[t−1])``, the spec's difference equation. This returns that sum as a
    :class:`FilterOutput` (:func:`form` makes it a tensor) and :func:`lowpass_finish` advances
    ``u`` once ``v[t]`` was used. Returns ``v`` (for γ = 0 it aliases the buffer: do not modify it).
    """
    beta, eta = cfg.beta, cfg.eta
    if s is None:  # β = γ = 0: a pure gain
        return g if eta == 1.0 else ops.mul(g, eta)
    if cfg.gamma != 0.0:
        return FilterOutput(eta, g, cfg.filter_state_gain, s)
    if cfg.lerp_filter:
        ops.lerp_(s, g, eta)
    else:
        ops.mul_(s, beta)
        ops.add_(s, g, alpha=eta)
    return s


def form(ops, v: TensorLike | FilterOutput) -> TensorLike:
    """``v`` as a tensor (a new one for a :class:`FilterOutput`: ``a g + b u``)."""
    if not isinstance(v, FilterOutput):
        return v
    out = ops.mul(v.g, v.a)
    if v.b != 0.0:
        ops.add_(out, v.u, alpha=v.b)
    return out


def lowpass_finish(ops, s: TensorLike | None, g: TensorLike, cfg: AutoSGMConfig) -> None:
    """Advance the γ ≠ 0 state after ``v[t]`` was used: ``u[t] = β u[t−1] + (1 − β) g[t]``."""
    if s is None or cfg.gamma == 0.0:
        return
    ops.lerp_(s, g, 1.0 - cfg.beta)


def moment(ops, m: TensorLike, g: TensorLike, cfg: AutoSGMConfig, scalars: StepScalars,
           scaled: bool = False) -> TensorLike:  # fmt: skip
    """Denominator ``d[t] = sqrt(m[t] / (1 − β_a^t)) + ε``, ``m[t] = β_a m[t−1] + (1 − β_a) g²``.

    ``repeat_eps`` also applies ε inside the estimator (``g² → g² + ε²``). Returns a new tensor:
    ``d`` in torch's Adam order (``sqrt``, ``/ sqrt(1 − β_a^t)``, ``+ ε``), or with ``scaled``
    ``S[t] · d = (S[t] / sqrt(1 − β_a^t)) sqrt(m) + ε S[t]`` (same number of passes).
    """
    ba = cfg.beta_a
    ops.mul_(m, ba)
    ops.addcmul_(m, g, g, 1.0 - ba)
    if cfg.repeat_eps:
        ops.add_(m, (1.0 - ba) * cfg.eps * cfg.eps)
    d = ops.sqrt(m)
    if not scaled:
        if cfg.debias:
            ops.div_(d, scalars.root_moment_debias, scalars.inv_root)
        ops.add_(d, cfg.eps)
    elif cfg.debias:
        ops.scale_shift_(d, scalars.denom_scale, cfg.eps * scalars.debias)
    else:
        ops.add_(d, cfg.eps)
    return d


def _ema_(ops, state, x, pole: float) -> None:
    """Normalized single-pole average ``s ← pole·s + (1 − pole)·x`` (in place; element-wise or
    per tensor)."""
    ops.average_(state, x, 1.0 - pole)


# The numerator's estimators (spec §4). ``st`` maps buffer names to the buffers; ``x = w · v̄`` is
# a fresh tensor.
def markov_clip(ops, st: dict[str, Any], x: TensorLike, cfg: AutoSGMConfig) -> None:
    """Markov prefilter: ``x ← sign(x)·min(|x|, k E|x|) = clip(x, ±k E|x|)`` (k = 4; since
    ``P(|x| > k E|x|) ≤ 1/k``), with ``E|x|`` a pole-β_a average (per tensor: of ``mean |x|``)."""
    per_tensor = cfg.numerator_mode == "tensor"
    _ema_(ops, st["num_absx"], ops.mean_abs(x) if per_tensor else ops.abs(x), cfg.beta_a)
    bound = ops.mul(st["num_absx"], ROBUST_K)
    ops.clip_(x, ops.neg(bound), bound)


def chebyshev_clip(ops, st: dict[str, Any], x: TensorLike, cfg: AutoSGMConfig) -> None:
    """Chebyshev prefilter: ``x ← clip(x, E[x] ± k sd(x))`` (k = 4; ``P(|x − E x| > k sd) ≤ 1/k²``),
    with ``E[x]`` and ``Var[x] = E[(x − E[x])²]`` pole-β_a averages (per tensor: of the means)."""
    ba = cfg.beta_a
    mean, var = st["num_xmean"], st["num_xvar"]
    if cfg.numerator_mode == "tensor":
        _ema_(ops, mean, ops.mean(x), ba)
        _ema_(ops, var, ops.mean_sq_dev(x, mean), ba)
    else:
        _ema_(ops, mean, x, ba)
        dev = ops.sub(x, mean)
        ops.mul_(dev, dev)
        _ema_(ops, var, dev, ba)
    sd = ops.sqrt(var)
    lo = ops.add(mean, sd, alpha=-ROBUST_K)  # E[x] − k sd (k sd is exact: k = 4)
    ops.clip_(x, lo, ops.add(mean, sd, alpha=ROBUST_K))


def cap_one(ops, st: dict[str, Any], w: TensorLike, a: TensorLike, cfg: AutoSGMConfig) -> None:
    """Cap of ``parcor-bounded``: ``a ← min(a, 1)``."""
    ops.minimum_(a, 1.0)


def cap_weight(ops, st: dict[str, Any], w: TensorLike, a: TensorLike, cfg: AutoSGMConfig) -> None:
    """Cap of codes 2-4: ``a ← min(a, 1 + E[w²])``, ``E[w²] ← β_n E[w²] + (1 − β_n) w²``."""
    w2, bn = st["num_w2"], cfg.beta_n
    ops.mul_(w2, bn)
    ops.addcmul_(w2, w, w, 1.0 - bn)
    ops.minimum_(a, ops.add(w2, 1.0))


#: The partial-correlation numerators: (prefilter of x = w·v̄ or None, cap of a = |c|).
PARCOR = {
    "parcor-bounded": (chebyshev_clip, cap_one),
    "parcor-maxbound": (None, cap_weight),
    "parcor-markov": (markov_clip, cap_weight),
    "parcor-chebyshev": (chebyshev_clip, cap_weight),
}


def partial_correlation(ops, st: dict[str, Any], w: TensorLike, vbar: TensorLike, cfg: AutoSGMConfig) -> TensorLike:
    """``a = cap(|c|)`` with the accumulator ``c ← β_n c + x``, ``x = prefilter(w · v̄)``."""
    prefilter, cap = PARCOR[cfg.numerator]
    c, bn, x = st["num_c"], cfg.beta_n, None
    if prefilter is None:
        ops.mul_(c, bn)
        ops.addcmul_(c, w, vbar, 1.0)  # c ← β_n c + w v̄
    else:
        x = ops.mul(w, vbar)
        prefilter(ops, st, x, cfg)
        ops.scale_add_(c, bn, x)  # c ← β_n c + x
    a = ops.abs(c, out=x)  # a = |c| (in x's memory where there is an x: x is spent once it is in c)
    cap(ops, st, w, a, cfg)
    return a


def mean_square(ops, st: dict[str, Any], gbar: TensorLike, cfg: AutoSGMConfig, debias: Any) -> TensorLike:
    """``corr``: ``a = min(E[(g/d)²], 1)``, ``E ← β_n E + (1 − β_n) (g/d)²``; ``gbar`` is ``g / d̃`` with
    ``d̃ = S·d`` (``S = debias``), so ``(g/d)² = S² gbar²``."""
    c, bn = st["num_c"], cfg.beta_n
    ops.mul_(c, bn)
    ops.addcmul_(c, gbar, gbar, (1.0 - bn) * debias * debias)
    return ops.minimum(c, 1.0)


def numerator(
    ops,
    st: dict[str, Any],
    w: TensorLike,
    gbar: TensorLike | None,
    vbar: TensorLike,
    cfg: AutoSGMConfig,
    debias: Any = 1.0,
) -> Any:
    """Learning-rate numerator ``a[t]`` (spec §4) for ``cfg.numerator``; ``None`` for ``unity`` (a = 1).

    ``x = w · v̄`` with ``v̄ = v̂ / d``; ``gbar = g / (S·d)`` (``S = debias``; only ``corr`` reads
    it): :func:`partial_correlation` (prefilters :func:`markov_clip`, :func:`chebyshev_clip`; caps
    :func:`cap_one`, :func:`cap_weight`) or :func:`mean_square`. Per-tensor mode returns
    ``mean(a)`` smoothed by a pole-0.1 filter (one value per tensor); element-wise mode returns
    ``a`` itself.
    """
    if cfg.numerator == "unity":
        return None
    if cfg.numerator == "corr":
        a = mean_square(ops, st, gbar, cfg, debias)
    else:
        a = partial_correlation(ops, st, w, vbar, cfg)
    if cfg.numerator_mode != "tensor":
        return a
    _ema_(ops, st["num_a"], ops.mean_nonneg(a), SHORT_POLE)  # the per-tensor smoothing
    return st["num_a"]


def apply_update(
    ops,
    p: TensorLike,
    v: TensorLike | FilterOutput,
    d: TensorLike | None,
    a: Any,
    cfg: AutoSGMConfig,
    scalars: StepScalars,
    vbar: TensorLike | None = None,
) -> None:
    """Parameter step ``w ← w − μ F a (v̂/d + ρ_d w)``, ``v̂ = v / S[t]``, in place.

    ``ρ_d`` is the decoupled decay (AdamW convention), else 0. With ``a = 1`` this is
    ``w ← (1 − μFρ_d) w − (μF/S) v/d`` — exactly torch's Adam/AdamW/SGD update order. With a
    numerator, ``vbar`` (= v̂/d, a fresh tensor) is given and reused.
    """
    rho = cfg.weight_decay if cfg.decoupled_weight_decay else 0.0
    if a is None:
        if rho != 0.0:
            ops.mul_(p, 1.0 - scalars.scale * rho)
        # v = a g + b u (γ ≠ 0) is read as its two terms, one pass each
        terms = ((v.a, v.g), (v.b, v.u)) if isinstance(v, FilterOutput) else ((1.0, v),)
        for coef, x in terms:
            if coef == 0.0:
                continue
            if d is None:
                ops.add_(p, x, alpha=-scalars.step_size * coef)
            else:
                ops.addcdiv_(p, x, d, -scalars.step_size * coef)
        return
    if rho != 0.0:
        ops.add_(vbar, p, alpha=rho)
    ops.addcmul_(p, vbar, a, -scalars.scale)


# ----------------------------------------------------------------------------------------------
# the matrix oracle (spec §9): a weight matrix's step
# ----------------------------------------------------------------------------------------------
def gets_matrix_step(p: Tensor, cfg: AutoSGMConfig) -> bool:
    """Whether ``p`` is stepped by :func:`matrix_step`: its group has ``oracle="matrix"`` and ``p`` is a
    real matrix (after reshaping to 2-D) with both dims in ``[MIN_DIM, MAX_DIM]``
    (:func:`~autosgm.matrix.gets_matrix_oracle`). Every other tensor of the group keeps the
    element-wise oracle with the group's settings."""
    return cfg.oracle == "matrix" and not p.is_complex() and _matrix.gets_matrix_oracle(p)


def matrix_step(
    ops,
    w: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    cfg: AutoSGMConfig,
    scalars: StepScalars,
    t: int,
    record: Callable[..., None] | None = None,
) -> None:
    r"""One matrix-oracle step of the weight matrix ``w`` at count ``t`` (spec §9), in place.

        g ─► [gradient input] ─► [filter H] ─► V = v̂ ─► [M, O = M^(−1/2) V] ─► [numerator a]
          ─► [update: Δ = −μ F a (s O + ρ_d w)]

    ``V`` is ``v̂ = v / S[t]`` viewed as an ``n × m`` matrix with ``n ≤ m``
    (:func:`~autosgm.matrix.as_matrix`), ``M = V Vᵀ`` or its average, ``s`` the learning-rate
    factor of ``matrix_lr_scale``. ``ops`` runs the filter stages (one tensor: ``TENSOR_OPS``).
    A float16/bfloat16 ``w`` is stepped in float32 (its state's dtype) and rounded once.
    ``record(v, None, a)``, if given, sees the filter output and the numerator.
    """
    dtype = ops.dtype(w)
    work = w
    if state_dtype(dtype) != dtype:
        work, grad = ops.to(w, state_dtype(dtype)), ops.to(grad, state_dtype(dtype))
    g = gradient_input(ops, grad, work, cfg)  # g ← −g (maximize); g ← g + ρw (coupled)
    v = lowpass_whole(ops, state.get("filter_state"), g, cfg)  # v = H{g}
    V, transposed = _matrix.as_matrix(ops.div(v, scalars.debias) if cfg.debias else v)  # V = v̂, n ≤ m
    O = matrix_direction(state, V, cfg, t)  # O = (M + εI)^(−1/2) V
    W = _matrix.as_matrix(work)[0]
    a = matrix_numerator(ops, state, W, O, cfg)  # a = min(‖E[W Oᵀ]‖ / √(n m), cap), or 1
    if record is not None:
        record(v, None, a)
    matrix_update(work, O, transposed, a, cfg, scalars)  # w ← w − μF a (s O + ρ_d w)
    if work is not w:
        ops.copy_(w, work)


def lowpass_whole(ops, s: Tensor | None, g: Tensor, cfg: AutoSGMConfig) -> Tensor:
    r"""The filter output ``v[t]`` as one tensor, with the filter state advanced (one tensor).

    The matrix oracle reads ``v`` whole, after the filter: for γ = 0 (or β = 0) this is
    :func:`lowpass`, :func:`form` and :func:`lowpass_finish`. For γ ≠ 0 and β > 0 the state is advanced
    first, ``u[t] = β u[t−1] + (1 − β) g[t]``, and then, as ``u[t−1] = (u[t] − (1 − β) g[t]) / β``,

        v[t] = η g[t] + K u[t−1] = (η − K (1 − β)/β) g[t] + (K/β) u[t],   K = η (β − γ)/(1 − β).

    The two weights sum to the DC gain ``η (1 − γ)/(1 − β)``; at the default gain (DC gain 1) ``v`` is
    the interpolation ``v = g + (K/β)(u[t] − g)`` (a ``lerp``), torch's Nesterov order in Muon
    (with γ = β/(1+β): ``K/β = β``). Returns ``v`` (for γ = 0 it aliases the buffer: do not modify it).
    """
    if s is None or cfg.gamma == 0.0 or cfg.beta == 0.0:
        v = form(ops, lowpass(ops, s, g, cfg))
        lowpass_finish(ops, s, g, cfg)
        return v
    lowpass_finish(ops, s, g, cfg)  # u[t]
    c_u = cfg.filter_state_gain / cfg.beta
    if cfg.eta == default_eta(cfg.beta, cfg.gamma):
        return torch.lerp(g, s, c_u)
    v = ops.mul(g, cfg.eta - c_u * (1.0 - cfg.beta))
    ops.add_(v, s, alpha=c_u)
    return v


def matrix_direction(state: dict[str, Any], V: Tensor, cfg: AutoSGMConfig, t: int) -> Tensor:
    r"""The matrix oracle's direction ``O = (M + εI)^(−1/2) V`` for the ``n × m`` matrix ``V``.

    * ``matrix_pole = 0``: ``M = V Vᵀ``, so ``O`` is ``V``'s orthogonal polar factor
      (:func:`~autosgm.matrix.polar_factor`; ``"muon-quintic"`` computes it approximately on ``V``).
    * ``matrix_pole = p > 0`` (one-sided Shampoo-like): ``M[t] = p M[t−1] + (1 − p) V Vᵀ`` in the
      state buffer ``matrix_m``, divided by ``1 − p^t`` when ``debias`` (as the moment is), and
      ``O = (M̂ + εI)^(−1/2) V`` (:func:`~autosgm.matrix.precondition`).

    ``matrix_method``/``matrix_iters``/``matrix_eps`` (None: the method's defaults) as in
    :mod:`autosgm.matrix`. ``O`` has ``V``'s dtype (float32 iterations for float32 ``V``).
    """
    method, iters, eps = cfg.matrix_method, cfg.matrix_iters, cfg.matrix_eps
    if not cfg.matrix_averaged:
        return _matrix.polar_factor(V, method, iters=iters, eps=eps)
    p, M = cfg.matrix_pole, state["matrix_m"]
    M.mul_(p).addmm_(V, V.mT, alpha=1.0 - p)
    M_hat = M / cfg.matrix_debias(t) if cfg.debias else M
    return _matrix.precondition(M_hat, V, method, iters=iters, eps=_matrix.ROOT_EPS if eps is None else eps)


def matrix_numerator(ops, st: dict[str, Any], W: Tensor, O: Tensor, cfg: AutoSGMConfig) -> Tensor | None:
    r"""The numerator of a matrix (spec §9): ``None`` for ``unity`` (a = 1), else the clipped norm of
    the correlation between the weights and the step direction, one value per tensor.

    ``W`` and ``O`` are ``n × m`` (``n ≤ m``). With ``Ō = √m O`` (for an orthogonal ``O``,
    ``O Oᵀ = I``, its entries have RMS 1, as ``v̄ = v/d`` has element-wise),

        C[t] = β_n C[t−1] + W Ōᵀ / m = β_n C[t−1] + W Oᵀ / √m      (n × n, the state ``num_c``),
        a = cap(‖C[t]‖_F / √n),

    the matrix form of the element-wise ``c ← β_n c + w v̄``, ``a = cap(|c|)``: for ``C = c I`` the
    norm gives ``|c|``, and ``W = s Ō`` (weights aligned with the step, entries of size ``s``) adds
    ``s I``, as ``w = s v̄`` adds ``s v̄² ≈ s``. ``‖C‖_F`` is unchanged by rotations ``U C Uᵀ``, as the
    oracle is. Caps as in spec §4: ``a ≤ 1`` (``parcor-bounded``), ``a ≤ 1 + E[w²]`` (codes 2-4; the
    per-tensor ``E[w²] ← β_n E[w²] + (1 − β_n) mean(W²)``, the state ``num_w2``). The Markov and
    Chebyshev prefilters, element-wise clippings of ``x = w v̄``, are not applied (each entry of
    ``W Oᵀ`` already pools ``m`` products). ``a`` is then smoothed by the pole-0.1 filter
    (``num_a``), as the element-wise per-tensor numerator is. An all-zero ``W`` starts ``C`` at
    ``c₀ I`` (``zero_tensor_start``), so that it moves.
    """
    if cfg.numerator == "unity":
        return None
    n, m = W.shape
    C, bn = st["num_c"], cfg.beta_n
    C.mul_(bn).addmm_(W, O.mT, alpha=1.0 / math.sqrt(m))  # C ← β_n C + W Oᵀ/√m
    a = torch.linalg.matrix_norm(C) / math.sqrt(n)
    if PARCOR[cfg.numerator][1] is cap_one:
        a = a.clamp_max(1.0)
    else:
        w2 = st["num_w2"]
        _ema_(ops, w2, ops.mean_sq(W), bn)  # E[w²] ← β_n E[w²] + (1 − β_n) mean(W²)
        a = torch.minimum(a, w2 + 1.0)
    _ema_(ops, st["num_a"], a, SHORT_POLE)  # the per-tensor smoothing
    return st["num_a"]


def matrix_update(w: Tensor, O: Tensor, transposed: bool, a: Tensor | None, cfg: AutoSGMConfig,
                  scalars: StepScalars) -> None:  # fmt: skip
    """Parameter step ``w ← w − μ F a (s O + ρ_d w)`` in ``w``'s layout, in place.

    ``O`` (``n × m``) is transposed back if :func:`~autosgm.matrix.as_matrix` transposed ``w`` and
    reshaped to ``w``'s shape; ``s`` is ``matrix_lr_scale``'s factor for ``w``'s 2-D shape (1 for
    None); ``ρ_d`` the decoupled decay, else 0. With ``a = 1`` this is ``w ← (1 − μFρ_d) w −
    (μF s) O``, torch's Muon order.
    """
    rho = cfg.weight_decay if cfg.decoupled_weight_decay else 0.0
    D = (O.mT if transposed else O).reshape(w.shape)
    s = _lr_scale(w.shape, cfg)
    if a is None:
        if rho != 0.0:
            w.mul_(1.0 - scalars.scale * rho)
        w.add_(D, alpha=-(scalars.scale * s))
        return
    D = D * s
    if rho != 0.0:
        D.add_(w, alpha=rho)
    w.addcmul_(D, a, value=-scalars.scale)


def _lr_scale(shape: Sequence[int], cfg: AutoSGMConfig) -> float:
    """``matrix_lr_scale``'s factor for a parameter of ``shape`` (as a ``shape[0] × rest`` matrix)."""
    if cfg.matrix_lr_scale is None:
        return 1.0
    return _matrix.muon_lr_adjustment((shape[0], math.prod(shape[1:])), cfg.matrix_lr_scale)
