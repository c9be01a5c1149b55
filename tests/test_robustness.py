"""Numerical robustness: extreme gradient magnitudes, zero gradients, every float dtype, and the
non-finite-gradient policy on both the single-tensor and the multi-tensor path.

What "finite" means per parameter dtype:

==========  =========================================================================================
float64     every finite gradient from |g| = 1e-30 to 1e30 keeps parameters and state finite
float32     parameters and state finite while g² is representable (|g| ≲ 1e18); beyond (|g| = 1e30)
            the moment m saturates at +inf, so d = +inf and those coordinates' step is 0 from then on:
            the parameters stay finite but frozen — exactly what ``torch.optim.Adam`` does
bfloat16,   the step is computed in float32 (state in float32, rounded once into the parameter):
float16     bfloat16 behaves as float32 above; for float16 every representable gradient (0, the
            subnormals, up to ~1e4 tested) keeps parameters and state finite, with the default ε = 1e-8
            (which float16 itself cannot hold)
==========  =========================================================================================
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from autosgm import NUMERATORS, AutoSGM

ALL_NUMERATORS = list(itertools.product(NUMERATORS, ["tensor", "element"]))
PATHS = pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(6, 4, generator=gen, dtype=torch.float64).to(dtype)),
        torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64).to(dtype)),
    ]


def _grads(params, scale: float, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(p.dtype) for p in params]


def _train(params, opt, scale: float, steps: int, seed: int = 1) -> None:
    for k in range(steps):
        for p, g in zip(params, _grads(params, scale, seed + k)):
            p.grad = g
        opt.step()


def _all_finite(params, opt) -> bool:
    return all(torch.isfinite(p).all() and all(torch.isfinite(b).all() for b in opt.state[p].values()) for p in params)


def _snapshot(params, opt):
    """Copies of the parameters and of their state buffers (step counts included)."""
    return [p.detach().clone() for p in params], {i: copy.deepcopy(dict(opt.state[p])) for i, p in enumerate(params)}


def _same(snap_a, snap_b) -> bool:
    (pa, sa), (pb, sb) = snap_a, snap_b
    if not all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True)):
        return False
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].keys() == sb[k].keys() and all(torch.equal(sa[k][n], sb[k][n]) for n in sa[k]) for k in sa)


# ------------------------------------------------------------------------------------------------
# gradient magnitudes
# ------------------------------------------------------------------------------------------------
@PATHS
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e30])
def test_float64_stays_finite_from_1e_minus_30_to_1e30(scale, foreach):
    for numerator, mode in ALL_NUMERATORS:
        params = _params(torch.float64)
        opt = AutoSGM(params, lr=1e-2, gamma=0.4, numerator=numerator, numerator_mode=mode,
                      weight_decay=1e-3, foreach=foreach)  # fmt: skip
        _train(params, opt, scale, 6)
        assert _all_finite(params, opt), (numerator, mode)
    # the constant-oracle points move by μ·v, far from overflow even at 1e30
    params = _params(torch.float64)
    opt = AutoSGM.nesterov(params, lr=1e-2, foreach=foreach)
    _train(params, opt, scale, 6)
    assert _all_finite(params, opt)


@PATHS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e18])
def test_low_precision_stays_finite_while_the_square_is_representable(scale, dtype, foreach):
    for numerator, mode in ALL_NUMERATORS:
        params = _params(dtype)
        opt = AutoSGM(params, lr=1e-2, gamma=0.4, numerator=numerator, numerator_mode=mode, foreach=foreach)
        _train(params, opt, scale, 6)
        assert _all_finite(params, opt), (numerator, mode)
        assert all(p.dtype == dtype for p in params)


@PATHS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_overflowing_square_freezes_the_coordinates_like_torch_adam(dtype, foreach):
    """|g| = 1e30: g² overflows, m = +inf, d = +inf, the step is 0 then and afterwards."""
    ref = _params(dtype)
    start = [p.detach().clone() for p in ref]
    torch_adam = torch.optim.Adam(ref, lr=1e-2)
    _train(ref, torch_adam, 1e30, 3)
    _train(ref, torch_adam, 1.0, 3, seed=50)  # ordinary gradients afterwards do not unfreeze it
    assert all(torch.equal(p, s) for p, s in zip(ref, start))
    assert all(torch.isinf(torch_adam.state[p]["exp_avg_sq"]).all() for p in ref)

    for numerator, mode in ALL_NUMERATORS:
        params = _params(dtype)
        opt = AutoSGM(params, lr=1e-2, numerator=numerator, numerator_mode=mode, foreach=foreach)
        _train(params, opt, 1e30, 3)
        _train(params, opt, 1.0, 3, seed=50)
        assert all(torch.equal(p, s) for p, s in zip(params, start)), (numerator, mode)
        for p in params:
            st = opt.state[p]
            assert torch.isposinf(st["moment"]).all(), (numerator, mode)
            others = [n for n in st if n != "moment"]
            assert all(torch.isfinite(st[n]).all() for n in others), (numerator, mode, others)


@PATHS
@pytest.mark.parametrize("scale", [0.0, 1e-7, 1e-3, 1.0, 1e4])
def test_float16_stays_finite_for_every_representable_gradient(scale, foreach):
    """Zero and tiny gradients included, with the default ε = 1e-8 (0 in float16)."""
    for numerator, mode in ALL_NUMERATORS:
        params = _params(torch.float16)
        opt = AutoSGM(params, lr=1e-2, gamma=0.4, numerator=numerator, numerator_mode=mode, foreach=foreach)
        _train(params, opt, scale, 6)
        assert all(torch.isfinite(g).all() for k in range(6) for g in _grads(params, scale, 1 + k))
        assert _all_finite(params, opt), (numerator, mode)
        assert all(p.dtype == torch.float16 for p in params)


@PATHS
@pytest.mark.parametrize(
    "dtype, beta, scale",
    [(torch.float64, 5e-324, 1.0), (torch.float64, 1e-300, 1e10), (torch.float32, 1e-30, 1e10)],
    ids=["f64-subnormal", "f64-tiny", "f32-tiny"],
)
def test_tiny_positive_pole_keeps_the_filter_finite(dtype, beta, scale, foreach):
    """v[t] = β v[t−1] + η (g[t] − γ g[t−1]) is bounded by ~|η g (1 − γ)|: no reason to overflow."""
    params = _params(dtype)
    opt = AutoSGM(params, lr=1e-3, betas=(beta, 0.999), gamma=-0.5, normalize=False, foreach=foreach)
    _train(params, opt, scale, 3)
    assert _all_finite(params, opt)


# ------------------------------------------------------------------------------------------------
# zero gradients
# ------------------------------------------------------------------------------------------------
@PATHS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
def test_zero_gradients_from_a_fresh_state_change_nothing(dtype, foreach):
    for numerator, mode in ALL_NUMERATORS:
        for repeat_eps in (False, True):
            params = _params(dtype)
            start = [p.detach().clone() for p in params]
            opt = AutoSGM(params, lr=1e-2, gamma=0.4, numerator=numerator, numerator_mode=mode,
                          repeat_eps=repeat_eps, foreach=foreach)  # fmt: skip
            _train(params, opt, 0.0, 4)
            assert all(torch.equal(p, s) for p, s in zip(params, start)), (numerator, mode, repeat_eps)
            assert _all_finite(params, opt)


@PATHS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
def test_zero_gradients_after_training_keep_everything_finite(dtype, foreach):
    for numerator, mode in ALL_NUMERATORS:
        params = _params(dtype)
        opt = AutoSGM(params, lr=1e-2, gamma=0.4, numerator=numerator, numerator_mode=mode, foreach=foreach)
        _train(params, opt, 1.0, 4)
        before = [p.detach().clone() for p in params]
        _train(params, opt, 0.0, 6)
        assert _all_finite(params, opt), (numerator, mode)
        if dtype != torch.bfloat16:  # (bf16 rounds the decaying steps away)
            # the filter's memory still carries the earlier gradients: the parameters keep moving
            assert any(not torch.equal(p, b) for p, b in zip(params, before)), (numerator, mode)


# ------------------------------------------------------------------------------------------------
# the non-finite-gradient policy on both paths
# ------------------------------------------------------------------------------------------------
BAD = pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
POLICY_CONFIGS = {
    "adam": dict(),
    "parcor-chebyshev-tensor": dict(gamma=0.3, numerator="parcor-chebyshev"),
    "parcor-markov-element": dict(numerator="parcor-markov", numerator_mode="element", weight_decay=1e-2),
    "heavy-ball": dict(betas=(0.9, 0.999), eta=1.0, debias=False, normalize=False),
}
CONFIGS = pytest.mark.parametrize("name", list(POLICY_CONFIGS))


def _two_groups(policy: str, foreach: bool, name: str):
    params = _params(torch.float64) + _params(torch.float64, seed=3)
    opt = AutoSGM([{"params": params[:2]}, {"params": params[2:]}], lr=1e-2, nonfinite=policy,
                  foreach=foreach, **POLICY_CONFIGS[name])  # fmt: skip
    return params, opt


@PATHS
@CONFIGS
@BAD
def test_skip_leaves_the_bad_group_untouched_and_steps_the_others(name, bad, foreach):
    params, opt = _two_groups("skip", foreach, name)
    ref_params, ref = _two_groups("skip", foreach, name)
    _train(params, opt, 1.0, 3)
    _train(ref_params, ref, 1.0, 3)
    group1 = _snapshot(params[2:], opt)

    grads = _grads(params, 1.0, 99)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    params[3].grad[1] = bad  # one bad value in the second group
    opt.step()
    for i, (p, g) in enumerate(zip(ref_params, grads)):
        p.grad = g.clone() if i < 2 else None  # the reference: the second group has no gradient
    ref.step()

    assert opt.skipped_steps == [0, 1]
    assert _same(_snapshot(params[2:], opt), group1)  # parameters, buffers and step count
    _train(params, opt, 1.0, 4, seed=200)
    _train(ref_params, ref, 1.0, 4, seed=200)
    assert _same(_snapshot(params, opt), _snapshot(ref_params, ref))


@PATHS
@CONFIGS
@BAD
def test_raise_names_the_group_and_leaves_it_untouched(name, bad, foreach):
    params = _params(torch.float64)
    opt = AutoSGM(params, lr=1e-2, nonfinite="raise", foreach=foreach, **POLICY_CONFIGS[name])
    _train(params, opt, 1.0, 3)
    before = _snapshot(params, opt)
    for p, g in zip(params, _grads(params, 1.0, 99)):
        p.grad = g
    params[0].grad[2, 1] = bad
    with pytest.raises(FloatingPointError, match="param group 0"):
        opt.step()
    assert _same(_snapshot(params, opt), before)


@PATHS
def test_raise_leaves_every_group_untouched(foreach):
    params, opt = _two_groups("raise", foreach, "adam")
    _train(params, opt, 1.0, 3)
    before = _snapshot(params, opt)
    for p, g in zip(params, _grads(params, 1.0, 99)):
        p.grad = g
    params[3].grad[0] = float("nan")  # the second group
    with pytest.raises(FloatingPointError, match="param group 1"):
        opt.step()
    assert _same(_snapshot(params, opt), before)


@PATHS
@CONFIGS
@BAD
def test_proceed_propagates_like_torch_optim(name, bad, foreach):
    params = _params(torch.float64)
    opt = AutoSGM(params, lr=1e-2, foreach=foreach, **POLICY_CONFIGS[name])  # the default policy
    _train(params, opt, 1.0, 2)
    for p, g in zip(params, _grads(params, 1.0, 99)):
        p.grad = g
    params[0].grad[2, 1] = bad
    opt.step()
    assert not torch.isfinite(params[0][2, 1])
    assert torch.isfinite(params[1]).all()  # the other tensor is not contaminated
    assert opt.skipped_steps == []
