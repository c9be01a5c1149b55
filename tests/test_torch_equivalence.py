"""Step-for-step equality with torch.optim (spec §2 table), through both APIs, in float64."""

from __future__ import annotations

import pytest
import torch

from autosgm import AutoSGM

from helpers import make_net, max_rel_diff, train, two_groups, loss_fn

STEPS = 200
TOL = 1e-12
SEED_DEFAULTS = dict(rc_cfg=(0, 0, 0, 2, 1, 1, 1000, 1, 0), eps_cfg=(1e-8,))

# name -> (torch factory, named-constructor factory, seed-tuple kwargs, second-group overrides)
CASES = {
    "sgd": (
        lambda g: torch.optim.SGD(g, lr=0.05),
        lambda g: AutoSGM.sgd(g, lr=0.05),
        dict(lr_cfg=(False, 0.05, 0), beta_cfg=(0.9999, 0.999, 0.0, 0.0, 0, False), wd_cfg=(0.0, 0)),
        {"lr": 0.02},
    ),
    "sgd-momentum": (
        lambda g: torch.optim.SGD(g, lr=0.02, momentum=0.9),
        lambda g: AutoSGM.heavy_ball(g, lr=0.02, momentum=0.9),
        dict(lr_cfg=(False, 0.02, 0), beta_cfg=(0.9999, 0.999, 0.9, 0.0, 1.0, False), wd_cfg=(0.0, 0)),
        {"lr": 0.01},
    ),
    "sgd-nesterov": (
        lambda g: torch.optim.SGD(g, lr=0.02, momentum=0.9, nesterov=True),
        lambda g: AutoSGM.nesterov(g, lr=0.02, momentum=0.9),
        dict(lr_cfg=(False, 0.02, 0), beta_cfg=(0.9999, 0.999, 0.9, 0.9 / 1.9, 1.9, False), wd_cfg=(0.0, 0)),
        {"lr": 0.01},
    ),
    "sgd-weight-decay": (
        lambda g: torch.optim.SGD(g, lr=0.05, weight_decay=1e-2),
        lambda g: AutoSGM.sgd(g, lr=0.05, weight_decay=1e-2),
        dict(lr_cfg=(False, 0.05, 0), beta_cfg=(0.9999, 0.999, 0.0, 0.0, 0, False), wd_cfg=(1e-2, 0)),
        {"lr": 0.02, "weight_decay": 0.1},
    ),
    "adam": (
        lambda g: torch.optim.Adam(g, lr=1e-2),
        lambda g: AutoSGM.adam(g, lr=1e-2),
        dict(lr_cfg=(True, 1e-2, 0), beta_cfg=(0.9999, 0.999, 0.9, 0.0, 0, True), wd_cfg=(0.0, 0)),
        {"lr": 3e-3},
    ),
    "adam-weight-decay": (
        lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=1e-2),
        lambda g: AutoSGM.adam(g, lr=1e-2, weight_decay=1e-2),
        dict(lr_cfg=(True, 1e-2, 0), beta_cfg=(0.9999, 0.999, 0.9, 0.0, 0, True), wd_cfg=(1e-2, 0)),
        {"lr": 3e-3, "weight_decay": 0.1},
    ),
    "adamw": (
        lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=1e-2),
        lambda g: AutoSGM.adamw(g, lr=1e-2, weight_decay=1e-2),
        dict(lr_cfg=(True, 1e-2, 0), beta_cfg=(0.9999, 0.999, 0.9, 0.0, 0, True), wd_cfg=(1e-2, 1)),
        {"lr": 3e-3, "weight_decay": 0.1},
    ),
    "rmsprop": (
        lambda g: torch.optim.RMSprop(g, lr=1e-3),
        lambda g: AutoSGM.rmsprop(g, lr=1e-3),
        dict(lr_cfg=(True, 1e-3, 0), beta_cfg=(0.9999, 0.99, 0.0, 0.0, 0, False), wd_cfg=(0.0, 0)),
        {"lr": 3e-4},
    ),
}


def _run_pair(make_ref, make_ours, second, foreach=False):
    ref_net, our_net = make_net(), make_net()
    ref = make_ref(two_groups(ref_net, **second))
    ours = make_ours(two_groups(our_net, **second, foreach=foreach))
    worst = 0.0
    for k in range(STEPS):
        for net, opt in ((ref_net, ref), (our_net, ours)):
            opt.zero_grad()
            loss_fn(net, k).backward()
            opt.step()
        worst = max(worst, max_rel_diff(our_net, ref_net))
    return worst, ref_net


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("api", ["named", "seed"])
def test_matches_torch_step_for_step(name, api):
    make_ref, make_named, seed_kwargs, second = CASES[name]
    if api == "named":
        make_ours = make_named
    else:
        def make_ours(g):
            return AutoSGM(g, **seed_kwargs, **SEED_DEFAULTS)
    worst, ref_net = _run_pair(make_ref, make_ours, second)
    assert worst <= TOL, f"{name}/{api}: max relative difference {worst:.3e}"
    # the run must actually have moved the parameters
    assert max_rel_diff(ref_net, make_net()) > 1e-3


@pytest.mark.parametrize("name", ["sgd-momentum", "sgd-nesterov", "adam", "adamw", "rmsprop"])
def test_multi_tensor_path_matches_torch(name):
    make_ref, make_named, _, second = CASES[name]
    worst, _ = _run_pair(make_ref, make_named, second, foreach=True)
    assert worst <= TOL


def test_default_constructor_is_adam():
    a, b = make_net(), make_net()
    train(a, torch.optim.Adam(a.parameters()), 50)
    train(b, AutoSGM(b.parameters()), 50)
    assert max_rel_diff(b, a) <= TOL


@pytest.mark.parametrize("scheduler", ["step", "cosine"])
def test_lr_scheduler_drives_mu_like_adam(scheduler):
    def sched(opt):
        if scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)

    a, b = make_net(), make_net()
    oa, ob = torch.optim.Adam(a.parameters(), lr=1e-2), AutoSGM.adam(b.parameters(), lr=1e-2)
    sa, sb = sched(oa), sched(ob)
    for k in range(60):
        for net, opt, s in ((a, oa, sa), (b, ob, sb)):
            opt.zero_grad()
            loss_fn(net, k).backward()
            opt.step()
            s.step()
        assert ob.param_groups[0]["lr"] == oa.param_groups[0]["lr"]
    assert max_rel_diff(b, a) <= TOL
