"""Invariants of the optimizer over random valid configurations (hypothesis).

Every property draws a whole configuration: filter pole β ∈ [0, 0.99], zero γ ≤ β (negative
included), gain η (default or explicit), every numerator × mode, debias, normalize, ε,
repeat_eps, both weight-decay modes, a window or none, and the single-tensor or multi-tensor path.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autosgm import NUMERATORS, AutoSGM, Window
from autosgm.windows import SHAPES, UNITS

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPE = (5, 3)

# a valid order n for every active shape (windows.py states the rule next to each shape)
ORDERS = {
    "cosine": st.floats(1.0, 4.0),
    "polynomial": st.floats(0.5, 3.0),
    "beta-exp": st.floats(0.05, 0.95),
    "simple-poly": st.floats(1.1, 4.0),
    "logistic": st.floats(0.5, 8.0),
    "logistic-late": st.floats(0.5, 8.0),
}


@st.composite
def windows(draw) -> Window:
    shape = draw(st.sampled_from(SHAPES[1:]))
    unit = draw(st.sampled_from(UNITS))
    return Window(
        shape=shape,
        order=draw(ORDERS[shape]),
        floor=draw(st.sampled_from([0.0, 0.1, 0.5])),
        full=draw(st.booleans()),
        flat=draw(st.sampled_from([0.0, 0.25])),
        kronecker=draw(st.booleans()),
        tau=draw(st.integers(2, 3)),
        spe=draw(st.integers(2, 5)),
        unit=unit,
    )


@st.composite
def filters(draw) -> dict:
    """(β, γ, η): γ ≤ β, including γ < 0 and the pure gain γ = β; η default or explicit.

    β is 0 or ≥ 1e-6: a tiny positive pole with γ ≠ 0 overflows the filter buffer (a known
    defect, pinned by ``test_robustness.py::test_tiny_positive_pole_keeps_the_filter_finite``).
    """
    beta = draw(st.one_of(st.just(0.0), st.floats(1e-6, 0.99)))
    gamma = draw(st.one_of(st.just(0.0), st.just(beta), st.floats(-0.9, beta)))
    eta = draw(st.one_of(st.none(), st.floats(0.05, 2.0)))
    return dict(beta=beta, gamma=gamma, eta=eta)


@st.composite
def configs(draw, *, normalize: bool | None = None, numerator: str | None = None,
            coupled_decay: bool = True) -> dict:  # fmt: skip
    """Keyword arguments of a random valid AutoSGM configuration."""
    f = draw(filters())
    if normalize is None:
        normalize = draw(st.booleans())
    if numerator is None:
        numerator = draw(st.sampled_from(NUMERATORS)) if normalize else "unity"
    decoupled = draw(st.booleans()) if coupled_decay else True
    return dict(
        lr=draw(st.floats(1e-4, 0.1)),
        betas=(f["beta"], draw(st.floats(0.0, 0.999))),
        gamma=f["gamma"],
        eta=f["eta"],
        beta_n=draw(st.sampled_from([0.0, 0.9, 0.9999])),
        debias=draw(st.booleans()),
        normalize=normalize,
        numerator=numerator,
        numerator_mode=draw(st.sampled_from(["tensor", "element"])),
        eps=draw(st.sampled_from([1e-8, 1e-12, 1e-3])),
        repeat_eps=draw(st.booleans()),
        weight_decay=draw(st.sampled_from([0.0, 1e-3, 0.1])),
        decoupled_weight_decay=decoupled,
        window=draw(st.one_of(st.none(), windows())),
        foreach=draw(st.booleans()),
    )


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(*SHAPE, generator=gen, dtype=torch.float64)),
        torch.nn.Parameter(torch.randn(SHAPE[1], generator=gen, dtype=torch.float64)),
    ]


def _grads(seed: int, steps: int, scale: float = 1.0) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        [scale * torch.randn(*SHAPE, generator=gen, dtype=torch.float64),
         scale * torch.randn(SHAPE[1], generator=gen, dtype=torch.float64)]  # fmt: skip
        for _ in range(steps)
    ]


def _run(params, opt, grads) -> None:
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()


# ------------------------------------------------------------------------------------------------
@SETTINGS
@given(cfg=configs(), seed=st.integers(0, 2**16), log_scale=st.floats(-6.0, 6.0))
def test_finite_gradients_give_finite_parameters_and_state(cfg, seed, log_scale):
    params = _params(seed)
    opt = AutoSGM(params, **cfg)
    _run(params, opt, _grads(seed + 1, 12, 10.0**log_scale))
    for p in params:
        assert torch.isfinite(p).all()
        for name, buf in opt.state[p].items():
            assert torch.isfinite(buf).all(), name


@SETTINGS
@given(cfg=configs(normalize=True, coupled_decay=False), seed=st.integers(0, 2**16),
       log_c=st.floats(-4.0, 4.0))  # fmt: skip
def test_normalized_steps_are_invariant_to_gradient_scale(cfg, seed, log_c):
    """normalize=True: v/d, x = w·v̄ and ḡ = g/d do not change when g → c g (ε ≪ |c g|).

    This holds for the Adam-like points (numerator unity) and for every numerator, because each
    numerator is built from normalized quantities. Coupled decay (g + ρw) would break it.
    """
    cfg = dict(cfg, eps=1e-30)
    c = 10.0**log_c
    grads = _grads(seed + 1, 10)
    a, b = _params(seed), _params(seed)
    start = [p.detach().clone() for p in a]
    _run(a, AutoSGM(a, **cfg), grads)
    _run(b, AutoSGM(b, **cfg), [[c * g for g in gs] for gs in grads])
    for p, q, p0 in zip(a, b, start):
        moved = (p - p0).abs().max().item()
        assert (p - q).abs().max().item() <= 1e-9 * max(moved, 1e-300) + 1e-14


@SETTINGS
@given(f=filters(), lr=st.floats(1e-3, 1.0), wd=st.sampled_from([0.0, 1e-2]),
       g=st.floats(-5.0, 5.0).filter(lambda x: abs(x) > 1e-3), foreach=st.booleans())  # fmt: skip
def test_debiased_filter_passes_a_constant_gradient_exactly(f, lr, wd, g, foreach):
    """DC gain 1: with debias, a constant gradient leaves the filter unchanged at every step.

    Constant oracle (normalize=False): the update is ``Δ = −μ v̂ = −μ g`` from the first step on,
    whatever β, γ ≤ β and η (explicit η is divided out by S[t]). Decoupled decay adds −μρw.
    """
    w = torch.nn.Parameter(torch.full((4,), 0.5, dtype=torch.float64))
    opt = AutoSGM([w], lr=lr, betas=(f["beta"], 0.999), gamma=f["gamma"], eta=f["eta"], debias=True,
                  normalize=False, weight_decay=wd, decoupled_weight_decay=True, foreach=foreach)  # fmt: skip
    for _ in range(25):
        before = w.detach().clone()
        w.grad = torch.full_like(w, g)
        opt.step()
        expected = -lr * (g + wd * before)
        torch.testing.assert_close(w.detach() - before, expected, rtol=1e-9, atol=1e-15)


@SETTINGS
@given(f=filters(), lr=st.floats(1e-3, 1.0), g=st.floats(-5.0, 5.0).filter(lambda x: abs(x) > 1e-3),
       foreach=st.booleans())  # fmt: skip
def test_default_gain_has_unit_dc_gain_without_debias(f, lr, g, foreach):
    """η = (1 − β)/(1 − γ), no debias: a constant gradient's update is −μ g S[t], with the
    unit-step response S[t] = [(1 − β^t) − γ(1 − β^(t−1))]/(1 − γ) = 1 − β^(t−1)(β − γ)/(1 − γ),
    which tends to the DC gain 1."""
    beta, gamma = f["beta"], f["gamma"]
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = AutoSGM([w], lr=lr, betas=(beta, 0.999), gamma=gamma, debias=False, normalize=False,
                  foreach=foreach)  # fmt: skip
    steps = 40
    for t in range(1, steps + 1):
        before = w.detach().clone()
        w.grad = torch.full_like(w, g)
        opt.step()
        s = ((1 - beta**t) - gamma * (1 - beta ** (t - 1))) / (1 - gamma)
        torch.testing.assert_close(w.detach() - before, torch.full_like(w, -lr * g * s), rtol=1e-9, atol=1e-15)


@SETTINGS
@given(cfg=configs(), seed=st.integers(0, 2**16))
def test_maximize_equals_minimizing_the_negated_objective(cfg, seed):
    grads = _grads(seed + 1, 10)
    a, b = _params(seed), _params(seed)
    _run(a, AutoSGM(a, maximize=True, **cfg), [[-g for g in gs] for gs in grads])  # ascend on −L
    _run(b, AutoSGM(b, **cfg), grads)  # descend on L
    for p, q in zip(a, b):
        assert torch.equal(p, q)


@SETTINGS
@given(cfg=configs(), seed=st.integers(0, 2**16))
def test_zero_learning_rate_changes_nothing(cfg, seed):
    params = _params(seed)
    start = [p.detach().clone() for p in params]
    opt = AutoSGM(params, **dict(cfg, lr=0.0))
    _run(params, opt, _grads(seed + 1, 8, 3.0))
    for p, p0 in zip(params, start):
        assert torch.equal(p, p0)
    assert all(opt.state[p]["step"].item() == 8 for p in params)  # the state still advanced
