"""The matrix oracle in the optimizer (``oracle="matrix"``, spec §9).

References: ``torch.optim.Muon`` (bit for bit with its bfloat16 cast redirected to float32), and a
literal float64 computation of ``Δ = −μ F a (s (M + εI)^(−1/2) V + ρ_d w)`` from the spec's
difference equation, with the polar factor from an SVD (``M = V Vᵀ``) or the root from an
eigendecomposition (an average ``M``).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from autosgm import AutoSGM
from autosgm.design import nesterov_gamma
from autosgm.matrix import MUON_EPS, muon_lr_adjustment

# Tolerances and what was measured when they were set.
# Each is a relative 2-norm error of the weights' change w[t] − w[0], at every step of 6.
TOL_EIGH = 1e-12  # "eigh" (float64) against the literal float64 reference; measured ≤ 8.7e-15
TOL_ITER = 1e-9  # float64 Newton–Schulz / Lakić (default counts) against float64 "eigh"; measured ≤ 6.5e-15
TOL_ITER_F32 = 2e-5  # float32 Newton–Schulz / Lakić against float32 "eigh"; measured ≤ 2.0e-6
TOL_BF16_MUON = 5e-2  # torch's Muon (bfloat16 Newton–Schulz) against ours (float32), 6 steps; measured ≤ 7.6e-3


def grads_toward(target: torch.Tensor, seed: int):
    """Gradients of ½‖w − target‖² plus noise: the weights correlate with the step (the numerator)."""
    gen = torch.Generator().manual_seed(seed)

    def grad(w: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(w.shape, generator=gen, dtype=torch.float64).to(w.dtype)
        return (w - target.to(w.dtype)) + 0.3 * noise

    return grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


# ---- Muon: torch.optim.Muon step for step ------------------------------------------------------


def muon_runs(shape, mode, wd, nesterov=True, steps=6, lr=0.02, momentum=0.95):
    """torch's Muon and AutoSGM.muon from the same weights with the same gradients; both weights."""
    g = torch.Generator().manual_seed(sum(shape))
    W = nn.Parameter(torch.randn(*shape, generator=g))
    ours = nn.Parameter(W.detach().clone())
    theirs = torch.optim.Muon([W], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd, adjust_lr_fn=mode)
    opt = AutoSGM.muon([ours], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd, adjust_lr_fn=mode)
    W0 = W.detach().clone()
    for _ in range(steps):
        grad = torch.randn(*shape, generator=g)
        W.grad, ours.grad = grad.clone(), grad.clone()
        theirs.step()
        opt.step()
    return W0, W.detach(), ours.detach(), opt


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("mode", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (32, 32)])
def test_muon_is_torchs_muon_bit_for_bit(shape, mode, wd, torch_muon_in_float32):
    _, theirs, ours, opt = muon_runs(shape, mode, wd)
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=0.0)
    assert set(opt.state[opt.param_groups[0]["params"][0]]) == {"step", "filter_state"}  # no moment


@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])
def test_muon_without_nesterov_is_torchs_bit_for_bit(shape, torch_muon_in_float32):
    _, theirs, ours, _ = muon_runs(shape, "original", 0.1, nesterov=False)
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=0.0)


def test_the_muon_point_by_its_keywords_is_the_muon_constructor(torch_muon_in_float32):
    mu = 0.9
    g = torch.Generator().manual_seed(3)
    W = nn.Parameter(torch.randn(24, 12, generator=g))
    mine = nn.Parameter(W.detach().clone())
    theirs = torch.optim.Muon([W], lr=0.01, momentum=mu, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    opt = AutoSGM([mine], lr=0.01, betas=(mu, 0.999), gamma=nesterov_gamma(mu), debias=False, oracle="matrix",
                  matrix_method="muon-quintic", matrix_pole=0.0, matrix_lr_scale="match_rms_adamw",
                  weight_decay=0.05, decoupled_weight_decay=True)  # fmt: skip
    for _ in range(5):
        grad = torch.randn(24, 12, generator=g)
        W.grad, mine.grad = grad.clone(), grad.clone()
        theirs.step()
        opt.step()
    torch.testing.assert_close(mine.detach(), W.detach(), rtol=0.0, atol=0.0)


@pytest.mark.torch_muon
@pytest.mark.parametrize("mode", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])
def test_muon_matches_torchs_bfloat16_muon_to_bfloat16_accuracy(shape, mode):
    W0, theirs, ours, _ = muon_runs(shape, mode, 0.1)
    assert rel(ours - W0, theirs - W0) <= TOL_BF16_MUON


# ---- the literal float64 reference -------------------------------------------------------------


def reference_run(w0, grad, steps, *, lr, beta, gamma, debias, wd, decoupled, eps, pole, scale, numerator,
                  eta=None, beta_n=0.9999, c0=1e-2):  # fmt: skip
    """The spec's step in float64, written out: v[t] = β v[t−1] + η (g[t] − γ g[t−1]),
    V = v/S[t] as n × m (n ≤ m), M = V Vᵀ (polar factor by SVD) or its debiased average (root by
    eigh), a from C = β_n C + W Oᵀ/√m, Δ = −μ F a (s O + ρ_d w). Returns the weights after each step."""
    w = w0.clone().double()
    rows, cols = w.shape
    tall = rows > cols
    n, m = min(rows, cols), max(rows, cols)
    eta = (1 - beta) / (1 - gamma) if eta is None else eta
    v = torch.zeros_like(w)
    g_prev = torch.zeros_like(w)
    M = torch.zeros(n, n, dtype=torch.float64)
    C = (c0 if not w.any() else 0.0) * torch.eye(n, dtype=torch.float64)
    a_smooth, w2 = 0.0, 0.0
    s = 1.0 if scale is None else muon_lr_adjustment((rows, cols), scale)
    out = []
    for t in range(1, steps + 1):
        g = grad(w).double()
        if wd and not decoupled:
            g = g + wd * w
        v = beta * v + eta * (g - gamma * g_prev)
        g_prev = g
        S = eta * ((1 - beta**t) - gamma * (1 - beta ** (t - 1))) / (1 - beta) if debias else 1.0
        V = (v / S).T if tall else v / S
        W = w.T if tall else w
        if pole == 0.0:
            U, sig, Wt = torch.linalg.svd(V, full_matrices=False)
            O = (U * (sig / torch.sqrt(sig**2 + eps))) @ Wt
        else:
            M = pole * M + (1 - pole) * V @ V.T
            Mh = M / (1 - pole**t) if debias else M
            lam, Q = torch.linalg.eigh(Mh + eps * torch.eye(n, dtype=torch.float64))
            O = (Q * lam.rsqrt()) @ Q.T @ V
        a = 1.0
        if numerator != "unity":
            C = beta_n * C + W @ O.T / math.sqrt(m)
            a = (torch.linalg.matrix_norm(C) / math.sqrt(n)).item()
            if numerator == "parcor-bounded":
                a = min(a, 1.0)
            else:
                w2 = beta_n * w2 + (1 - beta_n) * (W**2).mean().item()
                a = min(a, 1.0 + w2)
            a_smooth = 0.1 * a_smooth + 0.9 * a
            a = a_smooth
        rho = wd if decoupled else 0.0
        O = O.T if tall else O
        w = w - lr * a * (s * O + rho * w)
        out.append(w)
    return out


CASES = {
    "polar, Nesterov, decoupled decay": dict(beta=0.95, gamma=nesterov_gamma(0.95), debias=False, wd=0.1,
                                             decoupled=True, eps=0.0, pole=0.0, scale="original",
                                             numerator="unity"),
    "averaged, debiased, parcor-bounded, coupled decay": dict(beta=0.9, gamma=0.3, debias=True, wd=0.01,
                                                              decoupled=False, eps=1e-3, pole=0.9,
                                                              scale="match_rms_adamw", numerator="parcor-bounded"),
    "averaged, heavy ball filter, parcor-maxbound": dict(beta=0.8, gamma=0.0, debias=False, wd=0.0,
                                                         decoupled=False, eps=0.0, pole=0.5, scale=None,
                                                         numerator="parcor-maxbound"),
    "polar with ε, debiased, parcor-markov": dict(beta=0.9, gamma=0.0, debias=True, wd=0.05, decoupled=True,
                                                  eps=1e-2, pole=0.0, scale=None, numerator="parcor-markov"),
    "averaged, a gain of its own": dict(beta=0.9, gamma=-0.5, eta=0.3, debias=True, wd=0.0, decoupled=True,
                                        eps=0.0, pole=0.99, scale="original", numerator="unity"),
}  # fmt: skip


def package_run(w0, grad, steps, method="eigh", dtype=torch.float64, **case):
    p = nn.Parameter(w0.clone().to(dtype))
    opt = AutoSGM([p], lr=0.03, betas=(case["beta"], 0.999), gamma=case["gamma"], eta=case.get("eta"),
                  debias=case["debias"],
                  weight_decay=case["wd"], decoupled_weight_decay=case["decoupled"], numerator=case["numerator"],
                  oracle="matrix", matrix_method=method, matrix_eps=case["eps"], matrix_pole=case["pole"],
                  matrix_lr_scale=case["scale"])  # fmt: skip
    out = []
    for _ in range(steps):
        p.grad = grad(p.detach())
        opt.step()
        out.append(p.detach().clone())
    return out, opt


def weights_and_target(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64),
            torch.randn(*shape, generator=g, dtype=torch.float64))  # fmt: skip


@pytest.mark.parametrize("shape", [(8, 20), (20, 8)])
@pytest.mark.parametrize("case", list(CASES))
def test_eigh_steps_are_the_literal_float64_computation(case, shape):
    w0, target = weights_and_target(shape)
    ours, _ = package_run(w0, grads_toward(target, 1), 6, **CASES[case])
    ref = reference_run(w0, grads_toward(target, 1), 6, lr=0.03, **CASES[case])
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert rel(a - w0, b - w0) <= TOL_EIGH, k


@pytest.mark.parametrize("method", ["newton-schulz", "lakic"])
@pytest.mark.parametrize("case", list(CASES))
def test_iterative_roots_agree_with_eigh_steps(case, method):
    w0, target = weights_and_target((8, 20), seed=2)
    ref, _ = package_run(w0, grads_toward(target, 3), 6, "eigh", **CASES[case])
    ours, _ = package_run(w0, grads_toward(target, 3), 6, method, **CASES[case])
    assert max(rel(a - w0, b - w0) for a, b in zip(ours, ref)) <= TOL_ITER
    w0 = w0.float()
    ref32, _ = package_run(w0, grads_toward(target, 3), 6, "eigh", dtype=torch.float32, **CASES[case])
    ours32, opt = package_run(w0, grads_toward(target, 3), 6, method, dtype=torch.float32, **CASES[case])
    assert max(rel(a - w0, b - w0) for a, b in zip(ours32, ref32)) <= TOL_ITER_F32
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert all(v.dtype == torch.float32 for k, v in state.items() if k != "step")


def test_the_averaged_m_is_kept_in_the_state_dtype_and_shape():
    w0, target = weights_and_target((20, 8))
    _, opt = package_run(w0, grads_toward(target, 1), 2, **CASES["averaged, heavy ball filter, parcor-maxbound"])
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert set(state) == {"step", "filter_state", "matrix_m", "num_c", "num_w2", "num_a"}
    assert state["matrix_m"].shape == state["num_c"].shape == (8, 8)
    assert state["num_w2"].shape == state["num_a"].shape == ()


# ---- which tensors get the matrix oracle ----------------------------------------------------------

SHAPES = {"matrix": (16, 40), "conv": (8, 3, 3, 3), "bias": (16,), "narrow": (3, 40), "wide": (2049, 4),
          "column": (16, 1)}  # fmt: skip
ELEMENT = ("bias", "narrow", "wide", "column")


def mixed_params(dtype=torch.float64):
    g = torch.Generator().manual_seed(5)
    return {k: nn.Parameter(torch.randn(*s, generator=g, dtype=dtype)) for k, s in SHAPES.items()}


SETTINGS = dict(lr=0.01, betas=(0.9, 0.99), gamma=0.2, numerator="parcor-markov", weight_decay=0.01,
                decoupled_weight_decay=True)  # fmt: skip


@pytest.mark.parametrize("path", [dict(foreach=False), dict(foreach=True)])
def test_other_tensors_of_a_matrix_group_take_the_element_wise_step_exactly(path):
    mixed, alone = mixed_params(), mixed_params()
    opt = AutoSGM(list(mixed.values()), oracle="matrix", **SETTINGS, **path)
    ref = AutoSGM([alone[k] for k in ELEMENT], oracle="element", **SETTINGS, **path)
    gen = torch.Generator().manual_seed(6)
    for _ in range(4):
        for k, p in mixed.items():
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            alone[k].grad = p.grad.clone()
        opt.step()
        ref.step()
    for k in ELEMENT:
        torch.testing.assert_close(mixed[k], alone[k], rtol=0.0, atol=0.0)
        assert "moment" in opt.state[mixed[k]]
    for k in ("matrix", "conv"):
        assert "moment" not in opt.state[mixed[k]] and not torch.equal(mixed[k], alone[k])
    assert opt.state[mixed["conv"]]["num_c"].shape == (8, 8)


def test_matrices_step_on_the_single_tensor_path_whatever_the_group_says():
    ws = {name: mixed_params() for name in ("single", "foreach")}
    opts = {name: AutoSGM(list(w.values()), oracle="matrix", foreach=name == "foreach", **SETTINGS)
            for name, w in ws.items()}  # fmt: skip
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        for k, p in ws["single"].items():
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            ws["foreach"][k].grad = p.grad.clone()
        for opt in opts.values():
            opt.step()
    for k in ("matrix", "conv"):
        torch.testing.assert_close(ws["foreach"][k], ws["single"][k], rtol=0.0, atol=0.0)


def test_trajectory_hooks_see_matrices_too():
    w = mixed_params()
    opt = AutoSGM(list(w.values()), oracle="matrix", **SETTINGS)
    seen = []
    opt.register_trajectory_hook(lambda o, r: seen.append(r))
    for p in w.values():
        p.grad = torch.ones_like(p)
    before = {k: p.detach().clone() for k, p in w.items()}
    opt.step()
    assert len(seen) == len(w)
    for r, (k, p) in zip(seen, w.items()):
        torch.testing.assert_close(r.update, p.detach() - before[k], rtol=0.0, atol=0.0)


# ---- dtypes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["newton-schulz", "muon-quintic"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matrices_step_in_float32_and_round_once(dtype, method):
    """A float32 twin whose weights are rounded to ``dtype`` after every step takes the same steps."""
    g = torch.Generator().manual_seed(9)
    low = nn.Parameter(torch.randn(16, 40, generator=g).to(dtype))
    twin = nn.Parameter(low.detach().float())
    kw = dict(lr=0.02, oracle="matrix", matrix_method=method, numerator="unity", weight_decay=0.01,
              decoupled_weight_decay=True, debias=False)  # fmt: skip
    opts = [AutoSGM([low], **kw), AutoSGM([twin], **kw)]
    for _ in range(4):
        grad = torch.randn(16, 40, generator=g).to(dtype)
        low.grad, twin.grad = grad, grad.float()
        for opt in opts:
            opt.step()
        with torch.no_grad():
            twin.copy_(twin.to(dtype).float())
    assert low.dtype == dtype
    torch.testing.assert_close(low.detach().float(), twin.detach(), rtol=0.0, atol=0.0)
    assert opts[0].state[low]["filter_state"].dtype == torch.float32


# ---- state_dict --------------------------------------------------------------------------------------


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


MATRIX_KW = dict(oracle="matrix", numerator="parcor-chebyshev", matrix_pole=0.9, matrix_eps=1e-6, **{
    k: v for k, v in SETTINGS.items() if k != "numerator"})  # fmt: skip


def _train(params, opt, start, steps):
    for k in range(start, start + steps):
        gen = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


def test_a_saved_state_resumes_as_the_uninterrupted_run():
    ref = list(mixed_params().values())
    ref_opt = AutoSGM(ref, **MATRIX_KW)
    _train(ref, ref_opt, 0, 8)
    half = list(mixed_params().values())
    opt = AutoSGM(half, **MATRIX_KW)
    _train(half, opt, 0, 4)
    sd = _roundtrip(opt.state_dict())
    fresh = [nn.Parameter(p.detach().clone()) for p in half]
    fresh_opt = AutoSGM(fresh, **MATRIX_KW)
    fresh_opt.load_state_dict(sd)
    _train(fresh, fresh_opt, 4, 4)
    for a, b in zip(fresh, ref):
        torch.testing.assert_close(a, b, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("saved, here", [("element", "matrix"), ("matrix", "element")])
def test_a_state_of_the_other_oracle_is_refused_and_nothing_changes(saved, here):
    kw = {k: v for k, v in MATRIX_KW.items() if k != "oracle"}
    params = list(mixed_params().values())
    opt = AutoSGM(params, oracle=saved, **kw)
    _train(params, opt, 0, 2)
    sd = _roundtrip(opt.state_dict())
    other = AutoSGM(list(mixed_params().values()), oracle=here, **kw)
    _train(other.param_groups[0]["params"], other, 0, 1)
    before = _roundtrip(other.state_dict())
    with pytest.raises(ValueError, match="oracle"):
        other.load_state_dict(sd)
    after = other.state_dict()
    assert before["param_groups"] == after["param_groups"]
    for pid, st in before["state"].items():
        assert all(torch.equal(v, after["state"][pid][k]) for k, v in st.items())
    # with the group's settings edited to match, the buffers still tell the oracle apart
    for g in sd["param_groups"]:
        g["oracle"] = here
    with pytest.raises(ValueError, match="oracle"):
        other.load_state_dict(sd)


def test_a_state_without_the_average_is_refused_for_an_averaged_m():
    params = list(mixed_params().values())
    kw = {**MATRIX_KW, "matrix_pole": 0.0}
    opt = AutoSGM(params, **kw)
    _train(params, opt, 0, 2)
    sd = _roundtrip(opt.state_dict())
    for g in sd["param_groups"]:
        g["matrix_pole"] = 0.9
    other = AutoSGM(list(mixed_params().values()), **MATRIX_KW)
    with pytest.raises(ValueError, match="matrix_pole"):
        other.load_state_dict(sd)


def test_switching_the_oracle_between_steps_is_refused():
    params = list(mixed_params().values())
    opt = AutoSGM(params, **{**MATRIX_KW, "oracle": "element"})
    _train(params, opt, 0, 2)
    before = [p.detach().clone() for p in params]
    opt.param_groups[0]["oracle"] = "matrix"
    with pytest.raises(ValueError, match="oracle"):
        _train(params, opt, 2, 1)
    assert all(torch.equal(a, b) for a, b in zip(params, before))


# ---- the numerator -------------------------------------------------------------------------------


@pytest.mark.parametrize("numerator", ["parcor-bounded", "parcor-maxbound"])
def test_an_all_zero_matrix_moves_with_a_partial_correlation_numerator(numerator):
    target = torch.randn(8, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    moved = {}
    for c0 in (1e-2, 0.0):
        W = nn.Parameter(torch.zeros(8, 20, dtype=torch.float64))
        opt = AutoSGM([W], lr=0.05, numerator=numerator, oracle="matrix", zero_tensor_start=c0)
        grad = grads_toward(target, 2)
        for t in range(5):
            W.grad = grad(W.detach())
            opt.step()
            if t == 0 and c0:  # a = 0.9 · ‖β_n c₀ I‖_F/√n (W Oᵀ = 0 while W = 0)
                assert opt.state[W]["num_a"].item() == pytest.approx(0.9 * 0.9999 * c0, rel=1e-12)
        moved[c0] = W.detach().abs().max().item()
    assert moved[1e-2] > 0.0 and moved[0.0] == 0.0


def test_the_numerator_of_aligned_weights_is_their_size():
    """W = s Ō (weights along the step, entries of size s) gives a → s, as the element-wise w = s v̄."""
    g = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(40, 16, generator=g, dtype=torch.float64))
    s = 0.05
    W = nn.Parameter(s * math.sqrt(40) * Q.T.clone())  # rows orthonormal × √m: entries of RMS s
    opt = AutoSGM([W], lr=0.0, numerator="parcor-bounded", oracle="matrix", matrix_method="eigh", beta_n=0.0,
                  betas=(0.0, 0.999))  # fmt: skip
    for _ in range(8):
        W.grad = -W.detach().clone()  # V ∝ W, O = −Q.T
        opt.step()
    assert opt.state[W]["num_a"].item() == pytest.approx(s, rel=1e-7)  # (smoothing: 1 − 0.1⁸)


# ---- bad input -------------------------------------------------------------------------------------

BAD = [
    (dict(oracle="matrx"), ValueError, "oracle"),
    (dict(oracle=None), ValueError, "oracle"),
    (dict(matrix_method="svd"), ValueError, "matrix_method"),
    (dict(matrix_method=3), TypeError, "matrix_method"),
    (dict(matrix_iters=0), ValueError, "matrix_iters"),
    (dict(matrix_iters=2.5), TypeError, "matrix_iters"),
    (dict(matrix_iters=True), TypeError, "matrix_iters"),
    (dict(matrix_method="eigh", matrix_iters=4), ValueError, "matrix_iters"),
    (dict(matrix_eps=-1e-3), ValueError, "matrix_eps"),
    (dict(matrix_eps=float("inf")), ValueError, "matrix_eps"),
    (dict(matrix_eps="small"), TypeError, "matrix_eps"),
    (dict(matrix_method="muon-quintic", matrix_eps=0.0), ValueError, "matrix_eps"),
    (dict(matrix_pole=1.0), ValueError, "matrix_pole"),
    (dict(matrix_pole=-0.1), ValueError, "matrix_pole"),
    (dict(matrix_pole="0.9"), TypeError, "matrix_pole"),
    (dict(matrix_lr_scale="adamw"), ValueError, "matrix_lr_scale"),
    (dict(matrix_lr_scale=0.2), TypeError, "matrix_lr_scale"),
    (dict(oracle="matrix", matrix_method="muon-quintic", matrix_pole=0.5), ValueError, "matrix_pole"),
    (dict(oracle="matrix", normalize=False), ValueError, "normalize"),
    (dict(oracle="matrix", numerator="corr"), ValueError, "numerator"),
]


@pytest.mark.parametrize("kwargs, error, name", BAD, ids=[f"{k}" for k, _, _ in BAD])
def test_bad_settings_raise_naming_them(kwargs, error, name):
    with pytest.raises(error, match=name):
        AutoSGM([nn.Parameter(torch.zeros(8, 8))], **kwargs)
    opt = AutoSGM([nn.Parameter(torch.zeros(8, 8))])
    with pytest.raises(error, match=name):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(8, 8))], **kwargs})
    assert len(opt.param_groups) == 1


def test_the_element_wise_default_keeps_its_settings_and_state():
    p = nn.Parameter(torch.randn(16, 40))
    opt = AutoSGM([p])
    g = opt.param_groups[0]
    assert (g["oracle"], g["matrix_method"], g["matrix_iters"], g["matrix_eps"], g["matrix_pole"],
            g["matrix_lr_scale"]) == ("element", "newton-schulz", None, None, 0.0, None)  # fmt: skip
    p.grad = torch.ones_like(p)
    opt.step()
    assert set(opt.state[p]) == {"step", "filter_state", "moment"}
    assert MUON_EPS == 1e-7
