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
back from main memory. :func:`cpu_step` therefore runs the stage chain
(:func:`~autosgm.pipeline.tensor_step`) on one large tensor at a time, or on one pack of small
ones, with its temporaries taken from an :class:`~autosgm.pipeline.Arena` that the bucket keeps:
they are the same few cache-sized buffers on every tensor and every step. The element-wise
arithmetic is that of the reference path (:class:`~autosgm.pipeline.ArenaOps` only adds
``out=``); per-tensor means of a pack are float64 segment sums. Other devices use the lists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import pipeline as P
from .config import AutoSGMConfig

__all__ = ["ALONE", "PACK_CHUNK", "ARENA_KEEP", "Pack", "CpuLayout", "chunks_by_size", "cpu_step", "pack_scalars", "packable"]

#: Tensors with at least this many elements are stepped alone; smaller ones are packed.
ALONE = 1 << 16
#: Elements per pack of the CPU multi-tensor path (the packs of the fused path are larger).
PACK_CHUNK = 1 << 18
#: Workspace bytes a bucket keeps between steps (a larger one is allocated per step).
ARENA_KEEP = 1 << 26


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
    :class:`~autosgm.pipeline.PerTensor`).
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
            self.lengths = P.host_values(self.sizes, torch.int64, device)
            self.seg = torch.repeat_interleave(torch.arange(len(ws), dtype=torch.int32, device=device),
                                               self.lengths, output_size=self.numel)  # fmt: skip
            self.inv_count = P.host_values([1.0 / max(n, 1) for n in self.sizes], torch.float64, device)
            self.stage_state = {k: P.PerTensor(v) if k in per_tensor else v for k, v in self.state.items()}


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
    tensor is stepped alone). ``params`` are the parameters (complex ones viewed as real).
    """

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]], per_tensor: set[str],
                 dtype: torch.dtype) -> None:  # fmt: skip
        ws = [torch.view_as_real(p) if torch.is_complex(p) else p for p in params]
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
        self.arena = P.Arena(ws[0].device, ARENA_KEEP)


def cpu_step(layout: CpuLayout, ws: list[Tensor], gs: list[Tensor], cfg: AutoSGMConfig, sc: P.StepScalars,
             dtype: torch.dtype) -> None:  # fmt: skip
    """One multi-tensor step of a bucket on the CPU; ``ws``/``gs`` are its parameters (real views)
    and gradients, ``dtype`` the state's dtype."""
    arena = layout.arena
    ops = P.ArenaOps(arena)
    for i, bufs in layout.alone:
        arena.reset()
        P.update_tensor(ws[i], gs[i], bufs, cfg, sc, ops=ops)
    for pack in layout.packs:
        arena.reset()
        flat_w = arena.take((pack.numel,), dtype)
        flat_g = arena.take((pack.numel,), dtype)
        pw = [ws[i].view(-1) for i in pack.index]
        pieces_w = flat_w.split(pack.sizes)
        torch._foreach_copy_(pieces_w, pw)
        torch._foreach_copy_(flat_g.split(pack.sizes), [gs[i].reshape(-1) for i in pack.index])
        pops = P.PackedArenaOps(arena, pack.seg, pack.lengths, pack.inv_count) if pack.seg is not None else ops
        P.tensor_step(pops, flat_w, flat_g, pack.stage_state, cfg, sc)
        torch._foreach_copy_(pw, pieces_w)
    arena.release()
