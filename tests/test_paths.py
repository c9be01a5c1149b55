"""The three paths of a step agree: multi-tensor (foreach) and fused (compiled) equal the reference.

Every path runs the same stage chain (:func:`autosgm.step.tensor_step`) with other ops, so
their parameters and state must agree: float64 to 1e-12 for the multi-tensor path, float32 to
1e-6 (relative) for the fused path, after steps that include missing gradients, a parameter frozen
and later unfrozen (so step counts differ within a group), zero-size, one-element, strided and
complex tensors, and two groups of different dtypes. The memory of the state, low-precision
parameters and the fused path's compilation behaviour are checked here too.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from autosgm import AutoSGM, Window
from autosgm.fused import FUSE_ALONE

STEPS = 9

#: name -> AutoSGM keywords: every filter branch, numerator, mode, window and decay mode.
CASES: dict[str, dict] = {
    "adam": dict(),
    "heavy-ball": dict(betas=(0.9, 0.999), eta=1.0, debias=False, normalize=False),
    "nesterov": dict(betas=(0.9, 0.999), gamma=0.9 / 1.9, eta=1.9, debias=False, normalize=False),
    "sgd": dict(betas=(0.0, 0.999), eta=1.0, debias=False, normalize=False),
    "fir": dict(betas=(0.0, 0.99), gamma=-0.5),
    "rmsprop-eps": dict(betas=(0.0, 0.99), eta=1.0, debias=False, repeat_eps=True),
    "zero-pole": dict(gamma=0.5, eta=0.3, numerator="parcor-maxbound"),
    "cosine-window": dict(gamma=0.3, window=Window(shape="cosine", tau=1, spe=STEPS)),
    "full-window": dict(window=Window(shape="polynomial", order=1.0, full=True, tau=1, spe=6)),
    "coupled-decay": dict(weight_decay=1e-2, numerator="parcor-markov"),
    "decoupled-decay": dict(weight_decay=1e-2, decoupled_weight_decay=True, numerator="corr"),
    "maximize": dict(maximize=True, weight_decay=1e-2, numerator="parcor-chebyshev", gamma=0.2),
}
for _num in ("parcor-bounded", "parcor-maxbound", "parcor-markov", "parcor-chebyshev", "corr"):
    for _mode in ("tensor", "element"):
        CASES[f"{_num}-{_mode}"] = dict(numerator=_num, numerator_mode=_mode, beta_n=0.99)


# ------------------------------------------------------------------------------------------------
# a parameter set with every awkward kind of tensor, and a deterministic gradient stream
# ------------------------------------------------------------------------------------------------
def make_params(dtype=torch.float64, large: bool = False) -> list[list[nn.Parameter]]:
    """Two groups: ``dtype`` (with a complex tensor) and float32 (with a strided tensor)."""
    gen = torch.Generator().manual_seed(0)

    def param(*shape, dt=dtype):
        real = torch.randn(*shape, generator=gen, dtype=torch.float64)
        if dt.is_complex:
            real = torch.complex(real, torch.randn(*shape, generator=gen, dtype=torch.float64))
        return nn.Parameter(real.to(dt))

    cplx = torch.complex128 if dtype == torch.float64 else torch.complex64
    first = [param(5, 3), param(7), param(0, 3), param(1), param(4, 2, 2), param(3, 2, dt=cplx)]
    second = [param(9, 4, dt=torch.float32), param(4, dt=torch.float32),
              nn.Parameter(param(6, 3, dt=torch.float32).detach().t())]  # fmt: skip
    if large:  # big enough for the fused path's own-kernel calls
        first.append(param(FUSE_ALONE + 5))
        second.append(param(300, 250, dt=torch.float32))
    return [first, second]


#: parameter (group, index) without a gradient at a step: frozen for steps 0-2, then trained;
#: another one skips every third step.
def _has_grad(gi: int, i: int, k: int) -> bool:
    if (gi, i) == (0, 1):
        return k >= 3
    if (gi, i) == (0, 4):
        return k % 3 != 1
    return True


def set_grads(groups: list[list[nn.Parameter]], k: int) -> None:
    gen = torch.Generator().manual_seed(1000 + k)
    for gi, params in enumerate(groups):
        for i, p in enumerate(params):
            noise = torch.randn(torch.view_as_real(p).shape if p.is_complex() else p.shape,
                                generator=gen, dtype=torch.float64)  # fmt: skip
            if p.is_complex():
                noise = torch.view_as_complex(noise)
            g = (0.5 * p.detach().to(noise.dtype) + 0.3 * noise).to(p.dtype)
            p.grad = g if _has_grad(gi, i, k) else None


def run(kwargs: dict, path: dict, dtype=torch.float64, steps: int = STEPS, large: bool = False,
        scheduler: bool = False):  # fmt: skip
    groups = make_params(dtype, large)
    opt = AutoSGM([{"params": groups[0]}, {"params": groups[1], "lr": 3e-3}], lr=1e-2, **kwargs, **path)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if scheduler else None
    for k in range(steps):
        set_grads(groups, k)
        opt.step()
        if sched is not None:
            sched.step()
    return groups, opt


def _real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def worst_difference(a, b, tol32: float = 1.0) -> tuple[float, str]:
    """Largest difference of parameters and state, relative to the larger of 1 and max|b|;
    differences of float32 tensors count ``1/tol32`` times (to compare float32 and float64 with
    one tolerance)."""
    (ga, oa), (gb, ob) = a, b
    worst, where = 0.0, ""
    for gi, (pa, pb) in enumerate(zip(ga, gb, strict=True)):
        for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
            sa, sb = oa.state[x], ob.state[y]
            assert sa.keys() == sb.keys(), (gi, i)
            pairs = [("param", _real(x.detach()), _real(y.detach()))] + [(k, sa[k], sb[k]) for k in sb]
            for name, u, v in pairs:
                assert u.dtype == v.dtype and u.shape == v.shape, (gi, i, name)
                if name == "step":
                    assert torch.equal(u, v), (gi, i)
                elif v.numel():
                    d = ((u.double() - v.double()).abs().max() / max(1.0, v.abs().max().item())).item()
                    d /= tol32 if v.dtype == torch.float32 else 1.0
                    if d > worst:
                        worst, where = d, f"group {gi} tensor {i} {name}"
    return worst, where


# ------------------------------------------------------------------------------------------------
# multi-tensor == single-tensor
# ------------------------------------------------------------------------------------------------
#: float32 tolerance of the multi-tensor path: its per-tensor means may sum in another order
#: (float64 segment sums of packs, ``_foreach_norm``) than the reference's cascade sums.
FOREACH_TOL32 = 1e6


@pytest.fixture(params=["packed", "lists"])
def cpu_form(request, monkeypatch):
    """Both forms of the multi-tensor path on the CPU: tensor by tensor and pack by pack with a
    workspace (the default), and ``torch._foreach_*`` over lists (the form of other devices)."""
    import autosgm.plan

    if request.param == "lists":
        monkeypatch.setattr(autosgm.plan, "uses_cpu_layout", lambda *args: False)
    return request.param


@pytest.mark.parametrize("name", list(CASES))
def test_foreach_equals_single_tensor(name, cpu_form):
    ref = run(CASES[name], dict(foreach=False))
    got = run(CASES[name], dict(foreach=True))
    worst, where = worst_difference(got, ref, tol32=FOREACH_TOL32)
    assert worst <= 1e-12, (name, worst, where)
    start = make_params()
    moved = max((_real(p.detach()) - _real(q)).abs().max().item()
                for ps, qs in zip(ref[0], start) for p, q in zip(ps, qs) if p.numel())  # fmt: skip
    assert moved > 1e-6  # the run moved the parameters


@pytest.mark.parametrize("name", ["adam", "nesterov", "parcor-chebyshev-tensor", "parcor-markov-element", "corr-tensor"])
def test_foreach_in_sub_lists_equals_single_tensor(name, monkeypatch):
    """The multi-tensor path runs the stages on sub-lists of a bucket (for cache locality)."""
    import autosgm.plan

    monkeypatch.setattr(autosgm.plan, "FOREACH_CHUNK", 20)  # a few tensors per sub-list
    monkeypatch.setattr(autosgm.plan, "FOREACH_CHUNK_PLAIN", 20)
    monkeypatch.setattr(autosgm.plan, "uses_cpu_layout", lambda *args: False)
    ref = run(CASES[name], dict(foreach=False))
    got = run(CASES[name], dict(foreach=True))
    assert worst_difference(got, ref, tol32=FOREACH_TOL32)[0] <= 1e-12


def test_foreach_steps_counts_that_differ_within_a_group():
    _, opt = run(dict(numerator="parcor-markov"), dict(foreach=True))
    steps = {int(st["step"]) for st in opt.state.values()}
    assert steps == {STEPS, STEPS - 3}  # always; frozen for 3 steps or every third skipped
    for st in opt.state.values():
        assert st["step"].shape == () and st["step"].dtype == torch.float32 and st["step"].device.type == "cpu"


def test_a_reference_step_in_between_keeps_the_multi_tensor_step_counts_right():
    """A hook (so the reference path) at a step where one parameter has no gradient, then the
    multi-tensor path again with the earlier set of parameters: their step counts now differ."""

    def train(opt, groups, hook_at):
        for k in range(STEPS):
            set_grads(groups, k)
            for p in (p for ps in groups for p in ps if p.grad is None):
                p.grad = torch.zeros_like(p)
            if k == hook_at:
                groups[1][0].grad = None
            handle = opt.register_trajectory_hook(lambda o, r: None) if k == hook_at else None
            opt.step()
            if handle is not None:
                handle.remove()

    results = []
    for foreach in (False, True):
        groups = make_params()
        opt = AutoSGM([{"params": groups[0]}, {"params": groups[1], "lr": 3e-3}], lr=1e-2,
                      **CASES["parcor-markov-tensor"], foreach=foreach)  # fmt: skip
        train(opt, groups, hook_at=4)
        results.append((groups, opt))
    assert int(results[1][1].state[results[1][0][1][0]]["step"]) == STEPS - 1
    assert worst_difference(results[1], results[0], tol32=FOREACH_TOL32)[0] <= 1e-12


def test_foreach_survives_a_state_dict_round_trip_and_a_reload_mid_run():
    """The multi-tensor path reuses per-group lists; loading a state must not leave them stale."""
    kwargs = dict(numerator="parcor-chebyshev", foreach=True)
    ref_groups, ref_opt = run(kwargs, {}, steps=2 * STEPS)

    groups, opt = run(kwargs, {}, steps=STEPS)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt.load_state_dict(torch.load(buf, weights_only=True))  # the same optimizer, a new state object
    for k in range(STEPS, 2 * STEPS):
        set_grads(groups, k)
        opt.step()
    assert worst_difference((groups, opt), (ref_groups, ref_opt))[0] == 0.0


def test_deepcopy_of_a_foreach_optimizer_steps_its_own_state():
    groups, opt = run(dict(numerator="corr", foreach=True), {})
    twin_groups, twin = copy.deepcopy((groups, opt))
    for k in range(STEPS, STEPS + 3):
        set_grads(groups, k)
        set_grads(twin_groups, k)
        opt.step()
        twin.step()
    assert worst_difference((twin_groups, twin), (groups, opt))[0] == 0.0
    p, q = groups[0][0], twin_groups[0][0]
    assert opt.state[p]["num_c"].data_ptr() != twin.state[q]["num_c"].data_ptr()


# ------------------------------------------------------------------------------------------------
# state memory
# ------------------------------------------------------------------------------------------------
#: bytes of element-wise state per float32 parameter element, per configuration.
STATE_BYTES = {
    "adam": 8,
    "heavy-ball": 4,
    "nesterov": 4,
    "sgd": 0,
    "fir": 8,
    "parcor-bounded-tensor": 12,
    "parcor-maxbound-tensor": 16,
    "parcor-markov-tensor": 16,
    "parcor-chebyshev-tensor": 16,
    "corr-tensor": 12,
    "parcor-bounded-element": 20,
    "parcor-maxbound-element": 16,
    "parcor-markov-element": 20,
    "parcor-chebyshev-element": 24,
    "corr-element": 12,
}


def _state_bytes(opt: AutoSGM, p: torch.Tensor) -> tuple[int, set[str]]:
    st = opt.state[p]
    elementwise = {k for k, v in st.items() if k != "step" and v.shape == p.shape}
    scalars = {k for k, v in st.items() if v.dim() == 0}
    assert elementwise | scalars == set(st)
    return sum(st[k].numel() * st[k].element_size() for k in elementwise), scalars


@pytest.mark.parametrize("name", list(STATE_BYTES))
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_state_holds_only_what_the_configuration_needs(name, foreach):
    p = nn.Parameter(torch.randn(64, 32))
    opt = AutoSGM([p], **CASES[name], foreach=foreach)
    p.grad = torch.randn_like(p)
    opt.step()
    nbytes, scalars = _state_bytes(opt, p)
    assert nbytes == STATE_BYTES[name] * p.numel(), (name, nbytes / p.numel())
    if name.startswith("parcor") and name.endswith("-tensor"):  # the default numerator mode
        assert nbytes <= 16 * p.numel()
    st = opt.state[p]
    assert ("filter_state" in st) == (name not in ("sgd",))
    assert ("moment" in st) == (name not in ("heavy-ball", "nesterov", "sgd"))
    assert any(k.startswith("num_") for k in st) == name.endswith(("-tensor", "-element"))
    per_tensor = name.endswith("-tensor")
    assert scalars == {"step"} | ({"num_a"} | {"num_absx", "num_xmean", "num_xvar"} & set(st) if per_tensor else set())


def _storage_and_state_bytes(opt: AutoSGM) -> tuple[int, int]:
    """Bytes of the distinct storages behind the state, and bytes of the state tensors."""
    storages, viewed = {}, 0
    for st in opt.state.values():
        for v in st.values():
            storages[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
            viewed += v.numel() * v.element_size()
    return sum(storages.values()), viewed


def test_multi_tensor_packing_allocates_no_extra_memory():
    """Packed step counters and statistics are views: the storages hold exactly the state."""
    _, opt = run(dict(numerator="parcor-markov", foreach=True), {}, dtype=torch.float32)
    storage, state = _storage_and_state_bytes(opt)
    assert storage == state


# ------------------------------------------------------------------------------------------------
# low-precision parameters
# ------------------------------------------------------------------------------------------------
LOW = [torch.bfloat16, torch.float16]


def _regression(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen) + 0.1 * torch.randn(256, 1, generator=gen)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    torch.manual_seed(seed)
    for m in net:
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    return net.to(dtype), x.to(dtype), y.to(dtype)



def _fit(net, opt, x, y, steps: int = 60) -> list[float]:
    """Full-batch regression steps; the losses."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses

@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "f16"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("numerator", ["unity", "parcor-markov"])
def test_low_precision_parameters_train_with_float32_state(dtype, foreach, numerator):
    net, x, y = _regression(dtype)
    opt = AutoSGM(net.parameters(), lr=2e-2, numerator=numerator, foreach=foreach)
    losses = _fit(net, opt, x, y)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses[::10]
    for p in net.parameters():
        assert p.dtype == dtype
        for k, v in opt.state[p].items():
            assert v.dtype == torch.float32, k


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "f16"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_low_precision_step_is_the_float32_step_rounded_once(dtype, foreach):
    """A bf16/f16 run equals a float32 run whose parameters are rounded to bf16/f16 after each step."""
    low = [nn.Parameter(torch.randn(33, 7).to(dtype)), nn.Parameter(torch.randn(5).to(dtype))]
    high = [nn.Parameter(p.detach().float()) for p in low]
    kwargs = dict(lr=1e-2, gamma=0.3, numerator="parcor-chebyshev", weight_decay=1e-2, foreach=foreach)
    opt_low, opt_high = AutoSGM(low, **kwargs), AutoSGM(high, **kwargs)
    gen = torch.Generator().manual_seed(3)
    for _ in range(6):
        for a, b in zip(low, high):
            g = torch.randn(a.shape, generator=gen).to(dtype)
            a.grad, b.grad = g, g.float()
        opt_low.step()
        opt_high.step()
        with torch.no_grad():
            for b in high:
                b.copy_(b.to(dtype).float())
    for a, b in zip(low, high):
        assert torch.equal(a.float(), b)
        for k in opt_high.state[b]:
            assert torch.equal(opt_low.state[a][k], opt_high.state[b][k]), k


# ------------------------------------------------------------------------------------------------
# path selection
# ------------------------------------------------------------------------------------------------
def test_foreach_and_fused_together_are_refused():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="foreach.*fused"):
        AutoSGM(p, foreach=True, fused=True)
    with pytest.raises(ValueError, match="foreach.*fused"):
        AutoSGM([{"params": p, "fused": True}], foreach=True)
    with pytest.raises(TypeError, match="fused"):
        AutoSGM(p, fused="yes")
    opt = AutoSGM(p, fused=True)
    opt.param_groups[0]["foreach"] = True
    p[0].grad = torch.ones(2)
    with pytest.raises(ValueError, match="foreach.*fused"):
        opt.step()


def test_fused_and_foreach_are_param_group_settings_with_torch_defaults():
    opt = AutoSGM([nn.Parameter(torch.zeros(2))])
    assert opt.param_groups[0]["foreach"] is None and opt.param_groups[0]["fused"] is None
    sd = opt.state_dict()
    assert sd["param_groups"][0]["fused"] is None


def test_a_trajectory_hook_takes_the_reference_path_and_compiles_nothing():
    import torch._dynamo.utils as dynamo_utils

    before = dynamo_utils.counters["stats"]["unique_graphs"]
    ref = run(CASES["parcor-markov-tensor"], dict(foreach=False), dtype=torch.float32)
    groups = make_params(torch.float32)
    opt = AutoSGM([{"params": groups[0]}, {"params": groups[1], "lr": 3e-3}], lr=1e-2,
                  **CASES["parcor-markov-tensor"], fused=True)  # fmt: skip
    seen = []
    opt.register_trajectory_hook(lambda o, r: seen.append(r.step))
    for k in range(STEPS):
        set_grads(groups, k)
        opt.step()
    assert worst_difference((groups, opt), ref)[0] == 0.0
    assert seen and dynamo_utils.counters["stats"]["unique_graphs"] == before


# ------------------------------------------------------------------------------------------------
# fused == single-tensor (compiles: one case in the default run, the rest marked slow)
# ------------------------------------------------------------------------------------------------
def test_fused_matches_the_reference_and_never_recompiles_for_lr_window_or_step():
    """A per-tensor numerator, a window and an LR scheduler, two groups of large, small, one-element
    and empty tensors: the first step compiles one program (dynamic sizes: it serves every tensor
    and both groups), the later steps none although lr, window value and step count change."""
    import torch._dynamo.utils as dynamo_utils

    def params(seed):
        gen = torch.Generator().manual_seed(seed)
        shapes = [[(FUSE_ALONE + 5,), (5, 3), (7,), (1,), (0, 3)], [(FUSE_ALONE + 33,), (9, 4), (4,)]]
        return [[nn.Parameter(torch.randn(s, generator=gen)) for s in group] for group in shapes]

    kwargs = dict(numerator="parcor-markov", gamma=0.3, weight_decay=1e-2, decoupled_weight_decay=True,
                  window=Window(shape="cosine", tau=1, spe=STEPS))  # fmt: skip
    runs, before = [], dynamo_utils.counters["stats"]["unique_graphs"]
    for path in (dict(fused=True), dict(foreach=False)):
        groups = params(0)
        opt = AutoSGM([{"params": groups[0]}, {"params": groups[1], "lr": 3e-3}], lr=1e-2, **path, **kwargs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
        graphs, lrs = [], []
        for k in range(STEPS):
            set_grads(groups, k % 2)  # (no parameter misses a gradient here)
            for group in groups:
                for p in group:
                    p.grad = p.grad if p.grad is not None else torch.zeros_like(p)
            opt.step()
            sched.step()
            graphs.append(dynamo_utils.counters["stats"]["unique_graphs"])
            lrs.append(opt.param_groups[0]["lr"])
        runs.append((groups, opt, graphs, lrs))
    (groups, opt, graphs, lrs), (ref_groups, ref, _, _) = runs
    storage, state = _storage_and_state_bytes(opt)  # packed state is views of flat buffers
    assert storage == state
    assert len(set(lrs)) == STEPS and len(set(opt.last_window_values)) == 1
    assert graphs[0] - before == 1  # one program for both groups and every tensor size
    assert graphs[1:] == [graphs[0]] * (STEPS - 1), graphs  # nothing compiles after the first step
    worst, where = worst_difference((groups, opt), (ref_groups, ref))
    assert worst <= 1e-6, (worst, where)


def _strided_grads(params: list[nn.Parameter], seed: int) -> None:
    """Gradients that are not contiguous: a strided 1-D view, a transposed matrix."""
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        if p.dim() == 1:
            p.grad = torch.randn(2 * p.numel(), generator=gen)[::2]
        else:
            p.grad = torch.randn(tuple(reversed(p.shape)), generator=gen).t()


def test_fused_cpu_calls_its_programs_directly_and_keeps_torch_semantics():
    """On the CPU each kind of call is compiled once on stand-ins and then called directly. Its
    inputs: strided and transposed gradients (made contiguous), weights whose version counters
    move as with an in-place op; a parameter that changes size is refused."""
    from autosgm import fused

    if not fused.direct_calls_verified():
        pytest.skip(f"direct calls are used with torch {', '.join(fused.DIRECT_CALL_TORCH)} only")

    def params():
        gen = torch.Generator().manual_seed(3)
        return [nn.Parameter(torch.randn(s, generator=gen)) for s in [(FUSE_ALONE + 7,), (300, 250), (6,), (5, 2)]]

    runs = []
    for path in (dict(fused=True), dict(foreach=False)):
        ps = params()
        opt = AutoSGM(ps, lr=1e-2, gamma=0.2, **path)
        versions = [p._version for p in ps]
        for k in range(4):
            _strided_grads(ps, k)
            opt.step()
        assert all(p._version > v for p, v in zip(ps, versions))
        runs.append(([ps], opt))
    worst, where = worst_difference(*runs)
    assert worst <= 1e-6, (worst, where)
    kernels = [k for k in fused._KERNELS.values() if k.directs]
    assert kernels and all(isinstance(d, fused._Direct) for k in kernels for d in k.directs.values())

    ps, opt = runs[0][0][0], runs[0][1]
    ps[0].data = torch.zeros(FUSE_ALONE + 9)
    ps[0].grad = torch.zeros(FUSE_ALONE + 9)
    with pytest.raises(RuntimeError, match="changed size"):
        opt.step()


def test_fused_survives_a_deepcopy_and_a_state_dict_reload_mid_run():
    """A copy steps its own state through its own bound programs, and a reloaded state (new
    tensors) is what the next fused step reads and writes: both equal the reference."""

    def params():
        gen = torch.Generator().manual_seed(3)
        return [nn.Parameter(torch.randn(s, generator=gen)) for s in [(FUSE_ALONE + 7,), (300, 250), (6,), (5, 2)]]

    def grads(ps, k):
        gen = torch.Generator().manual_seed(100 + k)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)

    ref_ps = params()
    ref = AutoSGM(ref_ps, lr=1e-2, gamma=0.2)
    ps = params()
    opt = AutoSGM(ps, lr=1e-2, gamma=0.2, fused=True)
    for k in range(3):
        grads(ref_ps, k), grads(ps, k)
        ref.step(), opt.step()
    twin_ps, twin = copy.deepcopy((ps, opt))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt.load_state_dict(torch.load(buf, weights_only=True))
    for k in range(3, 6):
        grads(ref_ps, k), grads(ps, k), grads(twin_ps, k)
        ref.step(), opt.step(), twin.step()
    for got in ((ps, opt), (twin_ps, twin)):
        worst, where = worst_difference(([got[0]], got[1]), ([ref_ps], ref))
        assert worst <= 1e-6, (worst, where)
    assert opt.state[ps[1]]["moment"].data_ptr() != twin.state[twin_ps[1]]["moment"].data_ptr()


def test_fused_without_direct_calls_goes_through_torch_compile(monkeypatch):
    """The form of other devices and of torch versions the direct calls were not verified on:
    every call through the public ``torch.compile`` and its guards; the same results."""
    from autosgm import fused

    monkeypatch.setattr(fused, "DIRECT_CALL_TORCH", ())  # a torch version the direct calls were not verified on
    monkeypatch.setattr(fused, "_KERNELS", {})
    ref = run(CASES["parcor-markov-tensor"], dict(foreach=False), dtype=torch.float32, large=True)
    got = run(CASES["parcor-markov-tensor"], dict(fused=True), dtype=torch.float32, large=True)
    worst, where = worst_difference(got, ref)
    assert worst <= 1e-6, (worst, where)
    assert all(d is None for k in fused._KERNELS.values() for d in k.directs.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_fused_equals_single_tensor(name):
    """Groups in float32 (the fused path's 1e-6), complex64, strided, frozen, empty tensors."""
    ref = run(CASES[name], dict(foreach=False), dtype=torch.float32, large=True, scheduler=True)
    got = run(CASES[name], dict(fused=True), dtype=torch.float32, large=True, scheduler=True)
    worst, where = worst_difference(got, ref)
    assert worst <= 1e-6, (name, worst, where)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "parcor-chebyshev-tensor", "corr-element"])
def test_fused_equals_single_tensor_in_float64(name):
    """A float64 group (1e-12) beside a float32 group (1e-6)."""
    ref = run(CASES[name], dict(foreach=False), large=True)
    got = run(CASES[name], dict(fused=True), large=True)
    worst, where = worst_difference(got, ref, tol32=1e-6 / 1e-12)
    assert worst <= 1e-12, (name, worst, where)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "f16"])
def test_fused_low_precision_trains_with_float32_state(dtype):
    net, x, y = _regression(dtype)
    opt = AutoSGM(net.parameters(), lr=2e-2, numerator="parcor-markov", fused=True)
    losses = _fit(net, opt, x, y)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert all(v.dtype == torch.float32 for p in net.parameters() for v in opt.state[p].values())


@pytest.mark.slow
def test_fused_compiles_a_bounded_number_of_programs_for_many_tensors():
    """~150 tensors of many shapes (a transformer-like stack): a handful of compilations."""
    import torch._dynamo.utils as dynamo_utils

    d = 64
    shapes = [(512, d)] + [s for _ in range(12) for s in
                           [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]]  # fmt: skip
    shapes += [(1100 + 7 * i, 64) for i in range(5)]  # some large ones of different sizes
    params = [nn.Parameter(torch.randn(s)) for s in shapes]
    opt = AutoSGM(params, lr=1e-3, numerator="parcor-maxbound", fused=True)
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert len(params) > 150 - 10
    assert dynamo_utils.counters["stats"]["unique_graphs"] - before <= 4
    assert all(math.isfinite(p.sum().item()) for p in params)


def test_direct_calls_only_on_the_torch_versions_they_were_verified_on():
    from autosgm.fused import DIRECT_CALL_TORCH, direct_calls_verified

    assert direct_calls_verified("2.13.0") and direct_calls_verified("2.13.0+cpu") and direct_calls_verified("2.13.1")
    assert not direct_calls_verified("2.14.0") and not direct_calls_verified("2.6.0+cu124")
    assert direct_calls_verified() == (".".join(torch.__version__.split("+")[0].split(".")[:2]) in DIRECT_CALL_TORCH)


# ------------------------------------------------------------------------------------------------
# optimizer.state is the state's one owner
# ------------------------------------------------------------------------------------------------
def _run_with_replaced_state(kwargs: dict, path: dict, large: bool = False):
    """Steps in which, after step 4, state tensors are replaced by hand (a packed small tensor's
    and a large one's), an entry is replaced by an equal tensor and a whole state dict is
    replaced: the next steps must update the tensors then in ``optimizer.state``."""
    groups = make_params(torch.float64, large)
    opt = AutoSGM([{"params": groups[0]}, {"params": groups[1], "lr": 3e-3}], lr=1e-2, **kwargs, **path)
    for k in range(STEPS):
        set_grads(groups, k)
        opt.step()
        if k == 4:
            small, other, last = groups[0][0], groups[1][1], groups[0][-1]
            for name in ("filter_state", "moment"):
                if name in opt.state[small]:
                    opt.state[small][name] = opt.state[small][name] * 2.0  # a new tensor
            opt.state[other].update({k: v.clone() for k, v in opt.state[other].items()})
            opt.state[last]["moment"] = opt.state[last]["moment"] + 0.5
    return groups, opt


@pytest.mark.parametrize("name", ["adam", "parcor-markov-tensor", "parcor-chebyshev-element"])
def test_foreach_uses_state_tensors_replaced_by_hand(name, cpu_form):
    ref = _run_with_replaced_state(CASES[name], dict(foreach=False))
    got = _run_with_replaced_state(CASES[name], dict(foreach=True))
    assert worst_difference(got, ref, tol32=FOREACH_TOL32)[0] <= 1e-12
    unchanged = run(CASES[name], dict(foreach=True))  # (the replacements changed the trajectory)
    assert worst_difference(got, unchanged)[0] > 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adam", "parcor-markov-tensor"])
def test_fused_uses_state_tensors_replaced_by_hand(name):
    ref = _run_with_replaced_state(CASES[name], dict(foreach=False), large=True)
    got = _run_with_replaced_state(CASES[name], dict(fused=True), large=True)
    assert worst_difference(got, ref, tol32=1e6)[0] <= 1e-9


def test_state_dicts_pickle_as_plain_dicts():
    groups, opt = run(CASES["parcor-markov-tensor"], dict(foreach=True))
    assert all(type(v) is dict for v in copy.deepcopy(opt.state_dict())["state"].values())
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert all(type(v) is dict for v in loaded["state"].values())
