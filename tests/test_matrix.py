"""The matrix oracle's numerical core (:mod:`autosgm.matrix`, spec §9): M^(−1/2), the polar factor, Muon.

Exact references are built in float64: ``M = Q diag(λ) Qᵀ`` with a random orthogonal ``Q`` and a
log-spaced random spectrum, so ``M^(−1/2) = Q diag(λ^(−1/2)) Qᵀ`` is known without an
eigensolver. Relative errors are Frobenius-norm ratios.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autosgm.matrix import (
    MUON_EPS,
    MUON_QUINTIC,
    MUON_STEPS,
    as_matrix,
    gets_matrix_oracle,
    inverse_root,
    muon_lr_adjustment,
    polar_factor,
    precondition,
)

SETTINGS = settings(max_examples=25, deadline=None)
ITERATIVE = ("newton-schulz", "lakic")
ROOTS = ("eigh", *ITERATIVE)
# Iterations that reach float64 round-off for condition numbers up to 1e6 at sizes ≤ 48 (the scaled
# smallest eigenvalue is then ≥ 1e-6/√48; a decade costs about 3 Newton–Schulz or 2 Lakić iterations).
ILL_ITERS = {"newton-schulz": 25, "lakic": 16}

# Tolerances (relative Frobenius error) and what was measured when they were set.
TOL_WELL = 1e-10  # float64, condition ≤ 1e2, default iterations; measured ≤ 7e-15
TOL_ILL = 1e-9  # float64, condition ≤ 1e6, ILL_ITERS; measured ≤ 2e-11 (the eigh reference alike)
TOL_EPS = 1e-10  # float64, condition ≤ 1e6, default iterations, ε = 1e-4‖M‖_F; measured ≤ 4e-13
TOL_F32 = 1e-5  # float32, condition ≤ 1e2, default iterations; measured ≤ 1.4e-6
TOL_BF16_MUON = 5e-2  # torch's bfloat16 Muon against our float32 one; measured ≤ 2.4e-2

sizes = st.integers(4, 48)
seeds = st.integers(0, 2**31 - 1)
log_scales = st.floats(-3.0, 3.0)


def spd(n: int, log_cond: float, seed: int, log_scale: float = 0.0) -> tuple[torch.Tensor, ...]:
    """``M = Q diag(λ) Qᵀ`` (float64), λ log-spaced at random with condition number exactly 10^log_cond."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    e = torch.rand(n, generator=g, dtype=torch.float64)
    e[0], e[-1] = 0.0, 1.0
    lam = 10.0 ** (log_scale - log_cond * e)
    return (Q * lam) @ Q.T, Q, lam


def exact_root(Q: torch.Tensor, lam: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    return (Q * (lam + eps).rsqrt()) @ Q.T


def rel_err(A: torch.Tensor, B: torch.Tensor) -> float:
    A, B = A.double(), B.double()
    return (torch.linalg.matrix_norm(A - B) / torch.linalg.matrix_norm(B)).item()


def wide(n: int, m: int, log_sigma_min: float, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    """An ``n × m`` matrix ``U diag(σ) Wᵀ`` with σ in [10^log_sigma_min, 1], and its polar factor ``U Wᵀ``."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    W, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    sigma = 10.0 ** (log_sigma_min * torch.rand(n, generator=g, dtype=torch.float64))
    return ((U * sigma) @ W.T).to(dtype), U @ W.T


# ---- M^(−1/2): the iterations against the exact root ------------------------------------------


@SETTINGS
@given(n=sizes, log_cond=st.floats(0.0, 2.0), seed=seeds, log_scale=log_scales, method=st.sampled_from(ROOTS))
def test_well_conditioned_roots_agree_with_the_exact_root_at_default_iterations(n, log_cond, seed, log_scale, method):
    M, Q, lam = spd(n, log_cond, seed, log_scale)
    assert rel_err(inverse_root(M, method), exact_root(Q, lam)) <= TOL_WELL


@SETTINGS
@given(n=sizes, log_cond=st.floats(2.0, 6.0), seed=seeds, log_scale=log_scales, method=st.sampled_from(ITERATIVE))
def test_ill_conditioned_roots_need_more_iterations_or_an_eps(n, log_cond, seed, log_scale, method):
    M, Q, lam = spd(n, log_cond, seed, log_scale)
    assert rel_err(inverse_root(M, method, iters=ILL_ITERS[method]), exact_root(Q, lam)) <= TOL_ILL
    assert rel_err(inverse_root(M, "eigh"), exact_root(Q, lam)) <= TOL_ILL
    eps = 1e-4 * torch.linalg.matrix_norm(M).item()
    assert rel_err(inverse_root(M, method, eps=eps), exact_root(Q, lam, eps)) <= TOL_EPS


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("n", [4, 16, 48])
def test_the_iterations_approach_the_root_monotonically_from_below(method, n):
    M, Q, lam = spd(n, 4.0, seed=n)
    exact = exact_root(Q, lam)
    errors = []
    for k in range(1, ILL_ITERS[method] + 1):
        Z = inverse_root(M, method, iters=k)
        errors.append(rel_err(Z, exact))
        # Every eigenvalue of the iterate stays below its limit: exact − Z is positive semi-definite.
        assert torch.linalg.eigvalsh(exact - Z).min() >= -1e-12 * torch.linalg.matrix_norm(exact)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:]))
    assert errors[0] > 0.5 and errors[-1] < TOL_WELL


@SETTINGS
@given(n=sizes, log_cond=st.floats(0.0, 2.0), seed=seeds, log_scale=log_scales, method=st.sampled_from(ROOTS))
def test_float32_inputs_give_float32_roots(n, log_cond, seed, log_scale, method):
    M, Q, lam = spd(n, log_cond, seed, log_scale)
    Z = inverse_root(M.float(), method)
    assert Z.dtype == torch.float32
    assert rel_err(Z, exact_root(Q, lam)) <= TOL_F32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ROOTS)
def test_half_precision_inputs_are_computed_in_float32_and_returned_in_their_dtype(dtype, method):
    M, _, _ = spd(12, 1.0, seed=3)
    low = M.to(dtype)
    Z = inverse_root(low, method)
    assert Z.dtype == dtype
    assert torch.equal(Z, inverse_root(low.float(), method).to(dtype))
    V = torch.randn(12, 20, generator=torch.Generator().manual_seed(4)).to(dtype)
    for m in (method, "muon-quintic"):
        assert torch.equal(polar_factor(V, m), polar_factor(V.float(), m).to(dtype))
    assert torch.equal(precondition(low, V, method), precondition(low.float(), V.float(), method).to(dtype))


def test_float64_stays_float64():
    M, _, _ = spd(8, 1.0, seed=0)
    V = torch.randn(8, 10, dtype=torch.float64)
    for method in ROOTS:
        assert inverse_root(M, method).dtype == torch.float64
        assert polar_factor(V, method).dtype == torch.float64
    assert polar_factor(V, "muon-quintic").dtype == torch.float64


def test_a_singular_m_is_floored_and_a_zero_gradient_gives_a_zero_update():
    M = torch.zeros(6, 6, dtype=torch.float64)
    M[0, 0] = 1.0
    assert torch.isfinite(inverse_root(M, "eigh")).all()
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        V = torch.zeros(6, 9, dtype=dtype)
        for method in (*ROOTS, "muon-quintic"):
            assert torch.equal(polar_factor(V, method), V)


# ---- the polar factor and the preconditioner ---------------------------------------------------


@SETTINGS
@given(n=st.integers(4, 32), extra=st.integers(0, 32), seed=seeds, log_scale=log_scales, method=st.sampled_from(ROOTS))
def test_polar_factor_is_u_v_transposed(n, extra, seed, log_scale, method):
    V, polar = wide(n, n + extra, -1.0, seed)  # σ in [0.1, 1]: M = V Vᵀ has condition ≤ 1e2
    V = V * 10.0**log_scale
    P = polar_factor(V, method)
    assert rel_err(P, polar) <= TOL_WELL
    assert rel_err(P @ P.T, torch.eye(n, dtype=torch.float64)) <= TOL_WELL
    U, _, Wt = torch.linalg.svd(V, full_matrices=False)
    assert rel_err(P, U @ Wt) <= TOL_WELL


def test_precondition_is_the_inverse_root_times_v_and_the_polar_factor_without_averaging():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(10, 30, generator=g, dtype=torch.float64)
    M = torch.randn(10, 40, generator=g, dtype=torch.float64)
    M = M @ M.T
    for method in ROOTS:
        assert torch.equal(precondition(M, V, method, eps=0.1), inverse_root(M, method, eps=0.1) @ V)
        assert rel_err(precondition(V @ V.T, V, method, eps=0.1), polar_factor(V, method, eps=0.1)) <= TOL_WELL


@SETTINGS
@given(n=st.integers(4, 16), extra=st.integers(0, 48), seed=seeds, log_scale=log_scales)
def test_muon_quintic_singular_values_land_in_the_documented_band(n, extra, seed, log_scale):
    V, _ = wide(n, n + extra, -2.0, seed, torch.float32)  # σ/‖V‖_F ≥ 1e-2/√16 > 2e-3
    sv = torch.linalg.svdvals(polar_factor(V * 10.0**log_scale, "muon-quintic").double())
    assert 0.68 - 1e-3 <= sv.min() and sv.max() <= 1.21 + 1e-3


# ---- Muon: torch.optim.Muon is the reference point ---------------------------------------------


# (the fixture torch_muon_in_float32, shared with test_matrix_oracle.py, is in conftest.py)


def muon_quintic(G: torch.Tensor) -> torch.Tensor:
    """Our Muon update of a 2-D tensor of either orientation, through as_matrix."""
    X, transposed = as_matrix(G)
    P = polar_factor(X, "muon-quintic")
    return P.mT if transposed else P


SHAPES = [(8, 32), (32, 8), (4, 4), (64, 64), (50, 130), (130, 50)]


@pytest.mark.parametrize("shape", SHAPES)
def test_muon_quintic_is_torchs_newton_schulz_bit_for_bit_in_float32(shape, torch_muon_in_float32, torch_muon):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    theirs = torch_muon._zeropower_via_newtonschulz(G, MUON_QUINTIC, MUON_STEPS, MUON_EPS)
    assert theirs.dtype == torch.float32
    torch.testing.assert_close(muon_quintic(G), theirs, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_muon_quintic_matches_torchs_bfloat16_newton_schulz_to_bfloat16_accuracy(shape, torch_muon):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    theirs = torch_muon._zeropower_via_newtonschulz(G, MUON_QUINTIC, MUON_STEPS, MUON_EPS)
    assert theirs.dtype == torch.bfloat16
    assert rel_err(theirs, muon_quintic(G)) <= TOL_BF16_MUON


def muon_steps(shape, nesterov, mode, steps=3, lr=0.02, momentum=0.95):
    """torch.optim.Muon's parameter and ours, assembled from this module, after a few steps."""
    g = torch.Generator().manual_seed(7)
    W = torch.nn.Parameter(torch.randn(*shape, generator=g))
    ours = W.detach().clone()
    opt = torch.optim.Muon([W], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0, adjust_lr_fn=mode)
    buf = torch.zeros_like(ours)
    for _ in range(steps):
        grad = torch.randn(*shape, generator=g)
        W.grad = grad.clone()
        opt.step()
        # torch's buffer is an EMA (lerp), not its docstring's μ·buf + g; the scale cancels in the
        # normalisation, but the rounding does not.
        buf.lerp_(grad, 1 - momentum)
        update = grad.lerp(buf, momentum) if nesterov else buf
        ours.add_(muon_quintic(update), alpha=-lr * muon_lr_adjustment(shape, mode))
    return W.detach(), ours


@pytest.mark.parametrize("mode", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])
def test_a_muon_step_is_assembled_from_these_functions(shape, nesterov, mode, torch_muon_in_float32):
    theirs, ours = muon_steps(shape, nesterov, mode)
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=0.0)


@pytest.mark.torch_muon
@pytest.mark.parametrize("mode", ["original", "match_rms_adamw"])
def test_a_muon_step_matches_torchs_bfloat16_step_to_bfloat16_accuracy(mode):
    W0 = torch.randn(16, 40, generator=torch.Generator().manual_seed(7))
    theirs, ours = muon_steps((16, 40), True, mode)
    assert rel_err(ours - W0, theirs - W0) <= TOL_BF16_MUON


@pytest.mark.parametrize("mode", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (64, 64), (1, 3), (2048, 4)])
def test_muon_lr_adjustment_is_torchs(shape, mode, torch_muon):
    assert muon_lr_adjustment(shape, mode) == torch_muon._adjust_lr(1.0, mode, torch.Size(shape))
    assert 0.02 * muon_lr_adjustment(shape, mode) == torch_muon._adjust_lr(0.02, mode, torch.Size(shape))


# ---- which tensors get the matrix oracle -------------------------------------------------------


def test_as_matrix_reshapes_and_transposes_to_n_le_m():
    wide_p = torch.randn(8, 32)
    X, transposed = as_matrix(wide_p)
    assert not transposed and X.shape == (8, 32) and X.data_ptr() == wide_p.data_ptr()
    tall = torch.randn(32, 8)
    X, transposed = as_matrix(tall)
    assert transposed and X.shape == (8, 32) and torch.equal(X, tall.T) and X.data_ptr() == tall.data_ptr()
    conv = torch.randn(64, 3, 3, 3)
    X, transposed = as_matrix(conv)
    assert transposed and X.shape == (27, 64) and torch.equal(X.mT.reshape(conv.shape), conv)
    X, transposed = as_matrix(torch.randn(16, 32, 3, 3))
    assert not transposed and X.shape == (16, 288)


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (torch.randn(100), False),  # 1-D: bias, norm gain
        (torch.tensor(1.0), False),
        (torch.randn(8, 32), True),
        (torch.randn(32, 8), True),
        (torch.randn(64, 3, 3, 3), True),  # conv kernel: 64 × 27
        (torch.empty(50257, 64, device="meta"), False),  # embedding: 50257 > 2048
        (torch.randn(3, 100), False),  # tiny: 3 < 4
        (torch.empty(4, 2048, device="meta"), True),
        (torch.empty(4, 2049, device="meta"), False),
        (torch.randn(8, 32).to_sparse(), False),
    ],
)
def test_gets_matrix_oracle(p, expected):
    assert gets_matrix_oracle(p) is expected


def test_gets_matrix_oracle_limits_are_arguments():
    assert gets_matrix_oracle(torch.randn(3, 100), min_dim=3)
    assert not gets_matrix_oracle(torch.randn(8, 32), max_dim=31)


# ---- bad input names the argument --------------------------------------------------------------

M4 = torch.eye(4)
V4 = torch.randn(4, 6)


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: inverse_root(torch.ones(4)), ValueError, "M"),
        (lambda: inverse_root(torch.ones(3, 4)), ValueError, "M"),
        (lambda: inverse_root(torch.eye(4, dtype=torch.int64)), TypeError, "M"),
        (lambda: inverse_root([[1.0]]), TypeError, "M"),
        (lambda: inverse_root(M4, "cholesky"), ValueError, "method"),
        (lambda: inverse_root(M4, "muon-quintic"), ValueError, "method"),
        (lambda: inverse_root(M4, "newton-schulz", iters=0), ValueError, "iters"),
        (lambda: inverse_root(M4, "lakic", iters=2.0), TypeError, "iters"),
        (lambda: inverse_root(M4, "eigh", iters=3), ValueError, "iters"),
        (lambda: inverse_root(M4, eps=-1e-3), ValueError, "eps"),
        (lambda: inverse_root(M4, eps=float("nan")), ValueError, "eps"),
        (lambda: inverse_root(M4, eps=torch.tensor(0.1)), TypeError, "eps"),
        (lambda: polar_factor(torch.ones(6)), ValueError, "V"),
        (lambda: polar_factor(V4.T), ValueError, "V"),
        (lambda: polar_factor(V4.int()), TypeError, "V"),
        (lambda: polar_factor(V4, "svd"), ValueError, "method"),
        (lambda: polar_factor(V4, "muon-quintic", iters=0), ValueError, "iters"),
        (lambda: polar_factor(V4, "muon-quintic", eps=-1.0), ValueError, "eps"),
        (lambda: polar_factor(V4, "lakic", eps=-1.0), ValueError, "eps"),
        (lambda: precondition(M4, torch.randn(5, 6)), ValueError, "V"),
        (lambda: precondition(torch.ones(4, 5), V4), ValueError, "M"),
        (lambda: precondition(M4, V4, "muon-quintic"), ValueError, "method"),
        (lambda: as_matrix(torch.ones(4)), ValueError, "p"),
        (lambda: as_matrix([[1.0]]), TypeError, "p"),
        (lambda: gets_matrix_oracle([[1.0]]), TypeError, "p"),
        (lambda: gets_matrix_oracle(V4, min_dim=0), ValueError, "min_dim"),
        (lambda: muon_lr_adjustment((4,), "original"), ValueError, "shape"),
        (lambda: muon_lr_adjustment((4, 6), "adamw"), ValueError, "mode"),
    ],
)
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=rf"^{name}\b"):
        call()


def test_muons_constants_are_torchs(torch_muon):
    assert MUON_QUINTIC == (torch_muon.DEFAULT_A, torch_muon.DEFAULT_B, torch_muon.DEFAULT_C)
    assert (MUON_STEPS, MUON_EPS) == (torch_muon.DEFAULT_NS_STEPS, torch_muon.EPS)
