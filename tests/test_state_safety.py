"""Nothing half-applied: every refused operation leaves the optimizer exactly as it was (its
``state_dict()`` serialises to the same bytes), and a setting changed between steps is either
applied at the next ``step()`` or refused there with an error that names it.

Which changes apply and which are refused (README, "Other options"):

* applied: every setting that only changes numbers of the step — ``lr``, ``betas`` (while the
  filter keeps a buffer), ``gamma`` (its buffer is converted when γ moves between zero and non-zero),
  ``eta``, ``beta_n``, ``eps``, ``repeat_eps``, ``weight_decay``, ``decoupled_weight_decay``,
  ``window``, ``debias``, ``maximize``, ``nonfinite``, ``foreach``, ``fused``;
* refused once the group has state: a change of the buffers the group keeps — ``normalize``,
  ``numerator``, ``numerator_mode`` (of a numerator with buffers), and the filter gaining or losing
  its memory (``betas[0]`` and ``gamma`` to or from β = γ = 0).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from autosgm import AutoSGM, Window

from helpers import loss_fn, make_net, train, two_groups

PATHS = pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])


def _bytes(opt: torch.optim.Optimizer) -> bytes:
    """The optimizer's ``state_dict()`` as ``torch.save`` writes it."""
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    return buf.getvalue()


def _grads(net: nn.Module, step: int) -> None:
    net.zero_grad()
    loss_fn(net, step).backward()


def _trained(foreach: bool = False, steps: int = 3, **kwargs):
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2, foreach=foreach, **kwargs)
    train(net, opt, steps)
    _grads(net, steps)
    return net, opt


def test_state_dict_bytes_are_deterministic():
    """(The comparison below relies on it.)"""
    _, opt = _trained()
    assert _bytes(opt) == _bytes(opt)


# ------------------------------------------------------------------------------------------------
# 5. add_param_group validates before it changes anything
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [dict(betas=(1.5, 0.999)), dict(gamma=0.99), dict(numerator="parcor"), dict(eps=float("inf")),
     dict(lr=-1.0), dict(foreach=True, fused=True), dict(fused="yes"), dict(normalize=False, numerator="corr")],
    ids=["betas", "gamma", "numerator", "eps", "lr", "paths", "fused-type", "normalize"],
)
def test_a_refused_param_group_leaves_the_optimizer_unchanged(settings):
    net, opt = _trained()
    before, groups = _bytes(opt), len(opt.param_groups)
    extra = nn.Parameter(torch.randn(4, dtype=torch.float64))
    with pytest.raises((ValueError, TypeError)):
        opt.add_param_group({"params": [extra], **settings})
    assert len(opt.param_groups) == groups and _bytes(opt) == before
    opt.step()  # the optimizer still works
    opt.add_param_group({"params": [extra], "lr": 1e-3})  # and still takes a good group
    extra.grad = torch.ones_like(extra)
    opt.step()
    assert not torch.equal(extra.detach(), torch.zeros(4, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# 6. settings changed between steps
# ------------------------------------------------------------------------------------------------
REFUSED = {
    "filter-added": (dict(betas=(0.0, 0.999)), dict(betas=(0.9, 0.999)), r"betas\[0\] and gamma"),
    "filter-added-by-gamma": (dict(betas=(0.0, 0.999)), dict(betas=(0.0, 0.999), gamma=-0.5), r"betas\[0\] and gamma"),
    "filter-removed": (dict(), dict(betas=(0.0, 0.999)), r"betas\[0\] and gamma"),
    "numerator-added": (dict(), dict(numerator="parcor-markov"), "numerator"),
    "numerator-changed": (dict(numerator="corr"), dict(numerator="parcor-bounded"), "numerator"),
    "numerator-removed": (dict(numerator="corr"), dict(numerator="unity"), "numerator"),
    "numerator_mode": (dict(numerator="parcor-markov"), dict(numerator="parcor-markov", numerator_mode="element"),
                       "numerator_mode"),
    "normalize-off": (dict(), dict(normalize=False), "normalize"),
    "normalize-on": (dict(normalize=False), dict(normalize=True), "normalize"),
}


@PATHS
@pytest.mark.parametrize("name", list(REFUSED))
def test_a_change_of_the_kept_buffers_is_refused_at_the_next_step(name, foreach):
    start, change, setting = REFUSED[name]
    net, opt = _trained(foreach, **start)
    opt.param_groups[0].update(change)
    params = [p.detach().clone() for p in net.parameters()]
    before = _bytes(opt)
    with pytest.raises(ValueError, match=rf"param group 0: {setting}.*construct a new optimizer"):
        opt.step()
    assert _bytes(opt) == before
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), params))
    opt.param_groups[0].update({k: v for k, v in AutoSGM(make_net().parameters(), **start).param_groups[0].items()
                                if k in change})  # changed back: the optimizer steps again
    opt.step()


def test_the_refusal_names_the_group_and_leaves_the_other_groups_unstepped():
    net = make_net()
    opt = AutoSGM(two_groups(net), lr=1e-2)
    train(net, opt, 2)
    opt.param_groups[1]["numerator"] = "corr"
    _grads(net, 2)
    params = [p.detach().clone() for p in net.parameters()]
    before = _bytes(opt)
    with pytest.raises(ValueError, match=r"param group 1: numerator \(the state is that of 'unity', the settings say 'corr'\)"):
        opt.step()
    assert _bytes(opt) == before and all(torch.equal(p, q) for p, q in zip(net.parameters(), params))


def test_a_structural_change_before_the_first_step_is_free():
    """Without state there is nothing to keep: the group simply starts with the new buffers."""
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2, betas=(0.0, 0.999))
    opt.param_groups[0].update(betas=(0.9, 0.999), numerator="parcor-markov", normalize=True)
    train(net, opt, 2)
    assert {"filter_state", "num_c"} <= set(opt.state[next(net.parameters())])


def _equivalent_run(start: dict, change: dict, foreach: bool, convert=None):
    """Train 4 steps with ``start``, change to ``change``, train 4 more: returns the net and
    optimizer, and a reference that continues the same state under an optimizer built with the
    changed settings (the filter buffer converted by ``convert`` if given)."""
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2, foreach=foreach, **start)
    train(net, opt, 4)
    ref_net = copy.deepcopy(net)
    ref = AutoSGM(ref_net.parameters(), foreach=foreach, **{"lr": 1e-2, **start, **change})
    for p, q in zip(net.parameters(), ref_net.parameters()):
        ref.state[q] = {k: v.clone() for k, v in opt.state[p].items()}
        if convert is not None:
            ref.state[q]["filter_state"].mul_(convert)
    opt.param_groups[0].update(change)
    train(net, opt, 4, start=4)
    train(ref_net, ref, 4, start=4)
    return net, opt, ref_net, ref


SUPPORTED = {
    "lr": dict(lr=3e-3),
    "betas": dict(betas=(0.8, 0.99)),
    "gamma-non-zero": dict(gamma=0.2),
    "eta": dict(eta=0.2),
    "beta_n": dict(beta_n=0.99),
    "eps": dict(eps=1e-4),
    "repeat_eps": dict(repeat_eps=True),
    "weight_decay": dict(weight_decay=1e-2, decoupled_weight_decay=True),
    "window": dict(window=Window(shape="cosine", tau=1, spe=20).to_dict()),
    "debias": dict(debias=False),
    "maximize": dict(maximize=True),
    "nonfinite": dict(nonfinite="skip"),
}


@PATHS
@pytest.mark.parametrize("name", list(SUPPORTED))
def test_a_change_of_numbers_applies_at_the_next_step(name, foreach):
    """The run continues exactly as an optimizer built with the new settings on the same state."""
    start = dict(gamma=0.3, numerator="parcor-markov")
    net, opt, ref_net, ref = _equivalent_run(start, SUPPORTED[name], foreach)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), ref_net.parameters()))
    for p, q in zip(net.parameters(), ref_net.parameters()):
        assert all(torch.equal(v, ref.state[q][k]) for k, v in opt.state[p].items())
    unchanged = make_net()
    unchanged_opt = AutoSGM(unchanged.parameters(), lr=1e-2, foreach=foreach, **start)
    train(unchanged, unchanged_opt, 8)
    if name != "nonfinite":  # (finite gradients: the policy has nothing to do)
        assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), unchanged.parameters()))  # it did apply


@PATHS
@pytest.mark.parametrize("eta", [None, 1.0], ids=["default-gain", "unit-gain"])
def test_gamma_from_zero_converts_the_filter_buffer(eta, foreach):
    """γ = 0 keeps the filter output v = η Σ βᵏ g; γ ≠ 0 the input's average u = (1 − β) Σ βᵏ g."""
    start = dict(eta=eta, gamma=0.0)
    convert = (1 - 0.9) / (1.0 if eta == 1.0 else 0.1)
    net, opt, ref_net, ref = _equivalent_run(start, dict(gamma=0.3), foreach, convert)
    assert all(torch.allclose(p, q, rtol=1e-13, atol=0) for p, q in zip(net.parameters(), ref_net.parameters()))


@PATHS
def test_gamma_to_zero_converts_the_filter_buffer(foreach):
    net, opt, ref_net, ref = _equivalent_run(dict(gamma=0.3, eta=1.0), dict(gamma=0.0), foreach, 1.0 / (1 - 0.9))
    assert all(torch.allclose(p, q, rtol=1e-13, atol=0) for p, q in zip(net.parameters(), ref_net.parameters()))


def test_the_filter_buffer_is_the_same_as_if_gamma_had_always_been_the_new_value():
    """With gradients that do not depend on the weights, u (γ ≠ 0) depends only on the gradients."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(8)]
    a, b = nn.Parameter(torch.zeros(5, dtype=torch.float64)), nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt_a = AutoSGM([a], lr=1e-2, eta=1.0)  # γ = 0, then 0.3
    opt_b = AutoSGM([b], lr=1e-2, eta=1.0, gamma=0.3)
    for k, g in enumerate(grads):
        if k == 4:
            opt_a.param_groups[0]["gamma"] = 0.3
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(opt_a.state[a]["filter_state"], opt_b.state[b]["filter_state"], rtol=1e-14, atol=0)


def test_a_state_replaced_together_with_its_settings_steps():
    """A structural change is judged from the buffers the state really holds: a state and settings
    replaced together (as a ZeRO load does) step normally."""
    net, opt = _trained(numerator="corr")
    other_net, other = _trained(numerator="parcor-markov")
    opt.param_groups[0]["numerator"] = "parcor-markov"
    for p, q in zip(net.parameters(), other_net.parameters()):
        opt.state[p] = copy.deepcopy(other.state[q])
    opt.step()


# ------------------------------------------------------------------------------------------------
# 9. another optimizer's state_dict is refused
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("other", ["adam", "sgd"])
@pytest.mark.parametrize("stepped", [True, False], ids=["stepped", "fresh"])
def test_another_optimizers_state_dict_is_refused(other, stepped):
    net = make_net()
    foreign = (torch.optim.Adam(net.parameters()) if other == "adam"
               else torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))  # fmt: skip
    if stepped:
        train(net, foreign, 2)
    _, opt = _trained()
    before = _bytes(opt)
    with pytest.raises(ValueError, match="another optimizer"):
        opt.load_state_dict(foreign.state_dict())
    assert _bytes(opt) == before
    opt.step()


def test_a_state_without_the_buffers_of_the_settings_is_refused():
    """Only the settings' keys could be mistaken for AutoSGM's: the buffers are checked too."""
    net, opt = _trained()
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        st["exp_avg"] = st.pop("moment")
    fresh_net, fresh = _trained()
    before = _bytes(fresh)
    with pytest.raises(ValueError, match="exp_avg"):
        fresh.load_state_dict(sd)
    assert _bytes(fresh) == before

    sd = copy.deepcopy(opt.state_dict())
    del sd["state"][0]["moment"]
    with pytest.raises(ValueError, match=r"param group 0, parameter 0.*normalize"):
        fresh.load_state_dict(sd)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["moment"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"moment has shape \(3,\), the parameter needs \(16,\)"):
        fresh.load_state_dict(sd)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["step"] = torch.tensor(-1.0)
    with pytest.raises(ValueError, match="step"):
        fresh.load_state_dict(sd)
    assert _bytes(fresh) == before


# ------------------------------------------------------------------------------------------------
# 10. fused=True on a device the fused path does not support
# ------------------------------------------------------------------------------------------------
def test_fused_on_an_unsupported_device_is_refused_before_anything_changes():
    cpu = nn.Parameter(torch.randn(3))
    meta = nn.Parameter(torch.empty(3, device="meta"))
    opt = AutoSGM([{"params": [cpu], "fused": False}, {"params": [meta], "fused": True}], lr=1e-2)
    cpu.grad = torch.ones(3)
    meta.grad = torch.empty(3, device="meta")
    before, weights = _bytes(opt), cpu.detach().clone()
    with pytest.raises(RuntimeError, match=r"fused=True .*\['cpu', 'cuda'\].*meta"):
        opt.step()
    assert _bytes(opt) == before and len(opt.state) == 0 and torch.equal(cpu, weights)  # nothing was stepped


# ------------------------------------------------------------------------------------------------
# 11. every real-valued setting is finite and in a range where the step is finite
# ------------------------------------------------------------------------------------------------
BAD_NUMBERS = [
    (dict(gamma=-math.inf), "gamma"),
    (dict(gamma=-1e300), "gamma"),
    (dict(gamma=-1e300, eta=1.0), "gamma"),
    (dict(eps=math.inf), "eps"),
    (dict(eps=1e-300), "eps"),
    (dict(eps=1e300, repeat_eps=True), "eps"),
    (dict(eta=math.inf), "eta"),
    (dict(eta=1e300), "eta"),
    (dict(eta=1e-300), "eta"),
    (dict(weight_decay=math.inf), "weight_decay"),
    (dict(weight_decay=1e300), "weight_decay"),
    (dict(lr=math.inf), "lr"),
    (dict(lr=1e300), "lr"),
    (dict(betas=(-math.inf, 0.999)), r"betas\[0\]"),
    (dict(beta_n=math.nan), "beta_n"),
]


@pytest.mark.parametrize("kwargs, name", BAD_NUMBERS, ids=[str(k) for k, _ in BAD_NUMBERS])
def test_a_number_the_step_cannot_use_is_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AutoSGM([nn.Parameter(torch.zeros(2))], **kwargs)
    net, opt = _trained()
    opt.param_groups[0].update(kwargs)
    before = _bytes(opt)
    with pytest.raises(ValueError, match=name):
        opt.step()
    assert _bytes(opt) == before


@PATHS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kwargs",
    [dict(gamma=-1e20), dict(gamma=-1e30, debias=False), dict(eps=1e-36), dict(eps=1e30), dict(eta=1e-20),
     dict(eta=1e20, normalize=False, debias=False, lr=1e-30), dict(weight_decay=1e10, lr=1e-20), dict(lr=1e20)],
    ids=lambda k: str(k),
)
def test_extreme_accepted_numbers_keep_the_step_finite(kwargs, dtype, foreach):
    p = nn.Parameter(torch.linspace(-1, 1, 7, dtype=dtype))
    opt = AutoSGM([p], **{"lr": 1e-3, **kwargs}, foreach=foreach)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        p.grad = torch.randn(7, generator=gen, dtype=torch.float64).to(dtype)
        opt.step()
        assert torch.isfinite(p).all() and all(torch.isfinite(v).all() for v in opt.state[p].values())
