"""Optimizer configurations of the experiments: one small, hashable dataclass per run.

An :class:`OptimizerConfig` names a point of the AutoSGM design space (numerator, filter zero γ,
pole β, …) or a baseline — ``torch.optim.AdamW``, ``torch.optim.SGD``, or one from its authors' package
(Prodigy, Schedule-Free AdamW, D-Adapt Adam, Lion: the ``baselines`` extra) — and builds the optimizer
and its learning-rate window for a model. Its :meth:`~OptimizerConfig.key` is a stable text key: two
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

from autosgm.config import NUMERATORS, ZERO_TENSOR_START
from autosgm.design import GAMMA_POINTS, nesterov_eta
from autosgm.groups import weight_decay_groups

__all__ = [
    "BASELINES",
    "BASELINES_EXTRA",
    "ESTIMATED_LR",
    "EXTERNAL_OPTIMIZERS",
    "GAMMA_POINTS",
    "LION_SCALE",
    "NUMERATORS",
    "OPTIMIZER_NAMES",
    "SCHEDULEFREE_LR",
    "SCHEDULEFREE_WARMUP",
    "SCHEDULES",
    "ExternalOptimizer",
    "MissingBaselineError",
    "OptimizerConfig",
    "baseline_config",
    "external_optimizer_class",
    "format_gamma",
    "param_groups",
    "parse_gamma",
    "recommended_lr",
    "recommended_weight_decay",
    "require_optimizers",
    "resolve_gamma",
]


#: ``autosgm`` is the AutoSGM optimizer; ``adamw`` and ``sgd`` are the torch.optim baselines; the others
#: come from their authors' packages (:data:`EXTERNAL_OPTIMIZERS`).
OPTIMIZER_NAMES = ("autosgm", "adamw", "sgd", "prodigy", "schedulefree-adamw", "dadapt-adam", "lion")

#: Baselines of a sweep or study, by the names of the command line (``sgd-nesterov`` is ``name="sgd"``).
BASELINES = ("adamw", "sgd-nesterov", "prodigy", "schedulefree-adamw", "dadapt-adam", "lion")

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


def require_optimizers(names: Any) -> None:
    """Check that every optimizer of ``names`` (config names, baseline names or configurations) can be
    built, before any work: :class:`MissingBaselineError` for the first whose package is missing."""
    for item in names:
        name = item.name if isinstance(item, OptimizerConfig) else item
        if name in EXTERNAL_OPTIMIZERS:
            external_optimizer_class(name)

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
            ``"lion"`` (``lion_pytorch.Lion``). Use the class methods for the recommended settings.
        lr: the trust-region constant μ (the peak learning rate of the window).
        numerator: AutoSGM's numerator ``a`` (``"unity"`` = Adam-like, or a ``"parcor-*"``/``"corr"`` estimator).
        gamma: the filter zero γ, a number or ``"nag"``/``"mls"`` (see :data:`GAMMA_POINTS`).
        beta: the filter pole β (AdamW's β₁, SGD's momentum, Lion's β₁).
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
        oracle = self.numerator if self.normalize else "constant oracle"
        return f"AutoSGM {oracle} {format_gamma(self.gamma, self.beta)}"

    def _inactive_fields(self) -> set[str]:
        """Fields that do not act for this optimizer and are left out of :meth:`key` (so that adding
        them kept the keys of earlier configurations): ``zero_tensor_start`` outside AutoSGM's
        ``parcor-*`` numerators, ``warmup`` outside ``schedulefree-adamw``."""
        inactive = set()
        if self.name != "autosgm" or not self.numerator.startswith("parcor"):
            inactive.add("zero_tensor_start")
        if self.name != "schedulefree-adamw":
            inactive.add("warmup")
        return inactive

    def key(self) -> str:
        """A stable text key of everything that changes training (all fields but ``label``;
        ``zero_tensor_start`` and ``warmup`` only where they act, see :meth:`_inactive_fields`)."""
        skip = {"name", "label"} | self._inactive_fields()
        parts = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self) if f.name not in skip]
        return self.name + ":" + ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (round-trips through :meth:`from_dict`); ``warmup`` only for
        ``schedulefree-adamw``, so that the records of the other optimizers read as before."""
        data = asdict(self)
        if self.name != "schedulefree-adamw":
            del data["warmup"]
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
        )

    def _build_baseline(self, groups: list[dict[str, Any]], total_steps: int) -> torch.optim.Optimizer:
        """The optimizer of a baseline, without its window; each group keeps its own weight decay."""
        betas = (self.beta, self.beta_a)
        if self.name == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr, betas=betas, eps=self.eps, weight_decay=self.weight_decay)
        if self.name == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.beta, nesterov=self.nesterov,
                                   weight_decay=self.weight_decay)  # fmt: skip
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
    * ``lion``: the task's ``default_lr`` / :data:`LION_SCALE`.
    """
    if name in ("unity", "adamw"):
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
    raise ValueError(f"name must be a numerator {NUMERATORS} or a baseline {BASELINES}, got {name!r}")


def recommended_weight_decay(name: str, adamw_weight_decay: float, sgd_weight_decay: float = 0.0) -> float:
    """The weight decay of the baseline ``name`` given AdamW's decoupled decay: the same for the
    Adam-like baselines, :data:`LION_SCALE` times larger for Lion (same ``lr · λ`` at its smaller lr),
    ``sgd_weight_decay`` (coupled) for SGD-Nesterov."""
    if name not in BASELINES:
        raise ValueError(f"name must be one of {BASELINES}, got {name!r}")
    if name == "sgd-nesterov":
        return float(sgd_weight_decay)
    return float(adamw_weight_decay) * (LION_SCALE if name == "lion" else 1.0)


def baseline_config(name: str, lr: float, *, weight_decay: float = 0.0, beta: float = 0.9,
                    beta_a: float = 0.999, schedule: str | None = None) -> OptimizerConfig:
    """The baseline ``name`` of :data:`BASELINES` at peak learning rate ``lr`` with weight decay
    ``weight_decay`` (its own: see :func:`recommended_weight_decay`), set up as its authors recommend.

    ``beta`` is the momentum pole of every baseline; ``beta_a`` the second-moment pole of the
    Adam-like ones (Lion keeps its authors' β₂ = 0.99). ``schedule`` None gives each its recommended
    window: cosine, none (``"constant"``) for Schedule-Free AdamW, which refuses any other.
    """
    window = {} if schedule is None else {"schedule": schedule}
    if name == "adamw":
        return OptimizerConfig.torch_adamw(lr, weight_decay=weight_decay, beta=beta, beta_a=beta_a, **window)
    if name == "sgd-nesterov":
        return OptimizerConfig.torch_sgd_nesterov(lr, momentum=beta, weight_decay=weight_decay, **window)
    if name == "prodigy":
        return OptimizerConfig.prodigy(lr, weight_decay=weight_decay, beta=beta, beta_a=beta_a, **window)
    if name == "dadapt-adam":
        return OptimizerConfig.dadapt_adam(lr, weight_decay=weight_decay, beta=beta, beta_a=beta_a, **window)
    if name == "schedulefree-adamw":
        return OptimizerConfig.schedulefree_adamw(lr, weight_decay=weight_decay, beta=beta, beta_a=beta_a, **window)
    if name == "lion":
        return OptimizerConfig.lion(lr, weight_decay=weight_decay, beta=beta, **window)
    raise ValueError(f"name must be one of {BASELINES}, got {name!r}")
