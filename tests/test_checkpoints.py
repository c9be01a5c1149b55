"""Checkpoints: resume equality for every numerator and every window, refusal of other settings,
and state dicts written before an option existed.

A resume test trains an uninterrupted reference, and a second run that is saved mid-way with
``torch.save``, read back with ``torch.load(weights_only=True)`` into fresh objects (another
initialisation, so nothing leaks through), and continued. Parameters and every state buffer must
be bitwise equal to the reference's, and the window values F[t] must be the same sequence.
"""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
from torch import nn
from autosgm import NUMERATORS, AutoSGM, Window
from autosgm.optimizer import DEFAULTS
from autosgm.windows import SHAPES, UNITS

from helpers import make_net, max_rel_diff, train, two_groups

PATHS = pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _states_equal(opt_a, net_a, opt_b, net_b) -> None:
    for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True):
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
            assert torch.equal(sa[k], sb[k]), k


def _resume(make, before: int, after: int, dtype=torch.float64, tol: float = 0.0):
    """Uninterrupted vs saved-after-``before``-steps-and-resumed; returns the two F sequences."""
    ref = make_net(dtype=dtype)
    ref_opt = make(ref)
    ref_f: list[list[float]] = []
    train(ref, ref_opt, before + after, each=lambda k: ref_f.append(list(ref_opt.last_window_values)))

    net = make_net(dtype=dtype)
    opt = make(net)
    train(net, opt, before)
    ckpt = _roundtrip({"model": net.state_dict(), "opt": opt.state_dict()})

    fresh = make_net(seed=123, dtype=dtype)
    fresh.load_state_dict(ckpt["model"])
    fresh_opt = make(fresh)
    fresh_opt.load_state_dict(ckpt["opt"])
    got_f: list[list[float]] = []
    train(fresh, fresh_opt, after, start=before, each=lambda k: got_f.append(list(fresh_opt.last_window_values)))

    assert max_rel_diff(fresh, ref) <= tol
    if tol == 0.0:
        _states_equal(fresh_opt, fresh, ref_opt, ref)
    assert got_f == ref_f[before:]
    return ref_f


# ------------------------------------------------------------------------------------------------
# resume equality
# ------------------------------------------------------------------------------------------------
@PATHS
@pytest.mark.parametrize("numerator, mode", list(itertools.product(NUMERATORS, ["tensor", "element"])))
def test_resume_is_exact_for_every_numerator(numerator, mode, foreach):
    def make(net):
        groups = two_groups(net, lr=3e-3, numerator_mode="element" if mode == "tensor" else "tensor")
        return AutoSGM(groups, lr=1e-2, gamma=0.3, numerator=numerator, numerator_mode=mode, beta_n=0.999,
                       weight_decay=1e-2, decoupled_weight_decay=True, foreach=foreach)  # fmt: skip

    _resume(make, 23, 17)


ORDERS = {"cosine": 2.0, "polynomial": 1.5, "beta-exp": 0.3, "simple-poly": 2.0, "logistic": 4.0, "logistic-late": 4.0}


@pytest.mark.parametrize("kronecker", [False, True], ids=["uniform", "kronecker"])
@pytest.mark.parametrize("full", [False, True], ids=["half", "full"])
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_resume_is_exact_for_every_window(shape, unit, full, kronecker):
    """spe = 3, tau = 2: frames of 6 steps (iteration, epoch) or 3 (epoch-restart); the save
    happens after step 7, inside a frame, and the run continues through several restarts."""
    window = Window(shape=shape, order=ORDERS[shape], floor=0.1, full=full, flat=0.2, kronecker=kronecker,
                    tau=2, spe=3, unit=unit)  # fmt: skip

    def make(net):
        return AutoSGM(two_groups(net, lr=3e-3), lr=1e-2, numerator="parcor-markov", window=window)

    seq = _resume(make, 7, 14)
    assert len({f[0] for f in seq}) >= 2  # the window really varies over the run
    frame = window.length * (window.spe if unit == "epoch" else 1)
    assert [f[0] for f in seq[:frame]] == [f[0] for f in seq[frame : 2 * frame]]  # and restarts


@pytest.mark.parametrize(
    "saved_with, resumed_with", [(False, True), (True, False)], ids=["single-to-foreach", "foreach-to-single"]
)
def test_resume_on_the_other_path(saved_with, resumed_with):
    """``foreach`` may differ between the run that saved and the run that resumes."""
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2, numerator="parcor-chebyshev", foreach=saved_with)
    train(net, opt, 12)
    ckpt = _roundtrip(opt.state_dict())
    ref = make_net()
    ref_opt = AutoSGM(ref.parameters(), lr=1e-2, numerator="parcor-chebyshev", foreach=saved_with)
    train(ref, ref_opt, 24)

    twin = make_net()
    twin.load_state_dict(net.state_dict())
    twin_opt = AutoSGM(twin.parameters(), lr=1e-2, numerator="parcor-chebyshev", foreach=resumed_with)
    twin_opt.load_state_dict(ckpt)
    twin_opt.param_groups[0]["foreach"] = resumed_with  # (load_state_dict adopts the saved value)
    train(twin, twin_opt, 12, start=12)
    assert max_rel_diff(twin, ref) <= 1e-12


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.bfloat16, torch.float16],
    ids=["f32", "bf16", "f16"],
)  # fmt: skip
def test_resume_is_exact_in_low_precision(dtype):
    def make(net):
        return AutoSGM(net.parameters(), lr=1e-2, gamma=0.3, numerator="parcor-markov")

    _resume(make, 9, 9, dtype=dtype)


def test_resume_with_a_parameter_frozen_before_the_save():
    """A parameter without state at the save (frozen) gets its state after the resume."""

    def run(net, opt, start, steps):
        net[0].weight.requires_grad_(start >= 10)
        train(net, opt, steps, start=start)

    ref = make_net()
    ref_opt = AutoSGM(ref.parameters(), lr=1e-2, numerator="corr")
    run(ref, ref_opt, 0, 10)
    run(ref, ref_opt, 10, 10)

    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2, numerator="corr")
    run(net, opt, 0, 10)
    assert len(opt.state[net[0].weight]) == 0
    ckpt = _roundtrip({"model": net.state_dict(), "opt": opt.state_dict()})
    fresh = make_net(seed=5)
    fresh.load_state_dict(ckpt["model"])
    fresh_opt = AutoSGM(fresh.parameters(), lr=1e-2, numerator="corr")
    fresh_opt.load_state_dict(ckpt["opt"])
    run(fresh, fresh_opt, 10, 10)
    assert max_rel_diff(fresh, ref) == 0.0
    _states_equal(fresh_opt, fresh, ref_opt, ref)


# ------------------------------------------------------------------------------------------------
# other settings are refused
# ------------------------------------------------------------------------------------------------
COSINE = Window(shape="cosine", tau=1, spe=20)
DIFFERENCES = {
    "numerator": (dict(numerator="parcor-markov"), dict(numerator="parcor-chebyshev")),
    "numerator_mode": (dict(numerator="corr"), dict(numerator="corr", numerator_mode="element")),
    "betas-filter": (dict(betas=(0.9, 0.999)), dict(betas=(0.8, 0.999))),
    "betas-moment": (dict(betas=(0.9, 0.999)), dict(betas=(0.9, 0.99))),
    "gamma": (dict(gamma=0.3), dict()),
    "eta": (dict(eta=0.2), dict()),
    "beta_n": (dict(numerator="parcor-maxbound"), dict(numerator="parcor-maxbound", beta_n=0.99)),
    "debias": (dict(), dict(debias=False)),
    "normalize": (dict(), dict(normalize=False)),
    "eps": (dict(), dict(eps=1e-10)),
    "repeat_eps": (dict(), dict(repeat_eps=True)),
    "weight_decay": (dict(weight_decay=1e-2), dict(weight_decay=1e-3)),
    "decoupled_weight_decay": (dict(weight_decay=1e-2), dict(weight_decay=1e-2, decoupled_weight_decay=True)),
    "window-none": (dict(window=COSINE), dict()),
    "window-added": (dict(), dict(window=COSINE)),
    "window-spe": (dict(window=COSINE), dict(window=Window(shape="cosine", tau=1, spe=30))),
    "window-kronecker": (dict(window=COSINE), dict(window=Window(shape="cosine", tau=1, spe=20, kronecker=True))),
    "window-shape": (dict(window=COSINE), dict(window=Window(shape="polynomial", order=2.0, tau=1, spe=20))),
    "maximize": (dict(), dict(maximize=True)),
    "nonfinite": (dict(), dict(nonfinite="skip")),
}


@pytest.mark.parametrize("name", list(DIFFERENCES))
def test_loading_other_settings_is_refused_and_changes_nothing(name):
    saved_kwargs, here_kwargs = DIFFERENCES[name]
    key = name.split("-")[0]
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2, **saved_kwargs)
    train(net, opt, 3)
    sd = _roundtrip(opt.state_dict())

    other_net = make_net()
    other = AutoSGM(other_net.parameters(), lr=1e-2, **here_kwargs)
    train(other_net, other, 2)
    groups_before = [dict(g) for g in other.param_groups]
    state_before = _roundtrip(other.state_dict())["state"]
    with pytest.raises(ValueError, match=rf"param group 0 \(.*{key}: saved .*, here "):
        other.load_state_dict(sd)
    assert other.param_groups == groups_before  # the refusal is atomic
    after = other.state_dict()["state"]
    assert all(torch.equal(after[i][k], v) for i, st in state_before.items() for k, v in st.items())


def test_the_refusal_names_the_group_that_differs():
    net = make_net()
    opt = AutoSGM(two_groups(net, numerator="corr"), lr=1e-2)
    train(net, opt, 2)
    other = AutoSGM(two_groups(make_net(), numerator="corr", numerator_mode="element"), lr=1e-2)
    with pytest.raises(ValueError, match=r"param group 1 \(numerator_mode: saved 'tensor', here 'element'\)"):
        other.load_state_dict(opt.state_dict())


def test_another_number_of_groups_is_refused():
    net = make_net()
    opt = AutoSGM(two_groups(net), lr=1e-2)
    train(net, opt, 2)
    with pytest.raises(ValueError, match="number of parameter groups"):
        AutoSGM(make_net().parameters(), lr=1e-2).load_state_dict(opt.state_dict())


def test_lr_may_differ_and_is_restored_from_the_checkpoint():
    """A scheduler changes ``lr``: the saved value is the one to resume with (torch.optim's rule)."""
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    train(net, opt, 5, each=lambda k: sched.step())
    fresh = AutoSGM(make_net().parameters(), lr=1e-2)
    fresh.load_state_dict(_roundtrip(opt.state_dict()))
    assert fresh.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 2.5e-3


# ------------------------------------------------------------------------------------------------
# state dicts written before an option existed
# ------------------------------------------------------------------------------------------------
OPTION_KEYS = [k for k in DEFAULTS if k != "lr"]


@pytest.mark.parametrize("key", OPTION_KEYS)
def test_a_state_dict_without_a_later_option_loads_with_its_default(key):
    """Simulate a checkpoint from a version without ``key``: it loads, the key takes the value this
    optimizer was constructed with (here the default), and the resumed run equals the uninterrupted one."""
    ref = make_net()
    ref_opt = AutoSGM(two_groups(ref, lr=3e-3), lr=1e-2)
    train(ref, ref_opt, 16)

    net = make_net()
    opt = AutoSGM(two_groups(net, lr=3e-3), lr=1e-2)
    train(net, opt, 8)
    sd = _roundtrip(opt.state_dict())
    for g in sd["param_groups"]:
        del g[key]
    fresh = make_net(seed=9)
    fresh.load_state_dict(net.state_dict())
    fresh_opt = AutoSGM(two_groups(fresh, lr=3e-3), lr=1e-2)
    fresh_opt.load_state_dict(sd)
    assert all(g[key] == DEFAULTS[key] for g in fresh_opt.param_groups)
    train(fresh, fresh_opt, 8, start=8)
    assert max_rel_diff(fresh, ref) == 0.0
    _states_equal(fresh_opt, fresh, ref_opt, ref)


def test_a_state_dict_with_only_lr_loads():
    """The oldest conceivable checkpoint: groups hold nothing but ``params`` and ``lr``."""
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2)
    train(net, opt, 4)
    sd = _roundtrip(opt.state_dict())
    sd["param_groups"] = [{"params": g["params"], "lr": g["lr"]} for g in sd["param_groups"]]
    fresh = AutoSGM(net.parameters(), lr=1e-2)
    fresh.load_state_dict(sd)
    assert {k: v for k, v in fresh.param_groups[0].items() if k != "params"} == {
        k: v for k, v in opt.param_groups[0].items() if k != "params"
    }


def _resume_edited(make, steps: int, edit, seed: int):
    """Train ``steps`` steps straight, and ``steps // 2`` then a resume from the half-way
    ``state_dict`` changed by ``edit(sd)`` into fresh objects; returns both and the edited dict."""
    ref = make_net()
    ref_opt = make(ref)
    train(ref, ref_opt, steps)
    net = make_net()
    opt = make(net)
    half = steps // 2
    train(net, opt, half)
    sd = _roundtrip(opt.state_dict())
    edit(sd)
    fresh = make_net(seed=seed)
    fresh.load_state_dict(net.state_dict())
    fresh_opt = make(fresh)
    fresh_opt.load_state_dict(sd)
    train(fresh, fresh_opt, steps - half, start=half)
    return (ref, ref_opt), (fresh, fresh_opt), sd


def test_a_missing_option_takes_the_value_this_optimizer_was_constructed_with():
    """A setting the checkpoint does not name is the one the caller asks for now, not the library
    default: a ``maximize=True`` optimizer loads a checkpoint written before ``maximize`` existed."""
    def make(net):
        return AutoSGM(net.parameters(), lr=1e-2, gamma=0.3, maximize=True)

    def drop(sd):
        for key in ("maximize", "gamma"):
            del sd["param_groups"][0][key]

    (ref, ref_opt), (fresh, fresh_opt), sd = _resume_edited(make, 8, drop, seed=3)
    assert fresh_opt.param_groups[0]["maximize"] is True and fresh_opt.param_groups[0]["gamma"] == 0.3
    assert "maximize" not in sd["param_groups"][0]  # the caller's state_dict is not changed
    assert max_rel_diff(fresh, ref) == 0.0
    _states_equal(fresh_opt, fresh, ref_opt, ref)


# ------------------------------------------------------------------------------------------------
# step counts stored as plain numbers (older torch.optim checkpoints)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [float, int], ids=["float", "int"])
@pytest.mark.parametrize("path", ["single", "foreach", pytest.param("fused", marks=pytest.mark.slow)])
def test_a_step_stored_as_a_number_loads_on_every_path(path, kind):
    """torch's Adam accepts ``state["step"]`` as a number; so does AutoSGM, on every path."""
    paths = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}

    def make(net):
        return AutoSGM(net.parameters(), lr=1e-2, gamma=0.3, numerator="parcor-markov", **paths[path])

    def as_numbers(sd):
        for st in sd["state"].values():
            st["step"] = kind(st["step"].item())

    (ref, _), (fresh, fresh_opt), _ = _resume_edited(make, 6, as_numbers, seed=4)
    for st in fresh_opt.state.values():  # (normalized on load; checked after the resumed steps too)
        assert st["step"].dtype == torch.float32 and st["step"].device.type == "cpu" and st["step"].dim() == 0
    assert max_rel_diff(fresh, ref) <= (1e-6 if path == "fused" else 0.0)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_setstate_with_steps_as_numbers(foreach):
    """Unpickling (``__setstate__``) an optimizer whose steps are numbers normalises them too."""
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2, foreach=foreach)
    train(net, opt, 2)
    state = {"defaults": opt.defaults, "param_groups": opt.param_groups,
             "state": {p: {**st, "step": float(st["step"])} for p, st in opt.state.items()}}  # fmt: skip
    twin = copy.copy(opt)
    twin.__setstate__(state)
    assert all(isinstance(st["step"], torch.Tensor) and st["step"].dtype == torch.float32 for st in twin.state.values())
    train(net, twin, 2, start=2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_checkpoint_of_the_earlier_filter_layout_is_converted_on_load(dtype):
    """autosgm 0.1 kept the γ ≠ 0 filter buffer as s = K u (no ``state_format`` in the groups);
    loading such a checkpoint converts it, and training continues as if never interrupted."""
    torch.manual_seed(0)
    w0 = torch.randn(6, dtype=torch.float64).to(dtype)
    grads = [torch.randn(6, dtype=torch.float64).to(dtype) for _ in range(8)]

    def make(p):
        return AutoSGM([p], lr=0.05, betas=(0.9, 0.999), gamma=0.3, eta=0.5, numerator="parcor-markov")

    def train(opt, p, gs):
        for g in gs:
            p.grad = g.clone()
            opt.step()

    ref = nn.Parameter(w0.clone())
    ref_opt = make(ref)
    train(ref_opt, ref, grads)

    p = nn.Parameter(w0.clone())
    opt = make(p)
    train(opt, p, grads[:4])
    old = copy.deepcopy(opt.state_dict())
    cfg = opt.group_config(0)
    k = cfg.eta * (cfg.beta - cfg.gamma) / (1 - cfg.beta)
    for group in old["param_groups"]:
        del group["state_format"]
    for st in old["state"].values():
        st["filter_state"] = st["filter_state"] * k  # the earlier layout: s = K u

    q = nn.Parameter(p.detach().clone())
    resumed = make(q)
    resumed.load_state_dict(old)
    assert resumed.param_groups[0]["state_format"] == 2
    torch.testing.assert_close(resumed.state[q]["filter_state"], opt.state[p]["filter_state"], rtol=1e-6, atol=0)
    train(resumed, q, grads[4:])
    tol = 1e-12 if dtype == torch.float64 else 1e-2
    torch.testing.assert_close(q.detach().double(), ref.detach().double(), rtol=tol, atol=tol)
