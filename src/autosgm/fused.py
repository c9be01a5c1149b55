r"""The fused path: the whole AutoSGM step of a tensor as one compiled kernel.

:func:`fused_kernel` compiles :func:`autosgm.step.tensor_step` with the
:data:`~autosgm.ops.FUSED_OPS` primitives through ``torch.compile`` (inductor), which fuses
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
pointer.

On the CPU, with a torch version on which it was verified (:data:`DIRECT_CALL_TORCH`: it reads
inductor's private ``CompiledFxGraph``), a kind of call is compiled once on stand-in tensors and its
inductor program is then called directly (:class:`_Direct`), without ``torch.compile``'s guards and
wrappers; with any other torch every call goes through the public ``torch.compile``: with the CPU
caches cold, as they are after a forward and backward pass, a guarded call cost about 350 µs on
the benchmark machine, the program alone 45 µs (torch's ``_fused_adam_``: 65–80 µs). The program
still checks each input's size and stride against the sizes it is given.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
from torch import Tensor

from .ops import FUSED_OPS, PackedOps, PerTensor, TENSOR_OPS, host_values
from .step import PER_TENSOR_STATS, StepScalars, state_dtype, tensor_step
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
    :class:`~autosgm.step.StepScalars` in the state's dtype on ``w``'s device. Each ``w`` is one tensor (its per-tensor statistics have one element), except
    that with ``seg`` (each element's tensor index) and ``inv_count`` (``1/max(numel, 1)`` per
    tensor) the last ``w`` is a packed workspace of several tensors and its per-tensor statistics
    are vectors (see :class:`~autosgm.ops.PackedOps`). float16/bfloat16 parameters are
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
        values = StepScalars(*scalars.unbind(0))
        for j, (w, g, state) in enumerate(zip(ws, gs, states)):
            ops = FUSED_OPS
            if seg is not None and j == len(ws) - 1:
                ops = PackedOps(seg, inv_count)
                state = {k: PerTensor(v) if k in PER_TENSOR_STATS else v for k, v in state.items()}
            tensor_step(ops, w, g, state, cfg, values)

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
    whatever the sizes, with the configuration folded into the program. On the CPU, for plain
    tensors, each kind is compiled on stand-in tensors and then called directly (:meth:`direct`);
    otherwise every call goes through ``torch.compile``'s guards (:meth:`__call__`).
    """

    def __init__(self, compiled: Callable[..., None]) -> None:
        self.compiled = compiled
        self.kinds: set[tuple] = set()  # kinds called through torch.compile
        self.directs: dict[tuple, _Direct | None] = {}

    def direct(self, ws: list[Tensor], gs: list[Tensor], states: list[dict], scalars: Tensor,
               seg: Tensor | None, inv_count: Tensor | None, per_tensor: set[str]) -> "_Direct | None":  # fmt: skip
        """The direct form of this kind of call (None: call through ``torch.compile``)."""
        kind = (len(ws), seg is None)
        if kind not in self.directs:
            self.directs[kind] = None
            if ws[0].device.type == "cpu" and direct_calls_verified():
                self.directs[kind] = _Direct.capture(self.compiled, ws, gs, states, scalars, seg, inv_count,
                                                     per_tensor)  # fmt: skip
        return self.directs[kind]

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


#: The torch versions (major.minor) on which calling the compiled programs directly was verified.
#: :class:`_Direct` reads inductor's private ``CompiledFxGraph``; with any other torch every call goes
#: through the public ``torch.compile`` (slower per call, the same results).
DIRECT_CALL_TORCH = ("2.13",)


def direct_calls_verified(version: str | None = None) -> bool:
    """Whether this torch (or ``version``) is one on which the direct calls were verified."""
    release = (version or torch.__version__).split("+")[0].split(".")
    return ".".join(release[:2]) in DIRECT_CALL_TORCH

#: Sizes of the stand-in tensors a kind of call is compiled on (all different, so that each size
#: argument of the compiled program names one tensor): item ``j`` has ``_STAND_IN + 2 j``
#: elements, a packed workspace ``_STAND_IN_PACK`` tensors.
_STAND_IN = 1001
_STAND_IN_PACK = 3


class _Direct:
    """A kind of call compiled once on stand-in tensors, then called without ``torch.compile``'s
    runtime: the inductor program itself, given its flat list of inputs.

    Why: a call through ``torch.compile`` evaluates guards on every input and passes through
    several Python wrappers. With the CPU caches cold, as they are after a forward and backward
    pass, that cost about 350 µs per call on the benchmark machine; the program alone, 45 µs.

    The guards are replaced by what the fused layout guarantees about every call of a kind: the
    same number of items; each a 1-D contiguous tensor of the kernel's dtype and device (the
    gradients are made so), with its element-wise state of the same size and its per-tensor
    statistics of one element (a packed workspace: one per tensor); the sizes are dynamic (the
    stand-ins all differ, and none is 0 or 1, so nothing was specialized or assumed equal).
    ``plan[i]`` says where input ``i`` of the program comes from: ``("w", j)``, ``("g", j)``,
    ``("state", j, name)``, ``("scalars",)``, ``("seg",)``, ``("inv_count",)``, or a size:
    ``("numel", j)`` or ``("packed",)`` (the number of packed tensors).
    """

    __slots__ = ("program", "plan")

    def __init__(self, program: Callable[[list], Any], plan: list[tuple]) -> None:
        self.program, self.plan = program, plan

    @classmethod
    def capture(cls, compiled: Callable[..., None], ws: list[Tensor], gs: list[Tensor], states: list[dict],
                scalars: Tensor, seg: Tensor | None, inv_count: Tensor | None,
                per_tensor: set[str]) -> "_Direct | None":  # fmt: skip
        """Compile the kind of call of these arguments on stand-ins and record its program and
        plan; None where this torch does not expose them as expected."""
        try:
            from torch._inductor.output_code import CompiledFxGraph
        except ImportError:
            return None
        n, packed = len(ws), seg is not None
        sizes = [_STAND_IN + 2 * j for j in range(n)]
        roles: dict[int, tuple] = {}

        def stand_in(like: Tensor, size: int, role: tuple) -> Tensor:
            t = torch.zeros(size, dtype=like.dtype, device=like.device)
            if size > 1:
                torch._dynamo.mark_dynamic(t, 0)
            roles[id(t)] = role
            return t

        s_ws = [stand_in(w, sizes[j], ("w", j)) for j, w in enumerate(ws)]
        s_gs = [stand_in(g, sizes[j], ("g", j)) for j, g in enumerate(gs)]
        s_states = []
        for j, st in enumerate(states):
            stats = _STAND_IN_PACK if packed and j == n - 1 else 1
            s_states.append({k: stand_in(v, stats if k in per_tensor else sizes[j], ("state", j, k))
                             for k, v in st.items()})  # fmt: skip
        s_scalars = scalars.clone()
        roles[id(s_scalars)] = ("scalars",)
        s_seg = s_inv = None
        if packed:
            s_seg = stand_in(seg, sizes[-1], ("seg",))
            s_inv = stand_in(inv_count, _STAND_IN_PACK, ("inv_count",))
            s_inv.fill_(1.0)
        size_roles = {size: ("numel", j) for j, size in enumerate(sizes)}
        if packed:
            size_roles[_STAND_IN_PACK] = ("packed",)

        seen: list[tuple] = []
        call = CompiledFxGraph.__call__

        def spy(graph, inputs):
            given = list(inputs)  # (the program empties its list)
            out = call(graph, inputs)
            seen.append((graph, given, out))
            return out

        CompiledFxGraph.__call__ = spy
        try:
            compiled(s_ws, s_gs, s_states, s_scalars, s_seg, s_inv)
        except Exception:  # e.g. a size specialized after all: the guarded form will do
            return None
        finally:
            CompiledFxGraph.__call__ = call
        if len(seen) != 1 or seen[0][2]:  # one program, whose mutations are its own
            return None
        graph, inputs, _ = seen[0]
        plan = []
        for x in inputs:
            role = roles.get(id(x)) if isinstance(x, Tensor) else size_roles.get(x) if type(x) is int else None
            if role is None:
                return None
            plan.append(role)
        return cls(graph, plan)

    def bind(self, call: "_Call", ws: list[Tensor]) -> "_Bound":
        """The inputs of this program for ``call`` (its states, the sizes of ``ws``) with slots
        for each step's weights, gradients and scalars."""
        template: list[Any] = []
        w_pos, g_pos, sc_pos = [], [], []
        pack = call.pack
        for i, role in enumerate(self.plan):
            kind = role[0]
            value: Any = None
            if kind == "w":
                w_pos.append((i, role[1]))
            elif kind == "g":
                g_pos.append((i, role[1]))
            elif kind == "scalars":
                sc_pos.append(i)
            elif kind == "state":
                value = call.states[role[1]][role[2]]
            elif kind == "numel":
                value = ws[role[1]].numel()
            elif kind == "packed":
                value = pack.inv_count.numel()
            elif kind == "seg":
                value = pack.seg
            else:
                value = pack.inv_count
            template.append(value)
        return _Bound(self, template, w_pos, g_pos, sc_pos)


class _Bound:
    """A direct program's inputs for one call site: fixed ones in place, slots for the rest."""

    __slots__ = ("direct", "template", "w_pos", "g_pos", "sc_pos")

    def __init__(self, direct: _Direct, template: list, w_pos: list, g_pos: list, sc_pos: list) -> None:
        self.direct, self.template = direct, template
        self.w_pos, self.g_pos, self.sc_pos = w_pos, g_pos, sc_pos

    def __call__(self, ws: list[Tensor], gs: list[Tensor], scalars: Tensor) -> None:
        args = self.template.copy()
        for i, j in self.w_pos:
            args[i] = ws[j]
        for i, j in self.g_pos:
            args[i] = gs[j]
        for i in self.sc_pos:
            args[i] = scalars
        self.direct.program(args)
        # the program writes through data pointers: tell autograd the weights changed, as an
        # in-place torch op would
        torch.autograd.graph.increment_version(ws)


# ----------------------------------------------------------------------------------------------
# the calls of a bucket
# ----------------------------------------------------------------------------------------------
class _Call:
    """One kernel call: large tensors (positions in the bucket) and their state, then maybe a pack."""

    __slots__ = ("index", "states", "pack", "bound")

    def __init__(self, index: list[int], states: list[dict[str, Tensor]], pack: Pack | None = None) -> None:
        self.index, self.pack = index, pack
        self.states = states + ([pack.state] if pack is not None else [])
        self.bound: _Bound | None = None  # the direct program's inputs (CPU)


class FusedLayout:
    """The fused step's plan for a bucket: its kernel calls and the tensors left to the reference.

    Every tensor is passed as a 1-D alias (its sizes and layout do not matter to the program).
    Large contiguous tensors (``FUSE_ALONE`` elements or more) go ``FUSE_CHUNK`` per call, the
    rest in calls of 4, 2, 1 (so four chunk lengths at most); small contiguous ones are packed, up
    to ``PACK_LIMIT`` elements per workspace (the first pack rides along with the first call, the
    others get calls of their own). A tensor that is not contiguous
    (or whose state is not), or a lone one of one element or none, takes the reference path.
    ``ws`` are the parameters, complex ones viewed as real (:func:`~autosgm.state.real_view`).
    """

    def __init__(self, ws: list[Tensor], states: list[dict[str, Any]], per_tensor: set[str],
                 dtype: torch.dtype, plain: bool = True) -> None:  # fmt: skip
        self.per_tensor = per_tensor
        self.numels = [w.numel() for w in ws]
        self.plain = plain  # plain tensors (not DTensor shards): direct calls allowed
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
            if w.numel() != self.numels[i] or not w.is_contiguous():
                raise RuntimeError(f"parameter {i} of the fused step changed size or layout after its state was "
                                   "created; build a new optimizer for it")  # fmt: skip
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
    """A 1-D contiguous alias (or copy) of gradient ``g``, detached."""
    g = g.view(-1) if g.is_contiguous() else g.contiguous().view(-1)
    return g.detach() if g.requires_grad else g


def _run(layout: FusedLayout, c: _Call, kernel: _Kernel, wl: list[Tensor], gl: list[Tensor], scalars: Tensor,
         seg: Tensor | None = None, inv_count: Tensor | None = None) -> None:  # fmt: skip
    """Call ``kernel`` for ``c``: directly where it can be (:class:`_Direct`), else compiled."""
    direct = kernel.direct(wl, gl, c.states, scalars, seg, inv_count, layout.per_tensor) if layout.plain else None
    if direct is None:
        kernel(wl, gl, c.states, scalars, seg, inv_count)
        return
    if c.bound is None or c.bound.direct is not direct:
        c.bound = direct.bind(c, wl)
    c.bound(wl, gl, scalars)


def fused_step(layout: FusedLayout, ws: list[Tensor], gs: list[Tensor], cfg: AutoSGMConfig,
               values: StepScalars) -> None:  # fmt: skip
    """One fused step of a bucket: ``ws``/``gs`` are its parameters (real views) and gradients."""
    dtype, device = ws[0].dtype, ws[0].device
    scalars = host_values(values, state_dtype(dtype), device)
    for c in layout.calls:
        # 1-D detached aliases: plain tensors (a view or a Parameter would be compiled for its shape)
        wl = [layout.alias(i, ws[i]) for i in c.index]
        gl = [_flat(gs[i]) for i in c.index]
        if c.pack is None:
            _run(layout, c, fused_kernel(cfg, dtype, device), wl, gl, scalars)
            continue
        flat_w, flat_g, pieces_w, pieces_g = layout.workspace(c.pack, ws[0])
        pw = [ws[i] for i in c.pack.index]
        torch._foreach_copy_(pieces_w, pw)
        torch._foreach_copy_(pieces_g, [gs[i] for i in c.pack.index])
        wl.append(flat_w)
        gl.append(flat_g)
        _run(layout, c, fused_kernel(cfg, dtype, device, packed=True), wl, gl, scalars, c.pack.seg,
             c.pack.inv_count)  # fmt: skip
        torch._foreach_copy_(pw, pieces_w)
    for i, bufs in layout.eager:
        tensor_step(TENSOR_OPS, ws[i], gs[i], bufs, cfg, values)
