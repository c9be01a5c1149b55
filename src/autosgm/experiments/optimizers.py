"""Optimizer configurations of the experiments: one small, hashable dataclass per run.

An :class:`OptimizerConfig` names a point of the AutoSGM design space (numerator, filter zero γ,
pole β, …) or a torch baseline (``torch.optim.AdamW``, ``torch.optim.SGD``), and builds the optimizer
and its learning-rate window for a model. Its :meth:`~OptimizerConfig.key` is a stable text key: two
configurations with the same key train identically, which is what makes sweeps resumable.

The filter zero γ is a number or a named design point of the filter ``H(z) = η (1 − γ z⁻¹)/(1 − β z⁻¹)``:

* ``"0"``   — γ = 0 (heavy ball / Adam);
* ``"nag"`` — γ = β/(1+β) (Nesterov's accelerated gradient);
* ``"mls"`` — γ = 1 − √(2(1−β)) (≈ 0.553 for β = 0.9).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from autosgm.config import NUMERATORS, ZERO_TENSOR_START
from autosgm.design import GAMMA_POINTS, nesterov_eta

__all__ = [
    "GAMMA_POINTS",
    "NUMERATORS",
    "OPTIMIZER_NAMES",
    "SCHEDULES",
    "OptimizerConfig",
    "format_gamma",
    "param_groups",
    "parse_gamma",
    "resolve_gamma",
]


#: ``autosgm`` is the AutoSGM optimizer; ``adamw`` and ``sgd`` are the torch.optim baselines.
OPTIMIZER_NAMES = ("autosgm", "adamw", "sgd")

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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: matrices and convolution kernels decay, vectors (biases, norms) do not.

    This is the usual convention of GPT and ViT training (nanoGPT, timm); with ``weight_decay = 0``
    it changes nothing.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimizer configuration of an experiment.

    Attributes:
        name: ``"autosgm"`` (the AutoSGM optimizer), ``"adamw"`` (``torch.optim.AdamW``) or ``"sgd"``
            (``torch.optim.SGD``, momentum β, optionally Nesterov).
        lr: the trust-region constant μ (the peak learning rate of the window).
        numerator: AutoSGM's numerator ``a`` (``"unity"`` = Adam-like, or a ``"parcor-*"``/``"corr"`` estimator).
        gamma: the filter zero γ, a number or ``"nag"``/``"mls"`` (see :data:`GAMMA_POINTS`).
        beta: the filter pole β (AdamW's β₁, SGD's momentum).
        beta_a: the pole of the second-moment estimator (AdamW's β₂).
        eta: the filter gain η; None means the unit-DC-gain default ``(1 − β)/(1 − γ)``.
        debias: divide the filter output by its step response (Adam's bias correction).
        normalize: False gives AutoSGM's constant oracle (``a = d = 1``: SGD, heavy ball, Nesterov).
        nesterov: Nesterov momentum for ``name="sgd"``.
        weight_decay: ρ; decoupled (AdamW convention) for ``autosgm`` when ``decoupled``, always for
            ``adamw``, coupled (L2 added to the gradient) for ``sgd``. Vectors are never decayed.
        decoupled: decoupled weight decay for ``autosgm``.
        eps: ε added to the root of the second moment.
        zero_tensor_start: c₀ of an all-zero tensor under a ``parcor-*`` numerator (AutoSGM's
            ``zero_tensor_start``; 0 is the spec's absorbing state, in which such a tensor never moves).
            Part of :meth:`key` for the ``parcor-*`` numerators only.
        schedule: the window over the run, ``"cosine"`` (anneal μ → 0) or ``"constant"``.
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
        if self.name == "autosgm":
            gamma = self.gamma_value
            if gamma > self.beta:
                raise ValueError(
                    f"gamma must not exceed beta (the filter would not be low-pass): gamma={gamma:.4g}, beta={self.beta:.4g}"
                )

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
        oracle = self.numerator if self.normalize else "constant oracle"
        return f"AutoSGM {oracle} {format_gamma(self.gamma, self.beta)}"

    def key(self) -> str:
        """A stable text key of everything that changes training (all fields but ``label``;
        ``zero_tensor_start`` only where it acts: AutoSGM with a ``parcor-*`` numerator)."""
        skip = {"name", "label"}
        if self.name != "autosgm" or not self.numerator.startswith("parcor"):
            skip.add("zero_tensor_start")
        parts = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in fields(self) if f.name not in skip]
        return self.name + ":" + ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict (round-trips through :meth:`from_dict`)."""
        return asdict(self)

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

    def build(self, model: torch.nn.Module, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer for ``model`` and its scheduler (None when the optimizer applies the window itself).

        AutoSGM applies the window inside its step; the torch baselines get the same window through
        ``autosgm.windows.WindowLR``, so every configuration follows the same schedule μ·F[t].
        """
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        groups = param_groups(model, self.weight_decay)
        window = self.window(total_steps)
        if self.name == "autosgm":
            from autosgm import AutoSGM

            opt = AutoSGM(
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
            return opt, None
        if self.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=self.lr, betas=(self.beta, self.beta_a), eps=self.eps, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=self.lr, momentum=self.beta, nesterov=self.nesterov, weight_decay=self.weight_decay)
        scheduler = None
        if window is not None:
            from autosgm.windows import WindowLR

            scheduler = WindowLR(opt, window)
        return opt, scheduler
