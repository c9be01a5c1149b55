"""The AutoSGM configuration: one validated object per param group.

Two spellings compile into the same :class:`AutoSGMConfig`:

* the readable keyword API (torch.optim names where torch has the concept: ``lr``, ``betas``,
  ``eps``, ``weight_decay``, ``decoupled_weight_decay``, ``maximize``, ``foreach``), and
* the seed's tuples ``lr_cfg``, ``beta_cfg``, ``rc_cfg``, ``wd_cfg``, ``eps_cfg``, parsed by
  :func:`parse_seed_tuples` — the only place where positional tuple indexing happens.

Every value is checked once, in :meth:`AutoSGMConfig.from_group`; bad input raises
``ValueError``/``TypeError`` naming the argument, and nothing is clamped or rewritten. Real values
must be finite, and the numbers the step multiplies by (η, ηγ, the filter's DC gain, 1/S[1], ε ...)
must lie within float32's range (the state dtype of float16/bfloat16/float32 parameters), so that
no setting by itself makes a step overflow.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ._checks import finite as _finite
from ._checks import real as _real
from . import matrix as _matrix
from .design import default_eta, step_response
from .windows import Window

__all__ = [
    "MATRIX_LR_SCALES",
    "NUMERATORS",
    "NUMERATOR_CODES",
    "ORACLES",
    "AutoSGMConfig",
    "SEED_KEYS",
    "ZERO_TENSOR_START",
    "parse_seed_tuples",
]

#: Readable names of the learning-rate numerators (spec section 4). The first five are the seed's
#: ``num_lrc`` codes 0-4, in order; ``corr`` has no code.
NUMERATORS: tuple[str, ...] = (
    "unity",
    "parcor-bounded",
    "parcor-maxbound",
    "parcor-markov",
    "parcor-chebyshev",
    "corr",
)
NUMERATOR_CODES: dict[int, str] = {i: name for i, name in enumerate(NUMERATORS[:5])}
NUMERATOR_MODES: tuple[str, ...] = ("tensor", "element")
NONFINITE_POLICIES: tuple[str, ...] = ("proceed", "skip", "raise")
#: The oracle's kinds (spec §1, §9): the element-wise ``μ F a / d``, or for weight matrices the
#: matrix ``μ F a M^(−1/2)``.
ORACLES: tuple[str, ...] = ("element", "matrix")
#: ``matrix_lr_scale``: no factor, or ``torch.optim.Muon``'s ``adjust_lr_fn`` choices.
MATRIX_LR_SCALES: tuple[str | None, ...] = (None, *_matrix.MUON_LR_MODES)
#: c₀: where the partial-correlation accumulator of a tensor whose weights are all zero starts
#: (spec §4, the absorbing state at w = 0; chosen by measurement, docs/zero-tensors.md).
ZERO_TENSOR_START = 1e-2

#: Which readable settings each seed tuple sets (mixing both spellings of one setting is an error).
SEED_KEYS: dict[str, tuple[str, ...]] = {
    "lr_cfg": ("normalize", "lr", "numerator"),
    "beta_cfg": ("beta_n", "betas", "gamma", "eta", "debias"),
    "rc_cfg": ("window",),
    "wd_cfg": ("weight_decay", "decoupled_weight_decay"),
    "eps_cfg": ("eps", "repeat_eps"),
}


#: The largest number the step may multiply by: the step of float16, bfloat16 and float32
#: parameters runs in float32.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: The smallest positive number ε (or ε·S[t]) may be in the denominator: a smaller one rounds to a
#: float32 subnormal or 0, and a zero gradient would give 0/0.
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)


# ----------------------------------------------------------------------------------------------
# small checkers
# ----------------------------------------------------------------------------------------------
def _pole(name: str, value: Any) -> float:
    value = _real(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _tuple(name: str, value: Any, lengths: tuple[int, ...]) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple, got {type(value).__name__}")
    if len(value) not in lengths:
        want = " or ".join(str(n) for n in lengths)
        raise ValueError(f"{name} must have {want} items, got {len(value)}: {tuple(value)!r}")
    return tuple(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def numerator_name(value: Any, name: str = "numerator") -> str:
    """Resolve a numerator given by name or by the seed's ``num_lrc`` code."""
    if isinstance(value, str):
        if value not in NUMERATORS:
            raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(NUMERATORS)}")
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if int(value) not in NUMERATOR_CODES:
            raise ValueError(f"unknown {name} code {value!r}; expected an int in 0-4")
        return NUMERATOR_CODES[int(value)]
    raise TypeError(f"{name} must be a name or an int code, got {type(value).__name__} {value!r}")


# ----------------------------------------------------------------------------------------------
# the config object
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoSGMConfig:
    """Validated settings of one param group (everything but ``lr``, which schedulers change).

    Filter ``H(z) = η (1 − γ z⁻¹) / (1 − β z⁻¹)`` with ``β = betas[0]``, ``γ = gamma``,
    ``η = eta`` (default ``(1 − β)/(1 − γ)``: unit DC gain); oracle ``α = μ F a / d`` with the
    moment pole ``β_a = betas[1]``, numerator pole ``β_n = beta_n`` and window ``F = window``.
    """

    beta: float = 0.9
    beta_a: float = 0.999
    gamma: float = 0.0
    eta: float = 0.1
    beta_n: float = 0.9999
    debias: bool = True
    normalize: bool = True
    numerator: str = "unity"
    numerator_mode: str = "tensor"
    zero_tensor_start: float = ZERO_TENSOR_START
    eps: float = 1e-8
    repeat_eps: bool = False
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    window: Window | None = None
    maximize: bool = False
    nonfinite: str = "proceed"
    oracle: str = "element"
    matrix_method: str = _matrix.STEP_METHOD
    matrix_iters: int | None = None
    matrix_eps: float | None = None
    matrix_pole: float = 0.0
    matrix_lr_scale: str | None = None

    # -- derived, cheap properties used by the step ------------------------------------------
    @property
    def matrix_averaged(self) -> bool:
        """The matrix oracle's ``M`` is an average of ``V Vᵀ`` (``matrix_pole > 0``: one-sided
        Shampoo-like), kept in the state buffer ``matrix_m``; else ``M = V Vᵀ`` (the polar factor)."""
        return self.matrix_pole != 0.0

    def matrix_debias(self, t: int) -> float:
        """``1 − p^t`` for the average of ``V Vᵀ`` with pole ``p = matrix_pole`` (1 when debias is off)."""
        return 1.0 - self.matrix_pole**t if self.debias else 1.0

    @property
    def has_filter_state(self) -> bool:
        """The filter needs memory unless it is a pure gain with no delay (β = γ = 0)."""
        return self.beta != 0.0 or self.gamma != 0.0

    @property
    def lerp_filter(self) -> bool:
        """γ = 0 and η = 1 − β: the filter is an EMA, computed with ``lerp`` as torch's Adam does."""
        return self.gamma == 0.0 and self.eta == 1.0 - self.beta

    @property
    def filter_state_gain(self) -> float:
        """``K = η (β − γ) / (1 − β)``: for γ ≠ 0, ``v[t] = η g[t] + K u[t−1]`` with the filter
        buffer ``u`` (the input's average with the pole)."""
        return self.eta * (self.beta - self.gamma) / (1.0 - self.beta)

    def filter_debias(self, t: int) -> float:
        """Unit-step response ``S[t] = η[(1 − β^t) − γ(1 − β^(t−1))]/(1 − β)`` (1 when off)."""
        return step_response(self.beta, self.gamma, self.eta, t) if self.debias else 1.0

    def moment_debias(self, t: int) -> float:
        """``1 − β_a^t`` (1 when debias is off)."""
        return 1.0 - self.beta_a**t if self.debias else 1.0

    @property
    def smallest_filter_debias(self) -> float:
        """The smallest ``S[t]``: ``S[1] = η`` (with γ ≤ β, ``S[t]`` rises to the DC gain), 1 when off."""
        return self.eta if self.debias else 1.0

    @property
    def dc_gain(self) -> float:
        """``H(1) = η (1 − γ)/(1 − β)``: the filter's gain for a constant gradient, and the largest ``S[t]``."""
        return self.eta * (1.0 - self.gamma) / (1.0 - self.beta)

    def _check_range(self, eta_given: Any) -> None:
        """Refuse settings whose step multiplies by a number beyond float32's range (or adds an ε
        that rounds away): the step would overflow, or give 0/0, whatever the gradients."""
        filter_settings = f"gamma = {self.gamma:g}, eta = {eta_given!r} and betas[0] = {self.beta:g}"
        S_max = self.dc_gain if self.debias else 1.0
        factors = {
            (filter_settings, "the gain η"): self.eta,
            (filter_settings, "ηγ"): self.eta * abs(self.gamma),
            (filter_settings, "the DC gain η(1 − γ)/(1 − β)"): self.dc_gain,
            (filter_settings, "K = η(β − γ)/(1 − β)"): abs(self.filter_state_gain),
            (filter_settings, "1/S[1] (the step size's largest factor)"): 1.0 / self.smallest_filter_debias,
            (filter_settings, "S[t]/sqrt(1 − β_a)"): S_max / math.sqrt(1.0 - self.beta_a),
            (f"eps = {self.eps:g}", "ε"): self.eps,
            (f"eps = {self.eps:g}", "ε·S[t]"): self.eps * S_max,
            (f"eps = {self.eps:g} with repeat_eps", "(1 − β_a) ε²"): (
                (1.0 - self.beta_a) * self.eps * self.eps if self.repeat_eps else 0.0),
            (f"weight_decay = {self.weight_decay:g}", "ρ"): self.weight_decay,
        }
        for (settings, what), value in factors.items():
            if not value <= FLOAT32_MAX:
                raise ValueError(
                    f"{settings}: the step would multiply by {what} = {value:.3g}, beyond float32's range "
                    f"({FLOAT32_MAX:.3g}), and overflow; choose smaller magnitudes"
                )
        smallest = self.eps * min(1.0, self.smallest_filter_debias)
        if smallest < FLOAT32_TINY:
            raise ValueError(
                f"eps = {self.eps:g} (with eta = {eta_given!r}, η = {self.eta:.3g}) adds {smallest:.3g} to the "
                f"denominator, below float32's smallest normal number ({FLOAT32_TINY:.3g}): a zero gradient "
                "would give 0/0; choose a larger eps"
            )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> "AutoSGMConfig":
        """Validate the settings stored in a param group (readable keys) and build the config."""
        betas = _tuple("betas", group["betas"], (2,))
        beta = _pole("betas[0] (the filter pole β)", betas[0])
        beta_a = _pole("betas[1] (the moment pole β_a)", betas[1])
        gamma = _finite("gamma", group["gamma"])
        if gamma > beta:
            raise ValueError(
                f"gamma (the filter zero γ = {gamma}) must not exceed the pole β = {beta}: "
                "γ > β is not a low-pass filter (γ = β is a pure gain)"
            )
        if gamma >= 1.0:
            raise ValueError(f"gamma must be < 1, got {gamma}")
        eta = group["eta"]
        if eta is None:
            eta = default_eta(beta, gamma)
        else:
            eta = _real("eta", eta)
            if not (eta > 0.0 and math.isfinite(eta)):
                raise ValueError(f"eta (the filter gain) must be a positive finite number, got {eta}")
        normalize = _flag("normalize", group["normalize"])
        numerator = numerator_name(group["numerator"])
        if not normalize and numerator != "unity":
            raise ValueError(
                f"numerator={numerator!r} needs normalize=True (aoptlr): with a constant oracle a = d = 1"
            )
        mode = _choice("numerator_mode", group["numerator_mode"], NUMERATOR_MODES)
        c0 = _finite("zero_tensor_start", group["zero_tensor_start"])
        if not c0 >= 0.0:
            raise ValueError(f"zero_tensor_start (c₀ of an all-zero tensor) must be >= 0, got {c0}")
        eps = _finite("eps", group["eps"])
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        wd = _real("weight_decay", group["weight_decay"])
        if not (wd >= 0.0 and math.isfinite(wd)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {wd}")
        window = group["window"]
        if window is not None:
            if isinstance(window, Mapping):
                window = Window.from_dict(dict(window))
            elif not isinstance(window, Window):
                raise TypeError(f"window must be a Window, its to_dict() form, or None; got {type(window).__name__}")
            if not window.active:
                window = None
        matrix_settings = _matrix_settings(group, numerator, normalize)
        cfg = cls(
            beta=beta,
            beta_a=beta_a,
            gamma=gamma,
            eta=eta,
            beta_n=_pole("beta_n", group["beta_n"]),
            debias=_flag("debias", group["debias"]),
            normalize=normalize,
            numerator=numerator,
            numerator_mode=mode,
            zero_tensor_start=c0,
            eps=eps,
            repeat_eps=_flag("repeat_eps", group["repeat_eps"]),
            weight_decay=wd,
            decoupled_weight_decay=_flag("decoupled_weight_decay", group["decoupled_weight_decay"]),
            window=window,
            maximize=_flag("maximize", group["maximize"]),
            nonfinite=_choice("nonfinite", group["nonfinite"], NONFINITE_POLICIES),
            **matrix_settings,
        )
        cfg._check_range(group["eta"])
        return cfg


def _matrix_settings(group: Mapping[str, Any], numerator: str, normalize: bool) -> dict[str, Any]:
    """Validate the matrix oracle's settings (spec §9), also in a group whose oracle is ``"element"``
    (where they have no effect), so that a bad value is reported where it is written."""
    oracle = _choice("oracle", group["oracle"], ORACLES)
    method = group["matrix_method"]
    if not isinstance(method, str):
        raise TypeError(f"matrix_method must be a str, got {type(method).__name__} {method!r}")
    method = _choice("matrix_method", method, _matrix.METHODS)
    iters = group["matrix_iters"]
    if iters is not None:
        if isinstance(iters, bool) or not isinstance(iters, numbers.Integral):
            raise TypeError(f"matrix_iters must be an int or None, got {type(iters).__name__} {iters!r}")
        iters = int(iters)
        if method == "eigh":
            raise ValueError("matrix_iters does not apply to matrix_method='eigh' (leave it None)")
        if iters < 1:
            raise ValueError(f"matrix_iters must be >= 1, got {iters}")
    eps = group["matrix_eps"]
    if eps is not None:
        eps = _finite("matrix_eps", eps)
        if not eps >= 0.0:
            raise ValueError(f"matrix_eps (ε of M + εI) must be >= 0, got {eps}")
        if method == "muon-quintic" and not eps > 0.0:
            raise ValueError("matrix_eps of matrix_method='muon-quintic' (the floor of ‖V‖_F) must be > 0")
    pole = _pole("matrix_pole", group["matrix_pole"])
    if method == "muon-quintic" and pole != 0.0:
        raise ValueError(
            f"matrix_method='muon-quintic' orthogonalises V itself and has no M^(-1/2): it needs matrix_pole=0 "
            f"(M = V Vᵀ), got matrix_pole={pole}; use 'newton-schulz', 'lakic' or 'eigh' with an averaged M"
        )
    scale = group["matrix_lr_scale"]
    if scale is not None and not isinstance(scale, str):
        raise TypeError(f"matrix_lr_scale must be None or a str, got {type(scale).__name__} {scale!r}")
    scale = _choice("matrix_lr_scale", scale, MATRIX_LR_SCALES)
    if oracle == "matrix":
        if not normalize:
            raise ValueError(
                "oracle='matrix' needs normalize=True: the matrix M^(-1/2) is the oracle's normalisation "
                "(normalize=False is the constant oracle a = d = 1)"
            )
        if numerator == "corr":
            raise ValueError(
                "numerator='corr' (E[ḡ²] of the moment's normalised gradient) is not defined for oracle='matrix': "
                "use 'unity' or a 'parcor-*' numerator"
            )
    return dict(oracle=oracle, matrix_method=method, matrix_iters=iters, matrix_eps=eps, matrix_pole=pole,
                matrix_lr_scale=scale)  # fmt: skip



def check_lr(lr: Any, cfg: AutoSGMConfig | None = None) -> None:
    """``lr`` (μ, the trust-region constant) is a number or a 0-d tensor, >= 0; with ``cfg``, the
    largest step size it gives, ``μ/S[1]``, is within float32's range."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("lr as a tensor must have one element")
        value = float(lr.detach().cpu())
    else:
        value = _real("lr", lr)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"lr must be a finite number >= 0, got {value}")
    if cfg is not None and not value / cfg.smallest_filter_debias <= FLOAT32_MAX:
        raise ValueError(
            f"lr = {value:g} gives the step size μ/S[1] = {value / cfg.smallest_filter_debias:.3g}, beyond float32's "
            f"range ({FLOAT32_MAX:.3g}); choose a smaller lr"
        )


# ----------------------------------------------------------------------------------------------
# the seed's tuples
# ----------------------------------------------------------------------------------------------
def parse_seed_tuples(
    lr_cfg: Any = None,
    beta_cfg: Any = None,
    rc_cfg: Any = None,
    wd_cfg: Any = None,
    eps_cfg: Any = None,
) -> dict[str, Any]:
    """Translate the seed's configuration tuples into readable keyword settings.

    ``lr_cfg = (aoptlr, lr_init, num_lrc)``,
    ``beta_cfg = (beta_n, beta_a, beta_i, gamma_i, eta_i, debias)`` (``eta_i = 0``: default gain),
    ``rc_cfg = (rcm, inseq, x, n, m, tau, spe, cfact, e)``, ``wd_cfg = (wd_cte, wd_lvl)``,
    ``eps_cfg = (eps,)`` or ``(eps, repeat_eps)``. Tuples left as ``None`` set nothing.
    """
    out: dict[str, Any] = {}
    if lr_cfg is not None:
        aoptlr, lr_init, num_lrc = _tuple("lr_cfg", lr_cfg, (3,))
        out["normalize"] = _flag("lr_cfg[0] (aoptlr)", aoptlr)
        out["lr"] = _real("lr_cfg[1] (lr_init)", lr_init)
        if isinstance(num_lrc, bool) or not isinstance(num_lrc, numbers.Integral):
            raise TypeError(f"lr_cfg[2] (num_lrc) must be an int code 0-4, got {num_lrc!r}")
        out["numerator"] = numerator_name(num_lrc, "lr_cfg[2] (num_lrc)")
        if not out["normalize"] and num_lrc != 0:
            raise ValueError(
                f"lr_cfg[2] (num_lrc={num_lrc}) has no effect when lr_cfg[0] (aoptlr) is False; use 0"
            )
    if beta_cfg is not None:
        beta_n, beta_a, beta_i, gamma_i, eta_i, debias = _tuple("beta_cfg", beta_cfg, (6,))
        out["beta_n"] = _pole("beta_cfg[0] (beta_n)", beta_n)
        out["betas"] = (_pole("beta_cfg[2] (beta_i)", beta_i), _pole("beta_cfg[1] (beta_a)", beta_a))
        out["gamma"] = _real("beta_cfg[3] (gamma_i)", gamma_i)
        eta_i = _real("beta_cfg[4] (eta_i)", eta_i)
        if eta_i < 0:
            raise ValueError(f"beta_cfg[4] (eta_i) must be 0 (default gain) or > 0, got {eta_i}")
        out["eta"] = None if eta_i == 0 else eta_i
        out["debias"] = _flag("beta_cfg[5] (debias)", debias)
    if rc_cfg is not None:
        out["window"] = Window.from_seed(tuple(_tuple("rc_cfg", rc_cfg, (9,))))
    if wd_cfg is not None:
        wd_cte, wd_lvl = _tuple("wd_cfg", wd_cfg, (2,))
        out["weight_decay"] = _real("wd_cfg[0] (wd_cte)", wd_cte)
        if isinstance(wd_lvl, bool) or wd_lvl not in (0, 1):
            raise ValueError(f"wd_cfg[1] (wd_lvl) must be 0 (coupled) or 1 (decoupled), got {wd_lvl!r}")
        out["decoupled_weight_decay"] = wd_lvl == 1
    if eps_cfg is not None:
        items = _tuple("eps_cfg", eps_cfg, (1, 2))
        out["eps"] = _real("eps_cfg[0] (eps)", items[0])
        out["repeat_eps"] = _flag("eps_cfg[1] (repeat_eps)", items[1]) if len(items) == 2 else False
    return out
