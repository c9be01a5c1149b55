"""Tests of the window functions (learning-rate schedules), spec section 5."""

from __future__ import annotations

import io
import math
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autosgm.windows import PHI, SHAPES, UNITS, Window, WindowLR, kronecker_point, shape_value

# A valid order n for every active shape (and its valid range for hypothesis).
DEFAULT_ORDER = {
    "cosine": 2.0,
    "polynomial": 2.0,
    "beta-exp": 0.1,
    "simple-poly": 2.0,
    "logistic": 4.0,
    "logistic-late": 4.0,
}
ORDER_RANGE = {
    "cosine": (1.0, 8.0),
    "polynomial": (0.05, 6.0),
    "beta-exp": (1e-4, 0.999),
    "simple-poly": (1.001, 8.0),
    "logistic": (0.01, 30.0),
    "logistic-late": (0.01, 30.0),
}
ACTIVE = SHAPES[1:]


def _sgd(lrs: list[float]) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs])


# ---------------------------------------------------------------------------------------------
# Reference values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit,tau,spe", [("iteration", 3, 97), ("epoch-restart", 4, 250), ("iteration", 1, 1000)]
)
def test_cosine_equals_torch_cosine_annealing(unit: str, tau: int, spe: int) -> None:
    w = Window("cosine", order=2, floor=0.0, full=False, tau=tau, spe=spe, unit=unit)
    big_l = w.length
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(_sgd([1.0]), T_max=big_l, eta_min=0.0)
    for k in range(big_l):
        ref = sched.get_last_lr()[0]
        # first frame and a later frame (restart) both follow the torch factor
        assert abs(w(k + 1) - ref) <= 1e-12
        assert abs(w(3 * big_l + k + 1) - ref) <= 1e-12
        sched.optimizer.step()
        sched.step()


def test_cosine_epoch_unit_equals_cosine_annealing_per_epoch() -> None:
    tau, spe = 12, 7
    w = Window("cosine", tau=tau, spe=spe, unit="epoch")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(_sgd([1.0]), T_max=tau, eta_min=0.0)
    for epoch in range(tau):
        ref = sched.get_last_lr()[0]
        for t in range(epoch * spe + 1, (epoch + 1) * spe + 1):
            assert abs(w(t) - ref) <= 1e-12
            assert w.value(t) == w(t)
        sched.optimizer.step()
        sched.step()
    # an explicit epoch replaces the one derived from the step
    assert w.value(1, epoch=5) == w((5 * spe) + 1)


@pytest.mark.parametrize("floor", [0.0, 0.25])
def test_polynomial_order_one_is_linear(floor: float) -> None:
    big_l = 200
    half = Window("polynomial", order=1, floor=floor, tau=1, spe=big_l)
    full = Window("polynomial", order=1, floor=floor, full=True, tau=1, spe=big_l)
    for k in range(big_l):
        lin = 1.0 - k / big_l
        tri = 1.0 - abs(2 * k - big_l) / big_l
        assert half.frame_value(k) == pytest.approx(floor + (1 - floor) * lin, abs=1e-15)
        assert full.frame_value(k) == pytest.approx(floor + (1 - floor) * tri, abs=1e-15)
    assert half.frame_value(0) == 1.0 and full.frame_value(big_l // 2) == 1.0


def _sigma(f: float, n: float, c: float) -> float:
    return 1.0 / (1.0 + 2.0 ** (2.0 * n * (f - c)))


def _logistic(c: float):
    return lambda f, n: (_sigma(f, n, c) - _sigma(1, n, c)) / (_sigma(0, n, c) - _sigma(1, n, c))


@pytest.mark.parametrize(
    "shape,n,ref",
    [
        ("cosine", 2.0, lambda f, n: (1 + math.cos(math.pi * f)) / 2),
        ("cosine", 3.5, lambda f, n: math.cos(math.pi * f / 2) ** n),
        ("polynomial", 0.5, lambda f, n: (1 - f) ** n),
        ("polynomial", 3.0, lambda f, n: (1 - f) ** n),
        ("beta-exp", 0.05, lambda f, n: (n**f - n) / (1 - n)),
        ("simple-poly", 2.5, lambda f, n: (1 - f**n) ** 2),
        ("logistic", 4.0, _logistic(0.5)),
        ("logistic-late", 3.0, _logistic(0.875)),
    ],
)
def test_shapes_match_their_formulas(shape: str, n: float, ref) -> None:
    for i in range(101):
        f = i / 100
        assert shape_value(shape, f, n) == pytest.approx(ref(f, n), rel=1e-12, abs=1e-14)
    assert shape_value(shape, 0.0, n) == 1.0
    assert shape_value(shape, 1.0, n) == 0.0


def test_logistic_late_inflects_late() -> None:
    n = 6.0
    # the steepest descent of the late logistic is near f = 0.875, of the plain one near 0.5
    for shape, c in (("logistic", 0.5), ("logistic-late", 0.875)):
        grid = [i / 1000 for i in range(1001)]
        slopes = [shape_value(shape, a, n) - shape_value(shape, b, n) for a, b in zip(grid, grid[1:])]
        assert abs(grid[slopes.index(max(slopes))] - c) < 2e-3


def test_logistic_extreme_orders_are_finite_and_bounded() -> None:
    for n in (1e-9, 1e4):
        for shape in ("logistic", "logistic-late"):
            vals = [shape_value(shape, i / 50, n) for i in range(51)]
            assert all(0.0 <= v <= 1.0 for v in vals)
            assert all(a >= b for a, b in zip(vals, vals[1:]))
    # tiny n: nearly linear, without catastrophic cancellation
    assert shape_value("logistic", 0.25, 1e-9) == pytest.approx(0.75, rel=1e-6)


@pytest.mark.parametrize("shape", ACTIVE)
@pytest.mark.parametrize("kronecker", [False, True])
def test_floor_and_flat_top_exact(shape: str, kronecker: bool) -> None:
    n = DEFAULT_ORDER[shape]
    x, e, big_l = 0.3, 0.25, 80
    half = Window(shape, n, floor=x, flat=e, kronecker=kronecker, tau=1, spe=big_l)
    vals = half.frame_values()
    assert min(vals) >= x and max(vals) == 1.0
    # flat top: exactly 1 on the positions below e (uniform: k < e·L), and only there
    if kronecker:
        n_top = sum(kronecker_point(j) < e for j in range(big_l))
    else:
        n_top = math.ceil(e * big_l)
    # (at f = e itself the shape starts at shape(0) = 1, so the first value below 1 follows it)
    assert vals[:n_top] == [1.0] * n_top and vals[n_top + 1] < 1.0
    # floor: the full uniform window reaches x exactly at the frame start (f = 1)
    full = Window(shape, n, floor=x, flat=e, full=True, tau=1, spe=big_l)
    assert full.frame_value(0) == x
    # floor x = 1 gives the constant window 1
    assert set(Window(shape, n, floor=1.0, kronecker=kronecker, tau=1, spe=big_l).frame_values()) == {1.0}


def test_constant_window_is_one() -> None:
    w = Window.from_seed((0, 0, 0, 2, 1, 1, 10, 1, 0))
    assert not w.active and w.shape == "constant"
    assert all(w(t) == 1.0 for t in range(1, 40))
    assert Window().frame_values() == [1.0] * 1000


def test_seed_example_parses_and_evaluates() -> None:
    w = Window.from_seed((1, 0, 0, 2, 1, 1, 100000, 1, 0))
    assert w == Window("cosine", 2.0, 0.0, False, 0.0, False, 1, 100000, "iteration")
    assert w.length == 100000 and w.active
    assert w(1) == 1.0
    assert w(50001) == pytest.approx(0.5, abs=1e-15)
    assert w(100000) == pytest.approx((1 + math.cos(math.pi * 99999 / 100000)) / 2, abs=1e-15)
    assert w(100001) == 1.0  # restart
    wk = Window.from_seed((1, 1, 0, 2, 1, 1, 100000, 1, 0))
    vals = wk.frame_values()
    assert len(vals) == 100000 and vals[0] == 1.0
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert wk(123457) == vals[23456]


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@st.composite
def windows(draw, full=None, kronecker=None) -> Window:
    shape = draw(st.sampled_from(ACTIVE))
    lo, hi = ORDER_RANGE[shape]
    unit = draw(st.sampled_from(UNITS))
    tau = draw(st.integers(2 if unit == "epoch" else 1, 6))
    spe = draw(st.integers(2 if unit == "epoch-restart" or tau == 1 else 1, 40))
    return Window(
        shape=shape,
        order=draw(st.floats(lo, hi)),
        floor=draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)),
        full=draw(st.booleans()) if full is None else full,
        flat=draw(st.sampled_from([0.0]) | st.floats(0.0, 0.95)),
        kronecker=draw(st.booleans()) if kronecker is None else kronecker,
        tau=tau,
        spe=spe,
        unit=unit,
    )


_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(windows())
def test_values_lie_in_floor_one(w: Window) -> None:
    vals = w.frame_values()
    assert len(vals) == w.length
    assert all(w.floor <= v <= 1.0 for v in vals)


@_settings
@given(windows(full=False))
def test_half_window_non_increasing(w: Window) -> None:
    vals = w.frame_values()
    assert vals[0] == 1.0
    assert all(a >= b for a, b in zip(vals, vals[1:]))


@_settings
@given(windows(full=True))
def test_full_window_rises_then_falls_symmetric(w: Window) -> None:
    vals = w.frame_values()
    big_l = len(vals)
    assert all(vals[k] == vals[big_l - k] for k in range(1, big_l))
    mid = big_l // 2
    assert all(a <= b for a, b in zip(vals[: mid + 1], vals[1 : mid + 1]))
    assert all(a >= b for a, b in zip(vals[mid:], vals[mid + 1 :]))
    assert max(vals) == vals[mid]


def _kronecker_reference(w: Window, count: int) -> list[float]:
    """Independent construction: the uniform profile at frac(j·φ), sorted non-increasing."""
    phi = (5**0.5 - 1) / 2
    return sorted((w.profile((j * phi) % 1.0) for j in range(count)), reverse=True)


@_settings
@given(windows(kronecker=True))
def test_kronecker_takes_shape_values_and_is_monotone(w: Window) -> None:
    vals = w.frame_values()
    big_l = len(vals)
    if w.full:
        # the half-window list of L + 1 sorted values, read at the folded index |2k - L|
        half = _kronecker_reference(w, big_l + 1)
        assert vals == [half[abs(2 * k - big_l)] for k in range(big_l)]
    else:
        assert vals == _kronecker_reference(w, big_l)
        assert all(a >= b for a, b in zip(vals, vals[1:]))
        # and these are values of the same shape as the uniform window: P(q) for the points q
        uniform = Window(**{**w.to_dict(), "kronecker": False})
        assert set(vals) <= {uniform.profile(kronecker_point(j)) for j in range(big_l)}


@_settings
@given(windows(), st.integers(0, 10**6), st.integers(1, 5))
def test_frame_restarts_at_its_length(w: Window, t0: int, r: int) -> None:
    steps_per_frame = w.tau * w.spe if w.unit == "epoch" else w.length
    t = t0 + 1
    assert w(t) == w(t + r * steps_per_frame)
    # the first step of every frame starts the window again
    assert w(r * steps_per_frame + 1) == w(1) == w.frame_value(0)
    k = w.local_index(t)
    assert w(t) == w.frame_value(k)


@settings(max_examples=40, deadline=None)
@given(windows(), st.randoms(use_true_random=False))
def test_window_is_pure(w: Window, rnd: random.Random) -> None:
    steps = list(range(1, 3 * w.tau * w.spe + 2))
    forward = [w(t) for t in steps]
    shuffled = steps[:]
    rnd.shuffle(shuffled)
    again = {t: w(t) for t in shuffled}
    assert forward == [again[t] for t in steps]
    clone = Window.from_seed(w.to_seed())
    assert clone == w and [clone(t) for t in steps] == forward


def test_epoch_unit_changes_only_at_epoch_boundaries() -> None:
    w = Window("polynomial", order=1, tau=5, spe=4, unit="epoch")
    vals = [w(t) for t in range(1, 41)]
    assert vals[:4] == [1.0] * 4
    assert vals[4:8] == [0.8] * 4
    assert vals[16:20] == [pytest.approx(0.2)] * 4
    assert vals[20:24] == [1.0] * 4  # restart after tau epochs


def test_epoch_restart_unit_restarts_every_epoch() -> None:
    w = Window("cosine", tau=3, spe=50, unit="epoch-restart")
    assert w.length == 50
    assert [w(t) for t in range(1, 51)] == [w(t) for t in range(51, 101)] == w.frame_values()


# ---------------------------------------------------------------------------------------------
# Conversions and validation
# ---------------------------------------------------------------------------------------------


def test_seed_and_dict_round_trip() -> None:
    w = Window("beta-exp", 0.2, 0.1, True, 0.3, True, 7, 13, "epoch-restart")
    assert w.to_seed() == (3, 1, 0.1, 0.2, 0, 7, 13, 2, 0.3)
    assert Window.from_seed(w.to_seed()) == w
    assert Window.from_seed(list(w.to_seed())) == w
    d = w.to_dict()
    assert all(type(v) in (str, int, float, bool) for v in d.values())
    buf = io.BytesIO()
    torch.save(d, buf)
    buf.seek(0)
    assert Window.from_dict(torch.load(buf, weights_only=True)) == w
    assert Window(shape=3, order=0.2, unit=2, spe=5) == Window("beta-exp", 0.2, unit="epoch-restart", spe=5)


_BAD = [
    (dict(tau=1, spe=1), ValueError, "tau"),
    (dict(shape="cosine", tau=1, spe=1), ValueError, "tau"),
    (dict(flat=1.0), ValueError, "flat"),
    (dict(flat=-0.1), ValueError, "flat"),
    (dict(floor=1.5), ValueError, "floor"),
    (dict(floor=-0.01), ValueError, "floor"),
    (dict(shape="beta-exp", order=1.0), ValueError, "order"),
    (dict(shape="beta-exp", order=0.0), ValueError, "order"),
    (dict(shape="cosine", order=0.5), ValueError, "order"),
    (dict(shape="simple-poly", order=1.0), ValueError, "order"),
    (dict(shape="logistic", order=0.0), ValueError, "order"),
    (dict(shape="logistic-late", order=-1.0), ValueError, "order"),
    (dict(shape="polynomial", order=0.0), ValueError, "order"),
    (dict(shape="cosine", order=float("nan")), ValueError, "order"),
    (dict(shape="cosine", order=float("inf")), ValueError, "order"),
    (dict(shape="triangle"), ValueError, "shape"),
    (dict(shape=7), ValueError, "shape"),
    (dict(shape=-1), ValueError, "shape"),
    (dict(shape=True), TypeError, "shape"),
    (dict(shape=1.0), TypeError, "shape"),
    (dict(unit="sub-iteration"), ValueError, "unit"),
    (dict(unit=3), ValueError, "unit"),
    (dict(unit=False), TypeError, "unit"),
    (dict(tau=True), TypeError, "tau"),
    (dict(tau=2.0), TypeError, "tau"),
    (dict(tau=0), ValueError, "tau"),
    (dict(spe=0), ValueError, "spe"),
    (dict(spe=True), TypeError, "spe"),
    (dict(spe="100"), TypeError, "spe"),
    (dict(full=1), TypeError, "full"),
    (dict(kronecker=0), TypeError, "kronecker"),
    (dict(order=True), TypeError, "order"),
    (dict(floor="0"), TypeError, "floor"),
    (dict(shape="cosine", unit="epoch", tau=1, spe=100), ValueError, "tau"),
    (dict(shape="cosine", unit="epoch-restart", tau=10, spe=1), ValueError, "spe"),
]


@pytest.mark.parametrize("kwargs,exc,field", _BAD)
def test_invalid_settings_raise(kwargs: dict, exc: type, field: str) -> None:
    with pytest.raises(exc, match=field):
        Window(**kwargs)


@pytest.mark.parametrize(
    "cfg,exc,field",
    [
        ((1, 0, 0, 2, 1, 1, 100), ValueError, "9 items"),
        ((1, 0, 0, 2, 1, 1, 100, 1, 0, 0), ValueError, "9 items"),
        ("rcfg", TypeError, "rc_cfg"),
        (None, TypeError, "rc_cfg"),
        ((7, 0, 0, 2, 1, 1, 100, 1, 0), ValueError, "rcm"),
        ((True, 0, 0, 2, 1, 1, 100, 1, 0), TypeError, "rcm"),
        ((1, 2, 0, 2, 1, 1, 100, 1, 0), ValueError, "inseq"),
        ((1, False, 0, 2, 1, 1, 100, 1, 0), TypeError, "inseq"),
        ((1, 0, 2.0, 2, 1, 1, 100, 1, 0), ValueError, "floor"),
        ((1, 0, 0, 0.5, 1, 1, 100, 1, 0), ValueError, "order"),
        ((1, 0, 0, 2, 2, 1, 100, 1, 0), ValueError, r"\(m\)"),
        ((1, 0, 0, 2, 1.0, 1, 100, 1, 0), TypeError, r"\(m\)"),
        ((1, 0, 0, 2, 1, 1.5, 100, 1, 0), TypeError, "tau"),
        ((1, 0, 0, 2, 1, 1, True, 1, 0), TypeError, "spe"),
        ((1, 0, 0, 2, 1, 1, 1, 1, 0), ValueError, "tau"),
        ((1, 0, 0, 2, 1, 1, 100, 3, 0), ValueError, "cfact"),
        ((1, 0, 0, 2, 1, 1, 100, 1, 1), ValueError, "flat"),
    ],
)
def test_invalid_seed_raises(cfg, exc: type, field: str) -> None:
    with pytest.raises(exc, match=field):
        Window.from_seed(cfg)


def test_invalid_steps_and_dicts_raise() -> None:
    w = Window("cosine", tau=2, spe=10)
    with pytest.raises(ValueError, match="step"):
        w(0)
    with pytest.raises(TypeError, match="step"):
        w(True)
    with pytest.raises(TypeError, match="step"):
        w(1.5)
    with pytest.raises(ValueError, match="epoch"):
        w.value(3, epoch=-1)
    with pytest.raises(ValueError, match="k"):
        w.frame_value(20)
    with pytest.raises(ValueError, match="unknown"):
        Window.from_dict({"shape": "cosine", "lr": 1.0})
    with pytest.raises(TypeError):
        Window.from_dict([("shape", "cosine")])
    # integral floats and one-element tensors (torch keeps step counts as float tensors) are accepted
    assert w(5.0) == w(5) == w(torch.tensor(5.0)) == w(torch.tensor(5))


# ---------------------------------------------------------------------------------------------
# WindowLR: the same windows for any torch optimizer
# ---------------------------------------------------------------------------------------------


def test_window_lr_follows_window_per_group() -> None:
    w = Window("logistic", order=3.0, floor=0.05, full=True, flat=0.1, tau=3, spe=20)
    opt = _sgd([0.1, 0.02, 1.0])
    sched = WindowLR(opt, w)
    for s in range(2 * w.length + 5):
        f = w(s + 1)
        assert sched.get_last_lr() == [0.1 * f, 0.02 * f, 1.0 * f]
        assert [g["lr"] for g in opt.param_groups] == [0.1 * f, 0.02 * f, 1.0 * f]
        opt.step()
        sched.step()


def test_window_lr_state_dict_round_trip_resumes_exactly() -> None:
    w = Window("cosine", order=2, floor=0.1, kronecker=True, tau=2, spe=25, unit="iteration")

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.Adam([{"params": [model.weight], "lr": 1e-2}, {"params": [model.bias], "lr": 3e-3}])
        return model, opt, WindowLR(opt, w)

    def train(model, opt, sched, n, lrs):
        for _ in range(n):
            loss = model(torch.ones(4, 3)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            lrs.append(sched.get_last_lr())

    model, opt, sched = make()
    ref: list = []
    train(model, opt, sched, 80, ref)

    model, opt, sched = make()
    got: list = []
    train(model, opt, sched, 37, got)  # stop mid-frame
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    model2 = torch.nn.Linear(3, 1)
    opt2 = torch.optim.Adam([{"params": [model2.weight], "lr": 1e-2}, {"params": [model2.bias], "lr": 3e-3}])
    sched2 = WindowLR(opt2, Window())  # the window comes back from the state dict
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert sched2.window == w and sched2.last_epoch == 37
    train(model2, opt2, sched2, 80 - 37, got)
    assert got == ref


def test_window_lr_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="window"):
        WindowLR(_sgd([0.1]), (1, 0, 0, 2, 1, 1, 100, 1, 0))
    with pytest.raises(TypeError, match="last_epoch"):
        WindowLR(_sgd([0.1]), Window(), last_epoch=True)


def test_figure_command_writes_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from autosgm._window_figure import main

    assert main([str(tmp_path)]) == 0
    png = tmp_path / "windows.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_golden_ratio_constant() -> None:
    assert PHI == pytest.approx(0.6180339887498949, abs=1e-16)
    assert PHI * (1 + PHI) == pytest.approx(1.0, abs=1e-15)
