r"""The fused path: the whole AutoSGM step of a tensor as one compiled kernel.

:func:`fused_kernel` compiles :func:`autosgm.pipeline.tensor_step` with the
:data:`~autosgm.pipeline.FUSED_OPS` primitives through ``torch.compile`` (inductor), which fuses
the element-wise chain filter → moment → numerator → update into one loop over each tensor (plus
a reduction pass when a per-tensor numerator needs a mean). The math is the stages' own: only
the primitives differ. A compiled program is

* specific to one configuration (the :class:`~autosgm.config.AutoSGMConfig`: poles, numerator,
  decay mode ... are constants of the program), to the parameters' dtype and to the device;
* generic in the tensors: they are passed as 1-D aliases whose sizes are marked dynamic before the
  first call of each kind (number of tensors per call: 8, 4, 2 or 1; or a pack), so at most five
  compilations serve every parameter of a model, whatever their number and shapes;
* generic in the step's scalars: ``μF[t]``, ``S[t]``, ``sqrt(1 − β_a^t)`` (and quotients of
  them, computed on the host) arrive as one small tensor, so a new learning rate (a scheduler),
  window value or step count is new data, never a recompilation.

:class:`FusedLayout` plans the calls of one bucket (tensors of one device, dtype and step count).
A compiled call costs tens of microseconds of Python and guard checks, so tensors of
:data:`FUSE_ALONE` elements or more go :data:`FUSE_CHUNK` per call, and smaller ones are packed
into a workspace that rides along with the first call (their state is one flat buffer that each
``state[name]`` views; weights and gradients are copied into flat buffers the layout keeps, and
the weights copied back). Parameters are passed as cached 1-D aliases, checked each step by data
pointer. A call costs far more than its guards when the CPU caches are cold (as they are after a
forward and backward pass): about 0.3 ms on the benchmark machine, against 25 µs in a warm loop.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
from torch import Tensor

from . import pipeline as P
from .config import AutoSGMConfig
from .packing import Pack, chunks_by_size, packable

__all__ = ["FUSE_ALONE", "FUSE_CHUNK", "PACK_LIMIT", "FusedLayout", "fused_kernel", "fused_step"]

#: Tensors with at least this many elements get their own loop in a call; smaller ones are packed.
FUSE_ALONE = 1 << 16
#: Large tensors per compiled call (the rest of a bucket goes in calls of 4, 2 and 1).
FUSE_CHUNK = 8
#: Elements per packed workspace (bounds the transient copies of weights and gradients).
PACK_LIMIT = 1 << 22

_KERNELS: dict[tuple, Callable[..., None]] = {}


# ----------------------------------------------------------------------------------------------
# the compiled kernel
# ----------------------------------------------------------------------------------------------
def fused_kernel(cfg: AutoSGMConfig, dtype: torch.dtype, device: torch.device, packed: bool = False
                 ) -> Callable[..., None]:  # fmt: skip
    """The compiled step ``kernel(ws, gs, states, scalars, seg=None, inv_count=None)`` for ``cfg``
    and parameters of ``dtype`` (real) on ``device``; ``packed``: for calls whose last item is a
    packed workspace.

    Steps each ``(w, g, state)`` of the lists in place: ``w``, ``g`` and the element-wise buffers
    of ``state`` share one shape; ``scalars`` holds the fields of a
    :class:`~autosgm.pipeline.StepScalars` in the state's dtype on ``w``'s device. Each ``w`` is one tensor (its per-tensor statistics have one element), except
    that with ``seg`` (each element's tensor index) and ``inv_count`` (``1/max(numel, 1)`` per
    tensor) the last ``w`` is a packed workspace of several tensors and its per-tensor statistics
    are vectors (see :class:`~autosgm.pipeline.PackedOps`). float16/bfloat16 parameters are
    computed in float32 inside the kernel and rounded once.
    """
    key = (cfg, dtype, device.type, packed)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = _compile(cfg)
    return kernel


def _compile(cfg: AutoSGMConfig) -> Callable[..., None]:
    def step(ws: list[Tensor], gs: list[Tensor], states: list[dict], scalars: Tensor,
             seg: Tensor | None = None, inv_count: Tensor | None = None) -> None:  # fmt: skip
        sc = P.StepScalars(*scalars.unbind(0))
        for j, (w, g, state) in enumerate(zip(ws, gs, states)):
            dtype = P.state_dtype(w.dtype)
            cw = w.to(dtype) if dtype != w.dtype else w
            cg = g.to(dtype) if dtype != g.dtype else g
            ops = P.FUSED_OPS
            if seg is not None and j == len(ws) - 1:
                ops = P.PackedOps(seg, inv_count)
                state = {k: P.PerTensor(v) if k in P.PER_TENSOR_STATS else v for k, v in state.items()}
            P.tensor_step(ops, cw, cg, state, cfg, sc)
            if dtype != w.dtype:
                w.copy_(cw)

    # A code object of its own per configuration, dtype, device and packed or not: dynamo caches
    # compilations (and counts them against its recompile limit, 8) per code object; one of these
    # sees at most five kinds of call (0, 1, 2, 4 or 8 large tensors).
    name = f"autosgm_fused_step_{len(_KERNELS)}"
    code = step.__code__.replace(co_name=name)
    fn = types.FunctionType(code, step.__globals__, name, step.__defaults__, step.__closure__)
    return _Kernel(torch.compile(fn, fullgraph=True))


class _Kernel:
    """A compiled step that is told, before each new kind of call, which sizes are dynamic.

    Marking the sizes dynamic (instead of ``dynamic=True``, which would also turn the
    configuration's float constants into runtime inputs) gives one compilation per kind of call,
    whatever the sizes, with the configuration folded into the program.
    """

    def __init__(self, compiled: Callable[..., None]) -> None:
        self.compiled = compiled
        self.kinds: set[tuple] = set()

    def __call__(self, ws: list[Tensor], gs: list[Tensor], states: list[dict], scalars: Tensor,
                 seg: Tensor | None = None, inv_count: Tensor | None = None) -> None:  # fmt: skip
        kind = (len(ws), seg is None)
        if kind not in self.kinds:
            self.kinds.add(kind)
            for t in (*ws, *gs, seg, inv_count, *(v for st in states for v in st.values())):
                if t is not None:
                    for dim in range(t.dim()):
                        torch._dynamo.maybe_mark_dynamic(t, dim)
        self.compiled(ws, gs, states, scalars, seg, inv_count)


# ----------------------------------------------------------------------------------------------
# the calls of a bucket
# ----------------------------------------------------------------------------------------------
class _Call:
    """One kernel call: large tensors (positions in the bucket) and their state, then maybe a pack."""

    __slots__ = ("index", "states", "pack")

    def __init__(self, index: list[int], states: list[dict[str, Tensor]], pack: Pack | None = None) -> None:
        self.index, self.pack = index, pack
        self.states = states + ([pack.state] if pack is not None else [])


class FusedLayout:
    """The fused step's plan for a bucket: its kernel calls and the tensors left to the reference.

    Every tensor is passed as a 1-D alias (its sizes and layout do not matter to the program).
    Large contiguous tensors (``FUSE_ALONE`` elements or more) go ``FUSE_CHUNK`` per call, the
    rest in calls of 4, 2, 1 (so four chunk lengths at most); small contiguous ones are packed, up
    to ``PACK_LIMIT`` elements per workspace (the first pack rides along with the first call, the
    others get calls of their own). A tensor that is not contiguous
    (or whose state is not), or a lone one of one element or none, takes the reference path.
    ``params`` are the parameters (complex ones are viewed as real).
    """

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]], per_tensor: set[str],
                 dtype: torch.dtype) -> None:  # fmt: skip
        ws = [torch.view_as_real(p) if torch.is_complex(p) else p for p in params]
        bufs = [{k: v for k, v in st.items() if k != "step"} for st in states]
        self.eager: list[tuple[int, dict[str, Tensor]]] = []
        large, small = [], []
        for i, w in enumerate(ws):
            if not packable(w, bufs[i]):
                self.eager.append((i, bufs[i]))
            else:
                (large if w.numel() >= FUSE_ALONE else small).append(i)

        packs = []
        for chunk in chunks_by_size(small, [w.numel() for w in ws], PACK_LIMIT):
            if len(chunk) >= 2 and sum(ws[i].numel() for i in chunk) >= 2:
                packs.append(Pack(chunk, [ws[i] for i in chunk], [states[i] for i in chunk], per_tensor, dtype))
            else:
                for i in chunk:
                    (self.eager.append((i, bufs[i])) if ws[i].numel() <= 1 else large.append(i))
        self.calls: list[_Call] = []
        start = 0
        for size in (FUSE_CHUNK, 4, 2, 1):
            while len(large) - start >= size:
                index = large[start : start + size]
                # the kernel's state: 1-D detached aliases (not views: a view is compiled for its
                # base); 0-d statistics too, as 1-element vectors: inductor (torch 2.13, CPU) drops
                # in-place updates of 0-d float64 inputs
                flat = [{k: v.view(-1).detach() for k, v in bufs[i].items()} for i in index]
                self.calls.append(_Call(index, flat, packs.pop(0) if packs and not self.calls else None))
                start += size
        self.calls += [_Call([], [], pack) for pack in packs]  # (the first pack rides along)
        self.aliases: dict[int, Tensor] = {}  # 1-D aliases of the large parameters
        self.workspaces: dict[int, tuple] = {}  # per pack: flat weights, gradients and their pieces

    def alias(self, i: int, w: Tensor) -> Tensor:
        """A 1-D detached alias of parameter ``w`` (kept while ``w`` keeps its memory)."""
        a = self.aliases.get(i)
        if a is None or a.data_ptr() != w.data_ptr():
            a = self.aliases[i] = w.detach().view(-1)
        return a

    def workspace(self, pack: Pack, w0: Tensor) -> tuple:
        """The pack's flat weights and gradients (dtype of ``w0``), and their pieces shaped as the
        parameters (kept between steps: a step copies into them, nothing is allocated)."""
        ws = self.workspaces.get(id(pack))
        if ws is None or ws[0].dtype != w0.dtype:
            flat_w = torch.empty(pack.numel, dtype=w0.dtype, device=w0.device)
            flat_g = torch.empty_like(flat_w)
            shapes = pack.shapes
            ws = self.workspaces[id(pack)] = (
                flat_w, flat_g,
                [x.view(s) for x, s in zip(flat_w.split(pack.sizes), shapes)],
                [x.view(s) for x, s in zip(flat_g.split(pack.sizes), shapes)],
            )  # fmt: skip
        return ws


def _flat(g: Tensor) -> Tensor:
    g = g.reshape(-1)
    return g.detach() if g.requires_grad else g


def fused_step(layout: FusedLayout, ws: list[Tensor], gs: list[Tensor], cfg: AutoSGMConfig,
               sc: P.StepScalars) -> None:  # fmt: skip
    """One fused step of a bucket: ``ws``/``gs`` are its parameters (real views) and gradients."""
    dtype, device = ws[0].dtype, ws[0].device
    scalars = P.host_values(sc, P.state_dtype(dtype), device)
    for c in layout.calls:
        # 1-D detached aliases: plain tensors (a view or a Parameter would be compiled for its shape)
        wl = [layout.alias(i, ws[i]) for i in c.index]
        gl = [_flat(gs[i]) for i in c.index]
        if c.pack is None:
            fused_kernel(cfg, dtype, device)(wl, gl, c.states, scalars)
            continue
        flat_w, flat_g, pieces_w, pieces_g = layout.workspace(c.pack, ws[0])
        pw = [ws[i] for i in c.pack.index]
        torch._foreach_copy_(pieces_w, pw)
        torch._foreach_copy_(pieces_g, [gs[i] for i in c.pack.index])
        wl.append(flat_w)
        gl.append(flat_g)
        fused_kernel(cfg, dtype, device, packed=True)(wl, gl, c.states, scalars, c.pack.seg, c.pack.inv_count)
        torch._foreach_copy_(pw, pieces_w)
    for i, bufs in layout.eager:
        P.update_tensor(ws[i], gs[i], bufs, cfg, sc)
