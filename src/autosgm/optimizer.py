r"""The :class:`AutoSGM` optimizer."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer
from torch.utils.hooks import RemovableHandle

from . import pipeline as P
from .config import SEED_KEYS, AutoSGMConfig, check_lr, numerator_name, parse_seed_tuples
from .windows import Window

__all__ = ["AutoSGM", "StepRecord"]


class _Default:
    """A keyword's default value, told apart from the same value passed explicitly."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


#: The readable settings stored in every param group, with their defaults.
DEFAULTS: dict[str, Any] = OrderedDict(
    lr=1e-3,
    betas=(0.9, 0.999),
    gamma=0.0,
    eta=None,
    beta_n=0.9999,
    debias=True,
    normalize=True,
    numerator="unity",
    numerator_mode="tensor",
    eps=1e-8,
    repeat_eps=False,
    weight_decay=0.0,
    decoupled_weight_decay=False,
    window=None,
    maximize=False,
    nonfinite="proceed",
    foreach=None,
)
_CONFIG_KEYS = tuple(k for k in DEFAULTS if k not in ("lr", "foreach", "fused"))


class StepRecord(NamedTuple):
    """What a trajectory hook sees for one parameter tensor at one step ``t``.

    ``alpha`` is the oracle ``α[t] = μ F a / (S[t] d)`` (so that ``Δ = −α (v + S d ρ_d w)``),
    ``grad`` the gradient after the maximize sign flip and before any weight decay, ``weight`` the
    parameter ``w[t]`` before the step and ``update`` the change ``Δ[t+1] = w[t+1] − w[t]``.
    Complex parameters appear as their real view. Tensors are fresh copies owned by the hook.
    """

    param: Tensor
    step: int
    grad: Tensor
    weight: Tensor
    update: Tensor
    filter_output: Tensor
    alpha: Tensor
    denominator: Tensor | None
    numerator: Tensor | None
    lr: float
    window: float
    debias: float
    config: AutoSGMConfig


class AutoSGM(Optimizer):
    r"""AutoSGM: a low-pass-filtered gradient times an iteration-dependent learning-rate oracle.

    .. math::
        v[t] &= β v[t−1] + η (g[t] − γ g[t−1])   &&\text{filter } H(z) = η\frac{1 − γ z^{-1}}{1 − β z^{-1}} \\
        d[t] &= \sqrt{m[t]/(1 − β_a^t)} + ε,\; m[t] = β_a m[t−1] + (1 − β_a) g[t]^2 &&\text{moment} \\
        w[t+1] &= w[t] − μ F[t]\, a[t] \Big(\frac{v[t]}{S[t]\, d[t]} + ρ_d w[t]\Big) &&\text{step}

    with ``μ = lr``, the window ``F`` (schedule), the numerator ``a`` (1 or a correlation
    estimate), ``S[t]`` the filter's unit-step response when ``debias`` (else 1), coupled decay
    ``g ← g + ρ w`` or decoupled ``ρ_d = ρ``. ``normalize=False`` makes the oracle constant
    (``a = d = 1``). Heavy ball, Nesterov, Adam, AdamW and RMSprop are points of this space; see
    the named constructors :meth:`sgd`, :meth:`heavy_ball`, :meth:`nesterov`, :meth:`adam`,
    :meth:`adamw`, :meth:`rmsprop`.

    Args:
        params: parameters or param-group dicts (a group may carry any keyword below, or seed tuples).
        lr: μ, the trust-region constant (a param-group value, so LR schedulers drive it). Default 1e-3.
        betas: ``(β, β_a)``: the filter pole and the moment pole. Default ``(0.9, 0.999)``.
        gamma: γ, the filter zero, ``γ ≤ β``. ``β/(1+β)`` is Nesterov. Default 0.
        eta: η, the filter gain; ``None`` gives ``(1 − β)/(1 − γ)`` (unit DC gain). Default None.
        beta_n: β_n, the numerator estimators' pole. Default 0.9999.
        debias: divide the filter output by ``S[t]`` and the moment by ``1 − β_a^t``. Default True.
        normalize: use the moment denominator and numerator (the seed's ``aoptlr``). Default True.
        numerator: ``"unity"``, ``"parcor-bounded"``, ``"parcor-maxbound"``, ``"parcor-markov"``,
            ``"parcor-chebyshev"``, ``"corr"``, or the seed's code 0-4. Default ``"unity"``.
        numerator_mode: ``"tensor"`` (one smoothed value per tensor) or ``"element"``. Default ``"tensor"``.
        eps: ε added to the root moment. Default 1e-8.
        repeat_eps: also use ε inside the moment estimate (``g² + ε²``). Default False.
        weight_decay: ρ. Default 0.
        decoupled_weight_decay: apply ρ after normalization (AdamW convention). Default False.
        window: a :class:`~autosgm.windows.Window` giving ``F[t]``; None means ``F = 1``.
        maximize: ascend instead of descend. Default False.
        nonfinite: what a group does when a gradient holds NaN/inf: ``"proceed"`` (as torch.optim;
            no check, no cost), ``"skip"`` (leave the group's parameters and state untouched for this
            step, counted in :attr:`skipped_steps`) or ``"raise"`` (:class:`FloatingPointError`).
            Checking costs one host synchronisation per group and step.
        foreach: use the multi-tensor path; None picks it on CUDA (torch's rule).
        lr_cfg, beta_cfg, rc_cfg, wd_cfg, eps_cfg: the seed's tuples (see :func:`~autosgm.config.parse_seed_tuples`);
            giving a tuple and a keyword for the same setting is an error.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = _Default(1e-3),  # type: ignore[assignment]
        *,
        betas: tuple[float, float] = _Default((0.9, 0.999)),  # type: ignore[assignment]
        gamma: float = _Default(0.0),  # type: ignore[assignment]
        eta: float | None = _Default(None),  # type: ignore[assignment]
        beta_n: float = _Default(0.9999),  # type: ignore[assignment]
        debias: bool = _Default(True),  # type: ignore[assignment]
        normalize: bool = _Default(True),  # type: ignore[assignment]
        numerator: str | int = _Default("unity"),  # type: ignore[assignment]
        numerator_mode: str = _Default("tensor"),  # type: ignore[assignment]
        eps: float = _Default(1e-8),  # type: ignore[assignment]
        repeat_eps: bool = _Default(False),  # type: ignore[assignment]
        weight_decay: float = _Default(0.0),  # type: ignore[assignment]
        decoupled_weight_decay: bool = _Default(False),  # type: ignore[assignment]
        window: Window | None = _Default(None),  # type: ignore[assignment]
        maximize: bool = _Default(False),  # type: ignore[assignment]
        nonfinite: str = _Default("proceed"),  # type: ignore[assignment]
        foreach: bool | None = None,
        lr_cfg: tuple | None = None,
        beta_cfg: tuple | None = None,
        rc_cfg: tuple | None = None,
        wd_cfg: tuple | None = None,
        eps_cfg: tuple | None = None,
    ) -> None:
        given = dict(
            lr=lr, betas=betas, gamma=gamma, eta=eta, beta_n=beta_n, debias=debias,
            normalize=normalize, numerator=numerator, numerator_mode=numerator_mode, eps=eps,
            repeat_eps=repeat_eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, window=window, maximize=maximize,
            nonfinite=nonfinite,
        )  # fmt: skip
        seed = dict(lr_cfg=lr_cfg, beta_cfg=beta_cfg, rc_cfg=rc_cfg, wd_cfg=wd_cfg, eps_cfg=eps_cfg)
        explicit = {k: v for k, v in given.items() if not isinstance(v, _Default)}
        defaults = dict(DEFAULTS)
        defaults.update(_merge_seed(explicit, seed))
        defaults["foreach"] = foreach
        if isinstance(defaults["window"], Window):
            defaults["window"] = defaults["window"].to_dict()
        self._cfg_cache: dict[int, tuple[tuple, AutoSGMConfig]] = {}
        self._trajectory_hooks: OrderedDict[int, Callable[..., None]] = OrderedDict()
        self.last_window_values: list[float] = []
        #: Per-group count of steps skipped by ``nonfinite="skip"``.
        self.skipped_steps: list[int] = []
        super().__init__(params, defaults)

    # ------------------------------------------------------------------------------------------
    # named design points (spec §2 table)
    # ------------------------------------------------------------------------------------------
    @classmethod
    def sgd(cls, params, lr: float = 1e-3, *, weight_decay: float = 0.0, **kwargs: Any) -> "AutoSGM":
        """Plain SGD: β = γ = 0, η = 1, constant oracle — ``torch.optim.SGD(lr, weight_decay)``."""
        return cls(params, lr, betas=(0.0, 0.999), gamma=0.0, eta=1.0, debias=False,
                   normalize=False, weight_decay=weight_decay, **kwargs)  # fmt: skip

    @classmethod
    def heavy_ball(cls, params, lr: float = 1e-3, *, momentum: float = 0.9, weight_decay: float = 0.0,
                   **kwargs: Any) -> "AutoSGM":  # fmt: skip
        """Polyak's heavy ball: β = momentum, γ = 0, η = 1 — ``torch.optim.SGD(lr, momentum)``."""
        return cls(params, lr, betas=(momentum, 0.999), gamma=0.0, eta=1.0, debias=False,
                   normalize=False, weight_decay=weight_decay, **kwargs)  # fmt: skip

    @classmethod
    def nesterov(cls, params, lr: float = 1e-3, *, momentum: float = 0.9, weight_decay: float = 0.0,
                 **kwargs: Any) -> "AutoSGM":  # fmt: skip
        """Nesterov: β, γ = β/(1+β), η = 1+β — ``torch.optim.SGD(lr, momentum, nesterov=True)``."""
        return cls(params, lr, betas=(momentum, 0.999), gamma=momentum / (1.0 + momentum),
                   eta=1.0 + momentum, debias=False, normalize=False, weight_decay=weight_decay,
                   **kwargs)  # fmt: skip

    @classmethod
    def adam(cls, params, lr: float = 1e-3, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
             weight_decay: float = 0.0, **kwargs: Any) -> "AutoSGM":  # fmt: skip
        """Adam: γ = 0, η = 1 − β₁, debiased, a = 1 — ``torch.optim.Adam``."""
        return cls(params, lr, betas=betas, gamma=0.0, eta=None, debias=True, normalize=True,
                   eps=eps, weight_decay=weight_decay, **kwargs)  # fmt: skip

    @classmethod
    def adamw(cls, params, lr: float = 1e-3, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 1e-2, **kwargs: Any) -> "AutoSGM":  # fmt: skip
        """AdamW: Adam with decoupled decay — ``torch.optim.AdamW``."""
        return cls.adam(params, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=True, **kwargs)  # fmt: skip

    @classmethod
    def rmsprop(cls, params, lr: float = 1e-2, *, alpha: float = 0.99, eps: float = 1e-8,
                weight_decay: float = 0.0, **kwargs: Any) -> "AutoSGM":  # fmt: skip
        """RMSprop: β = γ = 0, η = 1, no debias, a = 1, β_a = alpha — ``torch.optim.RMSprop``."""
        return cls(params, lr, betas=(0.0, alpha), gamma=0.0, eta=1.0, debias=False,
                   normalize=True, eps=eps, weight_decay=weight_decay, **kwargs)  # fmt: skip

    # ------------------------------------------------------------------------------------------
    # groups and configuration
    # ------------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; it may carry readable keywords or seed tuples, validated here."""
        group = dict(param_group)
        seed = {k: group.pop(k) for k in SEED_KEYS if k in group}
        if seed:
            explicit = {k: v for k, v in group.items() if k in DEFAULTS}
            group.update(_merge_seed(explicit, seed))
        unknown = set(group) - set(DEFAULTS) - {"params"}
        if unknown:
            raise TypeError(f"unknown param-group setting(s): {', '.join(sorted(unknown))}")
        if isinstance(group.get("window"), Window):
            group["window"] = group["window"].to_dict()
        super().add_param_group(group)
        group = self.param_groups[-1]
        if "numerator" in group:
            group["numerator"] = numerator_name(group["numerator"])
        self.group_config(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_cfg_cache", {})
        self.__dict__.setdefault("_trajectory_hooks", OrderedDict())
        self.__dict__.setdefault("last_window_values", [])
        self.__dict__.setdefault("skipped_steps", [])
        for group in self.param_groups:
            for key, value in DEFAULTS.items():
                group.setdefault(key, value)

    def group_config(self, group: dict[str, Any] | int) -> AutoSGMConfig:
        """The validated :class:`AutoSGMConfig` of a param group (or its index).

        Validation runs when the group's settings change (once, normally), not on every step.
        """
        if isinstance(group, int):
            group = self.param_groups[group]
        check_lr(group["lr"])
        key = tuple(_freeze(group[k]) for k in _CONFIG_KEYS)
        cached = self._cfg_cache.get(id(group))
        if cached is not None and cached[0] == key:
            return cached[1]
        cfg = AutoSGMConfig.from_group(group)
        self._cfg_cache[id(group)] = (key, cfg)
        return cfg

    # ------------------------------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------------------------------
    def register_trajectory_hook(self, hook: Callable[["AutoSGM", StepRecord], None]) -> RemovableHandle:
        """Call ``hook(optimizer, record)`` for every parameter tensor at every step.

        Used by :mod:`autosgm.analysis` probes. While a hook is registered the per-tensor reference
        path runs and copies are made for the record; with none registered nothing is recorded.
        """
        handle = RemovableHandle(self._trajectory_hooks)
        self._trajectory_hooks[handle.id] = hook
        return handle

    # ------------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------------
    def _init_state(self, p: Tensor, w: Tensor, cfg: AutoSGMConfig) -> dict[str, Any]:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            if cfg.has_filter_state:
                state["filter_state"] = torch.zeros_like(w, memory_format=torch.preserve_format)
            if cfg.normalize:
                state["moment"] = torch.zeros_like(w, memory_format=torch.preserve_format)
            per_tensor = cfg.numerator_mode == "tensor"
            names = P.NUMERATOR_BUFFERS[cfg.numerator]
            if per_tensor and cfg.numerator != "unity":
                names = names + ("num_a",)
            for name in names:
                if per_tensor and name in P.PER_TENSOR_STATS:
                    state[name] = torch.zeros((), dtype=w.dtype, device=w.device)
                else:
                    state[name] = torch.zeros_like(w, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        window_values = []
        for gi, group in enumerate(self.param_groups):
            cfg = self.group_config(group)
            if cfg.nonfinite != "proceed" and not self._grads_finite(gi, group, cfg):
                window_values.append(self.last_window_values[gi] if gi < len(self.last_window_values) else 1.0)
                continue
            lr = group["lr"]
            mu = float(lr) if isinstance(lr, Tensor) else lr
            params, grads, states = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("AutoSGM does not support sparse gradients; use dense gradients")
                w = torch.view_as_real(p) if torch.is_complex(p) else p
                g = torch.view_as_real(p.grad) if torch.is_complex(p.grad) else p.grad
                state = self._init_state(p, w, cfg)
                state["step"] += 1
                params.append(w)
                grads.append(g)
                states.append(state)
            if not params:
                window_values.append(self.last_window_values[len(window_values)]
                                     if len(self.last_window_values) > len(window_values) else 1.0)  # fmt: skip
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(w.is_cuda for w in params)
            if foreach and not self._trajectory_hooks:
                F = _multi_tensor_step(params, grads, states, cfg, mu)
            else:
                F = 1.0
                for w, g, state in zip(params, grads, states):
                    F = _single_tensor_step(w, g, state, cfg, mu, self._record_fn(group, w))
            window_values.append(F)
        self.last_window_values = window_values
        return loss

    def _grads_finite(self, gi: int, group: dict[str, Any], cfg: AutoSGMConfig) -> bool:
        """Apply the group's non-finite-gradient policy; False means: skip this group's step."""
        grads = [p.grad for p in group["params"] if p.grad is not None]
        if not grads or all(torch.isfinite(g).all() for g in grads):
            return True
        if cfg.nonfinite == "raise":
            raise FloatingPointError(f"non-finite gradient in param group {gi} (nonfinite='raise')")
        while len(self.skipped_steps) <= gi:
            self.skipped_steps.append(0)
        self.skipped_steps[gi] += 1
        return False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state; refused when a group's saved settings differ from this optimizer's.

        torch.optim would silently adopt the saved settings (e.g. another numerator) while the
        caller constructed different ones; here the difference is an error. ``lr`` (driven by
        schedulers), ``foreach`` and ``fused`` may differ. Settings added after the checkpoint
        was written take their defaults.
        """
        saved = state_dict.get("param_groups", [])
        if len(saved) == len(self.param_groups):
            for i, (cur, old) in enumerate(zip(self.param_groups, saved)):
                diffs = [
                    f"{k}: saved {old.get(k, DEFAULTS[k])!r}, here {cur[k]!r}"
                    for k in _CONFIG_KEYS
                    if _freeze(old.get(k, DEFAULTS[k])) != _freeze(cur[k])
                ]
                if diffs:
                    raise ValueError(
                        f"the state_dict was saved with other settings for param group {i} ("
                        + "; ".join(diffs)
                        + "); construct the optimizer with the saved settings (state_dict['param_groups'])"
                    )
        super().load_state_dict(state_dict)

    def _record_fn(self, group: dict[str, Any], param: Tensor):
        if not self._trajectory_hooks:
            return None

        def emit(record: StepRecord) -> None:
            for hook in list(self._trajectory_hooks.values()):
                hook(self, record._replace(param=param))

        return emit


# ----------------------------------------------------------------------------------------------
# the two paths: both call the stages of autosgm.pipeline
# ----------------------------------------------------------------------------------------------
def _window(cfg: AutoSGMConfig, t: int) -> float:
    return cfg.window(t) if cfg.window is not None else 1.0


def _stage_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k.startswith("num_")}


def _single_tensor_step(
    w: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    cfg: AutoSGMConfig,
    mu: float,
    emit: Callable[[StepRecord], None] | None = None,
) -> float:
    """The readable reference: one tensor, the stages of :mod:`autosgm.pipeline` in order."""
    ops = P.TENSOR_OPS
    t = int(state["step"].item())
    F = _window(cfg, t)
    S = cfg.filter_debias(t)
    s = state.get("filter_state")
    w_before = w.clone() if emit is not None else None

    g = P.gradient_input(ops, grad, w, cfg)  # g ← −g (maximize); g ← g + ρw (coupled)
    v = P.lowpass(ops, s, g, cfg)  # v = H{g}
    d = P.moment(ops, state["moment"], g, cfg, t) if cfg.normalize else None  # d = √m̂ + ε
    vbar = a = None
    if cfg.numerator != "unity":
        vbar = P.normalized_step(ops, v, d, S)  # v̄ = v̂ / d
        a = P.numerator(ops, _stage_state(state), w, g, vbar, d, cfg)  # a = E[w v̄] ...
    if emit is not None:
        record = _make_record(w, grad, v, d, a, cfg, mu, F, S, t)
    P.apply_update(ops, w, v, d, a, cfg, mu * F, S, vbar)  # w ← w − μ F a (v̄ + ρ_d w)
    if emit is not None:
        emit(record._replace(weight=w_before, update=w - w_before))
    P.lowpass_finish(ops, s, g, cfg)
    return F


def _make_record(w, grad, v, d, a, cfg, mu, F, S, t) -> StepRecord:
    alpha = torch.full_like(w, mu * F / S)
    if a is not None:
        alpha = alpha * a
    if d is not None:
        alpha = alpha / d
    g = -grad if cfg.maximize else grad
    return StepRecord(
        param=w, step=t, grad=g.clone(), weight=w, update=w, filter_output=v.clone(), alpha=alpha,
        denominator=None if d is None else d.clone(),
        numerator=None if a is None else torch.as_tensor(a).clone(),
        lr=mu, window=F, debias=S, config=cfg,
    )  # fmt: skip


def _multi_tensor_step(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    cfg: AutoSGMConfig,
    mu: float,
) -> float:
    """The multi-tensor path: the same stages on lists grouped by (device, dtype, step)."""
    ops = P.FOREACH_OPS
    buckets: dict[tuple, list[int]] = {}
    for i, (w, state) in enumerate(zip(params, states)):
        t = int(state["step"].item())
        buckets.setdefault((w.device, w.dtype, t), []).append(i)
    F = 1.0
    for (_, _, t), idx in buckets.items():
        ws = [params[i] for i in idx]
        gs = [grads[i] for i in idx]
        sts = [states[i] for i in idx]
        F = _window(cfg, t)
        S = cfg.filter_debias(t)
        s = [st["filter_state"] for st in sts] if cfg.has_filter_state else None
        g = P.gradient_input(ops, gs, ws, cfg)
        v = P.lowpass(ops, s, g, cfg)
        d = P.moment(ops, [st["moment"] for st in sts], g, cfg, t) if cfg.normalize else None
        vbar = a = None
        if cfg.numerator != "unity":
            vbar = P.normalized_step(ops, v, d, S)
            stage = {k: [st[k] for st in sts] for k in _stage_state(sts[0])}
            a = P.numerator(ops, stage, ws, g, vbar, d, cfg)
        P.apply_update(ops, ws, v, d, a, cfg, mu * F, S, vbar)
        P.lowpass_finish(ops, s, g, cfg)
    return F


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Window):
        return _freeze(value.to_dict())
    return value


def _merge_seed(explicit: dict[str, Any], seed: dict[str, Any]) -> dict[str, Any]:
    """Readable settings from explicit keywords plus the seed's tuples; refuse double spellings."""
    for cfg_name, value in seed.items():
        if value is None:
            continue
        clash = [k for k in SEED_KEYS[cfg_name] if k in explicit]
        if clash:
            raise ValueError(
                f"{cfg_name} and the keyword(s) {', '.join(clash)} both set the same setting; use one form"
            )
    out = dict(explicit)
    out.update(parse_seed_tuples(**seed))
    return out
