"""The optimizer as a first-class torch.optim citizen: numerators, checkpoints, APIs, errors."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from autosgm import NUMERATORS, AutoSGM, Window
from autosgm.step import NUMERATOR_BUFFERS

from helpers import loss_fn, make_net, max_rel_diff, train, two_groups

SEED_CALL = dict(
    lr_cfg=(True, 1e-3, 3),
    beta_cfg=(0.9999, 0.999, 0.9, 0.5528, 0, True),
    rc_cfg=(1, 0, 0, 2, 1, 1, 100000, 1, 0),
    wd_cfg=(0.0, 0),
    eps_cfg=(1e-10, True),
)


# ------------------------------------------------------------------------------------------------
# numerators
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["tensor", "element"])
@pytest.mark.parametrize("numerator", NUMERATORS)
def test_every_numerator_trains_and_has_its_buffers(numerator, mode):
    net = make_net(dtype=torch.float32)
    # corr's numerator E[ḡ²] rises slowly from 0 (a natural warm-up): it tolerates a larger μ
    lr = 0.3 if numerator == "corr" else 3e-2
    opt = AutoSGM(net.parameters(), lr=lr, numerator=numerator, numerator_mode=mode, beta_n=0.999)
    losses = train(net, opt, 150)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (numerator, mode, first, last)
    for p in net.parameters():
        st = opt.state[p]
        expected = {"step", "filter_state", "moment", *NUMERATOR_BUFFERS[numerator]}
        if mode == "tensor" and numerator != "unity":
            expected.add("num_a")
        assert set(st) == expected
        for name in NUMERATOR_BUFFERS[numerator]:
            per_tensor = mode == "tensor" and name in ("num_absx", "num_xmean", "num_xvar")
            assert st[name].shape == (() if per_tensor else p.shape)
        if "num_a" in st:
            assert st["num_a"].shape == () and 0 < st["num_a"].item() <= 1 + st.get("num_w2", torch.zeros(1)).max()


def test_numerator_codes_equal_names():
    for code, name in enumerate(NUMERATORS[:5]):
        a, b = make_net(), make_net()
        train(a, AutoSGM(a.parameters(), lr=1e-2, numerator=code), 20)
        train(b, AutoSGM(b.parameters(), lr=1e-2, numerator=name), 20)
        assert max_rel_diff(a, b) == 0.0


def test_parcor_numerator_warms_up_from_zero():
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2, numerator="parcor-maxbound")
    train(net, opt, 1)
    a1 = [opt.state[p]["num_a"].item() for p in net.parameters()]
    train(net, opt, 50, start=1)
    a50 = [opt.state[p]["num_a"].item() for p in net.parameters()]
    assert all(x < y for x, y in zip(a1, a50))


def test_corr_numerator_is_bounded_by_one():
    net = make_net()
    opt = AutoSGM(net.parameters(), lr=1e-2, numerator="corr", numerator_mode="element")
    train(net, opt, 30)
    for p in net.parameters():
        assert opt.state[p]["num_c"].min() >= 0


# ------------------------------------------------------------------------------------------------
# the seed's API
# ------------------------------------------------------------------------------------------------
def test_seed_constructor_call_runs_a_training_loop_unchanged():
    from asgm import AutoSGM as SeedAutoSGM  # the name the seed's README imports

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 50), torch.nn.ReLU(), torch.nn.Linear(50, 1))
    num_epochs = 1
    iters_epoch = 100000
    opt = SeedAutoSGM(
        model.parameters(),
        lr_cfg=(True, 1e-3, 3),            # setup learning-rate (lr) algorithm
        beta_cfg=(0.9999, 0.999, 0.9, 0.5528, 0, True), # setup  averaging (lr), and lowpass filtering (grad.)
        rc_cfg=(1, 0, 0, 2, 1, num_epochs, iters_epoch, 1, 0), # setup window (lr schedule)
        wd_cfg=(0.0, 0),                  # setup weight decay
        eps_cfg=(1e-10, True),            # setup numerical eps
    )  # fmt: skip
    x = torch.randn(256, 10)
    y = 2 * x[:, :1] + x[:, 1:2]
    losses = []
    for _ in range(200):
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        # update parameters in training loop
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    g = opt.param_groups[0]
    assert g["numerator"] == "parcor-markov" and g["gamma"] == 0.5528 and g["repeat_eps"] is True
    assert g["window"]["shape"] == "cosine" and g["window"]["spe"] == 100000
    assert 0.99 < opt.last_window_values[0] < 1.0


def test_seed_tuples_equal_keywords():
    keywords = dict(
        lr=1e-3, normalize=True, numerator="parcor-markov", beta_n=0.9999, betas=(0.9, 0.999),
        gamma=0.5528, eta=None, debias=True,
        window=Window(shape="cosine", order=2, tau=1, spe=100000, unit="iteration"),
        weight_decay=0.0, decoupled_weight_decay=False, eps=1e-10, repeat_eps=True,
    )  # fmt: skip
    a, b = make_net(), make_net()
    oa, ob = AutoSGM(a.parameters(), **SEED_CALL), AutoSGM(b.parameters(), **keywords)
    assert oa.param_groups[0] == {**ob.param_groups[0], "params": oa.param_groups[0]["params"]}
    train(a, oa, 30)
    train(b, ob, 30)
    assert max_rel_diff(a, b) == 0.0


def test_seed_tuples_in_a_param_group():
    net = make_net()
    groups = two_groups(net, lr_cfg=(True, 5e-3, 2), wd_cfg=(1e-3, 1))
    opt = AutoSGM(groups, lr=1e-2)
    g0, g1 = opt.param_groups
    assert (g0["lr"], g0["numerator"], g0["weight_decay"]) == (1e-2, "unity", 0.0)
    assert (g1["lr"], g1["numerator"], g1["weight_decay"], g1["decoupled_weight_decay"]) == (
        5e-3, "parcor-maxbound", 1e-3, True)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# checkpoints, copies, printing
# ------------------------------------------------------------------------------------------------
CHECKPOINT_CONFIGS = {
    "adam": lambda p: AutoSGM.adam(p, lr=1e-2),
    "nesterov": lambda p: AutoSGM.nesterov(p, lr=1e-2, weight_decay=1e-3),
    "parcor-window": lambda p: AutoSGM(
        p, lr=1e-2, gamma=0.4, numerator="parcor-chebyshev", weight_decay=1e-2,
        decoupled_weight_decay=True, window=Window(shape="cosine", tau=1, spe=70)),  # fmt: skip
    "seed": lambda p: AutoSGM(p, **SEED_CALL),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_CONFIGS))
def test_save_restore_resume_equals_uninterrupted(name):
    make = CHECKPOINT_CONFIGS[name]
    ref = make_net()
    ref_opt = make(two_groups(ref, lr=5e-3))
    train(ref, ref_opt, 100)

    net = make_net()
    opt = make(two_groups(net, lr=5e-3))
    train(net, opt, 50)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    net2 = make_net(seed=123)  # fresh objects, other initial values
    net2.load_state_dict(ckpt["model"])
    opt2 = make(two_groups(net2, lr=5e-3))
    opt2.load_state_dict(ckpt["opt"])
    train(net2, opt2, 50, start=50)
    assert max_rel_diff(net2, ref) == 0.0
    for p, q in zip(net2.parameters(), ref.parameters()):
        for k, v in opt2.state[p].items():
            assert torch.equal(v, ref_opt.state[q][k]), k


def test_loading_other_settings_is_refused():
    net = make_net()
    opt = AutoSGM(net.parameters(), numerator="parcor-markov")
    train(net, opt, 3)
    other = AutoSGM(make_net().parameters(), numerator="unity")
    with pytest.raises(ValueError, match="numerator"):
        other.load_state_dict(opt.state_dict())


def test_loading_a_live_state_dict_shares_state_as_torch_does_and_deepcopy_does_not():
    net, twin = make_net(), make_net()
    opt = AutoSGM(net.parameters(), numerator="parcor-markov")
    train(net, opt, 3)
    shared = AutoSGM(twin.parameters(), numerator="parcor-markov")
    shared.load_state_dict(opt.state_dict())  # (documented in the README: torch.optim does the same)
    copied = AutoSGM(twin.parameters(), numerator="parcor-markov")
    copied.load_state_dict(copy.deepcopy(opt.state_dict()))
    p, q = next(net.parameters()), next(twin.parameters())
    assert shared.state[q]["moment"].data_ptr() == opt.state[p]["moment"].data_ptr()
    before = copied.state[q]["moment"].clone()
    train(net, opt, 1)
    assert torch.equal(copied.state[q]["moment"], before)


def test_old_state_dict_without_new_settings_loads():
    net = make_net()
    opt = AutoSGM(net.parameters())
    train(net, opt, 3)
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        del g["nonfinite"]  # a setting added after the checkpoint was written
    fresh = AutoSGM(make_net().parameters())
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["nonfinite"] == "proceed"
    train(net, fresh, 1)


def test_deepcopy_and_repr():
    net = make_net()
    opt = AutoSGM(net.parameters(), numerator="corr", window=Window(shape="polynomial", order=1, spe=10))
    train(net, opt, 5)
    twin_net, twin = copy.deepcopy((net, opt))  # one memo: the copy steps the copied parameters
    assert twin.state_dict()["state"][0]["moment"].data_ptr() != opt.state_dict()["state"][0]["moment"].data_ptr()
    text = repr(opt)
    for needle in ("AutoSGM", "numerator: corr", "betas: (0.9, 0.999)", "polynomial"):
        assert needle in text
    assert all(q in twin.state for q in twin_net.parameters())
    train(twin_net, twin, 5, start=5)
    train(net, opt, 5, start=5)
    assert max_rel_diff(twin_net, net) == 0.0


# ------------------------------------------------------------------------------------------------
# torch.optim behaviours
# ------------------------------------------------------------------------------------------------
def test_closure_is_called_and_its_loss_returned():
    net = make_net()
    opt = AutoSGM(net.parameters())
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = loss_fn(net, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [1] and torch.is_tensor(loss) and loss.item() > 0


@pytest.mark.parametrize("decoupled", [False, True])
def test_maximize_equals_minimizing_the_negated_loss(decoupled):
    a, b = make_net(), make_net()
    oa = AutoSGM(a.parameters(), lr=1e-2, gamma=0.3, numerator="parcor-markov", maximize=True,
                 weight_decay=1e-2, decoupled_weight_decay=decoupled)  # fmt: skip
    ob = AutoSGM(b.parameters(), lr=1e-2, gamma=0.3, numerator="parcor-markov",
                 weight_decay=1e-2, decoupled_weight_decay=decoupled)  # fmt: skip
    for k in range(30):
        oa.zero_grad(), ob.zero_grad()
        (-loss_fn(a, k)).backward()  # maximize −L ...
        loss_fn(b, k).backward()  # ... = minimize L
        oa.step(), ob.step()
    assert max_rel_diff(a, b) == 0.0


def test_maximize_ascends():
    net = make_net()
    opt = AutoSGM.heavy_ball(net.parameters(), lr=1e-2, maximize=True)
    losses = train(net, opt, 30)
    assert losses[-1] > losses[0]


def test_parameters_without_grad_are_skipped():
    net = make_net()
    frozen = net[0].weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    opt = AutoSGM(net.parameters(), numerator="parcor-bounded")
    train(net, opt, 5)
    assert torch.equal(frozen, before) and len(opt.state[frozen]) == 0


def test_complex_parameters_equal_their_real_view():
    torch.manual_seed(0)
    z = nn.Parameter(torch.randn(4, 3, dtype=torch.complex128))
    r = nn.Parameter(torch.view_as_real(z.detach().clone()))
    target = torch.randn(4, 3, dtype=torch.complex128)
    oz = AutoSGM([z], lr=1e-2, numerator="parcor-maxbound", weight_decay=1e-3)
    orr = AutoSGM([r], lr=1e-2, numerator="parcor-maxbound", weight_decay=1e-3)
    for _ in range(20):
        oz.zero_grad(), orr.zero_grad()
        ((z - target).abs() ** 2).sum().backward()
        ((torch.view_as_complex(r) - target).abs() ** 2).sum().backward()
        oz.step(), orr.step()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())


def test_tensor_lr_equals_float_lr():
    a, b = make_net(), make_net()
    train(a, AutoSGM(a.parameters(), lr=torch.tensor(1e-2, dtype=torch.float64)), 20)
    train(b, AutoSGM(b.parameters(), lr=1e-2), 20)
    assert max_rel_diff(a, b) == 0.0


def test_each_group_uses_its_own_settings():
    net = make_net()
    opt = AutoSGM(two_groups(net, numerator="corr", betas=(0.0, 0.99), eta=1.0, lr=0.0))
    last_before = [p.clone() for p in net[-1].parameters()]
    train(net, opt, 5)
    first, last = net[0].weight, net[-1].weight
    assert "num_c" not in opt.state[first] and "filter_state" in opt.state[first]
    assert "num_c" in opt.state[last] and "filter_state" not in opt.state[last]
    assert all(torch.equal(p, q) for p, q in zip(net[-1].parameters(), last_before))  # lr = 0


def test_zero_lr_changes_nothing():
    net = make_net()
    before = copy.deepcopy(net)
    train(net, AutoSGM(net.parameters(), lr=0.0, numerator="parcor-chebyshev"), 10)
    assert max_rel_diff(net, before) == 0.0


def test_window_scales_the_step():
    spe = 40
    w = Window(shape="cosine", tau=1, spe=spe)
    a, b = make_net(), make_net()
    oa = AutoSGM.heavy_ball(a.parameters(), lr=1e-2, window=w)
    ob = AutoSGM.heavy_ball(b.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(ob, lambda k: w(k + 1))
    for k in range(2 * spe):
        for net, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            loss_fn(net, k).backward()
            opt.step()
        sched.step()
        assert oa.last_window_values == [w(k + 1)]
    assert max_rel_diff(a, b) <= 1e-12


# ------------------------------------------------------------------------------------------------
# non-finite gradients
# ------------------------------------------------------------------------------------------------
def _poison(net):
    loss_fn(net, 0).backward()
    net[0].weight.grad[0, 0] = float("nan")


def test_nonfinite_raise():
    net = make_net()
    opt = AutoSGM(net.parameters(), nonfinite="raise")
    _poison(net)
    with pytest.raises(FloatingPointError):
        opt.step()


def test_nonfinite_skip_leaves_params_and_state_untouched():
    net = make_net()
    opt = AutoSGM(net.parameters(), nonfinite="skip")
    train(net, opt, 3)
    params = copy.deepcopy(net)
    state = copy.deepcopy(opt.state_dict()["state"])
    opt.zero_grad()
    _poison(net)
    opt.step()
    assert max_rel_diff(net, params) == 0.0 and opt.skipped_steps == [1]
    for k, st in opt.state_dict()["state"].items():
        assert all(torch.equal(v, state[k][n]) for n, v in st.items())


def test_nonfinite_proceed_propagates():
    net = make_net()
    opt = AutoSGM(net.parameters())
    _poison(net)
    opt.step()
    assert torch.isnan(net[0].weight).any()


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def _params():
    return [nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
        (dict(betas=(-0.1, 0.999)), ValueError, r"betas\[0\]"),
        (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
        (dict(betas=(0.9,)), ValueError, "betas"),
        (dict(betas=0.9), TypeError, "betas"),
        (dict(gamma=0.95), ValueError, "gamma"),
        (dict(gamma="0"), TypeError, "gamma"),
        (dict(beta_n=1.0), ValueError, "beta_n"),
        (dict(eta=0.0), ValueError, "eta"),
        (dict(lr=-1e-3), ValueError, "lr"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=-1e-8), ValueError, "eps"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay"),
        (dict(numerator="parcor"), ValueError, "numerator"),
        (dict(numerator=7), ValueError, "numerator"),
        (dict(numerator=1.0), TypeError, "numerator"),
        (dict(numerator_mode="row"), ValueError, "numerator_mode"),
        (dict(normalize=False, numerator="corr"), ValueError, "normalize"),
        (dict(debias=1), TypeError, "debias"),
        (dict(maximize="yes"), TypeError, "maximize"),
        (dict(window="cosine"), TypeError, "window"),
        (dict(nonfinite="ignore"), ValueError, "nonfinite"),
        (dict(lr_cfg=(True, 1e-3)), ValueError, "lr_cfg"),
        (dict(lr_cfg=[1, 1e-3, 0]), TypeError, "aoptlr"),
        (dict(lr_cfg=(True, 1e-3, 9)), ValueError, "num_lrc"),
        (dict(lr_cfg=(True, 1e-3, 1.0)), TypeError, "num_lrc"),
        (dict(lr_cfg=(False, 1e-3, 2)), ValueError, "num_lrc"),
        (dict(lr_cfg="fast"), TypeError, "lr_cfg"),
        (dict(beta_cfg=(0.9999, 0.999, 0.9, 0.0, 0)), ValueError, "beta_cfg"),
        (dict(beta_cfg=(0.9999, 0.999, 0.9, 0.95, 0, True)), ValueError, "gamma"),
        (dict(beta_cfg=(0.9999, 1.5, 0.9, 0.0, 0, True)), ValueError, "beta_a"),
        (dict(beta_cfg=(0.9999, 0.999, 0.9, 0.0, -1, True)), ValueError, "eta_i"),
        (dict(rc_cfg=(1, 0, 0, 2, 1, 1, 1000, 1)), ValueError, "rc_cfg"),
        (dict(rc_cfg=(1, 0, 0, 2, 1, 1, 1, 1, 0)), ValueError, "tau"),
        (dict(wd_cfg=(0.1, 2)), ValueError, "wd_lvl"),
        (dict(wd_cfg=(0.1,)), ValueError, "wd_cfg"),
        (dict(eps_cfg=(0.0,)), ValueError, "eps"),
        (dict(eps_cfg=(1e-8, True, 3)), ValueError, "eps_cfg"),
        (dict(eps_cfg=(1e-8, 1)), TypeError, "repeat_eps"),
        (dict(lr=1e-2, lr_cfg=(True, 1e-3, 0)), ValueError, "lr_cfg"),
        (dict(betas=(0.9, 0.99), beta_cfg=(0.9999, 0.999, 0.9, 0.0, 0, True)), ValueError, "beta_cfg"),
        (dict(weight_decay=0.1, wd_cfg=(0.1, 0)), ValueError, "wd_cfg"),
        (dict(window=None, rc_cfg=(0, 0, 0, 2, 1, 1, 1000, 1, 0)), ValueError, "rc_cfg"),
    ],
)
def test_bad_input_is_refused_by_name(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        AutoSGM(_params(), **kwargs)


def test_gamma_equal_beta_is_a_pure_gain():
    AutoSGM(_params(), betas=(0.5, 0.999), gamma=0.5)
    AutoSGM.sgd(_params(), lr=0.1)  # β = γ = 0


def test_bad_group_settings_are_refused():
    with pytest.raises(TypeError, match="momentum"):
        AutoSGM([{"params": _params(), "momentum": 0.9}])
    with pytest.raises(ValueError, match="gamma"):
        AutoSGM([{"params": _params()}, {"params": _params(), "gamma": 0.99}])


def test_changed_group_setting_is_validated_at_the_next_step():
    net = make_net()
    opt = AutoSGM(net.parameters())
    opt.param_groups[0]["betas"] = (1.2, 0.999)
    loss_fn(net, 0).backward()
    with pytest.raises(ValueError, match="betas"):
        opt.step()


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = AutoSGM(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()


def test_defaults_are_documented_in_the_signature():
    import inspect

    sig = inspect.signature(AutoSGM.__init__)
    assert repr(sig.parameters["lr"].default) == "0.001"
    assert repr(sig.parameters["betas"].default) == "(0.9, 0.999)"
    assert not math.isnan(AutoSGM(_params()).param_groups[0]["eps"])
