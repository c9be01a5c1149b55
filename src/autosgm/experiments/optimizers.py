"""Optimizer configurations of the experiments: one small, hashable dataclass per run.

An :class:`OptimizerConfig` names a point of the AutoSGM design space (numerator, filter zero γ,
pole β, …) or a baseline — ``torch.optim.AdamW``, ``torch.optim.SGD``, or one from its authors' package
(Prodigy, Schedule-Free AdamW, D-Adapt Adam, Lion: the ``baselines`` extra), or ``torch.optim.Muon``
for the weight matrices beside ``torch.optim.AdamW`` for the rest (``muon``, torch >= 2.9) — and builds
the optimizer and its learning-rate window for a model. An AutoSGM point may use the matrix oracle
(``oracle="matrix"``, docs/matrix-oracle.md). Its :meth:`~OptimizerConfig.key` is a stable text key: two
configurations with the same key train identically, which is what makes sweeps resumable.

The filter zero γ is a number or a named design point of the filter ``H(z) = η (1 − γ z⁻¹)/(1 − β z⁻¹)``:

* ``"0"``   — γ = 0 (heavy ball / Adam);
* ``"nag"`` — γ = β/(1+β) (Nesterov's accelerated gradient);
* ``"mls"`` — γ = 1 − √(2(1−β)) (≈ 0.553 for β = 0.9).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from autosgm import matrix as _matrix
from autosgm.config import NUMERATORS, ZERO_TENSOR_START
from autosgm.design import GAMMA_POINTS, nesterov_eta
from autosgm.groups import weight_decay_groups
from autosgm.optimizer import DEFAULTS as _AUTOSGM_DEFAULTS

__all__ = [
    "ALL_BASELINES",
    "BASELINES",
    "BASELINES_EXTRA",
    "EXTRA_BASELINES",
    "ESTIMATED_LR",
    "EXTERNAL_OPTIMIZERS",
    "GAMMA_POINTS",
    "LION_SCALE",
    "MUON_LR_SCALE",
    "MUON_TORCH",
    "NUMERATORS",
    "OPTIMIZER_NAMES",
    "ORACLES",
    "SCHEDULEFREE_LR",
    "SCHEDULEFREE_WARMUP",
    "SCHEDULES",
    "ExternalOptimizer",
    "MissingBaselineError",
    "MuonAdamW",
    "OptimizerConfig",
    "baseline_config",
    "external_optimizer_class",
    "format_gamma",
    "muon_class",
    "param_groups",
    "parse_gamma",
    "recommended_lr",
    "recommended_weight_decay",
    "require_optimizers",
    "resolve_gamma",
]


#: ``autosgm`` is the AutoSGM optimizer; ``adamw`` and ``sgd`` are the torch.optim baselines; the others
#: come from their authors' packages (:data:`EXTERNAL_OPTIMIZERS`).
OPTIMIZER_NAMES = ("autosgm", "adamw", "sgd", "prodigy", "schedulefree-adamw", "dadapt-adam", "lion", "muon")

#: Baselines of a sweep or study, by the names of the command line (``sgd-nesterov`` is ``name="sgd"``);
#: the default baselines of ``autosgm robustness``.
BASELINES = ("adamw", "sgd-nesterov", "prodigy", "schedulefree-adamw", "dadapt-adam", "lion")

#: Baselines that are chosen by name only (``--baselines ...,muon``), so that the default studies keep
#: their runs: ``muon`` is ``torch.optim.Muon`` for the weight matrices and ``torch.optim.AdamW`` for
#: every other tensor (:class:`MuonAdamW`).
EXTRA_BASELINES = ("muon",)

#: Every baseline a sweep or study accepts.
ALL_BASELINES = BASELINES + EXTRA_BASELINES

#: AutoSGM's learning-rate oracles: element-wise (the moment ``d``) or the matrix ``M^(−1/2)`` for weight
#: matrices (docs/matrix-oracle.md); the defaults of the matrix settings are the optimizer's.
ORACLES = ("element", "matrix")

#: The learning-rate convention of the matrix steps in the studies (AutoSGM's ``matrix_lr_scale``, Muon's
#: ``adjust_lr_fn``): ``"match_rms_adamw"`` scales the polar factor to the update RMS of AdamW
#: (``0.2 √max(rows, cols)``), so that one learning rate — AdamW's — drives the matrices and the
#: element-wise tensors beside them.
MUON_LR_SCALE = "match_rms_adamw"

#: What the ``muon`` baseline needs.
MUON_TORCH = "torch.optim.Muon (torch >= 2.9)"

#: How to install the baselines that do not ship with torch.
BASELINES_EXTRA = "pip install 'autosgm[baselines]'"

#: Schedule-Free AdamW's default learning rate (its package's) and the share of the run it warms up over.
SCHEDULEFREE_LR = 2.5e-3
SCHEDULEFREE_WARMUP = 0.05

#: Lion takes a learning rate this many times smaller than AdamW's and a weight decay this many times
#: larger, which keeps the decay per step ``lr · λ`` (its authors suggest 3–10×).
LION_SCALE = 3.0

#: The learning rate of the learning-rate-free methods (Prodigy, D-Adapt): a multiplier of their estimate.
ESTIMATED_LR = 1.0


@dataclass(frozen=True)
class ExternalOptimizer:
    """A baseline from another package: its name on the package registry, module and class."""

    package: str
    module: str
    cls: str
    label: str


#: The baselines that come from their authors' packages (the ``baselines`` extra).
EXTERNAL_OPTIMIZERS = {
    "prodigy": ExternalOptimizer("prodigyopt", "prodigyopt", "Prodigy", "Prodigy"),
    "schedulefree-adamw": ExternalOptimizer("schedulefree", "schedulefree", "AdamWScheduleFree", "Schedule-Free AdamW"),
    "dadapt-adam": ExternalOptimizer("dadaptation", "dadaptation", "DAdaptAdam", "D-Adapt Adam"),
    "lion": ExternalOptimizer("lion-pytorch", "lion_pytorch", "Lion", "Lion"),
}


class MissingBaselineError(ImportError):
    """A baseline whose package is not installed; the message names the package and the extra."""


def external_optimizer_class(name: str) -> type:
    """The optimizer class of the external baseline ``name`` (a key of :data:`EXTERNAL_OPTIMIZERS`).

    Raises:
        ValueError: ``name`` is not an external baseline.
        MissingBaselineError: its package is not installed (one line naming ``autosgm[baselines]``).
    """
    if name not in EXTERNAL_OPTIMIZERS:
        raise ValueError(f"name must be one of {tuple(EXTERNAL_OPTIMIZERS)}, got {name!r}")
    spec = EXTERNAL_OPTIMIZERS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise MissingBaselineError(
            f"the {name} baseline needs the package {spec.package}: {BASELINES_EXTRA}"
        ) from None
    return getattr(module, spec.cls)


def muon_class() -> type:
    """``torch.optim.Muon``, or :class:`MissingBaselineError` (one line naming the requirement) on a torch
    without it (< 2.9)."""
    cls = getattr(torch.optim, "Muon", None)
    if cls is None:
        raise MissingBaselineError(f"the muon baseline needs {MUON_TORCH}; this is torch {torch.__version__}")
    return cls


def require_optimizers(names: Any) -> None:
    """Check that every optimizer of ``names`` (config names, baseline names or configurations) can be
    built, before any work: :class:`MissingBaselineError` for the first whose package is missing."""
    for item in names:
        name = item.name if isinstance(item, OptimizerConfig) else item
        if name in EXTERNAL_OPTIMIZERS:
            external_optimizer_class(name)
        elif name == "muon":
            muon_class()


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` for the weight matrices and ``torch.optim.AdamW`` for every other tensor, as
    one optimizer (the split Muon's authors recommend).

    A matrix is a 2-D tensor that :func:`autosgm.matrix.gets_matrix_oracle` accepts (both dims in
    ``[4, 2048]``: the tensors AutoSGM's matrix oracle steps as matrices, less conv kernels, which torch's
    Muon refuses); biases, norm gains, tiny matrices, large embeddings and conv kernels go to AdamW. Each
    param group of ``params`` is split in two, keeping its settings (e.g. its ``weight_decay``).

    The two optimizers share their param-group dicts with this one: :attr:`param_groups` is Muon's groups
    followed by AdamW's, so a learning-rate scheduler (``WindowLR``) drives both. ``lr`` is one learning
    rate for both: Muon's ``adjust_lr_fn="match_rms_adamw"`` (the default here) scales its step to AdamW's
    update RMS. ``momentum`` is Muon's (default ``betas[0]``), with Nesterov; ``betas`` and ``eps`` are
    AdamW's. :attr:`muon` and :attr:`adamw` are the two optimizers (None when it has no tensor);
    ``state_dict`` holds both.
    """

    def __init__(self, params: Any, lr: float = 1e-3, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float | None = None,
                 nesterov: bool = True, adjust_lr_fn: str | None = MUON_LR_SCALE) -> None:  # fmt: skip
        muon_cls = muon_class()
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        matrices, others = [], []
        for group in groups:
            tensors = [group["params"]] if isinstance(group["params"], torch.Tensor) else list(group["params"])
            mats = [p for p in tensors if p.ndim == 2 and _matrix.gets_matrix_oracle(p)]
            rest = [p for p in tensors if not (p.ndim == 2 and _matrix.gets_matrix_oracle(p))]
            for part, chosen in ((matrices, mats), (others, rest)):
                if chosen:
                    part.append({**group, "params": chosen})
        self.muon = None if not matrices else muon_cls(
            matrices, lr=lr, weight_decay=weight_decay, momentum=betas[0] if momentum is None else momentum,
            nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)  # fmt: skip
        self.adamw = None if not others else torch.optim.AdamW(others, lr=lr, betas=betas, eps=eps,
                                                                weight_decay=weight_decay)  # fmt: skip
        parts = [opt for opt in (self.muon, self.adamw) if opt is not None]
        super().__init__([g for opt in parts for g in opt.param_groups], {"lr": lr, "weight_decay": weight_decay})
        self.param_groups = [g for opt in parts for g in opt.param_groups]  # the very dicts of the two

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Muon (when the model has matrices), then AdamW (when it has other tensors)."""
        return [opt for opt in (self.muon, self.adamw) if opt is not None]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One step of both optimizers (``closure`` is evaluated once, with gradients)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """``{"muon": ..., "adamw": ...}``: the state of each optimizer (None for a missing one)."""
        return {name: None if opt is None else opt.state_dict()
                for name, opt in (("muon", self.muon), ("adamw", self.adamw))}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` of an optimizer over the same parameters."""
        for name, opt in (("muon", self.muon), ("adamw", self.adamw)):
            if (opt is None) != (state_dict.get(name) is None):
                raise ValueError(f"the state has {'no' if state_dict.get(name) is None else 'a'} {name} part, "
                                 f"this optimizer {'has' if opt is not None else 'has not'}")  # fmt: skip
        for name, opt in (("muon", self.muon), ("adamw", self.adamw)):
            if opt is not None:
                opt.load_state_dict(state_dict[name])

#: Window (learning-rate schedule) over the whole run: cosine annealing from μ to 0, or constant μ.
SCHEDULES = ("cosine", "constant")


def parse_gamma(value: float | int | str) -> float | str:
    """A γ given on the command line or in a config: a number, or one of ``"0"``, ``"nag"``, ``"mls"``.

    Numbers come back as floats (``"0"`` and ``"0.0"`` both give ``0.0``), names lower-cased.
    """
    if isinstance(value, bool):
        raise TypeError(f"gamma must be a number or one of {sorted(GAMMA_POINTS)}, got {value!r}")
    if isinstance(value, (int, float)):
        gamma = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("nag", "mls"):
            return text
        try:
            gamma = float(text)
        except ValueError:
            raise ValueError(
                f"gamma must be a number or one of 'nag', 'mls', '0'; got {value!r}"
            ) from None
    else:
        raise TypeError(f"gamma must be a number or a string, got {type(value).__name__}")
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {value!r}")
    return gamma


def resolve_gamma(gamma: float | str, beta: float) -> float:
    """The numerical filter zero: named points are evaluated at the pole ``beta``."""
    parsed = parse_gamma(gamma)
    if isinstance(parsed, str):
        return float(GAMMA_POINTS[parsed](beta))
    return parsed


def format_gamma(gamma: float | str, beta: float) -> str:
    """Short label of a filter zero, e.g. ``'γ=0'``, ``'γ=0.474 (nag)'``."""
    parsed = parse_gamma(gamma)
    value = resolve_gamma(parsed, beta)
    text = f"γ={value:.3g}"
    return f"{text} ({parsed})" if isinstance(parsed, str) else text


#: Two parameter groups, no weight decay for vectors: :func:`autosgm.weight_decay_groups`.
param_groups = weight_decay_groups


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimizer configuration of an experiment.

    Attributes:
        name: ``"autosgm"`` (the AutoSGM optimizer), ``"adamw"`` (``torch.optim.AdamW``), ``"sgd"``
            (``torch.optim.SGD``, momentum β, optionally Nesterov), or an external baseline:
            ``"prodigy"`` (``prodigyopt.Prodigy``), ``"schedulefree-adamw"``
            (``schedulefree.AdamWScheduleFree``), ``"dadapt-adam"`` (``dadaptation.DAdaptAdam``),
            ``"lion"`` (``lion_pytorch.Lion``), ``"muon"`` (``torch.optim.Muon`` for the weight matrices,
            ``torch.optim.AdamW`` for the rest: :class:`MuonAdamW`). Use the class methods for the
            recommended settings.
        lr: the trust-region constant μ (the peak learning rate of the window).
        numerator: AutoSGM's numerator ``a`` (``"unity"`` = Adam-like, or a ``"parcor-*"``/``"corr"`` estimator).
        gamma: the filter zero γ, a number or ``"nag"``/``"mls"`` (see :data:`GAMMA_POINTS`).
        beta: the filter pole β (AdamW's β₁, SGD's momentum, Lion's β₁, Muon's momentum).
        beta_a: the pole of the second-moment estimator (AdamW's β₂; Lion's β₂, its momentum's pole).
        eta: the filter gain η; None means the unit-DC-gain default ``(1 − β)/(1 − γ)``.
        debias: divide the filter output by its step response (Adam's bias correction).
        normalize: False gives AutoSGM's constant oracle (``a = d = 1``: SGD, heavy ball, Nesterov).
        nesterov: Nesterov momentum for ``name="sgd"``.
        weight_decay: ρ; decoupled (AdamW convention) for ``autosgm``, ``prodigy`` and ``dadapt-adam``
            when ``decoupled``, always for ``adamw``, ``schedulefree-adamw`` and ``lion``, coupled (L2
            added to the gradient) for ``sgd``. Vectors are never decayed.
        decoupled: decoupled weight decay for ``autosgm``, ``prodigy`` and ``dadapt-adam`` (must be
            True for ``schedulefree-adamw`` and ``lion``, which have no other kind).
        eps: ε added to the root of the second moment.
        zero_tensor_start: c₀ of an all-zero tensor under a ``parcor-*`` numerator (AutoSGM's
            ``zero_tensor_start``; 0 is the spec's absorbing state, in which such a tensor never moves).
            Part of :meth:`key` for the ``parcor-*`` numerators only.
        schedule: the window over the run, ``"cosine"`` (anneal μ → 0) or ``"constant"``
            (``"constant"`` for ``schedulefree-adamw``, which needs no schedule).
        warmup: share of the run over which ``schedulefree-adamw`` warms its learning rate up
            linearly (its ``warmup_steps``); 0 for every other optimizer, which follows the window.
            Part of :meth:`key` and :meth:`to_dict` for ``schedulefree-adamw`` only.
        oracle: AutoSGM's learning-rate oracle, ``"element"`` (the default) or ``"matrix"``: the weight
            matrices get ``M^(−1/2) V``, every other tensor the element-wise step of the same settings
            (docs/matrix-oracle.md). Needs ``normalize=True`` and a numerator other than ``corr``.
        matrix_method, matrix_pole: the matrix oracle's ``M^(−1/2)`` method and the pole of its average
            of ``V Vᵀ`` (defaults: AutoSGM's). Only with ``oracle="matrix"``.
        matrix_lr_scale: the learning-rate factor of a matrix (AutoSGM's ``matrix_lr_scale``, Muon's
            ``adjust_lr_fn``): None (AutoSGM's default, 1), ``"original"`` or ``"match_rms_adamw"``
            (:data:`MUON_LR_SCALE`, what the studies use). Only with ``oracle="matrix"`` and for ``muon``.
            ``oracle`` and the ``matrix_*`` fields are part of :meth:`key` and :meth:`to_dict` only where
            they act (so the keys of element-wise configurations are those of before).
        label: display name in tables and figures; not part of :meth:`key`.
    """

    name: str = "autosgm"
    lr: float = 1e-3
    numerator: str = "unity"
    gamma: float | str = 0.0
    beta: float = 0.9
    beta_a: float = 0.999
    eta: float | None = None
    debias: bool = True
    normalize: bool = True
    nesterov: bool = False
    weight_decay: float = 0.0
    decoupled: bool = True
    eps: float = 1e-8
    zero_tensor_start: float = ZERO_TENSOR_START
    schedule: str = "cosine"
    warmup: float = 0.0
    oracle: str = _AUTOSGM_DEFAULTS["oracle"]
    matrix_method: str = _AUTOSGM_DEFAULTS["matrix_method"]
    matrix_pole: float = _AUTOSGM_DEFAULTS["matrix_pole"]
    matrix_lr_scale: str | None = _AUTOSGM_DEFAULTS["matrix_lr_scale"]
    label: str | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZER_NAMES:
            raise ValueError(f"name must be one of {OPTIMIZER_NAMES}, got {self.name!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        object.__setattr__(self, "lr", float(self.lr))
        if self.numerator not in NUMERATORS:
            raise ValueError(f"numerator must be one of {NUMERATORS}, got {self.numerator!r}")
        object.__setattr__(self, "gamma", parse_gamma(self.gamma))
        for attr in ("beta", "beta_a"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{attr} must be in [0, 1), got {value!r}")
            object.__setattr__(self, attr, float(value))
        if self.eta is not None:
            if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not self.eta > 0:
                raise ValueError(f"eta must be None or a positive number, got {self.eta!r}")
            object.__setattr__(self, "eta", float(self.eta))
        if not isinstance(self.weight_decay, (int, float)) or isinstance(self.weight_decay, bool) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}")
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        if not isinstance(self.eps, (int, float)) or isinstance(self.eps, bool) or not self.eps > 0:
            raise ValueError(f"eps must be a positive number, got {self.eps!r}")
        object.__setattr__(self, "eps", float(self.eps))
        c0 = self.zero_tensor_start
        if not isinstance(c0, (int, float)) or isinstance(c0, bool) or not (c0 >= 0 and math.isfinite(c0)):
            raise ValueError(f"zero_tensor_start must be a finite number >= 0, got {c0!r}")
        object.__setattr__(self, "zero_tensor_start", float(c0))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        self._check_baseline_fields()
        self._check_matrix_fields()
        if self.name == "autosgm":
            gamma = self.gamma_value
            if gamma > self.beta:
                raise ValueError(
                    f"gamma must not exceed beta (the filter would not be low-pass): gamma={gamma:.4g}, beta={self.beta:.4g}"
                )

    def _check_baseline_fields(self) -> None:
        """The fields that only some optimizers have: ``warmup``, ``schedule``, ``decoupled``."""
        warmup = self.warmup
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup must be a share of the run in [0, 1), got {warmup!r}")
        object.__setattr__(self, "warmup", float(warmup))
        if self.name != "schedulefree-adamw" and self.warmup:
            raise ValueError(f"warmup applies to schedulefree-adamw only (the others follow the window), "
                             f"got warmup={warmup!r} for {self.name}")  # fmt: skip
        if self.name == "schedulefree-adamw" and self.schedule != "constant":
            raise ValueError(f"schedule must be 'constant' for schedulefree-adamw, which runs without a "
                             f"schedule; got {self.schedule!r}")  # fmt: skip
        if self.name in ("schedulefree-adamw", "lion") and not self.decoupled:
            raise ValueError(f"decoupled must be True for {self.name}: it has decoupled weight decay only")

    def _check_matrix_fields(self) -> None:
        """``oracle`` and the ``matrix_*`` fields: valid values, and non-default ones only where they act."""
        if self.oracle not in ORACLES:
            raise ValueError(f"oracle must be one of {ORACLES}, got {self.oracle!r}")
        if self.matrix_method not in _matrix.METHODS:
            raise ValueError(f"matrix_method must be one of {_matrix.METHODS}, got {self.matrix_method!r}")
        pole = self.matrix_pole
        if isinstance(pole, bool) or not isinstance(pole, (int, float)) or not 0.0 <= pole < 1.0:
            raise ValueError(f"matrix_pole must be in [0, 1), got {pole!r}")
        object.__setattr__(self, "matrix_pole", float(pole))
        if self.matrix_lr_scale is not None and self.matrix_lr_scale not in _matrix.MUON_LR_MODES:
            raise ValueError(f"matrix_lr_scale must be None or one of {_matrix.MUON_LR_MODES}, "
                             f"got {self.matrix_lr_scale!r}")  # fmt: skip
        matrix = self.name == "autosgm" and self.oracle == "matrix"
        if self.oracle != "element" and self.name != "autosgm":
            raise ValueError(f"oracle applies to autosgm only, got oracle={self.oracle!r} for {self.name}")
        stray = [f for f in ("matrix_method", "matrix_pole") if getattr(self, f) != _AUTOSGM_DEFAULTS[f]]
        if self.matrix_lr_scale != _AUTOSGM_DEFAULTS["matrix_lr_scale"] and self.name != "muon":
            stray.append("matrix_lr_scale")
        if stray and not matrix:
            raise ValueError(f"{', '.join(stray)} apply to oracle='matrix' only"
                             f"{' (and matrix_lr_scale to muon)' if 'matrix_lr_scale' in stray else ''}, "
                             f"got them for {self.name} with oracle={self.oracle!r}")  # fmt: skip
        if matrix:
            if not self.normalize:
                raise ValueError("oracle='matrix' needs normalize=True (M is the oracle's normalisation)")
            if self.numerator == "corr":
                raise ValueError("oracle='matrix' refuses numerator='corr' (a matrix has no element-wise moment)")
            if self.matrix_method == "muon-quintic" and self.matrix_pole > 0:
                raise ValueError("matrix_method='muon-quintic' needs matrix_pole=0 (it computes no M^(-1/2))")

    # ------------------------------------------------------------------ design points
    @classmethod
    def autosgm(cls, lr: float, numerator: str = "unity", gamma: float | str = 0.0, **kw: Any) -> "OptimizerConfig":
        """AutoSGM with the normalized oracle: numerator ``a``, filter zero γ (unity, γ = 0: Adam)."""
        return cls(name="autosgm", lr=lr, numerator=numerator, gamma=gamma, **kw)

    @classmethod
    def nesterov_point(cls, lr: float, beta: float = 0.9, **kw: Any) -> "OptimizerConfig":
        """AutoSGM at Nesterov's point: constant oracle, γ = β/(1+β), η = 1+β, no debias, coupled weight
        decay (= torch SGD Nesterov)."""
        kw.setdefault("label", "AutoSGM Nesterov")
        kw.setdefault("decoupled", False)
        return cls(name="autosgm", lr=lr, gamma="nag", beta=beta, eta=nesterov_eta(beta), debias=False, normalize=False,
                   **kw)

    @classmethod
    def heavy_ball_point(cls, lr: float, beta: float = 0.9, **kw: Any) -> "OptimizerConfig":
        """AutoSGM at Polyak's heavy ball: constant oracle, γ = 0, η = 1, no debias, coupled weight decay
        (= torch SGD with momentum)."""
        kw.setdefault("label", "AutoSGM heavy ball")
        kw.setdefault("decoupled", False)
        return cls(name="autosgm", lr=lr, gamma=0.0, beta=beta, eta=1.0, debias=False, normalize=False, **kw)

    @classmethod
    def torch_adamw(cls, lr: float, weight_decay: float = 0.0, **kw: Any) -> "OptimizerConfig":
        """The baseline ``torch.optim.AdamW(lr, betas=(beta, beta_a), eps, weight_decay)``."""
        kw.setdefault("label", "torch AdamW")
        return cls(name="adamw", lr=lr, weight_decay=weight_decay, **kw)

    @classmethod
    def torch_sgd_nesterov(cls, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, **kw: Any) -> "OptimizerConfig":
        """The baseline ``torch.optim.SGD(lr, momentum, nesterov=True, weight_decay)`` (coupled decay)."""
        kw.setdefault("label", "torch SGD-Nesterov")
        return cls(name="sgd", lr=lr, beta=momentum, nesterov=True, weight_decay=weight_decay, **kw)

    @classmethod
    def prodigy(cls, lr: float = ESTIMATED_LR, weight_decay: float = 0.0, **kw: Any) -> "OptimizerConfig":
        """``prodigyopt.Prodigy`` as its authors recommend: lr 1 (a multiplier of the step size it
        estimates), decoupled weight decay as in AdamW, and the cosine window of the task."""
        kw.setdefault("label", EXTERNAL_OPTIMIZERS["prodigy"].label)
        return cls(name="prodigy", lr=lr, weight_decay=weight_decay, **kw)

    @classmethod
    def dadapt_adam(cls, lr: float = ESTIMATED_LR, weight_decay: float = 0.0, **kw: Any) -> "OptimizerConfig":
        """``dadaptation.DAdaptAdam`` as its authors recommend: lr 1 (a multiplier of its estimate),
        AdamW-style decoupled weight decay (``decouple=True``), the cosine window of the task."""
        kw.setdefault("label", EXTERNAL_OPTIMIZERS["dadapt-adam"].label)
        return cls(name="dadapt-adam", lr=lr, weight_decay=weight_decay, **kw)

    @classmethod
    def schedulefree_adamw(cls, lr: float = SCHEDULEFREE_LR, weight_decay: float = 0.0,
                           warmup: float = SCHEDULEFREE_WARMUP, **kw: Any) -> "OptimizerConfig":
        """``schedulefree.AdamWScheduleFree`` as its authors recommend: no schedule (constant window),
        a linear warm-up over the first ``warmup`` of the run, and ``optimizer.eval()`` /
        ``optimizer.train()`` around every evaluation (the runner does this)."""
        kw.setdefault("label", EXTERNAL_OPTIMIZERS["schedulefree-adamw"].label)
        kw.setdefault("schedule", "constant")
        return cls(name="schedulefree-adamw", lr=lr, weight_decay=weight_decay, warmup=warmup, **kw)

    @classmethod
    def lion(cls, lr: float, weight_decay: float = 0.0, beta: float = 0.9, beta_a: float = 0.99,
             **kw: Any) -> "OptimizerConfig":
        """``lion_pytorch.Lion(lr, betas=(beta, beta_a), weight_decay)`` with its authors' betas
        (0.9, 0.99) and the cosine window of the task. Give it a learning rate :data:`LION_SCALE` times
        smaller than AdamW's and a weight decay as many times larger (:func:`baseline_config` does)."""
        kw.setdefault("label", EXTERNAL_OPTIMIZERS["lion"].label)
        return cls(name="lion", lr=lr, weight_decay=weight_decay, beta=beta, beta_a=beta_a, **kw)

    @classmethod
    def muon(cls, lr: float, weight_decay: float = 0.0, **kw: Any) -> "OptimizerConfig":
        """``torch.optim.Muon`` for the weight matrices (momentum ``beta``, Nesterov, ``adjust_lr_fn`` =
        :data:`MUON_LR_SCALE`) and ``torch.optim.AdamW`` (``betas=(beta, beta_a)``, ``eps``) for the other
        tensors, one learning rate and one decoupled weight decay for both (:class:`MuonAdamW`): Muon's
        authors' split, at AdamW's learning rate."""
        kw.setdefault("label", "torch Muon + AdamW")
        kw.setdefault("nesterov", True)
        kw.setdefault("matrix_lr_scale", MUON_LR_SCALE)
        return cls(name="muon", lr=lr, weight_decay=weight_decay, **kw)

    # ------------------------------------------------------------------ properties
    @property
    def gamma_value(self) -> float:
        """The numerical filter zero (named points evaluated at :attr:`beta`)."""
        return resolve_gamma(self.gamma, self.beta)

    @property
    def is_baseline(self) -> bool:
        """True for the torch baselines and for AutoSGM's constant-oracle points."""
        return self.name != "autosgm" or not self.normalize

    @property
    def display(self) -> str:
        """The label, or a generated one such as ``'AutoSGM parcor-markov γ=0.474 (nag)'``."""
        if self.label:
            return self.label
        if self.name == "adamw":
            return "torch AdamW"
        if self.name == "sgd":
            return "torch SGD-Nesterov" if self.nesterov else "torch SGD"
        if self.name in EXTERNAL_OPTIMIZERS:
            return EXTERNAL_OPTIMIZERS[self.name].label
        if self.name == "muon":
            return "torch Muon + AdamW"
        oracle = self.numerator if self.normalize else "constant oracle"
        text = f"AutoSGM {oracle} {format_gamma(self.gamma, self.beta)}"
        if self.oracle == "matrix":
            details = [self.matrix_method] if self.matrix_method != _AUTOSGM_DEFAULTS["matrix_method"] else []
            details += [f"pole {self.matrix_pole:g}"] if self.matrix_pole else []
            text += f" (matrix{', ' + ', '.join(details) if details else ''})"
        return text

    def _inactive_fields(self) -> set[str]:
        """Fields that do not act for this optimizer and are left out of :meth:`key` (so that adding
        them kept the keys of earlier configurations): ``zero_tensor_start`` outside AutoSGM's
        ``parcor-*`` numerators, ``warmup`` outside ``schedulefree-adamw``, ``oracle`` and the
        ``matrix_*`` fields outside AutoSGM's matrix oracle (``matrix_lr_scale`` also for ``muon``)."""
        inactive = set()
        if self.name != "autosgm" or not self.numerator.startswith("parcor"):
            inactive.add("zero_tensor_start")
        if self.name != "schedulefree-adamw":
            inactive.add("warmup")
        if self.name != "autosgm" or self.oracle == "element":
            inactive |= {"oracle", "matrix_method", "matrix_pole"}
            if self.name != "muon":
                inactive.add("matrix_lr_scale")
        return inactive

    def key(self) -> str:
        """A stable text key of everything that changes training (all fields but ``label``;
        ``zero_tensor_start``, ``warmup``, ``oracle`` and ``matrix_*`` only where they act, see
        :meth:`_inactive_fields`)."""
        skip = {"name", "label"} | self._inactive_fields()
        parts = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self) if f.name not in skip]
        return self.name + ":" + ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (round-trips through :meth:`from_dict`); ``warmup``, ``oracle``
        and ``matrix_*`` only where they act, so that the records of the other configurations read (and
        group in reports) as before."""
        data = asdict(self)
        for name in self._inactive_fields() - {"zero_tensor_start"}:
            del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OptimizerConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown optimizer config fields: {sorted(unknown)}")
        return cls(**data)

    def with_(self, **changes: Any) -> "OptimizerConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ building
    def window(self, total_steps: int):
        """The learning-rate window over ``total_steps`` iterations (None for a constant schedule)."""
        if self.schedule == "constant" or total_steps < 2:  # a one-step cosine window is F = 1
            return None
        from autosgm.windows import Window

        return Window(shape="cosine", order=2.0, tau=1, spe=int(total_steps), unit="iteration")

    def warmup_steps(self, total_steps: int) -> int:
        """Warm-up steps of ``schedulefree-adamw`` in a run of ``total_steps`` (0 for the others)."""
        return int(round(self.warmup * total_steps))

    def build(self, model: torch.nn.Module, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer for ``model`` and its scheduler (None when the optimizer applies the window itself).

        AutoSGM applies the window inside its step; the baselines get the same window through
        ``autosgm.windows.WindowLR``, so every configuration follows the same schedule μ·F[t] (none for
        ``schedulefree-adamw``). Raises :class:`MissingBaselineError` when an external baseline's
        package is not installed.
        """
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        groups = param_groups(model, self.weight_decay)
        window = self.window(total_steps)
        if self.name == "autosgm":
            return self._build_autosgm(groups, window), None
        opt = self._build_baseline(groups, total_steps)
        if window is None:
            return opt, None
        from autosgm.windows import WindowLR

        return opt, WindowLR(opt, window)

    def _build_autosgm(self, groups: list[dict[str, Any]], window: Any) -> torch.optim.Optimizer:
        from autosgm import AutoSGM

        matrix = {} if self.oracle == "element" else {
            "oracle": self.oracle, "matrix_method": self.matrix_method, "matrix_pole": self.matrix_pole,
            "matrix_lr_scale": self.matrix_lr_scale}  # fmt: skip
        return AutoSGM(
            groups,
            lr=self.lr,
            betas=(self.beta, self.beta_a),
            gamma=self.gamma_value,
            eta=self.eta,
            debias=self.debias,
            normalize=self.normalize,
            numerator=self.numerator,
            zero_tensor_start=self.zero_tensor_start,
            eps=self.eps,
            weight_decay=self.weight_decay,
            decoupled_weight_decay=self.decoupled,
            window=window,
            **matrix,
        )

    def _build_baseline(self, groups: list[dict[str, Any]], total_steps: int) -> torch.optim.Optimizer:
        """The optimizer of a baseline, without its window; each group keeps its own weight decay."""
        betas = (self.beta, self.beta_a)
        if self.name == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr, betas=betas, eps=self.eps, weight_decay=self.weight_decay)
        if self.name == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.beta, nesterov=self.nesterov,
                                   weight_decay=self.weight_decay)  # fmt: skip
        if self.name == "muon":
            return MuonAdamW(groups, lr=self.lr, betas=betas, eps=self.eps, weight_decay=self.weight_decay,
                             nesterov=self.nesterov, adjust_lr_fn=self.matrix_lr_scale)  # fmt: skip
        cls = external_optimizer_class(self.name)
        if self.name == "schedulefree-adamw":
            return cls(groups, lr=self.lr, betas=betas, eps=self.eps, weight_decay=self.weight_decay,
                       warmup_steps=self.warmup_steps(total_steps))  # fmt: skip
        if self.name == "lion":
            return cls(groups, lr=self.lr, betas=betas, weight_decay=self.weight_decay)
        with contextlib.redirect_stdout(io.StringIO()):  # Prodigy and D-Adapt print a line about the decay
            return cls(groups, lr=self.lr, betas=betas, eps=self.eps, weight_decay=self.weight_decay,
                       decouple=self.decoupled)  # fmt: skip


# ---------------------------------------------------------------------------------------- recommendations
def _task_attr(task: Any, attr: str) -> float:
    value = getattr(task, attr, None)
    if value is None:
        raise TypeError(f"task must be a Task class or instance with {attr!r}, got {task!r}")
    return float(value)


def recommended_lr(name: str, task: Any) -> float:
    """The recommended peak learning rate of an optimizer family on ``task`` (a Task class or instance).

    ``name`` is a baseline of :data:`BASELINES` or an AutoSGM numerator of :data:`NUMERATORS`:

    * ``unity`` (AutoSGM's Adam point), ``adamw``: the task's ``default_lr``;
    * ``parcor-*``, ``corr``: the task's ``default_parcor_lr`` (the numerator ``a ≤ 1`` scales steps down);
    * ``sgd-nesterov``: the task's ``default_sgd_lr``;
    * ``prodigy``, ``dadapt-adam``: 1 (a multiplier of the step size they estimate);
    * ``schedulefree-adamw``: :data:`SCHEDULEFREE_LR`, its package's default;
    * ``lion``: the task's ``default_lr`` / :data:`LION_SCALE`;
    * ``muon``: the task's ``default_lr`` (its matrix step is scaled to AdamW's update RMS,
      :data:`MUON_LR_SCALE`).

    An AutoSGM numerator has the same centre under the matrix oracle (the studies scale the matrix step
    to AdamW's update RMS as for Muon).
    """
    if name in ("unity", "adamw", "muon"):
        return _task_attr(task, "default_lr")
    if name in NUMERATORS:
        return _task_attr(task, "default_parcor_lr")
    if name == "sgd-nesterov":
        return _task_attr(task, "default_sgd_lr")
    if name in ("prodigy", "dadapt-adam"):
        return ESTIMATED_LR
    if name == "schedulefree-adamw":
        return SCHEDULEFREE_LR
    if name == "lion":
        return _task_attr(task, "default_lr") / LION_SCALE
    raise ValueError(f"name must be a numerator {NUMERATORS} or a baseline {ALL_BASELINES}, got {name!r}")


def recommended_weight_decay(name: str, adamw_weight_decay: float, sgd_weight_decay: float = 0.0) -> float:
    """The weight decay of the baseline ``name`` given AdamW's decoupled decay: the same for the
    Adam-like baselines, :data:`LION_SCALE` times larger for Lion (same ``lr · λ`` at its smaller lr),
    ``sgd_weight_decay`` (coupled) for SGD-Nesterov. Muon's (its matrices and AdamW's other tensors) is
    AdamW's: at :data:`MUON_LR_SCALE` its step has AdamW's update RMS."""
    if name not in ALL_BASELINES:
        raise ValueError(f"name must be one of {ALL_BASELINES}, got {name!r}")
    if name == "sgd-nesterov":
        return float(sgd_weight_decay)
    return float(adamw_weight_decay) * (LION_SCALE if name == "lion" else 1.0)


def baseline_config(name: str, lr: float, *, weight_decay: float = 0.0, beta: float = 0.9,
                    beta_a: float = 0.999, schedule: str | None = None) -> OptimizerConfig:
    """The baseline ``name`` of :data:`ALL_BASELINES` at peak learning rate ``lr`` with weight decay
    ``weight_decay`` (its own: see :func:`recommended_weight_decay`), set up as its authors recommend.

    ``beta`` is the momentum pole of every baseline; ``beta_a`` the second-moment pole of the
    Adam-like ones (Lion keeps its authors' β₂ = 0.99). ``schedule`` None gives each its recommended
    window: cosine, none (``"constant"``) for Schedule-Free AdamW, which refuses any other.
    """
    window = {} if schedule is None else {"schedule": schedule}
    adam_like = {"adamw": OptimizerConfig.torch_adamw, "prodigy": OptimizerConfig.prodigy,
                 "dadapt-adam": OptimizerConfig.dadapt_adam, "schedulefree-adamw": OptimizerConfig.schedulefree_adamw,
                 "muon": OptimizerConfig.muon}  # fmt: skip
    if name in adam_like:
        return adam_like[name](lr, weight_decay=weight_decay, beta=beta, beta_a=beta_a, **window)
    if name == "sgd-nesterov":
        return OptimizerConfig.torch_sgd_nesterov(lr, momentum=beta, weight_decay=weight_decay, **window)
    if name == "lion":
        return OptimizerConfig.lion(lr, weight_decay=weight_decay, beta=beta, **window)
    raise ValueError(f"name must be one of {ALL_BASELINES}, got {name!r}")
