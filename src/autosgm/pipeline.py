r"""The AutoSGM step as named stages, written once for one tensor or a list of tensors.

    g ─► [gradient input] ─► [low-pass filter H] ─► v ─┐
                 │                                      ├─► [numerator a] ─► [step: Δ = −μ F a (v̂/d + ρ_d w)]
                 └──────► [moment estimate d] ─────────┘

:func:`tensor_step` runs the stages in order. Each stage takes an ``ops`` object that supplies the
element-wise primitives:

* :data:`TENSOR_OPS`: one tensor (the readable reference path);
* :data:`FOREACH_OPS`: a list of tensors, with ``torch._foreach_*`` kernels (the multi-tensor path);
* :data:`FUSED_OPS`: one tensor inside ``torch.compile`` (the fused path), where the per-step
  scalars are 0-d tensors so that a new learning rate, window value or step count is new data,
  not a new program; :class:`PackedOps` does the same on a workspace that concatenates several
  small tensors (per-tensor quantities become :class:`PerTensor` vectors);
* :class:`ArenaOps`: :data:`TENSOR_OPS` with every new tensor written into a reused
  :class:`Arena` (the multi-tensor path on the CPU, see :mod:`autosgm.packing`), and
  :class:`PackedArenaOps`, the same on a pack of small tensors.

The math therefore has a single definition. The per-step scalars (``μF``, the debias factors) are
shared by every tensor a call sees: the multi-tensor path groups tensors whose step counts agree.

A *per-tensor* quantity (one value per tensor: the smoothed numerator, the prefilter statistics
in ``numerator_mode="tensor"``) is a 0-d tensor for :data:`TENSOR_OPS`/:data:`FUSED_OPS` and one
1-D tensor with an entry per list element for :data:`FOREACH_OPS` (the multi-tensor path packs
the per-tensor state into one vector per bucket, so such a quantity costs one kernel, not one per
tensor).

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

from .config import AutoSGMConfig

__all__ = [
    "TENSOR_OPS",
    "FOREACH_OPS",
    "FUSED_OPS",
    "PackedOps",
    "Arena",
    "ArenaOps",
    "PackedArenaOps",
    "PerTensor",
    "NUMERATOR_BUFFERS",
    "PER_TENSOR_STATS",
    "ROBUST_K",
    "SHORT_POLE",
    "StepScalars",
    "step_scalars",
    "state_dtype",
    "host_values",
    "tensor_step",
    "update_tensor",
    "gradient_input",
    "FilterOutput",
    "lowpass",
    "form",
    "lowpass_finish",
    "moment",
    "numerator",
    "correlation_start",
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

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the state (and of the step's arithmetic) for a parameter of ``dtype``."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def host_values(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor of host numbers on ``device``, without waiting for the device (pinned, async copy)."""
    out = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return out
    return out.pin_memory().to(device, non_blocking=True)


class StepScalars(NamedTuple):
    """The scalars of one step at count ``t``: Python floats, or 0-d tensors in the fused path.

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
# primitives
# ----------------------------------------------------------------------------------------------
class _TensorOps:
    """Stage primitives on a single tensor (scalars are Python floats or 0-d tensors)."""

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
    def scale_add_(x: Tensor, a: float, y: Tensor) -> None:
        """``x ← a·x + y`` in one pass."""
        torch.add(y, x, alpha=a, out=x)

    def axpb_(self, x: Tensor, a: float, b: float) -> None:
        """``x ← a·x + b`` (numbers ``a``, ``b``) in one pass."""
        torch.add(self._const(b, x), x, alpha=a, out=x)

    @staticmethod
    def _const(value: float, like: Tensor) -> Tensor:
        return torch.tensor(value, dtype=like.dtype, device=like.device)

    @staticmethod
    def div(x: Tensor, y: Any) -> Tensor:
        return torch.div(x, y)

    @staticmethod
    def div_over(x: Tensor, y: Tensor) -> Tensor:
        """``x / y``, written over ``y`` (which is spent)."""
        return torch.div(x, y, out=y) if type(y) is Tensor else torch.div(x, y)

    @staticmethod
    def div_(x: Tensor, y: Any, reciprocal: Any = None) -> None:
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
    def sqrt(x: Tensor) -> Tensor:
        return torch.sqrt(x)

    @staticmethod
    def abs(x: Tensor) -> Tensor:
        return torch.abs(x)

    @staticmethod
    def minimum(x: Tensor, y: float) -> Tensor:
        return torch.clamp_max(x, y)

    @staticmethod
    def minimum_(x: Tensor, y: Any) -> None:
        torch.minimum(x, y, out=x) if isinstance(y, Tensor) else x.clamp_(max=y)

    @staticmethod
    def maximum_(x: Tensor, y: Any) -> None:
        torch.maximum(x, y, out=x) if isinstance(y, Tensor) else x.clamp_(min=y)

    def clip_(self, x: Tensor, lo: Any, hi: Any) -> None:
        """``x ← min(max(x, lo), hi)`` (bounds: numbers or tensors; ``lo ≤ hi``)."""
        self.maximum_(x, lo)
        self.minimum_(x, hi)

    # Per-tensor means as 0-d tensors (0 for an empty tensor). torch sums a tensor on the CPU by
    # cascades (pairwise), so a float32 sum of n elements is good to a few units of 2⁻²⁴·log n.
    @staticmethod
    def mean(x: Tensor) -> Tensor:
        """Per-tensor mean."""
        if type(x) is Tensor and x.numel():
            return torch.mean(x)  # the cascade sum over n, one call
        return _plain(x.sum()) * (1.0 / max(x.numel(), 1))

    def mean_abs(self, x: Tensor) -> Tensor:
        """Per-tensor mean of ``|x|``."""
        return self.mean(self.abs(x))

    def mean_nonneg(self, x: Tensor) -> Tensor:
        """Per-tensor mean of ``x ≥ 0`` (``= mean |x|``, without the ``|·|`` pass)."""
        return self.mean(x)

    @staticmethod
    def mean_sq(x: Tensor) -> Tensor:
        """Per-tensor mean of ``x²``."""
        return _plain(torch.linalg.vector_norm(x, 2)).square() * (1.0 / max(x.numel(), 1))

    def mean_sq_dev(self, x: Tensor, m: Any) -> Tensor:
        """Per-tensor mean of ``(x − m)²``."""
        return self.mean_sq(self.sub(x, m))


def _plain(reduced: Tensor) -> Tensor:
    """A per-tensor reduction as a plain tensor: for a sharded (DTensor) parameter the reduction
    over the full tensor (``full_tensor()`` completes the pending sum across ranks)."""
    full = getattr(reduced, "full_tensor", None)
    return full() if full is not None else reduced


def _each(y: Any, x: Sequence[Tensor] | None = None) -> Any:
    """A packed per-tensor vector as one 0-d view per tensor; a number operand of a CPU list
    ``x`` as one 0-d tensor repeated (other operands unchanged).

    torch's CPU ``_foreach_*`` kernels loop over the single-tensor op, which wraps a number into a
    new tensor for every element (about 1.2 µs each); a list of one 0-d tensor of the list's dtype
    gives the same results, bit for bit, without that.
    """
    if isinstance(y, Tensor):
        return y.unbind(0)
    if x is not None and type(y) in (float, int) and len(x) > 1 and x[0].device.type == "cpu" \
            and x[0].dtype in (torch.float32, torch.float64):  # fmt: skip
        return [torch.tensor(y, dtype=x[0].dtype)] * len(x)
    return y


class _ForeachOps:
    """Stage primitives on lists of tensors, with ``torch._foreach_*`` kernels.

    An operand that is a single 1-D tensor is a packed per-tensor quantity (entry ``i`` belongs
    to list element ``i``): it is broadcast over the list's tensors, and arithmetic among packed
    quantities is one ordinary tensor kernel.
    """

    @staticmethod
    def neg(x):
        return torch.neg(x) if isinstance(x, Tensor) else torch._foreach_neg(x)

    @staticmethod
    def add(x, y, alpha: float = 1.0):
        if isinstance(x, Tensor):
            return torch.add(x, y, alpha=alpha)
        if isinstance(y, (int, float)):  # (torch's number overload takes no alpha)
            return torch._foreach_add(x, _each(y * alpha, x))
        return torch._foreach_add(x, _each(y), alpha=alpha)  # a list, or a packed vector

    @staticmethod
    def add_(x, y, alpha: float = 1.0) -> None:
        if isinstance(x, Tensor):
            x.add_(y, alpha=alpha)
        elif isinstance(y, (int, float)):
            torch._foreach_add_(x, _each(y * alpha, x))
        else:
            torch._foreach_add_(x, _each(y), alpha=alpha)  # a list, or a packed vector

    @staticmethod
    def sub(x, y):
        if isinstance(x, Tensor):
            return torch.sub(x, y)
        return torch._foreach_sub(x, _each(y, x))

    @staticmethod
    def mul(x, y):
        if isinstance(x, Tensor):
            return torch.mul(x, y)
        return torch._foreach_mul(x, _each(y, x))

    @staticmethod
    def mul_(x, y) -> None:
        if isinstance(x, Tensor):
            x.mul_(y)
        else:
            torch._foreach_mul_(x, _each(y, x))

    @staticmethod
    def scale_add_(x, a: float, y) -> None:
        """``x ← a·x + y`` (``y``: a list or a number)."""
        torch._foreach_mul_(x, _each(a, x))
        torch._foreach_add_(x, _each(y, x))

    axpb_ = scale_add_

    @staticmethod
    def div(x, y):
        return torch._foreach_div(x, _each(y, x))

    div_over = div  # (a list op has no form that writes over its divisor)

    @staticmethod
    def div_(x, y, reciprocal: Any = None) -> None:
        torch._foreach_div_(x, _each(y, x))

    @staticmethod
    def addcmul_(x, a, b, value: float) -> None:
        torch._foreach_addcmul_(x, a, _each(b), value=value)

    @staticmethod
    def addcdiv_(x, a, b, value: float) -> None:
        torch._foreach_addcdiv_(x, a, b, value=value)

    @staticmethod
    def lerp_(x, y, weight: float) -> None:
        if isinstance(x, Tensor):
            x.lerp_(y, weight)
        else:
            torch._foreach_lerp_(x, y, weight)

    @staticmethod
    def sqrt(x):
        if isinstance(x, Tensor):
            return torch.sqrt(x)
        return torch._foreach_sqrt(x)

    @staticmethod
    def abs(x):
        return torch._foreach_abs(x)

    @staticmethod
    def minimum(x, y: float):
        return torch._foreach_clamp_max(x, y)

    @staticmethod
    def minimum_(x, y) -> None:
        if isinstance(y, (list, tuple, Tensor)):
            torch._foreach_minimum_(x, _each(y))
        else:
            torch._foreach_clamp_max_(x, y)

    @staticmethod
    def maximum_(x, y) -> None:
        if isinstance(y, (list, tuple, Tensor)):
            torch._foreach_maximum_(x, _each(y))
        else:
            torch._foreach_clamp_min_(x, y)

    @staticmethod
    def clip_(x, lo, hi) -> None:
        torch._foreach_maximum_(x, _each(lo))
        torch._foreach_minimum_(x, _each(hi))

    @staticmethod
    def _inv_numel(x) -> Tensor:
        return host_values([1.0 / max(t.numel(), 1) for t in x], x[0].dtype, x[0].device)

    @classmethod
    def mean(cls, x) -> Tensor:
        """Per-tensor means, packed (one Python-level call per tensor)."""
        return torch.stack([_plain(t.sum()) for t in x]) * cls._inv_numel(x)

    @classmethod
    def mean_abs(cls, x) -> Tensor:
        """Per-tensor means of ``|x|``, packed, from one ``_foreach_norm`` call."""
        return torch.stack([_plain(n) for n in torch._foreach_norm(x, 1)]) * cls._inv_numel(x)

    mean_nonneg = mean_abs

    @classmethod
    def mean_sq(cls, x) -> Tensor:
        """Per-tensor means of ``x²``, packed, from one ``_foreach_norm`` call."""
        return torch.stack([_plain(n) for n in torch._foreach_norm(x, 2)]).square() * cls._inv_numel(x)

    @classmethod
    def mean_sq_dev(cls, x, m) -> Tensor:
        """Per-tensor means of ``(x − m)²``, packed."""
        return cls.mean_sq(cls.sub(x, m))


class _FusedOps(_TensorOps):
    """Stage primitives on one tensor inside ``torch.compile``; any scalar may be a 0-d tensor.

    Inductor fuses the whole chain into one loop over the tensor, so these are written as plain
    arithmetic (``x += y * alpha`` instead of ``add_(y, alpha=alpha)``, which needs a number).
    """

    @staticmethod
    def add(x: Tensor, y: Any, alpha: Any = 1.0) -> Tensor:
        return x + y * alpha

    @staticmethod
    def add_(x: Tensor, y: Any, alpha: Any = 1.0) -> None:
        x.add_(y * alpha)

    @staticmethod
    def div_over(x: Tensor, y: Tensor) -> Tensor:
        return x / y  # (inductor plans the buffers)

    @staticmethod
    def div_(x: Tensor, y: Any, reciprocal: Any = None) -> None:
        # by a step scalar: multiply by its reciprocal, computed once on the host (a division per
        # element is several times slower than a product)
        x.div_(y) if reciprocal is None else x.mul_(reciprocal)

    @staticmethod
    def addcmul_(x: Tensor, a: Tensor, b: Tensor, value: Any) -> None:
        x.add_(a * b * value)

    @staticmethod
    def scale_add_(x: Tensor, a: Any, y: Any) -> None:
        x.copy_(x * a + y)

    axpb_ = scale_add_

    @staticmethod
    def addcdiv_(x: Tensor, a: Tensor, b: Tensor, value: Any) -> None:
        x.add_(a / b * value)

    @staticmethod
    def minimum_(x: Tensor, y: Any) -> None:
        x.copy_(torch.minimum(x, y) if isinstance(y, Tensor) else torch.clamp_max(x, y))

    @staticmethod
    def maximum_(x: Tensor, y: Any) -> None:
        x.copy_(torch.maximum(x, y) if isinstance(y, Tensor) else torch.clamp_min(x, y))

    @staticmethod
    def clip_(x: Tensor, lo: Any, hi: Any) -> None:
        x.copy_(torch.clamp(x, min=lo, max=hi))

    # Means accumulate in float64: a compiled reduction sums sequentially (no cascade), which in
    # float32 loses ~n·2⁻²⁴ of the result over n elements.
    @staticmethod
    def mean(x: Tensor) -> Tensor:
        return (x.sum(dtype=torch.float64) / x.numel()).to(x.dtype)

    @staticmethod
    def mean_abs(x: Tensor) -> Tensor:
        return (x.abs().sum(dtype=torch.float64) / x.numel()).to(x.dtype)

    @staticmethod
    def mean_sq(x: Tensor) -> Tensor:
        return ((x * x).sum(dtype=torch.float64) / x.numel()).to(x.dtype)


class PerTensor(NamedTuple):
    """A per-tensor quantity in a packed workspace: entry ``i`` belongs to the ``i``-th tensor."""

    v: Tensor


def _v(y: Any) -> Any:
    return y.v if isinstance(y, PerTensor) else y


class _PerTensorOps:
    """Stage primitives on a packed workspace (the elements of several tensors concatenated),
    mixed into an ops class.

    A per-tensor quantity is a :class:`PerTensor` vector (entry ``i`` for the ``i``-th tensor):
    arithmetic among them is vector arithmetic, and as an operand of an element-wise operation it
    is broadcast to the elements by :meth:`_e`. Subclasses give :meth:`_e` and :meth:`mean`.
    """

    def _e(self, y: Any) -> Any:
        raise NotImplementedError

    def neg(self, x):
        return PerTensor(-x.v) if isinstance(x, PerTensor) else super().neg(x)

    def add(self, x, y, alpha=1.0):
        if isinstance(x, PerTensor):
            if isinstance(alpha, Tensor):
                return PerTensor(x.v + _v(y) * alpha)
            return PerTensor(torch.add(x.v, _v(y), alpha=alpha))
        return super().add(x, self._e(y), alpha)

    def add_(self, x, y, alpha=1.0) -> None:
        if isinstance(x, PerTensor):
            x.v.add_(_v(y) * alpha)
        else:
            super().add_(x, self._e(y), alpha)

    def sub(self, x, y):
        if isinstance(x, PerTensor):
            return PerTensor(x.v - _v(y))
        return super().sub(x, self._e(y))

    def mul(self, x, y):
        if isinstance(x, PerTensor):
            return PerTensor(x.v * _v(y))
        return super().mul(x, self._e(y))

    def mul_(self, x, y) -> None:
        if isinstance(x, PerTensor):
            x.v.mul_(_v(y))
        else:
            super().mul_(x, self._e(y))

    def sqrt(self, x):
        return PerTensor(x.v.sqrt()) if isinstance(x, PerTensor) else super().sqrt(x)

    def lerp_(self, x, y, weight) -> None:
        if isinstance(x, PerTensor):
            x.v.lerp_(_v(y), weight)
        else:
            super().lerp_(x, self._e(y), weight)

    def minimum_(self, x, y) -> None:
        super().minimum_(x, self._e(y))

    def maximum_(self, x, y) -> None:
        super().maximum_(x, self._e(y))

    def clip_(self, x, lo, hi) -> None:
        super().clip_(x, self._e(lo), self._e(hi))

    def addcmul_(self, x, a, b, value) -> None:
        super().addcmul_(x, a, self._e(b), value)

    def mean_abs(self, x):
        return self.mean(self.abs(x))

    def mean_sq(self, x):
        return self.mean(self.mul(x, x))


class PackedOps(_PerTensorOps, _FusedOps):
    """:data:`FUSED_OPS` on a packed workspace (see :class:`_PerTensorOps`).

    ``seg`` gives each element's tensor index and ``inv_count`` is ``1 / max(numel, 1)`` per
    tensor (float64); a per-tensor quantity is broadcast by indexing with ``seg``, and a mean is a float64
    segment sum (``index_add``).
    """

    def __init__(self, seg: Tensor, inv_count: Tensor) -> None:
        self.seg = seg
        self.inv_count = inv_count

    def _e(self, y: Any) -> Any:
        return y.v[self.seg] if isinstance(y, PerTensor) else y

    def mean(self, x):
        total = torch.zeros_like(self.inv_count, dtype=torch.float64).index_add_(0, self.seg, x.double())
        return PerTensor((total * self.inv_count).to(x.dtype))


class Arena:
    """A reused workspace for the new tensors of a step: :meth:`take` hands out consecutive
    pieces of one buffer per dtype, :meth:`reset` frees them all at once.

    A request beyond the buffer gets a tensor of its own, and the next :meth:`reset` grows the
    buffer to the largest total seen, so from the second step on a step allocates nothing.
    :meth:`release` drops buffers above ``keep`` bytes (they are then allocated per step).
    """

    _ALIGN = 16  # elements: pieces start on 64-byte boundaries (float32)

    def __init__(self, device: torch.device, keep: int) -> None:
        self.device, self.keep = device, keep
        self.bufs: dict[torch.dtype, Tensor] = {}
        self.used: dict[torch.dtype, int] = {}
        self.need: dict[torch.dtype, int] = {}
        # the pieces handed out (with where the next one starts), by (dtype, start, shape): a step
        # asks for the same ones each time
        self.pieces: dict[tuple, tuple[Tensor, int]] = {}

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        start = self.used.get(dtype, 0)
        hit = self.pieces.get((dtype, start, shape))
        if hit is not None:
            piece, self.used[dtype] = hit
            return piece
        n = math.prod(shape)
        end = self.used[dtype] = start + -(-n // self._ALIGN) * self._ALIGN
        buf = self.bufs.get(dtype)
        if buf is None or end > buf.numel():
            return torch.empty(shape, dtype=dtype, device=self.device)
        piece = buf[start : start + n].view(shape)
        self.pieces[(dtype, start, shape)] = (piece, end)
        return piece

    def mark(self) -> dict[torch.dtype, int]:
        """The pieces handed out so far (for :meth:`rewind`)."""
        return dict(self.used)

    def _keep_peak(self) -> None:
        for dtype, n in self.used.items():
            self.need[dtype] = max(self.need.get(dtype, 0), n)

    def rewind(self, mark: dict[torch.dtype, int]) -> None:
        """Take back the pieces handed out since ``mark``; later requests reuse their memory."""
        self._keep_peak()
        self.used = mark

    def reset(self) -> None:
        self._keep_peak()
        for dtype in self.used:
            buf = self.bufs.get(dtype)
            if buf is None or buf.numel() < self.need[dtype]:
                self.bufs[dtype] = torch.empty(self.need[dtype], dtype=dtype, device=self.device)
                self.pieces = {k: v for k, v in self.pieces.items() if k[0] != dtype}
        self.used = {}

    def release(self) -> None:
        self.reset()
        for dtype in [d for d, b in self.bufs.items() if b.numel() * b.element_size() > self.keep]:
            del self.bufs[dtype]
            self.pieces = {k: v for k, v in self.pieces.items() if k[0] != dtype}


class ArenaOps(_TensorOps):
    """:data:`TENSOR_OPS` whose new tensors are pieces of an :class:`Arena` (``out=``).

    The element-wise results are those of :data:`TENSOR_OPS`, bit for bit; only the memory
    differs. The CPU multi-tensor path steps each large tensor with these: the step's
    temporaries are then reused memory instead of fresh pages, and stay in cache.
    """

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self.consts: dict[tuple, Tensor] = {}  # 0-d step constants (one ops object per step)

    def _const(self, value: float, like: Tensor) -> Tensor:
        key = (value, like.dtype)
        t = self.consts.get(key)
        if t is None:
            t = self.consts[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
        return t

    def _out(self, x: Tensor, y: Any = None) -> Tensor:
        shape = x.shape
        if isinstance(y, Tensor) and y.shape != shape and y.dim():
            shape = torch.broadcast_shapes(shape, y.shape)
        return self.arena.take(shape, x.dtype)

    def neg(self, x):
        return torch.neg(x, out=self._out(x))

    def add(self, x, y, alpha=1.0):
        return torch.add(x, y, alpha=alpha, out=self._out(x, y))

    def sub(self, x, y):
        return torch.sub(x, y, out=self._out(x, y))

    def mul(self, x, y):
        return torch.mul(x, y, out=self._out(x, y))

    def div(self, x, y):
        return torch.div(x, y, out=self._out(x, y))

    def sqrt(self, x):
        return torch.sqrt(x, out=self._out(x))

    def abs(self, x):
        return torch.abs(x, out=self._out(x))

    def minimum(self, x, y: float):
        return torch.clamp_max(x, y, out=self._out(x))

    def _reduced(self, reduction: Callable[..., Any], *args: Any) -> Any:
        """``reduction(*args)``, whose own temporaries (|x|, x − m) go back to the arena."""
        mark = self.arena.mark()
        out = reduction(*args)
        self.arena.rewind(mark)
        return out

    def mean_abs(self, x):
        return self._reduced(super().mean_abs, x)

    def mean_sq_dev(self, x, m):
        return self._reduced(super().mean_sq_dev, x, m)


class PackedArenaOps(_PerTensorOps, ArenaOps):
    """:class:`ArenaOps` on a packed workspace (see :class:`_PerTensorOps`).

    ``seg`` gives each element's tensor index (a per-tensor quantity is broadcast by
    ``index_select`` into the workspace), and a mean is a float64 segment sum (``lengths``:
    elements per tensor) times ``inv_count`` (float64).
    """

    def __init__(self, arena: Arena, seg: Tensor, lengths: Tensor, inv_count: Tensor) -> None:
        super().__init__(arena)
        self.seg, self.lengths, self.inv_count = seg, lengths, inv_count

    mean_abs = ArenaOps.mean_abs  # (before _PerTensorOps's: the same mean, with the rewind)

    def _e(self, y: Any) -> Any:
        if not isinstance(y, PerTensor):
            return y
        return torch.index_select(y.v, 0, self.seg, out=self.arena.take(self.seg.shape, y.v.dtype))

    def mean(self, x):
        wide = self.arena.take(x.shape, torch.float64)
        wide.copy_(x)
        total = torch.segment_reduce(wide, "sum", lengths=self.lengths)
        return PerTensor((total * self.inv_count).to(x.dtype))


TENSOR_OPS = _TensorOps()
FOREACH_OPS = _ForeachOps()
FUSED_OPS = _FusedOps()


# ----------------------------------------------------------------------------------------------
# the step: the stages in order
# ----------------------------------------------------------------------------------------------
def tensor_step(
    ops,
    w: TensorLike,
    grad: TensorLike,
    state: dict[str, Any],
    cfg: AutoSGMConfig,
    sc: StepScalars,
    record: Callable[..., None] | None = None,
) -> None:
    """One AutoSGM step of ``w`` (a tensor, or a list for :data:`FOREACH_OPS`), in place.

    ``state`` maps buffer names to the buffer (or list, or packed vector) of ``w``; ``sc`` holds
    the step's scalars. ``record(v, d, a)``, if given, sees the filter output, the denominator and
    the numerator before the parameter moves (the reference path's trajectory hooks).
    """
    s = state.get("filter_state")
    g = gradient_input(ops, grad, w, cfg)  # g ← −g (maximize); g ← g + ρw (coupled)
    v = lowpass(ops, s, g, cfg)  # v = H{g}
    if cfg.numerator == "unity":
        d = moment(ops, state["moment"], g, cfg, sc) if cfg.normalize else None  # d = √m̂ + ε
        if record is not None:
            record(form(ops, v), d, None)
        apply_update(ops, w, v, d, None, cfg, sc)  # w ← w − (μF/S) v/d
    else:
        # the numerator needs v̂/d = v/(S d): fold S into the denominator, d̃ = S d
        d = moment(ops, state["moment"], g, cfg, sc, scaled=True)
        v = form(ops, v)
        if record is None and cfg.numerator != "corr":  # d is not read again
            vbar, d = ops.div_over(v, d), None  # v̄ = v̂ / d, written over d
        else:
            vbar = ops.div(v, d)
        S = sc.debias if cfg.debias else 1.0
        a = numerator(ops, state, w, g, vbar, d, cfg, S)  # a ≈ E[w v̄] ...
        if record is not None:
            record(v, ops.div(d, S) if cfg.debias else d, a)
        apply_update(ops, w, v, None, a, cfg, sc, vbar)  # w ← w − μF a (v̄ + ρ_d w)
    lowpass_finish(ops, s, g, cfg)


def update_tensor(
    w: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    cfg: AutoSGMConfig,
    sc: StepScalars,
    record: Callable[..., None] | None = None,
    ops: Any = None,
) -> None:
    """:func:`tensor_step` on one tensor with ``ops`` (default :data:`TENSOR_OPS`: the reference
    path; :class:`ArenaOps` on the CPU multi-tensor path).

    A float16/bfloat16 parameter is stepped in float32 (its state's dtype) and rounded once.
    """
    ops = TENSOR_OPS if ops is None else ops
    dtype = state_dtype(w.dtype)
    if dtype == w.dtype:
        tensor_step(ops, w, grad, state, cfg, sc, record)
    else:
        cw = w.to(dtype)
        tensor_step(ops, cw, grad.to(dtype), state, cfg, sc, record)
        w.copy_(cw)


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
    """The filter output ``v = a·g + b·u`` for γ ≠ 0, left unformed: a consumer that reads ``v``
    once (the parameter step) reads ``g`` and ``u`` instead of writing ``v`` first."""

    a: float  #: η
    g: TensorLike  #: the filter input g[t]
    b: float  #: K = η(β − γ)/(1 − β)
    u: TensorLike  #: the state u[t−1]


def lowpass(ops, s: TensorLike | None, g: TensorLike, cfg: AutoSGMConfig) -> TensorLike | FilterOutput:
    """Low-pass filter ``v[t] = β v[t−1] + η (g[t] − γ g[t−1])``, zero initial conditions.

    One buffer. For γ = 0 it is ``v`` itself (torch's ``momentum_buffer``/``exp_avg``), updated in
    place: ``v ← β v + η g`` (a ``lerp`` when η = 1 − β). For γ ≠ 0 it is ``u[t]``, the average
    of the input with the pole, ``u[t] = β u[t−1] + (1 − β) g[t]`` (one ``lerp``), from which

        v[t] = η g[t] + K u[t−1],    K = η (β − γ) / (1 − β)

    (the transposed direct form II state is ``K u``); this returns that sum as a
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


def moment(ops, m: TensorLike, g: TensorLike, cfg: AutoSGMConfig, sc: StepScalars,
           scaled: bool = False) -> TensorLike:  # fmt: skip
    """Denominator ``d[t] = sqrt(m[t] / (1 − β_a^t)) + ε``, ``m[t] = β_a m[t−1] + (1 − β_a) g²``.

    ``repeat_eps`` also applies ε inside the estimator (``g² → g² + ε²``). Returns a new tensor:
    ``d`` in torch's Adam order (``sqrt``, ``/ sqrt(1 − β_a^t)``, ``+ ε``), or with ``scaled``
    ``S[t] · d`` (same number of passes).
    """
    ba = cfg.beta_a
    ops.mul_(m, ba)
    ops.addcmul_(m, g, g, 1.0 - ba)
    if cfg.repeat_eps:
        ops.add_(m, (1.0 - ba) * cfg.eps * cfg.eps)
    d = ops.sqrt(m)
    if not scaled:
        if cfg.debias:
            ops.div_(d, sc.root_moment_debias, sc.inv_root)
        ops.add_(d, cfg.eps)
    elif cfg.debias:
        ops.axpb_(d, sc.denom_scale, cfg.eps * sc.debias)
    else:
        ops.add_(d, cfg.eps)
    return d


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
    return 0.0 if bool(_plain(torch.count_nonzero(w))) else c0


def _ema_(ops, state, x, pole: float) -> None:
    """Normalized single-pole average ``s ← pole·s + (1 − pole)·x`` (in place)."""
    ops.lerp_(state, x, 1.0 - pole)


# The numerator's estimators (spec §4), each a small step of its own. ``st`` maps buffer names to
# the buffer (or list, or packed vector) of the tensor(s); ``x = w · v̄`` is a fresh tensor.
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
    c, bn = st["num_c"], cfg.beta_n
    if prefilter is None:
        ops.mul_(c, bn)
        ops.addcmul_(c, w, vbar, 1.0)  # c ← β_n c + w v̄
    else:
        x = ops.mul(w, vbar)
        prefilter(ops, st, x, cfg)
        ops.scale_add_(c, bn, x)  # c ← β_n c + x
    a = ops.abs(c)
    cap(ops, st, w, a, cfg)
    return a


def mean_square(ops, st: dict[str, Any], g: TensorLike, d: TensorLike, cfg: AutoSGMConfig, debias: Any) -> TensorLike:
    """``corr``: ``a = min(E[ḡ²], 1)``, ``E[ḡ²] ← β_n E + (1 − β_n) ḡ²``, ``ḡ = g / d``
    (``d`` here is ``S·d``, so ``ḡ² = (S g / S d)²``)."""
    c, bn = st["num_c"], cfg.beta_n
    gbar = ops.div(g, d)
    ops.mul_(c, bn)
    ops.addcmul_(c, gbar, gbar, (1.0 - bn) * debias * debias)
    return ops.minimum(c, 1.0)


def numerator(
    ops,
    st: dict[str, Any],
    w: TensorLike,
    g: TensorLike,
    vbar: TensorLike,
    d: TensorLike | None,
    cfg: AutoSGMConfig,
    debias: Any = 1.0,
) -> Any:
    """Learning-rate numerator ``a[t]`` (spec §4) for ``cfg.numerator``; ``None`` for ``unity`` (a = 1).

    ``x = w · v̄`` with ``v̄ = v̂ / d``; ``d`` here is ``S·d`` (``S = debias``; only ``corr`` reads
    it): :func:`partial_correlation` (prefilters :func:`markov_clip`, :func:`chebyshev_clip`; caps
    :func:`cap_one`, :func:`cap_weight`) or :func:`mean_square`. Per-tensor mode returns
    ``mean(a)`` smoothed by a pole-0.1 filter (one value per tensor); element-wise mode returns
    ``a`` itself.
    """
    if cfg.numerator == "unity":
        return None
    if cfg.numerator == "corr":
        a = mean_square(ops, st, g, d, cfg, debias)
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
    sc: StepScalars,
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
            ops.mul_(p, 1.0 - sc.scale * rho)
        # v = a g + b u (γ ≠ 0) is read as its two terms, one pass each
        terms = ((v.a, v.g), (v.b, v.u)) if isinstance(v, FilterOutput) else ((1.0, v),)
        for coef, x in terms:
            if coef == 0.0:
                continue
            if d is None:
                ops.add_(p, x, alpha=-sc.step_size * coef)
            else:
                ops.addcdiv_(p, x, d, -sc.step_size * coef)
        return
    if rho != 0.0:
        ops.add_(vbar, p, alpha=rho)
    ops.addcmul_(p, vbar, a, -sc.scale)
