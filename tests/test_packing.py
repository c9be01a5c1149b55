"""The CPU multi-tensor path's workspace (:class:`autosgm.packing.Arena`) and layout.

The path must give the reference's results (``test_paths.py`` checks that for every configuration);
here: the workspace hands out pieces that never overlap within a step (a rewind takes back a
reduction's temporaries), stops allocating after the first step, is dropped after each step when it is larger than ``ARENA_KEEP``, and the plan steps
large and non-contiguous tensors alone and packs the rest.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import autosgm.packing as packing
from autosgm import AutoSGM
from autosgm.packing import Arena

from test_paths import CASES, FOREACH_TOL32, run, worst_difference


def _span(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


shapes = st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple), min_size=1, max_size=12)


@given(cycles=st.lists(shapes, min_size=1, max_size=4), dtypes=st.lists(st.sampled_from([torch.float32, torch.float64]), min_size=12, max_size=12))
@settings(max_examples=60, deadline=None)
def test_arena_pieces_never_overlap_and_second_pass_reuses_the_buffer(cycles, dtypes):
    arena = Arena(torch.device("cpu"), keep=1 << 30)
    for sequence in cycles + cycles:  # every sequence twice: the second time from the buffer
        taken = [arena.take(shape, dtypes[i]) for i, shape in enumerate(sequence)]
        for t, shape, i in zip(taken, sequence, range(len(sequence))):
            assert t.shape == shape and t.dtype == dtypes[i]
        spans = sorted(_span(t) for t in taken if t.numel())
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # disjoint
        arena.reset()
    # after a reset every sequence seen fits: taking it again allocates nothing new
    for sequence in cycles:
        for i, shape in enumerate(sequence):
            t = arena.take(shape, dtypes[i])
            if t.numel():
                buf = arena.bufs[dtypes[i]]
                lo, hi = _span(buf)
                assert lo <= t.data_ptr() and _span(t)[1] <= hi
        arena.reset()


@given(before=shapes, scratch=shapes, after=shapes)
@settings(max_examples=60, deadline=None)
def test_arena_rewind_reuses_memory_and_keeps_the_peak(before, scratch, after):
    arena = Arena(torch.device("cpu"), keep=1 << 30)
    for rep in range(2):  # the second time every piece comes from the grown buffer
        live = [arena.take(s, torch.float32) for s in before]
        mark = arena.mark()
        dead = [arena.take(s, torch.float32) for s in scratch]
        arena.rewind(mark)
        live += [arena.take(s, torch.float32) for s in after]
        spans = sorted(_span(t) for t in live if t.numel())
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # the live pieces are disjoint
        if rep == 1:
            lo, hi = _span(arena.bufs[torch.float32]) if torch.float32 in arena.bufs else (0, 0)
            assert all(lo <= t.data_ptr() and _span(t)[1] <= hi for t in live + dead if t.numel())
        arena.reset()


def _mixed_params() -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    big = packing.ALONE + 7
    shapes = [(big,), (3, 5), (7,), (1,), (0, 2), (64, 9)]
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    params.append(nn.Parameter(torch.randn(6, 4, generator=gen).t()))  # not contiguous
    return params


def _step(opt: AutoSGM, params: list[nn.Parameter], k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()


def _layout(opt: AutoSGM) -> packing.CpuLayout:
    (bucket,) = opt._plans[0].buckets
    return bucket.cpu


def test_layout_steps_large_and_strided_tensors_alone_and_packs_the_rest():
    params = _mixed_params()
    opt = AutoSGM(params, numerator="parcor-markov", foreach=True)
    _step(opt, params, 0)
    layout = _layout(opt)
    alone = {i for i, _ in layout.alone}
    assert alone == {0, 6}  # the large one, the transposed one
    assert [pack.index for pack in layout.packs] == [[1, 2, 3, 4, 5]]


def test_workspace_stops_allocating_after_the_first_step():
    params = _mixed_params()
    opt = AutoSGM(params, numerator="parcor-chebyshev", foreach=True)
    _step(opt, params, 0)
    arena = _layout(opt).arena
    before = {d: b.data_ptr() for d, b in arena.bufs.items()}
    assert before  # a workspace was kept
    for k in range(1, 4):
        _step(opt, params, k)
    assert {d: b.data_ptr() for d, b in arena.bufs.items()} == before
    assert arena.used == {}


def test_workspace_above_the_limit_is_dropped_after_each_step(monkeypatch):
    monkeypatch.setattr(packing, "ARENA_KEEP", 64)
    ref = run(CASES["parcor-markov-tensor"], dict(foreach=False))
    got = run(CASES["parcor-markov-tensor"], dict(foreach=True))
    assert worst_difference(got, ref, tol32=FOREACH_TOL32)[0] <= 1e-12
    for cache in got[1]._plans.values():
        for bucket in cache.buckets:
            assert bucket.cpu is None or bucket.cpu.arena.bufs == {}


@pytest.mark.parametrize("numerator", ["unity", "corr"])
def test_unity_keeps_the_foreach_lists_and_numerators_take_the_layout(numerator):
    params = _mixed_params()
    opt = AutoSGM(params, numerator=numerator, foreach=True)
    _step(opt, params, 0)
    (bucket,) = opt._plans[0].buckets
    assert (bucket.cpu is None) == (numerator == "unity")


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_filter_state_is_the_average_of_the_input(foreach):
    """γ ≠ 0: the one filter buffer is u[t] = β u[t−1] + (1 − β) g[t] (documented state meaning)."""
    beta = 0.9
    p = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = AutoSGM.nesterov([p], lr=0.1, momentum=beta, foreach=foreach)
    gen = torch.Generator().manual_seed(3)
    u = torch.zeros(5, dtype=torch.float64)
    for _ in range(6):
        p.grad = torch.randn(5, generator=gen, dtype=torch.float64)
        u = beta * u + (1 - beta) * p.grad
        opt.step()
    torch.testing.assert_close(opt.state[p]["filter_state"], u, rtol=1e-14, atol=0)


@given(
    shapes=st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=3).map(tuple), min_size=1, max_size=9),
    numerator=st.sampled_from(["parcor-bounded", "parcor-maxbound", "parcor-markov", "parcor-chebyshev", "corr"]),
    mode=st.sampled_from(["tensor", "element"]),
    alone=st.sampled_from([4, 16, 64]),
    chunk=st.sampled_from([8, 64, 1024]),
)
@settings(max_examples=100, deadline=None)
def test_layout_of_any_shapes_matches_the_reference(shapes, numerator, mode, alone, chunk):
    """Any mix of tensors stepped alone and packed (thresholds shrunk so that small shapes
    exercise both, zero-size ones included) gives the reference's parameters and state."""
    old = packing.ALONE, packing.PACK_CHUNK
    packing.ALONE, packing.PACK_CHUNK = alone, chunk
    try:
        results = []
        for foreach in (False, True):
            gen = torch.Generator().manual_seed(0)
            params = [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
            opt = AutoSGM(params, lr=0.05, numerator=numerator, numerator_mode=mode, beta_n=0.9,
                          foreach=foreach)  # fmt: skip
            for k in range(4):
                for p in params:
                    p.grad = 0.5 * p.detach() + torch.randn(p.shape, generator=gen, dtype=torch.float64)
                opt.step()
            results.append((params, opt))
    finally:
        packing.ALONE, packing.PACK_CHUNK = old
    (ref, ref_opt), (got, got_opt) = results
    for p, q in zip(ref, got):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-12)
        for key, value in ref_opt.state[p].items():
            torch.testing.assert_close(got_opt.state[q][key], value, rtol=1e-12, atol=1e-12)


def test_chunks_by_size_starts_with_an_empty_tensor():
    """A first tensor of zero elements opens the first chunk (it once indexed an empty list)."""
    assert packing.chunks_by_size([0, 1, 2], [0, 5, 5], 8) == [[0, 1], [2]]
    assert packing.chunks_by_size([3], [0, 0, 0, 0], 8) == [[3]]
    assert packing.chunks_by_size([], [], 8) == []


@pytest.mark.slow
def test_fused_path_packs_a_group_that_starts_with_an_empty_tensor():
    params = [nn.Parameter(torch.randn(0)), nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3, 2))]
    ref = [nn.Parameter(p.detach().clone()) for p in params]
    opt, ref_opt = AutoSGM(params, lr=1e-2, fused=True), AutoSGM(ref, lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(params, ref):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("y", ["list", "packed", "number"])
def test_foreach_add_scales_every_kind_of_operand(y):
    """``FOREACH_OPS.add(xs, y, alpha)`` is ``x + alpha·y`` for a list, a packed per-tensor vector
    (entry i for tensor i) and a number, as the reference's ``add``."""
    from autosgm.ops import FOREACH_OPS, TENSOR_OPS

    xs = [torch.randn(3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)]
    ys = {"list": [torch.randn(3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)],
          "packed": torch.tensor([0.5, -2.0], dtype=torch.float64), "number": 1.5}[y]  # fmt: skip
    got = FOREACH_OPS.add(xs, ys, alpha=-4.0)
    for i, (x, out) in enumerate(zip(xs, got)):
        yi = ys[i] if y != "number" else ys
        assert torch.equal(out, TENSOR_OPS.add(x, yi, alpha=-4.0))


@given(value=st.floats(-1e3, 1e3, allow_nan=False).filter(lambda v: abs(v) > 1e-6),
       dtype=st.sampled_from([torch.float32, torch.float64]), n=st.integers(1, 4), seed=st.integers(0, 99))  # fmt: skip
@settings(max_examples=40, deadline=None)
def test_foreach_number_operands_give_the_reference_bits(value, dtype, n, seed):
    """On the CPU a number operand of a list op becomes one 0-d tensor of the list's dtype
    (torch wraps a number per element otherwise): the results equal the single-tensor ops', bit
    for bit."""
    from autosgm.ops import FOREACH_OPS, TENSOR_OPS

    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(k + 3, generator=gen, dtype=dtype) for k in range(n)]
    outs = {"add": FOREACH_OPS.add(xs, value, alpha=0.5), "sub": FOREACH_OPS.sub(xs, value),
            "mul": FOREACH_OPS.mul(xs, value), "div": FOREACH_OPS.div(xs, value)}  # fmt: skip
    inplace = {name: [x.clone() for x in xs] for name in ("add_", "mul_", "div_", "scale_add_")}
    FOREACH_OPS.add_(inplace["add_"], value, alpha=0.5)
    FOREACH_OPS.mul_(inplace["mul_"], value)
    FOREACH_OPS.div_(inplace["div_"], value)
    FOREACH_OPS.scale_add_(inplace["scale_add_"], value, 0.25)
    for i, x in enumerate(xs):
        assert torch.equal(outs["add"][i], TENSOR_OPS.add(x, value, alpha=0.5))
        assert torch.equal(outs["sub"][i], torch.sub(x, value))
        assert torch.equal(outs["mul"][i], torch.mul(x, value))
        assert torch.equal(outs["div"][i], torch.div(x, value))
        assert torch.equal(inplace["add_"][i], x + value * 0.5)
        assert torch.equal(inplace["mul_"][i], x * value)
        assert torch.equal(inplace["div_"][i], x / value)
        assert torch.equal(inplace["scale_add_"][i], x * value + 0.25)
