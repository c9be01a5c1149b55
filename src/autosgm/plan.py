r"""The plan of a param group's multi-tensor or fused step: its tensors in buckets, their state
gathered for the backend that steps them (machinery for speed only; the math is :mod:`autosgm.step`).

A :class:`Bucket` holds the tensors of a group that share device, dtype and step count, with one of
three plans: sub-lists for ``torch._foreach_*`` (any device), the CPU workspace
(:class:`~autosgm.packing.CpuLayout`) or the compiled calls (:class:`~autosgm.fused.FusedLayout`).
A :class:`GroupPlan` is kept between steps while nothing it depends on changes; every state dict it
gathered is a :class:`ParamState`, which marks it stale when an entry is replaced, so that
``optimizer.state`` stays the state's one owner.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .config import AutoSGMConfig
from .fused import FusedLayout
from .packing import CpuLayout, chunks_by_size, pack_scalars
from .state import real_view
from .step import PER_TENSOR_STATS, state_dtype

__all__ = ["FOREACH_CHUNK", "FOREACH_CHUNK_PLAIN", "Bucket", "GroupPlan", "ParamState", "group_plan", "uses_cpu_layout"]

class Bucket:
    """Tensors of one group sharing (device, dtype, step count), with their state gathered.

    The step counters are packed: each ``state["step"]`` is a 0-d view of ``steps``, so one
    ``add_`` counts a step for the whole bucket and one read gives ``t``. In the multi-tensor
    path the per-tensor statistics (``numerator_mode="tensor"``) are packed the same way.

    The bucket's plan is one of: ``layout`` (the fused path), ``cpu`` (the multi-tensor path of
    a numerator on the CPU: tensor by tensor and pack by pack, :mod:`autosgm.packing`) or
    ``chunks`` (``torch._foreach_*`` over sub-lists: the multi-tensor path otherwise).
    """

    __slots__ = ("index", "params", "complex", "steps", "chunks", "layout", "cpu", "dtype")

    def __init__(self, index, params, states, cfg: AutoSGMConfig, fused: bool) -> None:
        self.index = index  # positions in the group's list of parameters with gradients (None: all)
        self.params = params
        self.complex = torch.is_complex(params[0])
        ws = [real_view(p) for p in params]
        self.dtype = state_dtype(ws[0].dtype)
        self.steps = pack_scalars(states, "step")
        names = [k for k in states[0] if k != "step"]
        per_tensor = {k for k in names if cfg.numerator_mode == "tensor" and k in PER_TENSOR_STATS}
        self.chunks = self.layout = self.cpu = None
        plain = all(type(p.data) is torch.Tensor for p in params)  # (not DTensor shards)
        if fused:
            self.layout = FusedLayout(ws, states, per_tensor, self.dtype, plain)
            return
        if uses_cpu_layout(params, cfg, plain):
            self.cpu = CpuLayout(ws, states, per_tensor, self.dtype)
            return
        buffers = {k: pack_scalars(states, k) if k in per_tensor else [st[k] for st in states] for k in names}
        # the stage chain runs on a few tensors at a time, so that what one pass writes the next
        # reads from cache; sub-lists are larger for a chain of two passes (fewer calls)
        short = not cfg.normalize and cfg.numerator == "unity" and cfg.gamma == 0.0
        chunk = FOREACH_CHUNK_PLAIN if short else FOREACH_CHUNK
        self.chunks = []
        for run in chunks_by_size(list(range(len(params))), [p.numel() for p in params], chunk):
            sl = slice(run[0], run[-1] + 1)
            self.chunks.append((sl, {k: v[sl] for k, v in buffers.items()}))


#: Elements per sub-list of the multi-tensor path (a larger tensor forms a sub-list of its own);
#: ``FOREACH_CHUNK_PLAIN`` for a chain of two passes (heavy ball, SGD: filter, then step; Nesterov's
#: three passes read the gradient and the weights twice and gain from the smaller sub-lists).
FOREACH_CHUNK = 1 << 18
FOREACH_CHUNK_PLAIN = 1 << 20


def uses_cpu_layout(params: list[Tensor], cfg: AutoSGMConfig, plain: bool) -> bool:
    """Whether the multi-tensor path steps a bucket tensor by tensor and pack by pack with a reused
    workspace (:mod:`autosgm.packing`) instead of ``torch._foreach_*`` over lists: a numerator's
    chain on the CPU, for plain tensors (the ``unity`` chain has one temporary at most, as torch's
    Adam, and keeps the lists, as other devices do)."""
    return plain and cfg.numerator != "unity" and params[0].device.type == "cpu"


class ParamState(dict):
    """One parameter's state in ``optimizer.state``: a dict that tells the plan which gathered its
    tensors (bucket lists, packs) when an entry is replaced, added or removed, so that the next
    step rebuilds the plan from the tensors the dict then holds. The dicts in ``optimizer.state``
    stay the state's one owner: a tensor replaced by hand is the one the next step updates.
    Pickles (``torch.save``, ``copy.deepcopy``) as a plain dict.
    """

    __slots__ = ("plan",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.plan: GroupPlan | None = None

    def _changed(self) -> None:
        if self.plan is not None:
            self.plan.stale = True

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._changed()

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def pop(self, *args: Any) -> Any:
        self._changed()
        return super().pop(*args)

    def popitem(self) -> Any:
        self._changed()
        return super().popitem()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._changed()
        return super().setdefault(key, default)

    def clear(self) -> None:
        super().clear()
        self._changed()

    def __reduce__(self) -> tuple:
        return dict, (dict(self),)


class GroupPlan:
    """What a group's multi-tensor step reuses while its parameters with gradients stay the same.

    Rebuilt when that set, the group's settings or path, or the optimizer's state object
    (``load_state_dict``) change, when an entry of one of its parameters' state dicts was replaced
    (:class:`ParamState` marks it ``stale``), and after a reference-path step.
    """

    __slots__ = ("key", "group", "state", "cfg", "fused", "buckets", "stale")


def group_plan(plans: dict[int, GroupPlan], gi: int, group: dict[str, Any], params: list[Tensor],
               cfg: AutoSGMConfig, fused: bool, state: dict, init_state: Callable[..., ParamState]) -> GroupPlan:  # fmt: skip
    """Group ``gi``'s plan from ``plans`` (the optimizer's), rebuilt (and stored there) when the set
    of parameters with gradients, the settings, the path or the optimizer's ``state`` object
    (``load_state_dict``) changed, or a state entry was replaced. ``init_state(p, w, cfg)`` gives
    ``p``'s state (created on first use)."""
    key = tuple(map(id, params))
    plan = plans.get(gi)
    if (plan is not None and not plan.stale and plan.key == key and plan.group is group
            and plan.state is state and plan.cfg is cfg and plan.fused == fused):  # fmt: skip
        return plan
    plan = GroupPlan()
    plan.key, plan.group, plan.state, plan.cfg, plan.fused = key, group, state, cfg, fused
    by_kind: dict[tuple, list[int]] = {}
    states = []
    for i, p in enumerate(params):
        st = init_state(p, real_view(p), cfg)
        states.append(st)
        by_kind.setdefault((p.device, p.dtype, float(st["step"])), []).append(i)
    plan.buckets = [
        Bucket(None if len(by_kind) == 1 else index, [params[i] for i in index],
               [states[i] for i in index], cfg, fused)
        for index in by_kind.values()
    ]  # fmt: skip
    for st in states:  # (after the buckets gathered and packed the state)
        st.plan = plan
    plan.stale = False
    plans[gi] = plan
    return plan
