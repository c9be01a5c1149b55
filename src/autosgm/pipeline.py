r"""The AutoSGM step as named stages, written once for one tensor or a list of tensors.

    g ─► [gradient input] ─► [low-pass filter H] ─► v ─┐
                 │                                      ├─► [numerator a] ─► [step: Δ = −μ F a (v̂/d + ρ_d w)]
                 └──────► [moment estimate d] ─────────┘

Each stage takes an ``ops`` object: :data:`TENSOR_OPS` runs it on one tensor (the readable
reference path), :data:`FOREACH_OPS` on a list of tensors with ``torch._foreach_*`` kernels (the
multi-tensor path). The math therefore has a single definition. Scalars (``μ``, ``F``, the debias
factors) are Python floats shared by every tensor a call sees; the multi-tensor path groups
tensors whose step counts agree so that this holds.

State buffers (per parameter, created only when the configuration needs them):

=================  ==============================================================================
``filter_state``   ŝ[t] = v[t] − (ηγ/β) g[t] (= torch's ``momentum_buffer``/``exp_avg`` when γ = 0)
``moment``         m[t] = β_a m[t−1] + (1 − β_a)(g[t]² [+ ε²])
``num_c``          numerator accumulator (partial correlation) or EMA of ḡ² (``corr``)
``num_w2``         E[w²], normalized EMA with pole β_n (cap of codes 2-4)
``num_absx``       E|x| (Markov prefilter), pole β_a
``num_xmean``      E[x] and ``num_xvar`` Var[x] (Chebyshev prefilter), pole β_a
``num_a``          per-tensor numerator after the short smoothing filter (pole 0.1), 0-d
=================  ==============================================================================
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Union

import torch
from torch import Tensor

from .config import AutoSGMConfig

__all__ = [
    "TENSOR_OPS",
    "FOREACH_OPS",
    "NUMERATOR_BUFFERS",
    "ROBUST_K",
    "SHORT_POLE",
    "gradient_input",
    "lowpass",
    "lowpass_finish",
    "moment",
    "numerator",
    "apply_update",
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
#: Buffers that are 0-d (one value per tensor) in per-tensor mode.
PER_TENSOR_STATS = frozenset({"num_absx", "num_xmean", "num_xvar", "num_a"})


class _TensorOps:
    """Stage primitives on a single tensor (scalars are Python floats or 0-d tensors)."""

    many = False

    @staticmethod
    def neg(x: Tensor) -> Tensor:
        return torch.neg(x)

    @staticmethod
    def add(x: Tensor, y: Any, alpha: float = 1.0) -> Tensor:
        return torch.add(x, y, alpha=alpha)

    @staticmethod
    def add_(x: Tensor, y: Any, alpha: float = 1.0) -> None:
        x.add_(y, alpha=alpha)

    @staticmethod
    def sub(x: Tensor, y: Any) -> Tensor:
        return torch.sub(x, y)

    @staticmethod
    def mul(x: Tensor, y: Any) -> Tensor:
        return torch.mul(x, y)

    @staticmethod
    def mul_(x: Tensor, y: Any) -> None:
        x.mul_(y)

    @staticmethod
    def div(x: Tensor, y: Any) -> Tensor:
        return torch.div(x, y)

    @staticmethod
    def div_(x: Tensor, y: Any) -> None:
        x.div_(y)

    @staticmethod
    def addcmul_(x: Tensor, a: Tensor, b: Tensor, value: float) -> None:
        x.addcmul_(a, b, value=value)

    @staticmethod
    def addcdiv_(x: Tensor, a: Tensor, b: Tensor, value: float) -> None:
        x.addcdiv_(a, b, value=value)

    @staticmethod
    def lerp_(x: Tensor, y: Any, weight: float) -> None:
        x.lerp_(y, weight)

    @staticmethod
    def copy_(x: Tensor, y: Tensor) -> None:
        x.copy_(y)

    @staticmethod
    def sqrt(x: Tensor) -> Tensor:
        return torch.sqrt(x)

    @staticmethod
    def sqrt_(x: Tensor) -> None:
        x.sqrt_()

    @staticmethod
    def abs(x: Tensor) -> Tensor:
        return torch.abs(x)

    @staticmethod
    def abs_(x: Tensor) -> None:
        x.abs_()

    @staticmethod
    def sign(x: Tensor) -> Tensor:
        return torch.sign(x)

    @staticmethod
    def minimum_(x: Tensor, y: Any) -> None:
        torch.minimum(x, y, out=x) if isinstance(y, Tensor) else x.clamp_(max=y)

    @staticmethod
    def maximum_(x: Tensor, y: Any) -> None:
        torch.maximum(x, y, out=x) if isinstance(y, Tensor) else x.clamp_(min=y)

    @staticmethod
    def mean(x: Tensor) -> Tensor:
        """Per-tensor mean as a 0-d tensor (0 for an empty tensor)."""
        return x.mean() if x.numel() else x.new_zeros(())

    @staticmethod
    def scalar(x: Tensor, value: Any) -> Any:
        """A per-tensor quantity in the form ``x``'s stage arithmetic accepts."""
        return value


class _ForeachOps:
    """Stage primitives on lists of tensors, with ``torch._foreach_*`` kernels."""

    many = True

    @staticmethod
    def neg(x):
        return torch._foreach_neg(x)

    @staticmethod
    def add(x, y, alpha: float = 1.0):
        if isinstance(y, (list, tuple)):
            return torch._foreach_add(x, y, alpha=alpha)
        return torch._foreach_add(x, y)

    @staticmethod
    def add_(x, y, alpha: float = 1.0) -> None:
        if isinstance(y, (list, tuple)):
            torch._foreach_add_(x, y, alpha=alpha)
        else:
            torch._foreach_add_(x, y)

    @staticmethod
    def sub(x, y):
        return torch._foreach_sub(x, y)

    @staticmethod
    def mul(x, y):
        return torch._foreach_mul(x, y)

    @staticmethod
    def mul_(x, y) -> None:
        torch._foreach_mul_(x, y)

    @staticmethod
    def div(x, y):
        return torch._foreach_div(x, y)

    @staticmethod
    def div_(x, y) -> None:
        torch._foreach_div_(x, y)

    @staticmethod
    def addcmul_(x, a, b, value: float) -> None:
        torch._foreach_addcmul_(x, a, b, value=value)

    @staticmethod
    def addcdiv_(x, a, b, value: float) -> None:
        torch._foreach_addcdiv_(x, a, b, value=value)

    @staticmethod
    def lerp_(x, y, weight: float) -> None:
        torch._foreach_lerp_(x, y, weight)

    @staticmethod
    def copy_(x, y) -> None:
        torch._foreach_copy_(x, y)

    @staticmethod
    def sqrt(x):
        return torch._foreach_sqrt(x)

    @staticmethod
    def sqrt_(x) -> None:
        torch._foreach_sqrt_(x)

    @staticmethod
    def abs(x):
        return torch._foreach_abs(x)

    @staticmethod
    def abs_(x) -> None:
        torch._foreach_abs_(x)

    @staticmethod
    def sign(x):
        return torch._foreach_sign(x)

    @staticmethod
    def minimum_(x, y) -> None:
        if isinstance(y, (list, tuple)):
            torch._foreach_minimum_(x, y)
        else:
            torch._foreach_clamp_max_(x, y)

    @staticmethod
    def maximum_(x, y) -> None:
        if isinstance(y, (list, tuple)):
            torch._foreach_maximum_(x, y)
        else:
            torch._foreach_clamp_min_(x, y)

    @staticmethod
    def mean(x):
        return [t.mean() if t.numel() else t.new_zeros(()) for t in x]

    @staticmethod
    def scalar(x, value):
        return value


TENSOR_OPS = _TensorOps()
FOREACH_OPS = _ForeachOps()


# ----------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------
def gradient_input(ops, g: TensorLike, w: TensorLike, cfg: AutoSGMConfig) -> TensorLike:
    """Filter input: ``g ← −g`` when maximizing, then coupled (L2) decay ``g ← g + ρ w``.

    Weight decay still shrinks the weights when maximizing (as in torch.optim).
    """
    if cfg.maximize:
        g = ops.neg(g)
    if cfg.weight_decay != 0.0 and not cfg.decoupled_weight_decay:
        g = ops.add(g, w, alpha=cfg.weight_decay)
    return g


def lowpass(ops, s: TensorLike | None, g: TensorLike, cfg: AutoSGMConfig) -> TensorLike:
    """Low-pass filter ``v[t] = β v[t−1] + η (g[t] − γ g[t−1])``, zero initial conditions.

    With one buffer ŝ[t] = v[t] − (ηγ/β) g[t] (a scaled transposed direct form II):
    ``v[t] = β ŝ[t−1] + η g[t]``, computed in place in ŝ; :func:`lowpass_finish` then subtracts
    ``(ηγ/β) g[t]`` once ``v`` has been used. For γ = 0 the buffer is ``v`` itself. Returns ``v``
    (for β > 0 it aliases the buffer: do not modify it).
    """
    beta, eta = cfg.beta, cfg.eta
    if s is None:  # β = γ = 0: a pure gain
        return g if eta == 1.0 else ops.mul(g, eta)
    if beta == 0.0:  # FIR (γ < 0 = β): v = η g + s, with s = −ηγ g[t−1]
        return ops.add(s, g, alpha=eta)
    if cfg.lerp_filter:
        ops.lerp_(s, g, eta)
    else:
        ops.mul_(s, beta)
        ops.add_(s, g, alpha=eta)
    return s


def lowpass_finish(ops, s: TensorLike | None, g: TensorLike, cfg: AutoSGMConfig) -> None:
    """Complete the filter's state update after ``v[t]`` was used (only γ ≠ 0 needs it)."""
    if s is None or cfg.gamma == 0.0:
        return
    if cfg.beta == 0.0:
        ops.copy_(s, g)
        ops.mul_(s, -cfg.eta * cfg.gamma)
    else:
        ops.add_(s, g, alpha=-cfg.eta * cfg.gamma / cfg.beta)


def moment(ops, m: TensorLike, g: TensorLike, cfg: AutoSGMConfig, t: int) -> TensorLike:
    """Denominator ``d[t] = sqrt(m[t] / (1 − β_a^t)) + ε`` with ``m[t] = β_a m[t−1] + (1 − β_a) g²``.

    ``repeat_eps`` also applies ε inside the estimator (``g² → g² + ε²``). Returns a new ``d``.
    """
    ba = cfg.beta_a
    ops.mul_(m, ba)
    ops.addcmul_(m, g, g, 1.0 - ba)
    if cfg.repeat_eps:
        ops.add_(m, (1.0 - ba) * cfg.eps * cfg.eps)
    d = ops.sqrt(m)
    if cfg.debias:
        ops.div_(d, math.sqrt(cfg.moment_debias(t)))
    ops.add_(d, cfg.eps)
    return d


def _ema_(ops, state, x, pole: float) -> None:
    """Normalized single-pole average ``s ← pole·s + (1 − pole)·x`` (in place)."""
    ops.lerp_(state, x, 1.0 - pole)


def numerator(
    ops,
    st: dict[str, Any],
    w: TensorLike,
    g: TensorLike,
    vbar: TensorLike,
    d: TensorLike,
    cfg: AutoSGMConfig,
) -> Any:
    """Learning-rate numerator ``a[t]`` (spec §4); ``None`` for ``unity`` (a = 1).

    ``x = w · v̄`` with ``v̄ = v̂ / d``. Partial correlation: ``c ← β_n c + x`` and
    ``a = min(|c|, cap)`` with cap 1 (``parcor-bounded``) or ``1 + E[w²]`` (codes 2-4); the
    Markov prefilter replaces ``x`` by ``sign(x)·min(|x|, k E|x|)``, the Chebyshev prefilter clips
    ``x`` to ``E[x] ± k sd(x)`` (k = 4, statistics with pole β_a). ``corr``: ``a = min(E[ḡ²], 1)``,
    ``ḡ = g/d``. Per-tensor mode returns ``mean(a)`` smoothed by a pole-0.1 filter (one value
    per tensor); element-wise mode returns ``a`` itself.
    ``st`` maps buffer names to the tensor (or list) of that buffer.
    """
    name = cfg.numerator
    if name == "unity":
        return None
    per_tensor = cfg.numerator_mode == "tensor"
    ba, bn = cfg.beta_a, cfg.beta_n
    if name == "corr":
        gbar = ops.div(g, d)
        ops.mul_(gbar, gbar)
        _ema_(ops, st["num_c"], gbar, bn)
        a = ops.mul(st["num_c"], 1.0)
        ops.minimum_(a, 1.0)
    else:
        x = ops.mul(w, vbar)
        if "num_absx" in st:  # Markov: robust mean
            absx = ops.abs(x)
            _ema_(ops, st["num_absx"], ops.mean(absx) if per_tensor else absx, ba)
            cap = ops.mul(st["num_absx"], ROBUST_K)
            ops.minimum_(absx, cap)
            x = ops.mul(ops.sign(x), absx)
        if "num_xmean" in st:  # Chebyshev: clip to mean ± k sd
            mean, var = st["num_xmean"], st["num_xvar"]
            _ema_(ops, mean, ops.mean(x) if per_tensor else x, ba)
            dev = ops.sub(x, mean)
            ops.mul_(dev, dev)
            _ema_(ops, var, ops.mean(dev) if per_tensor else dev, ba)
            spread = ops.sqrt(var)
            ops.mul_(spread, ROBUST_K)
            lo = ops.sub(mean, spread)
            hi = ops.add(mean, spread)
            ops.maximum_(x, lo)
            ops.minimum_(x, hi)
        c = st["num_c"]
        ops.mul_(c, bn)
        ops.add_(c, x)
        a = ops.abs(c)
        if "num_w2" in st:
            w2 = st["num_w2"]
            _ema_(ops, w2, ops.mul(w, w), bn)
            cap = ops.add(w2, 1.0)
            ops.minimum_(a, cap)
        else:
            ops.minimum_(a, 1.0)
    if not per_tensor:
        return a
    _ema_(ops, st["num_a"], ops.mean(a), SHORT_POLE)
    return st["num_a"]


def apply_update(
    ops,
    p: TensorLike,
    v: TensorLike,
    d: TensorLike | None,
    a: Any,
    cfg: AutoSGMConfig,
    scale: float,
    debias: float,
    vbar: TensorLike | None = None,
) -> None:
    """Parameter step ``w ← w − μ F a (v̂/d + ρ_d w)``, ``v̂ = v / S[t]``, in place.

    ``scale = μ F``; ``debias = S[t]``; ``ρ_d`` is the decoupled decay (AdamW convention), else 0.
    With ``a = 1`` this is ``w ← (1 − μFρ_d) w − (μF/S) v/d`` — exactly torch's Adam/AdamW/SGD
    update order. ``vbar`` (= v̂/d) may be passed when the numerator already computed it.
    """
    rho = cfg.weight_decay if cfg.decoupled_weight_decay else 0.0
    if a is None:
        if rho != 0.0:
            ops.mul_(p, 1.0 - scale * rho)
        if d is None:
            ops.add_(p, v, alpha=-scale / debias)
        else:
            ops.addcdiv_(p, v, d, -scale / debias)
        return
    u = vbar if vbar is not None else normalized_step(ops, v, d, debias)
    if rho != 0.0:
        ops.add_(u, p, alpha=rho)
    ops.mul_(u, a)
    ops.add_(p, u, alpha=-scale)


def normalized_step(ops, v: TensorLike, d: TensorLike | None, debias: float) -> TensorLike:
    """``v̄ = v̂ / d = v / (S[t] d)`` as a new tensor (``d = 1`` for a constant oracle)."""
    u = ops.div(v, d) if d is not None else ops.mul(v, 1.0)
    if debias != 1.0:
        ops.mul_(u, 1.0 / debias)
    return u
