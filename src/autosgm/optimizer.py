r"""The :class:`AutoSGM` optimizer."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer
from torch.utils.hooks import RemovableHandle

from .ops import FOREACH_OPS, TENSOR_OPS
from . import matrix as _matrix
from .step import gets_matrix_step, matrix_step, step_scalars, state_dtype, tensor_step
from .fused import fused_step
from .packing import cpu_work
from .plan import GroupPlan, ParamState, group_plan
from .state import (buffer_layout, buffer_shapes, buffer_structure, correlation_start, filter_conversion,
                    normalize_steps, real_view, state_mismatch, step_tensor)
from .config import SEED_KEYS, ZERO_TENSOR_START, AutoSGMConfig, check_lr, numerator_name, parse_seed_tuples
from .design import nesterov_eta, nesterov_gamma
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
    zero_tensor_start=ZERO_TENSOR_START,
    eps=1e-8,
    repeat_eps=False,
    weight_decay=0.0,
    decoupled_weight_decay=False,
    window=None,
    maximize=False,
    nonfinite="proceed",
    oracle="element",
    matrix_method=_matrix.STEP_METHOD,
    matrix_iters=None,
    matrix_eps=None,
    matrix_pole=0.0,
    matrix_lr_scale=None,
    foreach=None,
    fused=None,
)
_CONFIG_KEYS = tuple(k for k in DEFAULTS if k not in ("lr", "foreach", "fused"))

#: Layout of the state, kept in every param group as ``state_format``. 2: the γ ≠ 0 filter buffer
#: is the input's average u[t] = β u[t−1] + (1 − β) g[t] (autosgm 0.2). A group without the key (0.1)
#: held the transposed-direct-form state s = K u, K = η(β − γ)/(1 − β); loading converts it.
STATE_FORMAT = 2

#: Settings that torch.optim's optimizers keep in their param groups and AutoSGM has not (every one
#: but LBFGS keeps ``differentiable``; LBFGS keeps ``history_size``): a saved group holding one is
#: another optimizer's. Other extra keys, such as a scheduler's ``initial_lr``, are kept as torch does.
_FOREIGN_SETTINGS = frozenset({"amsgrad", "capturable", "dampening", "differentiable", "history_size", "momentum",
                               "nesterov"})
#: Devices and parameter dtypes the fused path compiles for.
FUSED_DEVICES = ("cpu", "cuda")
_FUSED_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
                           torch.complex128})


class StepRecord(NamedTuple):
    """What a trajectory hook sees for one parameter tensor at one step ``t``.

    ``alpha`` is the oracle ``α[t] = μ F a / (S[t] d)`` (so that ``Δ = −α (v + S d ρ_d w)``); for a
    weight matrix with the matrix oracle its scalar part ``μ F a / S[t]`` (``denominator`` is None:
    the matrix ``M^(−1/2)`` acts on ``v`` as a whole),
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
    :meth:`adamw`, :meth:`rmsprop`; with the matrix oracle (``oracle="matrix"``), Muon is one too
    (:meth:`muon`).

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
        zero_tensor_start: c₀, where the partial-correlation accumulator ``c`` of a ``parcor-*``
            numerator starts for a tensor whose weights are all zero when its state is created
            (biases, norm shifts): with ``c = 0`` such a tensor would never move (spec §4). Tensors
            with any non-zero weight start at ``c = 0`` as the spec says. 0 turns the remedy off.
            Default 1e-2 (chosen by measurement: docs/zero-tensors.md).
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
        oracle: ``"element"`` (the oracle ``μ F a / d`` above) or ``"matrix"`` (spec §9): each weight
            matrix of the group (a tensor whose 2-D view ``shape[0] × rest`` has both dims in
            [4, 2048], :func:`~autosgm.matrix.gets_matrix_oracle`) steps by
            ``w ← w − μ F a (s (M + εI)^(−1/2) V + ρ_d w)`` with ``V = v̂`` as a matrix
            (``n × m``, ``n ≤ m``) and ``M = V Vᵀ`` or its average (:func:`~autosgm.step.matrix_step`);
            its other tensors keep the element-wise oracle with the group's settings (to give a
            matrix the element-wise oracle, put it in a group with ``oracle="element"``). Needs
            ``normalize=True``; the moment ``d`` is not kept for a matrix (``M`` plays its part);
            numerators ``"unity"`` or ``"parcor-*"``. Matrices are stepped on the single-tensor
            path whatever ``foreach``/``fused`` say; the group's other tensors follow them.
            Default ``"element"``. See docs/matrix-oracle.md.
        matrix_method: how ``M^(−1/2)`` is computed: ``"newton-schulz"`` (default: matrix products
            only, damps rather than amplifies unconverged directions), ``"lakic"``, ``"eigh"`` (exact,
            float64) or ``"muon-quintic"`` (Muon's approximate polar factor; only with ``matrix_pole=0``).
        matrix_iters: the iteration count; None (default) is the method's (16, 11, 5; not for ``"eigh"``).
        matrix_eps: ε of ``M + εI`` (>= 0; for ``"muon-quintic"`` the floor of ``‖V‖_F``, > 0); None
            (default) is the method's: 0, or 1e-7 for ``"muon-quintic"`` (torch's Muon).
        matrix_pole: pole p of ``M ← p M + (1 − p) V Vᵀ`` (state ``matrix_m``, ``n × n``; divided by
            ``1 − p^t`` when ``debias``): one-sided Shampoo-like. 0 (default): ``M = V Vᵀ``, so that
            ``M^(−1/2) V`` is ``V``'s polar factor (Muon's update).
        matrix_lr_scale: the learning rate's factor ``s`` for a ``rows × cols`` matrix: None (1),
            ``"original"`` (``√max(1, rows/cols)``) or ``"match_rms_adamw"`` (``0.2 √max(rows, cols)``),
            torch's Muon ``adjust_lr_fn``. Default None.
        foreach: use the multi-tensor path (``torch._foreach_*`` over tensors grouped by device,
            dtype and step count); None picks it when every parameter is on CUDA (torch's rule).
        fused: use the fused path: each tensor's whole step is one compiled loop
            (``torch.compile``, a few programs per configuration and dtype whatever the shapes;
            small tensors are packed together; lr, window value and step count are data, so
            they never cause a recompilation; see :mod:`autosgm.fused`). None means False. Not
            together with ``foreach=True``.
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
        zero_tensor_start: float = _Default(ZERO_TENSOR_START),  # type: ignore[assignment]
        eps: float = _Default(1e-8),  # type: ignore[assignment]
        repeat_eps: bool = _Default(False),  # type: ignore[assignment]
        weight_decay: float = _Default(0.0),  # type: ignore[assignment]
        decoupled_weight_decay: bool = _Default(False),  # type: ignore[assignment]
        window: Window | None = _Default(None),  # type: ignore[assignment]
        maximize: bool = _Default(False),  # type: ignore[assignment]
        nonfinite: str = _Default("proceed"),  # type: ignore[assignment]
        oracle: str = _Default("element"),  # type: ignore[assignment]
        matrix_method: str = _Default(_matrix.STEP_METHOD),  # type: ignore[assignment]
        matrix_iters: int | None = _Default(None),  # type: ignore[assignment]
        matrix_eps: float | None = _Default(None),  # type: ignore[assignment]
        matrix_pole: float = _Default(0.0),  # type: ignore[assignment]
        matrix_lr_scale: str | None = _Default(None),  # type: ignore[assignment]
        foreach: bool | None = None,
        fused: bool | None = None,
        lr_cfg: tuple | None = None,
        beta_cfg: tuple | None = None,
        rc_cfg: tuple | None = None,
        wd_cfg: tuple | None = None,
        eps_cfg: tuple | None = None,
    ) -> None:
        given = dict(
            lr=lr, betas=betas, gamma=gamma, eta=eta, beta_n=beta_n, debias=debias,
            normalize=normalize, numerator=numerator, numerator_mode=numerator_mode,
            zero_tensor_start=zero_tensor_start, eps=eps,
            repeat_eps=repeat_eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, window=window, maximize=maximize,
            nonfinite=nonfinite, oracle=oracle, matrix_method=matrix_method, matrix_iters=matrix_iters,
            matrix_eps=matrix_eps, matrix_pole=matrix_pole, matrix_lr_scale=matrix_lr_scale,
        )  # fmt: skip
        seed = dict(lr_cfg=lr_cfg, beta_cfg=beta_cfg, rc_cfg=rc_cfg, wd_cfg=wd_cfg, eps_cfg=eps_cfg)
        explicit = {k: v for k, v in given.items() if not isinstance(v, _Default)}
        defaults = dict(DEFAULTS)
        defaults.update(_merge_seed(explicit, seed))
        defaults["foreach"] = foreach
        defaults["fused"] = fused
        _check_paths(defaults)
        if isinstance(defaults["window"], Window):
            defaults["window"] = defaults["window"].to_dict()
        self._cfg_cache: dict[int, tuple[tuple, AutoSGMConfig]] = {}
        #: Per group index: the multi-tensor and fused paths' plan (buckets, packed state), kept while
        #: the group's parameters with gradients, settings, path and state object stay the same.
        self._plans: dict[int, GroupPlan] = {}
        #: Per group index: (group, the configuration its state was last stepped or loaded with).
        self._state_configs: dict[int, tuple[dict[str, Any], AutoSGMConfig]] = {}
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
        return cls(params, lr, betas=(momentum, 0.999), gamma=nesterov_gamma(momentum),
                   eta=nesterov_eta(momentum), debias=False, normalize=False, weight_decay=weight_decay,
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

    @classmethod
    def muon(cls, params, lr: float = 1e-3, *, momentum: float = 0.95, weight_decay: float = 0.1,
             nesterov: bool = True, adjust_lr_fn: str | None = None, **kwargs: Any) -> "AutoSGM":  # fmt: skip
        """Muon: the matrix oracle without averaging (the polar factor, by Muon's quintic
        Newton–Schulz) on Muon's momentum — ``torch.optim.Muon(lr, weight_decay, momentum, nesterov,
        adjust_lr_fn)`` for weight matrices, step for step (defaults are torch's).

        Filter: β = momentum, γ = β/(1+β) with Nesterov (else 0), default gain η, no debias; oracle:
        ``a = 1``, ``M = V Vᵀ``, ``matrix_lr_scale = adjust_lr_fn`` (None is ``"original"``, as in
        torch); decoupled decay. Tensors that do not get the matrix oracle (1-D, a dim < 4 or
        > 2048) are stepped element-wise with these settings (a Nesterov-filtered RMSprop-like
        step); torch's Muon refuses them: as its documentation advises, give them a group of
        their own, e.g. ``{"params": ..., "oracle": "element", "gamma": 0.0, "debias": True}``
        (Adam's point) or a separate :meth:`adamw`.
        """
        return cls(params, lr, betas=(momentum, 0.999), gamma=nesterov_gamma(momentum) if nesterov else 0.0,
                   eta=None, debias=False, normalize=True, numerator="unity", weight_decay=weight_decay,
                   decoupled_weight_decay=True, oracle="matrix", matrix_method="muon-quintic", matrix_pole=0.0,
                   matrix_lr_scale="original" if adjust_lr_fn is None else adjust_lr_fn, **kwargs)  # fmt: skip

    # ------------------------------------------------------------------------------------------
    # groups and configuration
    # ------------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; it may carry readable keywords or seed tuples.

        Every setting is validated before the group is added: after an error the optimizer is
        unchanged.
        """
        group = dict(param_group)
        seed = {k: group.pop(k) for k in SEED_KEYS if k in group}
        if seed:
            explicit = {k: v for k, v in group.items() if k in DEFAULTS}
            group.update(_merge_seed(explicit, seed))
        group.pop("state_format", None)  # (a group of a state_dict: the layout is this version's)
        unknown = set(group) - set(DEFAULTS) - {"params"}
        if unknown:
            raise TypeError(f"unknown param-group setting(s): {', '.join(sorted(unknown))}")
        if isinstance(group.get("window"), Window):
            group["window"] = group["window"].to_dict()
        if "numerator" in group:
            group["numerator"] = numerator_name(group["numerator"])
        settings = {**self.defaults, **group}
        _check_paths(settings)
        check_lr(settings["lr"], AutoSGMConfig.from_group(settings))
        super().add_param_group(group)
        group = self.param_groups[-1]
        group["state_format"] = STATE_FORMAT
        self._state_configs[len(self.param_groups) - 1] = (group, self.group_config(group))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_cfg_cache", {})
        self.__dict__.setdefault("_plans", {})
        self.__dict__.setdefault("_trajectory_hooks", OrderedDict())
        self.__dict__.setdefault("last_window_values", [])
        self.__dict__.setdefault("skipped_steps", [])
        for group in self.param_groups:
            for key, value in DEFAULTS.items():
                group.setdefault(key, value)
        normalize_steps(self.state.values())
        if not self.__dict__.get("_loading"):
            self._upgrade_state_format()
            self._record_state_configs()

    def group_config(self, group: dict[str, Any] | int) -> AutoSGMConfig:
        """The validated :class:`AutoSGMConfig` of a param group (or its index).

        Validation runs when the group's settings change (once, normally), not on every step.
        """
        if isinstance(group, int):
            group = self.param_groups[group]
        key = tuple(_freeze(group[k]) for k in _CONFIG_KEYS)
        cached = self._cfg_cache.get(id(group))
        if cached is not None and cached[0] == key:
            cfg = cached[1]
        else:
            cfg = AutoSGMConfig.from_group(group)
            self._cfg_cache[id(group)] = (key, cfg)
        check_lr(group["lr"], cfg)
        return cfg

    def _record_state_configs(self) -> None:
        """Take each group's present settings as those its state holds (after a load). A group
        whose settings are invalid gets no record: its next ``step()`` reports them."""
        self._state_configs = {}
        for gi, group in enumerate(self.param_groups):
            with contextlib.suppress(ValueError, TypeError):
                self._state_configs[gi] = (group, self.group_config(group))

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
        """Create ``p``'s state on first use: only the buffers the configuration needs.

        ``step`` is a 0-d float32 tensor on the CPU (as torch.optim keeps it). The buffers have
        :func:`~autosgm.step.state_dtype` (float32 for float16/bfloat16 parameters).
        """
        state = self.state.get(p)
        if type(state) is not ParamState:  # new, or loaded (a plain dict)
            state = self.state[p] = ParamState(state or ())
        if len(state) == 0:
            dtype = state_dtype(w.dtype)
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            matrix = gets_matrix_step(p, cfg)
            shapes = buffer_shapes(cfg, p)
            for name, kind in buffer_layout(cfg, matrix).items():
                if kind == "element":
                    state[name] = torch.zeros_like(w, dtype=dtype, memory_format=torch.preserve_format)
                else:
                    state[name] = torch.zeros(shapes[name], dtype=dtype, device=w.device)
            c0 = correlation_start(cfg, w)
            if c0 != 0.0:
                if matrix:  # C = c₀ I: ‖C‖_F/√n = c₀
                    state["num_c"].diagonal().fill_(c0)
                else:
                    state["num_c"].fill_(c0)
        return state

    def _path(self, group: dict[str, Any], params: list[Tensor]) -> str:
        """The path of this group's step: ``"single"`` (reference), ``"foreach"`` or ``"fused"``."""
        if self._trajectory_hooks:
            return "single"
        _check_paths(group)
        if group["fused"]:
            _check_fused_support(params)
            return "fused"
        foreach = group["foreach"]
        if foreach is None:
            foreach = all(p.is_cuda for p in params)
        return "foreach" if foreach else "single"

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss.

        Everything that can refuse the step (settings, their change since the last step, the
        gradients' layout and devices, the non-finite policy) is checked for every group before
        any group is stepped.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        configs = [self.group_config(group) for group in self.param_groups]
        groups = list(enumerate(zip(self.param_groups, configs)))
        conversions = [self._settings_change(gi, group, cfg) for gi, (group, cfg) in groups]
        plans = [self._plan(group) for group in self.param_groups]
        skip = self._nonfinite_groups(configs, [params for params, _ in plans])
        window_values = []
        for gi, (group, cfg) in groups:
            if gi in skip:
                window_values.append(self.last_window_values[gi] if gi < len(self.last_window_values) else 1.0)
                continue
            self._apply_settings_change(gi, group, cfg, conversions[gi])
            params, path = plans[gi]
            if not params:
                window_values.append(self.last_window_values[len(window_values)]
                                     if len(self.last_window_values) > len(window_values) else 1.0)  # fmt: skip
                continue
            lr = group["lr"]
            mu = float(lr) if isinstance(lr, Tensor) else lr
            with _sharding_context(params):
                F = self._group_step(gi, group, params, cfg, mu, path)
            window_values.append(F)
        self.last_window_values = window_values
        return loss

    def _plan(self, group: dict[str, Any]) -> tuple[list[Tensor], str]:
        """The group's parameters with gradients and the path to step them on (checked, not stepped)."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return params, "single"
        if any(p.grad.is_sparse for p in params):
            raise TypeError("AutoSGM does not support sparse gradients; use dense gradients")
        return params, self._path(group, params)

    # ------------------------------------------------------------------------------------------
    # settings changed between steps
    # ------------------------------------------------------------------------------------------
    def _settings_change(self, gi: int, group: dict[str, Any], cfg: AutoSGMConfig) -> float | None:
        """Check a change of the group's settings since its state was last stepped; changes nothing.

        A change of numbers applies as it is. A change of the buffers the group keeps
        (``normalize``, ``numerator``, ``numerator_mode``, ``oracle``, ``matrix_pole`` to or from 0, the
        filter's memory) is refused when the state does not already hold the new buffers (a state
        loaded with its settings does).
        Returns the factor that converts the filter buffer when γ moved between zero and non-zero
        (the output ``v`` for γ = 0, the input's average ``u`` otherwise), else None.
        """
        record = self._state_configs.get(gi)
        old = record[1] if record is not None and record[0] is group else None
        if old is cfg:
            return None
        if old is None or buffer_structure(old) != buffer_structure(cfg):
            self._check_group_state(gi, group, cfg)
            return None  # the state holds the new buffers: it was made (or replaced) with these settings
        return filter_conversion(old, cfg)

    def _check_group_state(self, gi: int, group: dict[str, Any], cfg: AutoSGMConfig) -> None:
        """Refuse a step whose settings need other buffers than the group's state holds."""
        for p in group["params"]:
            state = self.state.get(p)
            problem = state_mismatch(state, cfg, p) if state else None
            if problem is not None:
                raise ValueError(
                    f"param group {gi}: {problem}; the settings changed after the group's state was created, "
                    "and a change of the buffers a group keeps (normalize, numerator, numerator_mode, oracle, "
                    "matrix_pole to or from 0, or "
                    "betas[0] and gamma to or from β = γ = 0) cannot apply between steps: construct a new "
                    "optimizer, or clear the state of the group's parameters, to use the new settings"
                )

    def _apply_settings_change(self, gi: int, group: dict[str, Any], cfg: AutoSGMConfig,
                               factor: float | None) -> None:  # fmt: skip
        """Convert the group's filter buffers by ``factor`` (if any); the state now holds ``cfg``."""
        if factor is not None:
            for p in group["params"]:
                buf = self.state.get(p, {}).get("filter_state")
                if buf is not None:
                    buf.mul_(factor)
        self._state_configs[gi] = (group, cfg)

    def _group_step(self, gi: int, group: dict[str, Any], params: list[Tensor], cfg: AutoSGMConfig,
                    mu: float, path: str) -> float:  # fmt: skip
        """Step one group's parameters (those with gradients) on the chosen path; returns F.

        Single tensor (the reference): :func:`~autosgm.step.tensor_step` per parameter with
        torch's functions (:func:`~autosgm.step.matrix_step` for a weight matrix with the matrix
        oracle, on every path). Multi-tensor and fused: per bucket (tensors of one device, dtype and
        step count), count the step once, then the stages on lists of tensors
        (``torch._foreach_*``), tensor by tensor with a workspace (a numerator's chain on the
        CPU, :mod:`autosgm.packing`) or compiled (:mod:`autosgm.fused`).
        """
        F = 1.0
        matrices = {p for p in params if gets_matrix_step(p, cfg)} if cfg.oracle == "matrix" else set()
        # the reference path; weight matrices with the matrix oracle take it whatever the group's path
        for p in params if path == "single" else [p for p in params if p in matrices] if matrices else ():
            w, g = real_view(p), real_view(p.grad)
            state = self._init_state(p, w, cfg)
            state["step"] += 1
            matrix = p in matrices
            if self._trajectory_hooks:
                F = _recorded_step(w, g, state, cfg, mu, self._record_fn(group, w), matrix)
                continue
            t = int(state["step"])  # (a CPU tensor: no device sync)
            scalars, F = step_scalars(cfg, t, mu)
            if matrix:
                matrix_step(TENSOR_OPS, w, g, state, cfg, scalars, t)
            else:
                tensor_step(TENSOR_OPS, w, g, state, cfg, scalars)
        if path == "single":
            self._plans.pop(gi, None)  # its step counts may now differ
            return F
        if matrices:
            params = [p for p in params if p not in matrices]
            if not params:
                return F
        plan = group_plan(self._plans, gi, group, params, cfg, path == "fused", self.state, self._init_state)
        grads = [p.grad for p in params]
        for b in plan.buckets:
            ws = b.params
            gs = grads if b.index is None else [grads[i] for i in b.index]
            if b.complex:
                ws, gs = [real_view(w) for w in ws], [real_view(g) for g in gs]
            b.steps.add_(1.0)
            scalars, F = step_scalars(cfg, int(b.steps[0]), mu)
            if b.layout is not None:
                fused_step(b.layout, ws, gs, cfg, scalars)
            elif b.cpu is not None:
                for ops, w, g, buffers in cpu_work(b.cpu, ws, gs, b.dtype):
                    tensor_step(ops, w, g, buffers, cfg, scalars)
            else:
                for sl, buffers in b.chunks:
                    tensor_step(FOREACH_OPS, ws[sl], gs[sl], buffers, cfg, scalars)
        return F

    def _nonfinite_groups(self, configs: list[AutoSGMConfig], params: list[list[Tensor]]) -> set[int]:
        """Apply the groups' non-finite-gradient policies before anything is updated (``params``:
        each group's parameters with gradients).

        Returns the groups to skip (``"skip"``); raises :class:`FloatingPointError` for a
        ``"raise"`` group, leaving every group untouched. ``"proceed"`` groups are not checked.
        """
        bad = []
        for gi, (cfg, ps) in enumerate(zip(configs, params)):
            if cfg.nonfinite == "proceed":
                continue
            if not _all_finite([p.grad for p in ps]):
                if cfg.nonfinite == "raise":
                    raise FloatingPointError(f"non-finite gradient in param group {gi} (nonfinite='raise')")
                bad.append(gi)
        for gi in bad:
            while len(self.skipped_steps) <= gi:
                self.skipped_steps.append(0)
            self.skipped_steps[gi] += 1
        return set(bad)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict, each parameter's state a plain ``dict`` (loadable with
        ``torch.load(weights_only=True)``; the tensors are the state's own, as torch.optim's)."""
        out = super().state_dict()
        out["state"] = {k: dict(v) if isinstance(v, ParamState) else v for k, v in out["state"].items()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state; refused when a group's saved settings differ from this optimizer's, or when
        the state is not one AutoSGM keeps for these settings (e.g. another optimizer's).

        torch.optim would silently adopt the saved settings (e.g. another numerator) while the
        caller constructed different ones; here the difference is an error. ``lr`` (driven by
        schedulers), ``foreach`` and ``fused`` may differ. A setting the checkpoint does not hold
        (written before the setting existed) takes the value this optimizer was constructed with.
        A ``step`` stored as a number (as older torch.optim checkpoints do) is accepted. After an
        error the optimizer is unchanged.
        """
        state_dict = self._completed(state_dict)
        if len(state_dict["param_groups"]) == len(self.param_groups):
            for i, (cur, old) in enumerate(zip(self.param_groups, state_dict["param_groups"])):
                _check_saved_group(i, cur, old)
            self._check_saved_state(state_dict)
        self.__dict__["_loading"] = True  # (torch's load calls __setstate__: upgrade below, once)
        try:
            super().load_state_dict(state_dict)
        finally:
            self.__dict__.pop("_loading", None)
        self._restore_state_dtypes(state_dict)
        self._upgrade_state_format()
        self._record_state_configs()

    def _completed(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """``state_dict`` (a shallow copy) whose groups hold every setting: one it lacks takes this
        optimizer's value for it. A group with foreign settings is left as it is (refused later)."""
        saved = state_dict.get("param_groups")
        if not isinstance(saved, list) or len(saved) != len(self.param_groups):
            return state_dict
        groups = []
        for cur, old in zip(self.param_groups, saved):
            if isinstance(old, dict):
                old = {**{k: cur[k] for k in DEFAULTS if k not in old}, **old}
            groups.append(old)
        return {**state_dict, "param_groups": groups}

    def _check_saved_state(self, state_dict: dict[str, Any]) -> None:
        """Refuse saved per-parameter state that this optimizer's step could not use: foreign
        buffers, buffers of other settings or shapes, a step count that is not a whole number."""
        saved_groups, states = state_dict["param_groups"], state_dict.get("state", {})
        for i, (cur, old) in enumerate(zip(self.param_groups, saved_groups)):
            cfg = self.group_config(cur)
            for j, (pid, p) in enumerate(zip(old["params"], cur["params"])):
                state = states.get(pid)
                if not state:
                    continue
                problem = state_mismatch(state, cfg, p)
                if problem is not None:
                    raise ValueError(f"the state_dict does not fit param group {i}, parameter {j}: {problem}")

    def _upgrade_state_format(self) -> None:
        """Bring the state of groups saved by an earlier layout (no ``state_format``) to
        :data:`STATE_FORMAT`: the γ ≠ 0 filter buffer ``s = K u`` becomes ``u = s / K``."""
        for group in self.param_groups:
            if group.get("state_format", 1) == STATE_FORMAT:
                continue
            cfg = self.group_config(group)
            k = cfg.filter_state_gain if cfg.gamma != 0.0 else 0.0
            if k != 0.0:
                for p in group["params"]:
                    buf = self.state.get(p, {}).get("filter_state")
                    if buf is not None:
                        buf.div_(k)
            group["state_format"] = STATE_FORMAT

    def _restore_state_dtypes(self, state_dict: dict[str, Any]) -> None:
        """Undo torch's cast of loaded state to the parameter dtype (``Optimizer.load_state_dict``
        casts every floating buffer but ``step``): buffers take :func:`~autosgm.step.state_dtype`
        (float32 for float16/bfloat16 parameters), copied from the saved values without loss,
        and ``step`` is a float32 CPU tensor (also when it was saved as a number)."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            saved = state_dict["state"].get(pid)
            if saved is None:
                continue
            state = self.state[p]
            for key, value in saved.items():
                if key == "step":
                    state[key] = step_tensor(value, copy=True)
                elif isinstance(value, Tensor) and p.is_floating_point() and value.is_floating_point():
                    dtype = state_dtype(p.dtype)
                    if dtype != p.dtype:
                        state[key] = value.detach().to(device=p.device, dtype=dtype, copy=True)

    def _record_fn(self, group: dict[str, Any], param: Tensor):
        if not self._trajectory_hooks:
            return None

        def emit(record: StepRecord) -> None:
            for hook in list(self._trajectory_hooks.values()):
                hook(self, record._replace(param=param))

        return emit


# ----------------------------------------------------------------------------------------------
# the paths: all three run autosgm.step.tensor_step, with different ops
# ----------------------------------------------------------------------------------------------
def _all_finite(grads: list[Tensor]) -> bool:
    """Whether every gradient is finite; for sharded (DTensor) gradients, over all ranks."""
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    flag = all(bool(torch.isfinite(g).all()) for g in local)
    meshes = {g.device_mesh for g in grads if hasattr(g, "device_mesh")}
    if meshes:
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=local[0].device)
        for mesh in meshes:
            for dim in range(mesh.ndim):
                dist.all_reduce(t, op=dist.ReduceOp.MIN, group=mesh.get_group(dim))
        flag = bool(t.item() > 0.5)
    return flag


def _sharding_context(params: list[Tensor]):
    """For sharded (DTensor) parameters, let the plain 0-d per-tensor statistics combine with
    them as replicated values; a no-op otherwise."""
    if type(params[0]).__name__ != "DTensor":
        return contextlib.nullcontext()
    from torch.distributed.tensor.experimental import implicit_replication

    return implicit_replication()


def _check_paths(group: dict[str, Any]) -> None:
    for key in ("foreach", "fused"):
        if group[key] is not None and not isinstance(group[key], bool):
            raise TypeError(f"{key} must be True, False or None, got {group[key]!r}")
    if group["foreach"] and group["fused"]:
        raise ValueError("foreach=True and fused=True cannot be used together; choose one path")


def _check_fused_support(params: list[Tensor]) -> None:
    """Refuse, before anything changes, parameters the fused path cannot step (as torch's fused Adam).

    Runs at every fused step, so each parameter costs two attribute reads (about 0.25 µs).
    """
    for p in params:
        if not ((p.is_cpu or p.is_cuda) and p.dtype in _FUSED_DTYPES):
            raise RuntimeError(
                f"fused=True requires every parameter to be a floating-point or complex tensor on one of the "
                f"devices {list(FUSED_DEVICES)}, but one is {p.dtype} on {p.device.type}; give it a param group "
                "with fused=False"
            )


def _check_saved_group(i: int, cur: dict[str, Any], old: Any) -> None:
    """Refuse a saved param group that is not AutoSGM's or whose settings differ from ``cur``'s
    (``lr``, ``foreach`` and ``fused`` may differ)."""
    if not isinstance(old, dict) or "params" not in old:
        raise ValueError(f"param group {i} of the state_dict is not a param group (a dict with 'params')")
    foreign = sorted(str(k) for k in old if k in _FOREIGN_SETTINGS)
    if foreign:
        raise ValueError(
            f"param group {i} of the state_dict holds settings AutoSGM does not have ({', '.join(foreign)}): "
            "is it another optimizer's state_dict? Load a state_dict saved by AutoSGM"
        )
    diffs = [f"{k}: saved {old[k]!r}, here {cur[k]!r}" for k in _CONFIG_KEYS if _freeze(old[k]) != _freeze(cur[k])]
    if diffs:
        raise ValueError(
            f"the state_dict was saved with other settings for param group {i} ("
            + "; ".join(diffs)
            + "); construct the optimizer with the saved settings (state_dict['param_groups'])"
        )


def _recorded_step(
    w: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    cfg: AutoSGMConfig,
    mu: float,
    emit: Callable[[StepRecord], None],
    matrix: bool = False,
) -> float:
    """The reference step of one tensor (``matrix``: with the matrix oracle) with its
    :class:`StepRecord` given to ``emit`` (the trajectory hooks); returns F."""
    t = int(state["step"])
    scalars, F = step_scalars(cfg, t, mu)
    w_before = w.clone()
    records: list[StepRecord] = []

    def record(v, d, a) -> None:
        records.append(_make_record(w, grad, v, d, a, cfg, mu, F, scalars.debias, t))

    if matrix:
        matrix_step(TENSOR_OPS, w, grad, state, cfg, scalars, t, record)
    else:
        tensor_step(TENSOR_OPS, w, grad, state, cfg, scalars, record)
    emit(records[0]._replace(weight=w_before, update=w - w_before))
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


_ATOMS = (float, int, bool, str, type(None))


def _freeze(value: Any) -> Any:
    """A hashable snapshot of a setting (lists and dicts can change in place)."""
    if type(value) in _ATOMS:
        return value
    if type(value) is tuple:
        return tuple(_freeze(v) for v in value)
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
