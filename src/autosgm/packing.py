r"""Packing small tensors, and the multi-tensor step on the CPU.

Small tensors (biases, norms) cost more in per-kernel overhead than in arithmetic. A
:class:`Pack` steps several of them as one workspace: their element-wise state becomes one flat
buffer per name (each ``state[name]`` stays a view of it, so state dicts are unchanged), their
per-tensor statistics one vector per name; the weights and gradients are copied in and the
weights copied back. The fused path (:mod:`autosgm.fused`) and the CPU multi-tensor path below
both use it.

**The multi-tensor path on the CPU.** There, a ``torch._foreach_*`` kernel is a loop over the
single-tensor kernel, so a list buys no fewer kernels; what a list costs instead is memory: each
new tensor of the stage chain is a list of fresh buffers as large as the whole bucket, whose
pages the operating system must map and zero on every step, and which the next operation reads
back from main memory. :func:`cpu_work` therefore hands the stage chain
(:func:`~autosgm.step.tensor_step`) one large tensor at a time, or one pack of small
ones, with its temporaries taken from an :class:`Arena` that the bucket keeps:
they are the same few cache-sized buffers on every tensor and every step. The element-wise
arithmetic is that of the reference path (:class:`ArenaOps` only adds
``out=``); per-tensor means of a pack are float64 segment sums. Other devices use the lists.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from .ops import PerTensor, _PerTensorOps, _TensorOps, host_values

__all__ = ["ALONE", "PACK_CHUNK", "ARENA_KEEP", "Arena", "ArenaOps", "PackedArenaOps", "Pack", "CpuLayout",
           "chunks_by_size", "cpu_work", "pack_scalars", "packable"]

#: Tensors with at least this many elements are stepped alone; smaller ones are packed.
ALONE = 1 << 16
#: Elements per pack of the CPU multi-tensor path (the packs of the fused path are larger).
PACK_CHUNK = 1 << 18
#: Workspace bytes a bucket keeps between steps (a larger one is allocated per step).
ARENA_KEEP = 1 << 26


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

    def div(self, x, y, out=None):
        return torch.div(x, y, out=self._out(x, y) if out is None else out)

    def sqrt(self, x):
        return torch.sqrt(x, out=self._out(x))

    def abs(self, x, out=None):
        return torch.abs(x, out=self._out(x) if out is None else out)

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

    def _spread(self, y: Any) -> Any:
        if not isinstance(y, PerTensor):
            return y
        return torch.index_select(y.v, 0, self.seg, out=self.arena.take(self.seg.shape, y.v.dtype))

    def mean(self, x):
        wide = self.arena.take(x.shape, torch.float64)
        wide.copy_(x)
        total = torch.segment_reduce(wide, "sum", lengths=self.lengths)
        return PerTensor((total * self.inv_count).to(x.dtype))


def pack_scalars(states: list[dict[str, Any]], key: str) -> Tensor:
    """Stack the 0-d ``state[key]`` of each tensor into one vector; each entry becomes a view of it.

    One kernel then updates them all (the step counters, the per-tensor statistics); the state
    still holds one 0-d tensor per parameter (a view), so state dicts are unchanged.
    """
    vec = torch.stack([st[key] for st in states])
    for st, view in zip(states, vec.unbind(0)):
        st[key] = view
    return vec


class Pack:
    """Small tensors stepped as one workspace: their element-wise state becomes one flat buffer per
    name (each ``state[name]`` a view of it), their per-tensor statistics one vector per name.

    ``seg`` (each element's tensor index), ``lengths`` (elements per tensor) and ``inv_count``
    (``1 / max(numel, 1)`` per tensor, float64) exist when there are per-tensor statistics;
    ``stage_state`` is the state as the stages see it (per-tensor statistics as
    :class:`~autosgm.ops.PerTensor`).
    """

    __slots__ = ("index", "sizes", "shapes", "numel", "state", "stage_state", "seg", "lengths", "inv_count")

    def __init__(self, index: list[int], ws: list[Tensor], states, per_tensor: set[str], dtype) -> None:
        self.index, self.sizes, self.shapes = index, [w.numel() for w in ws], [w.shape for w in ws]
        self.numel = sum(self.sizes)
        self.state: dict[str, Tensor] = {}
        for name in [k for k in states[0] if k != "step"]:
            if name in per_tensor:
                self.state[name] = pack_scalars(states, name)
                continue
            flat = torch.cat([st[name].reshape(-1) for st in states])
            for st, piece, w in zip(states, flat.split(self.sizes), ws):
                st[name] = piece.view(w.shape)
            self.state[name] = flat
        self.seg = self.lengths = self.inv_count = None
        self.stage_state: dict[str, Any] = self.state
        if per_tensor:
            device = ws[0].device
            self.lengths = host_values(self.sizes, torch.int64, device)
            self.seg = torch.repeat_interleave(torch.arange(len(ws), dtype=torch.int32, device=device),
                                               self.lengths, output_size=self.numel)  # fmt: skip
            self.inv_count = host_values([1.0 / max(n, 1) for n in self.sizes], torch.float64, device)
            self.stage_state = {k: PerTensor(v) if k in per_tensor else v for k, v in self.state.items()}


def chunks_by_size(index: list[int], sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive runs of ``index`` whose ``sizes`` add up to at most ``limit`` (or hold one item)."""
    chunks: list[list[int]] = []
    total = 0
    for i in index:
        if not chunks or total + sizes[i] > limit:
            chunks.append([])
            total = 0
        chunks[-1].append(i)
        total += sizes[i]
    return chunks


def packable(w: Tensor, bufs: dict[str, Tensor]) -> bool:
    """Whether ``w`` and its buffers can be viewed flat (all contiguous)."""
    return w.is_contiguous() and all(v.is_contiguous() for v in bufs.values())


class CpuLayout:
    """The CPU multi-tensor plan of a bucket: tensors stepped alone, packs, and the workspace.

    Tensors of :data:`ALONE` elements or more, and tensors that are not contiguous, are stepped
    alone; the others are packed, :data:`PACK_CHUNK` elements at most per pack (a run of one
    tensor is stepped alone). ``ws`` are the parameters, complex ones viewed as real
    (:func:`~autosgm.state.real_view`).
    """

    def __init__(self, ws: list[Tensor], states: list[dict[str, Any]], per_tensor: set[str],
                 dtype: torch.dtype) -> None:  # fmt: skip
        bufs = [{k: v for k, v in st.items() if k != "step"} for st in states]
        self.alone: list[tuple[int, dict[str, Tensor]]] = []
        small = []
        for i, w in enumerate(ws):
            if w.numel() >= ALONE or not packable(w, bufs[i]):
                self.alone.append((i, bufs[i]))
            else:
                small.append(i)
        self.packs: list[Pack] = []
        for chunk in chunks_by_size(small, [w.numel() for w in ws], PACK_CHUNK):
            if len(chunk) == 1:
                self.alone.append((chunk[0], bufs[chunk[0]]))
            else:
                self.packs.append(Pack(chunk, [ws[i] for i in chunk], [states[i] for i in chunk], per_tensor, dtype))
        self.alone.sort(key=lambda item: item[0])
        self.arena = Arena(ws[0].device, ARENA_KEEP)


def cpu_work(layout: CpuLayout, ws: list[Tensor], gs: list[Tensor], dtype: torch.dtype
             ) -> Iterator[tuple[ArenaOps, Tensor, Tensor, dict[str, Any]]]:  # fmt: skip
    """One multi-tensor step of a bucket on the CPU, as work for the caller: ``(ops, w, g, state)``
    for each tensor stepped alone and each pack, which the caller steps with
    :func:`~autosgm.step.tensor_step` before it asks for the next (a pack's weights are copied back
    then). ``ws``/``gs`` are the bucket's parameters (real views) and gradients, ``dtype`` the
    state's dtype. (The caller, not this function, calls the step: one package frame fewer between
    ``optimizer.step()`` and the arithmetic.)"""
    arena = layout.arena
    ops = ArenaOps(arena)
    for i, bufs in layout.alone:
        arena.reset()
        yield ops, ws[i], gs[i], bufs
    for pack in layout.packs:
        arena.reset()
        flat_w = arena.take((pack.numel,), dtype)
        flat_g = arena.take((pack.numel,), dtype)
        pw = [ws[i].view(-1) for i in pack.index]
        pieces_w = flat_w.split(pack.sizes)
        torch._foreach_copy_(pieces_w, pw)
        torch._foreach_copy_(flat_g.split(pack.sizes), [gs[i].reshape(-1) for i in pack.index])
        pack_ops = PackedArenaOps(arena, pack.seg, pack.lengths, pack.inv_count) if pack.seg is not None else ops
        yield pack_ops, flat_w, flat_g, pack.stage_state
        torch._foreach_copy_(pw, pieces_w)
    arena.release()
