"""The partial-correlation numerators and zero-initialised tensors (spec §4, docs/zero-tensors.md).

With ``c = 0`` a tensor whose weights are all zero has ``x = w · v̄ = 0``, so ``a = 0`` and it would
never move. Such a tensor starts its accumulator at ``c₀ = zero_tensor_start``; every other tensor
starts at 0 and steps exactly by the spec's formulas. Both are checked against the independent
transcription of the spec in :mod:`spec_reference`, on every path.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from autosgm import AutoSGM
from autosgm.config import ZERO_TENSOR_START
from helpers import against_spec_reference
from spec_reference import ZERO_TENSOR_C0

PARCOR = ("parcor-bounded", "parcor-maxbound", "parcor-markov", "parcor-chebyshev")
MODES = ("tensor", "element")
PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
#: The fused path compiles a program per configuration: two of them in the default run, all with ``-m slow``.
FUSED_DEFAULT = {("parcor-markov", "tensor"), ("parcor-chebyshev", "element")}


def _grid() -> list:
    out = []
    for numerator in PARCOR:
        for mode in MODES:
            for path in PATHS:
                slow = path == "fused" and (numerator, mode) not in FUSED_DEFAULT
                out.append(pytest.param(numerator, mode, path, marks=[pytest.mark.slow] if slow else []))
    return out


GRID = _grid()


def test_the_reference_and_the_package_share_the_constant_by_value_only():
    assert ZERO_TENSOR_C0 == ZERO_TENSOR_START


@pytest.mark.parametrize("numerator, mode, path", GRID)
def test_a_zero_initialised_tensor_moves_at_once_and_converges(numerator, mode, path):
    """The new user's case: ``w = 0`` on ``((w − 1)²).sum()`` used to stay at 0 for ever."""
    w = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = AutoSGM([w], lr=0.1, numerator=numerator, numerator_mode=mode, **PATHS[path])
    for k in range(400):
        opt.zero_grad()
        ((w - 1.0) ** 2).sum().backward()
        opt.step()
        if k == 0:
            assert bool((w != 0).all()), "the first step must move every weight"
    assert torch.allclose(w.detach(), torch.ones(4, dtype=torch.float64), atol=1e-3), w


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("numerator", PARCOR)
def test_without_the_remedy_a_zero_tensor_is_frozen(numerator, mode):
    """``zero_tensor_start=0`` is the spec's literal absorbing state (kept as an option)."""
    w = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = AutoSGM([w], lr=0.1, numerator=numerator, numerator_mode=mode, zero_tensor_start=0.0)
    for _ in range(20):
        opt.zero_grad()
        ((w - 1.0) ** 2).sum().backward()
        opt.step()
    assert not bool(w.any())


@pytest.mark.parametrize("numerator", ["unity", "corr"])
def test_other_numerators_keep_their_state_as_it_was(numerator):
    """``unity`` has no accumulator, ``corr``'s is E[ḡ²]: neither is started at c₀."""
    w = torch.zeros(3, requires_grad=True)
    opt = AutoSGM([w], lr=0.1, numerator=numerator)
    ((w - 1.0) ** 2).sum().backward()
    opt.step()
    if numerator == "corr":
        assert opt.state[w]["num_c"].max().item() < 1e-3  # (1 − β_n) ḡ², not c₀
    assert bool(w.any())


# ------------------------------------------------------------------------------------------------
# against the independent transcription of the spec, float64
# ------------------------------------------------------------------------------------------------
def _tensors(zero: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ws = [torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in [(5, 3), (7,), (1,), (4, 2, 2)]]
    if zero:
        ws[1].zero_()  # a bias initialised at zero
        ws[2].zero_()
    return ws


def _grads(k: int, ws: list[torch.Tensor]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + k)
    return [0.5 * w - 0.2 + 0.3 * torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in ws]


def _trajectory(ws, kwargs: dict, reference: dict, steps: int = 25) -> float:
    return against_spec_reference(ws, kwargs, reference, steps, _grads)[0]


@pytest.mark.parametrize("numerator, mode, path", GRID)
def test_random_init_steps_exactly_as_the_spec_and_as_before(numerator, mode, path):
    """A tensor with non-zero weights: the spec's §4 with c starting at 0, to 1e-12 in float64 —
    the default equals the remedy switched off (the previous behaviour), bit for bit."""
    common = dict(lr=0.05, numerator=numerator, numerator_mode=mode, beta_n=0.99, weight_decay=0.01)
    spec = dict(common, decoupled=True)
    pkg = dict(common, decoupled_weight_decay=True, **PATHS[path])
    assert _trajectory(_tensors(False), pkg, spec) <= 1e-12
    torch.manual_seed(0)
    a = [nn.Parameter(w) for w in _tensors(False)]
    b = [nn.Parameter(w) for w in _tensors(False)]
    opt_a, opt_b = AutoSGM(a, **pkg), AutoSGM(b, **pkg, zero_tensor_start=0.0)
    for k in range(10):
        for p, q in zip(a, b):
            p.grad = torch.sin(p.detach() * (k + 1))
            q.grad = torch.sin(q.detach() * (k + 1))
        opt_a.step()
        opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("numerator, mode, path", GRID)
def test_zero_tensors_follow_the_reference_remedy(numerator, mode, path):
    """Zero tensors among random ones: the remedy is the reference's c₀ start, on every path."""
    common = dict(lr=0.05, numerator=numerator, numerator_mode=mode, beta_n=0.99)
    assert _trajectory(_tensors(True), dict(common, **PATHS[path]), common) <= 1e-12
    off = _trajectory(_tensors(True), dict(common, zero_tensor_start=0.0, **PATHS[path]),
                      dict(common, zero_tensor_c0=0.0))  # fmt: skip
    assert off <= 1e-12


# ------------------------------------------------------------------------------------------------
# a real model with zero-initialised biases and LayerNorm shifts
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["single", "foreach"])
@pytest.mark.parametrize("numerator", ["parcor-markov", "parcor-bounded"])
def test_a_gpt_with_biases_trains_every_tensor(numerator, path):
    from autosgm.experiments.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=True))
    zero = [n for n, p in model.named_parameters() if not bool(p.any())]
    assert any(n.endswith("bias") for n in zero), "the model must have zero-initialised tensors"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = AutoSGM(model.parameters(), lr=0.1, numerator=numerator, **PATHS[path])
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        idx = torch.randint(0, 11, (4, 8), generator=gen)
        _, loss = model(idx, idx.roll(-1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    frozen = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert frozen == []


def test_a_resumed_run_with_zero_tensors_equals_the_uninterrupted_one():
    def make():
        ws = [nn.Parameter(w) for w in _tensors(True)]
        return ws, AutoSGM(ws, lr=0.05, numerator="parcor-markov")

    def grads(ws, k):
        for p in ws:
            p.grad = torch.cos(p.detach() * (k + 2)) - 0.3

    a, opt_a = make()
    for k in range(12):
        grads(a, k)
        opt_a.step()
    b, opt_b = make()
    for k in range(5):
        grads(b, k)
        opt_b.step()
    buf = io.BytesIO()
    torch.save({"p": [p.detach() for p in b], "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    c, opt_c = make()
    with torch.no_grad():
        for p, s in zip(c, saved["p"]):
            p.copy_(s)
    opt_c.load_state_dict(saved["opt"])
    for k in range(5, 12):
        grads(c, k)
        opt_c.step()
    assert all(torch.equal(p, q) for p, q in zip(a, c))


# ------------------------------------------------------------------------------------------------
# the setting
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, exc", [(-1e-3, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                                        ("0.01", TypeError), (True, TypeError)])  # fmt: skip
def test_bad_zero_tensor_start_is_refused_by_name(value, exc):
    with pytest.raises(exc, match="zero_tensor_start"):
        AutoSGM([nn.Parameter(torch.zeros(2))], numerator="parcor-markov", zero_tensor_start=value)


def test_zero_tensor_start_is_a_param_group_setting_saved_with_the_state():
    w, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    opt = AutoSGM([{"params": [w]}, {"params": [b], "zero_tensor_start": 0.05}], lr=0.1, numerator="parcor-markov")
    for p in (w, b):
        p.grad = torch.ones(3)
    opt.step()
    assert opt.state[w]["num_c"][0].item() == pytest.approx(0.9999 * ZERO_TENSOR_START, rel=1e-6)
    assert opt.state[b]["num_c"][0].item() == pytest.approx(0.9999 * 0.05, rel=1e-6)
    sd = copy.deepcopy(opt.state_dict())
    assert sd["param_groups"][1]["zero_tensor_start"] == 0.05
    again = AutoSGM([{"params": [w]}, {"params": [b], "zero_tensor_start": 0.05}], lr=0.1, numerator="parcor-markov")
    again.load_state_dict(sd)
    assert again.param_groups[1]["zero_tensor_start"] == 0.05
    other = AutoSGM([{"params": [w]}, {"params": [b]}], lr=0.1, numerator="parcor-markov")
    with pytest.raises(ValueError, match="zero_tensor_start"):
        other.load_state_dict(sd)


def test_a_checkpoint_from_before_the_setting_loads_and_continues_exactly():
    w = nn.Parameter(torch.zeros(3))
    opt = AutoSGM([w], lr=0.1, numerator="parcor-markov", zero_tensor_start=0.0)
    w.grad = torch.ones(3)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    del sd["param_groups"][0]["zero_tensor_start"]
    fresh = AutoSGM([w], lr=0.1, numerator="parcor-markov")
    fresh.load_state_dict(sd)  # the saved state (c = 0) is kept: the checkpoint's run goes on as it was
    assert torch.equal(fresh.state[w]["num_c"], opt.state[w]["num_c"])


# ------------------------------------------------------------------------------------------------
# the experiment runner says which tensors a run never moved
# ------------------------------------------------------------------------------------------------
def test_the_runner_records_the_tensors_a_run_never_moved(monkeypatch, capsys):
    from autosgm.cli import _warn_unchanged
    from autosgm.experiments import OptimizerConfig, make_task, run
    from autosgm.experiments.report import unchanged_warnings

    task = make_task("digits", preset="tiny", overrides={"steps": 6, "eval_every": 3, "hidden": 16})
    make_model = task.make_model

    def with_a_zero_bias():
        model = make_model()
        nn.init.zeros_(model[0].bias)
        return model

    monkeypatch.setattr(task, "make_model", with_a_zero_bias)
    trap = run(task, OptimizerConfig.autosgm(0.1, "parcor-markov", zero_tensor_start=0.0), 0, progress=False)
    fixed = run(task, OptimizerConfig.autosgm(0.1, "parcor-markov"), 0, progress=False)
    assert trap["unchanged_tensors"] == ["0.bias"] and trap["trainable_tensors"] == 4
    assert fixed["unchanged_tensors"] == []
    assert trap["key"] != fixed["key"]  # c₀ is part of a parcor configuration's key
    lines = unchanged_warnings([trap, fixed])
    assert len(lines) == 1 and "1 of 4 trainable tensors never moved (0.bias)" in lines[0]
    _warn_unchanged([trap, fixed])
    assert capsys.readouterr().out.startswith("warning: AutoSGM parcor-markov")
    assert unchanged_warnings([{"seed": 0}]) == []  # a line from before the field existed


def test_zero_tensor_start_is_only_in_the_keys_of_parcor_configurations():
    from autosgm.experiments import OptimizerConfig

    assert "zero_tensor_start" in OptimizerConfig.autosgm(0.1, "parcor-bounded").key()
    assert "zero_tensor_start" not in OptimizerConfig.autosgm(1e-3, "unity").key()
    assert "zero_tensor_start" not in OptimizerConfig.torch_adamw(1e-3).key()
    with pytest.raises(ValueError, match="zero_tensor_start"):
        OptimizerConfig.autosgm(0.1, "parcor-markov", zero_tensor_start=-1.0)
