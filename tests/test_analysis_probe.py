"""Trajectory probe: recorded AutoSGM trajectories satisfy the LTV recursion of spec §7."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
import torch

from autosgm import AutoSGM, Window
from autosgm.analysis.probe import (
    QUANTITIES,
    STATISTICS,
    SUMMARY_KEYS,
    TrajectoryProbe,
    ltv_residual,
    trace_figure,
)
from helpers import make_net, train

STEPS = 40
TOL = 1e-9


def _adam(params, **kw):
    return AutoSGM.adam(params, lr=1e-2, **kw)


CASES = {
    "heavy_ball": lambda ps: AutoSGM.heavy_ball(ps, lr=2e-2, momentum=0.9),
    "nesterov": lambda ps: AutoSGM.nesterov(ps, lr=2e-2, momentum=0.9),
    "adam": lambda ps: _adam(ps),
    "parcor_tensor": lambda ps: _adam(ps, numerator="parcor-markov", numerator_mode="tensor"),
    "parcor_element": lambda ps: _adam(ps, numerator="parcor-markov", numerator_mode="element"),
    "window": lambda ps: _adam(ps, window=Window(shape="cosine", tau=1, spe=100)),
    "coupled_wd": lambda ps: _adam(ps, weight_decay=0.1),
    "decoupled_wd": lambda ps: _adam(ps, weight_decay=0.1, decoupled_weight_decay=True),
    "heavy_ball_decoupled_wd": lambda ps: AutoSGM.heavy_ball(
        ps, lr=2e-2, momentum=0.9, weight_decay=0.1, decoupled_weight_decay=True
    ),
    "nesterov_coupled_wd": lambda ps: AutoSGM.nesterov(ps, lr=2e-2, momentum=0.9, weight_decay=0.1),
    "maximize": lambda ps: _adam(ps, maximize=True, weight_decay=0.05),
    "filter_gamma_eta": lambda ps: AutoSGM(ps, lr=1e-2, betas=(0.8, 0.99), gamma=0.3, eta=0.5),
}


def _probed_run(make, steps: int = STEPS, **probe_kw):
    net = make_net(seed=1)
    opt = make(net.parameters())
    with TrajectoryProbe(opt, named_params=dict(net.named_parameters()), **probe_kw) as probe:
        train(net, opt, steps)
    return net, opt, probe


@pytest.mark.parametrize("case", list(CASES))
def test_recorded_trajectory_satisfies_ltv_recursion(case):
    _, _, probe = _probed_run(CASES[case])
    result = probe.check_ltv()
    n_tensors = len(probe.names)
    assert result.steps == STEPS * n_tensors
    assert result.unchecked == 0 and result.skipped == 0
    assert result.worst <= TOL, result
    assert ltv_residual(probe) == result.worst
    assert set(result.per_param) == set(probe.names)


def test_negative_control_tampered_update_is_detected():
    net = make_net(seed=1)
    opt = AutoSGM.adam(net.parameters(), lr=1e-2)

    def tamper(optimizer, record):
        if record.step == 7 and record.param is net[0].weight:
            record.update.mul_(1.0 + 1e-4)  # a relative change of 1e-4 in one step of one tensor

    opt.register_trajectory_hook(tamper)  # runs before the probe: the probe sees the tampered update
    with TrajectoryProbe(opt, named_params=dict(net.named_parameters())) as probe:
        train(net, opt, 12)
    result = probe.check_ltv()
    assert result.worst > 1e-5
    assert (result.param, result.step) in {("0.weight", 7), ("0.weight", 8)}
    assert result.per_param["2.weight"][0] <= TOL  # the untouched tensors still pass


@pytest.mark.parametrize("wrong", ["beta", "gamma", "eta", "weight_decay"])
def test_negative_control_wrong_constants_are_detected(wrong):
    net = make_net(seed=1)
    opt = AutoSGM(net.parameters(), lr=1e-2, betas=(0.9, 0.999), gamma=0.2, weight_decay=0.1)
    probe = TrajectoryProbe(opt)
    cfg = opt.group_config(0)
    bad = dataclasses.replace(cfg, **{wrong: getattr(cfg, wrong) * 0.9})
    opt.register_trajectory_hook(lambda o, rec: probe(o, rec._replace(config=bad)))
    train(net, opt, 10)
    assert probe.check_ltv().worst > 1e-4


def test_probe_is_off_by_default_and_detach_removes_hook():
    net = make_net()
    opt = AutoSGM.adam(net.parameters())
    assert len(opt._trajectory_hooks) == 0
    probe = TrajectoryProbe(opt)
    assert not probe.attached and len(opt._trajectory_hooks) == 0
    probe.attach()
    assert probe.attached and len(opt._trajectory_hooks) == 1
    with pytest.raises(RuntimeError):
        probe.attach()
    train(net, opt, 2)
    probe.detach()
    assert not probe.attached and len(opt._trajectory_hooks) == 0
    n = len(probe.records())
    train(net, opt, 2)
    assert len(probe.records()) == n == 2 * len(probe.names)
    with TrajectoryProbe(opt) as p2:
        assert len(opt._trajectory_hooks) == 1
    assert len(opt._trajectory_hooks) == 0 and not p2.attached


def test_summary_keys_and_values_match_full_tensors():
    _, opt, probe = _probed_run(lambda ps: AutoSGM.adam(ps, lr=1e-2), steps=5, full=["2.bias", "0.weight"])
    rows = probe.records()
    assert len(rows) == 5 * len(probe.names)
    assert all(tuple(row) == SUMMARY_KEYS for row in rows)
    assert {f"{q}_{s}" for q in QUANTITIES for s in STATISTICS} <= set(SUMMARY_KEYS)
    assert [r["param"] for r in rows[:6]] == [n for n, _ in make_net().named_parameters()]

    full = probe.tensors("2.bias")
    assert full["alpha"].shape == (5, 12) and full["step"].tolist() == [1, 2, 3, 4, 5]
    assert full["alpha"].device.type == "cpu"
    beta = opt.group_config(0).beta
    for k, row in enumerate(r for r in rows if r["param"] == "2.bias"):
        for q in QUANTITIES:
            x = full[q][k]
            assert row[f"{q}_sup"] == pytest.approx(x.abs().max().item(), rel=1e-12, abs=0)
            assert row[f"{q}_mean"] == pytest.approx(x.mean().item(), rel=1e-12, abs=1e-300)
            assert row[f"{q}_sd"] == pytest.approx(x.std().item(), rel=1e-12, abs=1e-300)
        assert torch.equal(full["margin"][k], (beta * full["r"][k]).abs())
        assert row["step"] == k + 1 and row["numel"] == 12
    # r[1] = 0 (zero initial conditions), then r = α[t]/α[t−1] elementwise
    assert torch.equal(full["r"][0], torch.zeros(12, dtype=torch.float64))
    torch.testing.assert_close(full["r"][1:], full["alpha"][1:] / full["alpha"][:-1], rtol=1e-14, atol=0)
    torch.testing.assert_close(full["dw_pred"], full["dw"], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="full="):
        probe.tensors("0.bias")


def test_full_tensors_are_the_true_updates():
    net = make_net(seed=3)
    opt = AutoSGM.heavy_ball(net.parameters(), lr=1e-2, momentum=0.5)
    w0 = net[4].weight.detach().clone()
    with TrajectoryProbe(opt, full=[net[4].weight], summary=False) as probe:
        train(net, opt, 6)
    assert probe.records() == []
    dw = probe.tensors(net[4].weight)["dw"]
    torch.testing.assert_close(w0 + dw.sum(0), net[4].weight.detach(), rtol=0, atol=1e-14)
    # heavy ball: α = μ everywhere, r = 1 after the first step
    full = probe.tensors("param4")
    assert torch.all(full["alpha"] == 1e-2)
    assert torch.all(full["r"][1:] == 1.0) and torch.all(full["margin"][1:] == 0.5)


def test_csv_round_trip(tmp_path):
    _, _, probe = _probed_run(lambda ps: AutoSGM.adam(ps, lr=1e-2), steps=3)
    path = probe.to_csv(tmp_path / "t.csv")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == SUMMARY_KEYS
        back = list(reader)
    rows = probe.records()
    assert len(back) == len(rows)
    for a, b in zip(rows, back):
        assert int(b["step"]) == a["step"] and b["param"] == a["param"]
        for key in SUMMARY_KEYS[3:]:
            x, y = float(b[key]), float(a[key])
            assert x == y or (math.isnan(x) and math.isnan(y))


def test_to_pandas():
    pd = pytest.importorskip("pandas")
    _, _, probe = _probed_run(lambda ps: AutoSGM.adam(ps, lr=1e-2), steps=3)
    df = probe.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert tuple(df.columns) == SUMMARY_KEYS and len(df) == 3 * 6
    assert df["ltv_residual"].max() <= TOL


def test_default_names_param_groups_and_complex():
    torch.manual_seed(0)
    a = torch.randn(4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    b = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    opt = AutoSGM.adam([{"params": [a, z]}, {"params": [b], "lr": 3e-3, "betas": (0.5, 0.99)}], lr=1e-2)
    with TrajectoryProbe(opt, full=[z]) as probe:
        for _ in range(8):
            opt.zero_grad()
            loss = (a.sin().sum() + (z.abs() ** 3).sum() + (b @ b).trace()) ** 2
            loss.backward()
            opt.step()
    assert probe.names == ("param0", "param1", "param2")
    assert {r["param"] for r in probe.records()} == set(probe.names)
    assert probe.tensors("param1")["dw"].shape == (8, 3, 2)  # the real view of the complex tensor
    assert ltv_residual(probe) <= TOL


def test_bad_arguments():
    net = make_net()
    opt = AutoSGM.adam(net.parameters())
    with pytest.raises(TypeError, match="optimizer"):
        TrajectoryProbe(torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="unknown parameter name"):
        TrajectoryProbe(opt, full=["nope"])
    with pytest.raises(ValueError, match="not a parameter"):
        TrajectoryProbe(opt, full=[torch.zeros(3)])
    with pytest.raises(TypeError, match="full"):
        TrajectoryProbe(opt, full=[3])
    with pytest.raises(TypeError, match="summary"):
        TrajectoryProbe(opt, summary=1)
    with pytest.raises(TypeError, match="named_params"):
        TrajectoryProbe(opt, named_params=[("a", torch.zeros(1))])
    with pytest.raises(ValueError, match="no step"):
        ltv_residual(TrajectoryProbe(opt))
    with pytest.raises(ValueError, match="no summary records"):
        trace_figure(TrajectoryProbe(opt), "unused.png")


def test_window_through_zero_is_counted_not_checked():
    # a full window with floor 0 has F(1) = 0: α[1] = 0, so Δ[3] is not determined by Δ[2] = 0
    net = make_net(seed=4)
    opt = AutoSGM.adam(net.parameters(), lr=1e-2, window=Window(shape="cosine", full=True, tau=1, spe=20))
    with TrajectoryProbe(opt) as probe:
        train(net, opt, 8)
    result = probe.check_ltv()
    assert result.unchecked == sum(p.numel() for p in net.parameters())  # every coordinate at t = 2
    assert result.worst <= TOL
    rows = [r for r in probe.records() if r["step"] == 2]
    assert all(r["r_sup"] == 0.0 and r["unchecked"] == r["numel"] for r in rows)


def test_resumed_run_skips_only_the_first_unseen_step():
    net = make_net(seed=5)
    opt = AutoSGM.adam(net.parameters(), lr=1e-2)
    train(net, opt, 3)  # not probed
    with TrajectoryProbe(opt) as probe:
        train(net, opt, 4, start=3)
    result = probe.check_ltv()
    assert result.skipped == len(probe.names) and result.steps == 3 * len(probe.names)
    assert result.worst <= TOL
    first = [r for r in probe.records() if r["step"] == 4]
    assert len(first) == len(probe.names)
    for r in first:
        assert math.isnan(r["r_mean"]) and math.isnan(r["e_sup"]) and math.isnan(r["ltv_residual"])
    assert all(r["step"] == 4 or r["ltv_residual"] <= TOL for r in probe.records())


def test_trace_figure_and_main(tmp_path):
    _, _, probe = _probed_run(lambda ps: AutoSGM.adam(ps, lr=1e-2), steps=10)
    out = trace_figure(probe, tmp_path / "f.png", params=["0.weight", "4.bias"])
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="no records"):
        trace_figure(probe, tmp_path / "g.png", params=["x"])

    from autosgm.analysis.probe import main

    assert main([str(tmp_path / "demo"), "--steps", "30"]) == 0
    assert (tmp_path / "demo" / "traces.png").stat().st_size > 1000
    with open(tmp_path / "demo" / "trajectory.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 30 * 6
