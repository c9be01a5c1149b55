r"""The element-wise primitives the step's stages compute with (:mod:`autosgm.step`), one set per
way of running the step:

* :data:`TENSOR_OPS`: one tensor (the reference path): torch's own functions;
* :data:`FOREACH_OPS`: a list of tensors, with ``torch._foreach_*`` kernels (the multi-tensor path);
  a per-tensor quantity is one vector with an entry per list element, so it costs one kernel;
* :data:`FUSED_OPS`: one tensor inside ``torch.compile`` (the fused path, :mod:`autosgm.fused`),
  where the per-step scalars are 0-d tensors, so that a new learning rate, window value or step
  count is new data, not a new program;
* :class:`PackedOps`: :data:`FUSED_OPS` on a workspace that concatenates several small tensors
  (per-tensor quantities are :class:`PerTensor` vectors). The CPU multi-tensor path's primitives,
  which write into a reused workspace, are in :mod:`autosgm.packing`.

Every set gives the same element-wise results as :data:`TENSOR_OPS` up to the order of the
per-tensor sums (``tests/test_paths.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["TENSOR_OPS", "FOREACH_OPS", "FUSED_OPS", "PackedOps", "PerTensor", "host_values", "plain_value"]


def host_values(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor of host numbers on ``device``, without waiting for the device (pinned, async copy)."""
    out = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return out
    return out.pin_memory().to(device, non_blocking=True)



class _TensorOps:
    """Stage primitives on a single tensor (scalars are Python floats or 0-d tensors): torch's own
    functions where their signatures fit, so that a call costs no Python frame."""

    neg = staticmethod(torch.neg)
    add = staticmethod(torch.add)
    sub = staticmethod(torch.sub)
    mul = staticmethod(torch.mul)
    mul_ = staticmethod(Tensor.mul_)
    div = staticmethod(torch.div)
    lerp_ = staticmethod(Tensor.lerp_)
    average_ = lerp_  #: ``s ← s + w (x − s)`` of a statistic (element-wise or per tensor)
    sqrt = staticmethod(torch.sqrt)
    abs = staticmethod(torch.abs)

    @staticmethod
    def dtype(x: Tensor) -> torch.dtype:
        return x.dtype

    @staticmethod
    def to(x: Tensor, dtype: torch.dtype) -> Tensor:
        return x.to(dtype)

    @staticmethod
    def copy_(x: Tensor, y: Tensor) -> None:
        x.copy_(y)

    @staticmethod
    def add_(x: Tensor, y: Any, alpha: float = 1.0) -> None:
        x.add_(y, alpha=alpha)

    @staticmethod
    def scale_add_(x: Tensor, a: float, y: Tensor) -> None:
        """``x ← a·x + y`` in one pass."""
        torch.add(y, x, alpha=a, out=x)

    def scale_shift_(self, x: Tensor, a: float, b: float) -> None:
        """``x ← a·x + b`` (numbers ``a``, ``b``) in one pass."""
        torch.add(self._const(b, x), x, alpha=a, out=x)

    @staticmethod
    def _const(value: float, like: Tensor) -> Tensor:
        return torch.tensor(value, dtype=like.dtype, device=like.device)

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
        return plain_value(x.sum()) * (1.0 / max(x.numel(), 1))

    def mean_abs(self, x: Tensor) -> Tensor:
        """Per-tensor mean of ``|x|``."""
        return self.mean(self.abs(x))

    def mean_nonneg(self, x: Tensor) -> Tensor:
        """Per-tensor mean of ``x ≥ 0`` (``= mean |x|``, without the ``|·|`` pass)."""
        return self.mean(x)

    @staticmethod
    def mean_sq(x: Tensor) -> Tensor:
        """Per-tensor mean of ``x²``."""
        return plain_value(torch.linalg.vector_norm(x, 2)).square() * (1.0 / max(x.numel(), 1))

    def mean_sq_dev(self, x: Tensor, m: Any) -> Tensor:
        """Per-tensor mean of ``(x − m)²``."""
        return self.mean_sq(self.sub(x, m))


def plain_value(reduced: Tensor) -> Tensor:
    """A per-tensor reduction as a plain tensor: for a sharded (DTensor) parameter the reduction
    over the full tensor (``full_tensor()`` completes the pending sum across ranks)."""
    full = getattr(reduced, "full_tensor", None)
    return full() if full is not None else reduced


def _operand(y: Any, x: Sequence[Tensor] | None = None) -> Any:
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
            return torch._foreach_add(x, _operand(y * alpha, x))
        return torch._foreach_add(x, _operand(y), alpha=alpha)  # a list, or a packed vector

    @staticmethod
    def add_(x, y, alpha: float = 1.0) -> None:
        if isinstance(x, Tensor):
            x.add_(y, alpha=alpha)
        elif isinstance(y, (int, float)):
            torch._foreach_add_(x, _operand(y * alpha, x))
        else:
            torch._foreach_add_(x, _operand(y), alpha=alpha)  # a list, or a packed vector

    @staticmethod
    def sub(x, y):
        if isinstance(x, Tensor):
            return torch.sub(x, y)
        return torch._foreach_sub(x, _operand(y, x))

    @staticmethod
    def mul(x, y):
        if isinstance(x, Tensor):
            return torch.mul(x, y)
        return torch._foreach_mul(x, _operand(y, x))

    @staticmethod
    def mul_(x, y) -> None:
        if isinstance(x, Tensor):
            x.mul_(y)
        else:
            torch._foreach_mul_(x, _operand(y, x))

    @staticmethod
    def scale_add_(x, a: float, y) -> None:
        """``x ← a·x + y`` (``y``: a list or a number)."""
        torch._foreach_mul_(x, _operand(a, x))
        torch._foreach_add_(x, _operand(y, x))

    scale_shift_ = scale_add_

    @staticmethod
    def div(x, y, out=None):
        """``x / y``, a new list (``out``, where another set writes the result, is not used)."""
        return torch._foreach_div(x, _operand(y, x))

    @staticmethod
    def div_(x, y, reciprocal: Any = None) -> None:
        torch._foreach_div_(x, _operand(y, x))

    @staticmethod
    def addcmul_(x, a, b, value: float) -> None:
        torch._foreach_addcmul_(x, a, _operand(b), value=value)

    @staticmethod
    def addcdiv_(x, a, b, value: float) -> None:
        torch._foreach_addcdiv_(x, a, b, value=value)

    lerp_ = staticmethod(torch._foreach_lerp_)

    @staticmethod
    def average_(x, y, weight: float) -> None:
        if isinstance(x, Tensor):  # a packed per-tensor statistic
            x.lerp_(y, weight)
        else:
            torch._foreach_lerp_(x, y, weight)

    @staticmethod
    def dtype(x) -> torch.dtype:
        return x[0].dtype

    @staticmethod
    def to(x, dtype: torch.dtype) -> list[Tensor]:
        return [t.to(dtype) for t in x]

    copy_ = staticmethod(torch._foreach_copy_)

    @staticmethod
    def sqrt(x):
        if isinstance(x, Tensor):
            return torch.sqrt(x)
        return torch._foreach_sqrt(x)

    @staticmethod
    def abs(x, out=None):
        """``|x|``, a new list (``out``, where another set writes the result, is not used)."""
        return torch._foreach_abs(x)

    @staticmethod
    def minimum(x, y: float):
        return torch._foreach_clamp_max(x, y)

    @staticmethod
    def minimum_(x, y) -> None:
        if isinstance(y, (list, tuple, Tensor)):
            torch._foreach_minimum_(x, _operand(y))
        else:
            torch._foreach_clamp_max_(x, y)

    @staticmethod
    def maximum_(x, y) -> None:
        if isinstance(y, (list, tuple, Tensor)):
            torch._foreach_maximum_(x, _operand(y))
        else:
            torch._foreach_clamp_min_(x, y)

    @staticmethod
    def clip_(x, lo, hi) -> None:
        torch._foreach_maximum_(x, _operand(lo))
        torch._foreach_minimum_(x, _operand(hi))

    @staticmethod
    def _inv_numel(x) -> Tensor:
        return host_values([1.0 / max(t.numel(), 1) for t in x], x[0].dtype, x[0].device)

    @classmethod
    def mean(cls, x) -> Tensor:
        """Per-tensor means, packed (one Python-level call per tensor)."""
        return torch.stack([plain_value(t.sum()) for t in x]) * cls._inv_numel(x)

    @classmethod
    def mean_abs(cls, x) -> Tensor:
        """Per-tensor means of ``|x|``, packed, from one ``_foreach_norm`` call."""
        return torch.stack([plain_value(n) for n in torch._foreach_norm(x, 1)]) * cls._inv_numel(x)

    mean_nonneg = mean_abs

    @classmethod
    def mean_sq(cls, x) -> Tensor:
        """Per-tensor means of ``x²``, packed, from one ``_foreach_norm`` call."""
        return torch.stack([plain_value(n) for n in torch._foreach_norm(x, 2)]).square() * cls._inv_numel(x)

    @classmethod
    def mean_sq_dev(cls, x, m) -> Tensor:
        """Per-tensor means of ``(x − m)²``, packed."""
        return cls.mean_sq(cls.sub(x, m))


class _FusedOps(_TensorOps):
    """Stage primitives on one tensor inside ``torch.compile``; any scalar may be a 0-d tensor.

    Inductor fuses the whole chain into one loop over the tensor, so these are written as plain
    arithmetic (``x += y * alpha`` instead of ``add_(y, alpha=alpha)``, which needs a number).
    """

    # Python functions, not torch's: dynamo follows super() (in PackedOps) only to functions
    @staticmethod
    def neg(x: Tensor) -> Tensor:
        return torch.neg(x)

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
    def sqrt(x: Tensor) -> Tensor:
        return torch.sqrt(x)

    # (inductor plans the buffers: ``out`` is not used)
    @staticmethod
    def div(x: Tensor, y: Any, out: Tensor | None = None) -> Tensor:
        return torch.div(x, y)

    @staticmethod
    def abs(x: Tensor, out: Tensor | None = None) -> Tensor:
        return torch.abs(x)

    @staticmethod
    def average_(x: Tensor, y: Any, weight: Any) -> None:
        x.lerp_(y, weight)

    @staticmethod
    def add(x: Tensor, y: Any, alpha: Any = 1.0) -> Tensor:
        return x + y * alpha

    @staticmethod
    def add_(x: Tensor, y: Any, alpha: Any = 1.0) -> None:
        x.add_(y * alpha)

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

    scale_shift_ = scale_add_

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


def _vector(y: Any) -> Any:
    return y.v if isinstance(y, PerTensor) else y


class _PerTensorOps:
    """Stage primitives on a packed workspace (the elements of several tensors concatenated),
    mixed into an ops class.

    A per-tensor quantity is a :class:`PerTensor` vector (entry ``i`` for the ``i``-th tensor):
    arithmetic among them is vector arithmetic, and as an operand of an element-wise operation it
    is broadcast to the elements by :meth:`_spread`. Subclasses give :meth:`_spread` and :meth:`mean`.
    """

    def _spread(self, y: Any) -> Any:
        raise NotImplementedError

    def neg(self, x):
        return PerTensor(-x.v) if isinstance(x, PerTensor) else super().neg(x)

    def add(self, x, y, alpha=1.0):
        if isinstance(x, PerTensor):
            if isinstance(alpha, Tensor):
                return PerTensor(x.v + _vector(y) * alpha)
            return PerTensor(torch.add(x.v, _vector(y), alpha=alpha))
        return super().add(x, self._spread(y), alpha)

    def add_(self, x, y, alpha=1.0) -> None:
        if isinstance(x, PerTensor):
            x.v.add_(_vector(y) * alpha)
        else:
            super().add_(x, self._spread(y), alpha)

    def sub(self, x, y):
        if isinstance(x, PerTensor):
            return PerTensor(x.v - _vector(y))
        return super().sub(x, self._spread(y))

    def mul(self, x, y):
        if isinstance(x, PerTensor):
            return PerTensor(x.v * _vector(y))
        return super().mul(x, self._spread(y))

    def mul_(self, x, y) -> None:
        if isinstance(x, PerTensor):
            x.v.mul_(_vector(y))
        else:
            super().mul_(x, self._spread(y))

    def sqrt(self, x):
        return PerTensor(x.v.sqrt()) if isinstance(x, PerTensor) else super().sqrt(x)

    def average_(self, x, y, weight) -> None:
        if isinstance(x, PerTensor):
            x.v.lerp_(_vector(y), weight)
        else:
            super().average_(x, self._spread(y), weight)

    def minimum_(self, x, y) -> None:
        super().minimum_(x, self._spread(y))

    def maximum_(self, x, y) -> None:
        super().maximum_(x, self._spread(y))

    def clip_(self, x, lo, hi) -> None:
        super().clip_(x, self._spread(lo), self._spread(hi))

    def addcmul_(self, x, a, b, value) -> None:
        super().addcmul_(x, a, self._spread(b), value)

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

    def _spread(self, y: Any) -> Any:
        return y.v[self.seg] if isinstance(y, PerTensor) else y

    def mean(self, x):
        total = torch.zeros_like(self.inv_count, dtype=torch.float64).index_add_(0, self.seg, x.double())
        return PerTensor((total * self.inv_count).to(x.dtype))


TENSOR_OPS = _TensorOps()
FOREACH_OPS = _ForeachOps()
FUSED_OPS = _FusedOps()
