r"""The numerical core of the matrix oracle (spec §9): ``M^(−1/2)`` and the polar factor.

For a weight matrix the learning rate is a matrix: ``Δ = − μ F a · M^(−1/2) V`` with ``V`` the
filtered gradient (``n × m``, ``n ≤ m``) and ``M = V Vᵀ`` (or a short average of it) ``+ ε I``.
This module holds the pure functions that step is built from; it keeps no state.

``M^(−1/2)`` is computed by one of

* ``"eigh"``: a float64 eigendecomposition (the reference),
* ``"newton-schulz"``: the coupled Newton–Schulz iteration (quadratic convergence),
* ``"lakic"``: Lakić's cubic iteration, in the same coupled form,

each iteration run a fixed number of times after scaling ``M`` by its Frobenius norm (no
data-dependent stopping: the cost is known in advance and the loop compiles). Without averaging
``(V Vᵀ)^(−1/2) V`` is ``V``'s orthogonal polar factor, the update of Muon; ``"muon-quintic"``
computes it approximately with Muon's quintic Newton–Schulz on ``V`` itself.

Accuracy (float64, relative Frobenius error against the exact root; the tests check these bounds
on random spectra at sizes 4–48):

* The default counts (Newton–Schulz 16 iterations, Lakić 11) converge, to ≤ 1e-10 in exact
  arithmetic, whenever ``λ_min(M + εI) ≥ 1e-4 ‖M + εI‖_F``: e.g. every condition number ≤ 1e2 at
  n ≤ 48 (measured ≤ 4e-15).
* Each further decade of ``λ_min/‖M‖_F`` costs about 3 Newton–Schulz or 2 Lakić iterations:
  condition numbers up to 1e6 at n ≤ 48 need 25 and 16 (measured ≤ 2e-11, the round-off of
  ``"eigh"`` too); at the default counts the error there reaches 0.5. Alternatively
  ``ε = 1e-4 ‖M‖_F`` brings the defaults back within 1e-10 of ``(M + εI)^(−1/2)`` (measured ≤ 4e-13).
* An unconverged iteration underestimates every eigenvalue of ``M^(−1/2)`` (it approaches from
  below): it damps the directions of small eigenvalues more, it never amplifies them.
* float32: within 1e-5 at condition numbers ≤ 1e2 (measured ≤ 1.4e-6).

Dtypes: float32, bfloat16 and float16 inputs are computed in float32 and the result is returned
in the input's dtype; float64 stays float64; ``"eigh"`` always works in float64. (Muon's own
implementation iterates in bfloat16; float32 is a deliberate choice here: more accurate, and a
CPU has no fast bfloat16 matrix product.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_METHOD",
    "EIGH_FLOOR",
    "LAKIC_ITERS",
    "MAX_DIM",
    "METHODS",
    "MIN_DIM",
    "MUON_EPS",
    "MUON_LR_MODES",
    "MUON_QUINTIC",
    "MUON_STEPS",
    "NEWTON_SCHULZ_ITERS",
    "ROOT_EPS",
    "ROOT_METHODS",
    "STEP_METHOD",
    "as_matrix",
    "gets_matrix_oracle",
    "inverse_root",
    "muon_lr_adjustment",
    "polar_factor",
    "precondition",
]

#: Every method; the first three compute ``M^(−1/2)``, the last only the polar factor of ``V``.
METHODS = ("eigh", "newton-schulz", "lakic", "muon-quintic")
#: The methods that compute ``M^(−1/2)`` itself.
ROOT_METHODS = METHODS[:3]
#: The default method (exact, the reference) and the default ``ε`` added to ``M`` (none: the
#: caller regularises).
DEFAULT_METHOD = "eigh"
ROOT_EPS = 0.0
#: The optimizer's default method (``AutoSGM(oracle="matrix")``): matrix products only (fast on an
#: accelerator, in float32, no eigensolver), converged at the default count for a well-conditioned
#: ``M``, and for an ill-conditioned one it damps the small-eigenvalue directions rather than
#: amplifying them; it works with an averaged ``M`` too (unlike ``"muon-quintic"``).
STEP_METHOD = "newton-schulz"
#: Default iteration counts: converged (≤ 1e-10) when ``λ_min ≥ 1e-4 ‖M‖_F`` (module docstring).
NEWTON_SCHULZ_ITERS = 16
LAKIC_ITERS = 11
#: Muon's quintic Newton–Schulz coefficients ``(a, b, c)``, its step count and its norm floor.
MUON_QUINTIC = (3.4445, -4.7750, 2.0315)
MUON_STEPS = 5
MUON_EPS = 1e-7
#: ``"eigh"`` raises eigenvalues below ``EIGH_FLOOR · λ_max`` (float64's resolution of ``λ_max``).
EIGH_FLOOR = 1e-14
#: A matrix (after reshaping to 2-D) gets the matrix oracle when both its dims lie in this range.
MIN_DIM = 4
MAX_DIM = 2048
#: ``torch.optim.Muon``'s ``adjust_lr_fn`` choices.
MUON_LR_MODES = ("original", "match_rms_adamw")

_DEFAULT_ITERS = {"newton-schulz": NEWTON_SCHULZ_ITERS, "lakic": LAKIC_ITERS, "muon-quintic": MUON_STEPS}


def inverse_root(
    M: Tensor, method: str = DEFAULT_METHOD, *, iters: int | None = None, eps: float = ROOT_EPS
) -> Tensor:
    r"""``(M + εI)^(−1/2)`` of a symmetric positive semi-definite ``n × n`` matrix ``M``.

    * ``"eigh"``: ``M + εI = Q diag(λ) Qᵀ`` in float64, result ``Q diag(λ^(−1/2)) Qᵀ``. Eigenvalues
      are first raised to ``max(EIGH_FLOOR · λ_max, tiny)`` (``tiny`` the smallest normal float64),
      so a singular ``M`` with ``ε = 0`` gives a large but finite result instead of ``inf``/``nan``.
      Only the lower triangle of ``M`` is read.
    * ``"newton-schulz"``: with ``c = ‖M + εI‖_F`` (≥ the spectral norm, so the eigenvalues of
      ``Y₀ = (M + εI)/c`` lie in (0, 1]) and ``Z₀ = I``, repeat ``iters`` times
      ``R = I − Z Y``, ``T = I + R/2 = (3I − Z Y)/2``, ``Y ← Y T``, ``Z ← T Z``.
      Then ``Y → ((M + εI)/c)^(1/2)``, ``Z → ((M + εI)/c)^(−1/2)``, and the result is ``Z/√c``.
      Per eigenvalue the residual ``r = 1 − z²λ/c`` maps to ``(3r² + r³)/4``: quadratic
      convergence, and a small eigenvalue grows ×9/4 per iteration until it is reached.
      3 matrix products per iteration.
    * ``"lakic"``: the same coupled scaled form with ``T = I + R/2 + 3R²/8 = (15I − 10ZY + 3(ZY)²)/8``,
      the degree-2 truncation of ``(I − R)^(−1/2) = I + R/2 + 3R²/8 + …``: per eigenvalue
      ``r ← 1 − (1 − r)(1 + r/2 + 3r²/8)² = (5/8) r³ + O(r⁴)``, cubic convergence, and a small
      eigenvalue grows ×225/64 per iteration. This is the cubic iteration attributed to Lakić
      (ZAMM 78(3), 1998), ``Z ← Z T``, ``S ← S T²`` on ``S = Z² M/c``, written in the coupled
      ``Y``/``Z`` form (``S = Z Y``, as ``Y = Z M/c``): the degree-2 member of Higham's family of
      stable Padé iterations for the square root, of which Newton–Schulz is degree 1.
      4 matrix products per iteration.

    Both iterations increase every eigenvalue's ``z²λ/c`` monotonically towards 1 (from (0, 1]),
    so the error never grows with ``iters``. Defaults: ``NEWTON_SCHULZ_ITERS`` and ``LAKIC_ITERS``
    (see the module docstring for the accuracy they give).
    """
    _check_square(M)
    _check_method(method, ROOT_METHODS)
    iters = _resolve_iters(method, iters)
    _check_eps(eps)
    work = _working_dtype(method, M.dtype)
    return _inverse_root(M.to(work), method, iters, eps).to(M.dtype)


def precondition(
    M: Tensor, V: Tensor, method: str = DEFAULT_METHOD, *, iters: int | None = None, eps: float = ROOT_EPS
) -> Tensor:
    r"""``(M + εI)^(−1/2) V``: the matrix oracle's step direction when ``M`` is an average of ``V Vᵀ``.

    ``M`` is ``n × n``, ``V`` is ``n × m``; ``method``, ``iters`` and ``eps`` as in
    :func:`inverse_root`. The product is taken in the working dtype, the result has ``V``'s dtype.
    """
    _check_square(M)
    _check_matrix("V", V)
    if V.shape[0] != M.shape[0]:
        raise ValueError(f"V must have as many rows as M ({M.shape[0]}), got shape {tuple(V.shape)}")
    _check_method(method, ROOT_METHODS)
    iters = _resolve_iters(method, iters)
    _check_eps(eps)
    work = _working_dtype(method, torch.promote_types(M.dtype, V.dtype))
    return (_inverse_root(M.to(work), method, iters, eps) @ V.to(work)).to(V.dtype)


def polar_factor(
    V: Tensor, method: str = DEFAULT_METHOD, *, iters: int | None = None, eps: float | None = None
) -> Tensor:
    r"""The orthogonal polar factor of an ``n × m`` matrix ``V`` (``n ≤ m``), or an approximation.

    For ``"eigh"``, ``"newton-schulz"`` and ``"lakic"``: ``(V Vᵀ + εI)^(−1/2) V`` with ``M = V Vᵀ``
    formed in the working dtype (``eps`` default ``ROOT_EPS`` = 0). With ``V = U diag(σ) Wᵀ`` (thin
    SVD) this is ``U diag(σ/√(σ² + ε)) Wᵀ``, which for full row rank and ``ε = 0`` is ``U Wᵀ``, the
    polar factor (``Q Qᵀ = I``). An unconverged iteration leaves singular values below 1 where ``σ²/‖M‖_F`` is
    small.

    For ``"muon-quintic"`` (Muon's update, ``eps`` default ``MUON_EPS``): ``X₀ = V / max(‖V‖_F, ε)``
    (so every singular value is ≤ 1), then ``iters`` (default ``MUON_STEPS``) times
    ``A = X Xᵀ``, ``X ← a X + (b A + c A²) X`` with ``(a, b, c) = MUON_QUINTIC``: each singular value
    goes through ``p(σ) = aσ + bσ³ + cσ⁵``. The coefficients maximise the slope at 0 (``a``) rather
    than converge, so ``V`` is only approximately orthogonalised: after the 5 default steps every
    singular value ``σ ≥ 2e-3 ‖V‖_F`` lands in [0.68, 1.21], not at 1, and smaller ones grow by at
    most ``a⁵ ≈ 487``. In float32 this is bit for bit what ``torch.optim.Muon`` computes if its
    bfloat16 cast is replaced by float32 (checked on CPU). A tall ``V`` is transposed first by :func:`as_matrix`.
    """
    _check_matrix("V", V)
    if V.shape[0] > V.shape[1]:
        raise ValueError(f"V must have no more rows than columns (use as_matrix), got shape {tuple(V.shape)}")
    _check_method(method, METHODS)
    iters = _resolve_iters(method, iters)
    if method == "muon-quintic":
        eps = MUON_EPS if eps is None else eps
        _check_eps(eps)
        return _muon_quintic(V.to(_working_dtype(method, V.dtype)), iters, eps).to(V.dtype)
    eps = ROOT_EPS if eps is None else eps
    _check_eps(eps)
    X = V.to(_working_dtype(method, V.dtype))
    return (_inverse_root(X @ X.mT, method, iters, eps) @ X).to(V.dtype)


def as_matrix(p: Tensor) -> tuple[Tensor, bool]:
    """The 2-D matrix the oracle works on, and whether it is transposed.

    ``p`` (``ndim ≥ 2``, e.g. a conv kernel ``out × in × k × k``) is reshaped to
    ``(shape[0], prod(shape[1:]))`` and transposed when that has more rows than columns, so the
    result is ``n × m`` with ``n ≤ m``. It is a view of ``p`` whenever ``reshape`` can give one
    (always for a contiguous ``p``); undo with ``X.mT`` (if transposed) then ``.reshape(p.shape)``.
    """
    if not isinstance(p, Tensor):
        raise TypeError(f"p must be a torch.Tensor, got {type(p).__name__}")
    if p.ndim < 2:
        raise ValueError(f"p must have at least 2 dimensions, got shape {tuple(p.shape)}")
    X = p.reshape(p.shape[0], math.prod(p.shape[1:]))
    transposed = X.shape[0] > X.shape[1]
    return (X.mT if transposed else X), transposed


def gets_matrix_oracle(p: Tensor, *, min_dim: int = MIN_DIM, max_dim: int = MAX_DIM) -> bool:
    """Whether ``p`` gets the matrix oracle (spec §9) rather than the element-wise one.

    False for 1-D (and 0-D) and sparse tensors, and when either dim of :func:`as_matrix`'s matrix is
    below ``min_dim`` or above ``max_dim`` (tiny matrices, embeddings with a large vocabulary).
    """
    if not isinstance(p, Tensor):
        raise TypeError(f"p must be a torch.Tensor, got {type(p).__name__}")
    if not 1 <= min_dim <= max_dim:
        raise ValueError(f"min_dim and max_dim must satisfy 1 ≤ min_dim ≤ max_dim, got {min_dim}, {max_dim}")
    if p.ndim < 2 or p.is_sparse:
        return False
    rows, cols = p.shape[0], math.prod(p.shape[1:])
    return min_dim <= min(rows, cols) and max(rows, cols) <= max_dim


def muon_lr_adjustment(shape: Sequence[int], mode: str) -> float:
    """The factor ``torch.optim.Muon`` multiplies its learning rate by, for a ``rows × cols`` parameter.

    ``"original"`` (Keller Jordan's Muon): ``√max(1, rows/cols)``; ``"match_rms_adamw"`` (Moonshot's,
    to match AdamW's update RMS): ``0.2 · √max(rows, cols)``. ``shape`` is the parameter's shape as
    stored (not transposed).
    """
    if len(shape) != 2:
        raise ValueError(f"shape must have 2 dimensions (rows, cols), got {tuple(shape)}")
    rows, cols = shape
    if mode == "original":
        return math.sqrt(max(1, rows / cols))
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"mode must be one of {MUON_LR_MODES}, got {mode!r}")


def _inverse_root(M: Tensor, method: str, iters: int, eps: float) -> Tensor:
    """``(M + εI)^(−1/2)`` in ``M``'s dtype (already the working dtype); see :func:`inverse_root`."""
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    M = M + eps * eye
    if method == "eigh":
        lam, Q = torch.linalg.eigh(M)
        floor = (EIGH_FLOOR * lam[-1]).clamp(min=torch.finfo(lam.dtype).tiny)
        return (Q * torch.maximum(lam, floor).rsqrt()) @ Q.mT
    c = torch.linalg.matrix_norm(M).clamp(min=torch.finfo(M.dtype).tiny)
    Y, Z = M / c, eye
    for _ in range(iters):
        R = eye - Z @ Y
        T = eye + 0.5 * R if method == "newton-schulz" else eye + 0.5 * R + 0.375 * (R @ R)
        Y, Z = Y @ T, T @ Z
    return Z / c.sqrt()


def _muon_quintic(V: Tensor, steps: int, eps: float) -> Tensor:
    """Muon's quintic Newton–Schulz on ``V`` (working dtype); see :func:`polar_factor`."""
    a, b, c = MUON_QUINTIC
    X = V / torch.linalg.matrix_norm(V).clamp(min=eps)
    for _ in range(steps):
        A = X @ X.mT
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A²
        X = torch.addmm(X, B, X, beta=a)  # a X + B X
    return X


def _working_dtype(method: str, dtype: torch.dtype) -> torch.dtype:
    """float64 for ``"eigh"`` and float64 inputs, float32 otherwise (see the module docstring)."""
    return torch.float64 if method == "eigh" or dtype == torch.float64 else torch.float32


def _check_matrix(name: str, X: Tensor) -> None:
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if not X.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(X.shape)}")


def _check_square(M: Tensor) -> None:
    _check_matrix("M", M)
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be square, got shape {tuple(M.shape)}")


def _check_method(method: str, allowed: tuple[str, ...]) -> None:
    if method == "muon-quintic" and method not in allowed:
        raise ValueError("method 'muon-quintic' orthogonalises V directly and has no M^(-1/2): use polar_factor")
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")


def _resolve_iters(method: str, iters: int | None) -> int:
    """The iteration count: ``iters`` if given (an integer ≥ 1), else the method's default."""
    if method == "eigh":
        if iters is not None:
            raise ValueError("iters does not apply to method 'eigh' (leave it None)")
        return 0
    if iters is None:
        return _DEFAULT_ITERS[method]
    if isinstance(iters, bool) or not isinstance(iters, int):
        raise TypeError(f"iters must be an int, got {type(iters).__name__}")
    if iters < 1:
        raise ValueError(f"iters must be ≥ 1, got {iters}")
    return iters


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps >= 0.0 or math.isinf(eps):
        raise ValueError(f"eps must be a finite number ≥ 0, got {eps}")
