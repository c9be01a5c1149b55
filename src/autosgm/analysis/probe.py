r"""Trajectory probe: record the learning dynamics of an :class:`~autosgm.AutoSGM` run (spec §7).

Per coordinate, with ``α[t] = μ F a / (S[t] d)`` the oracle of step ``t`` and ``r[t] = α[t]/α[t−1]``,
every AutoSGM step obeys the first-order linear time-varying (LTV) recursion

.. math::
    Δ[t+1] &= β\, r[t]\, Δ[t] + η\, α[t]\, e[t], \qquad Δ[t+1] = w[t+1] − w[t] \\
    e[t]   &= γ g[t−1] − g[t] + \begin{cases}
                 ρ (γ w[t−1] − w[t])                      & \text{coupled decay} \\
                 (ρ/η)(β \tilde w[t−1] − \tilde w[t]),\; \tilde w = S d w & \text{decoupled decay}
              \end{cases}

with zero initial conditions (``Δ[1] = g[0] = w[0] = w̃[0] = 0``, ``α[0] = 0``). It follows from
``Δ[t+1] = −α[t] (v[t] + ρ_d w̃[t])`` and ``v[t] = β v[t−1] + η (g_in[t] − γ g_in[t−1])``
(``g_in = g + ρ w`` for coupled decay) by eliminating ``v``. The per-step stability margin of
this change-level filter is ``|β r[t]|``.

:class:`TrajectoryProbe` is a trajectory hook (``AutoSGM.register_trajectory_hook``). Each step
it records summary statistics of ``α``, ``r``, ``e``, ``Δw`` (= ``Δ[t+1]``) and the margin
``|β r|`` per parameter tensor, optionally the full tensors, and it evaluates the recursion online
from the previous step's kept tensors, so that :meth:`TrajectoryProbe.check_ltv` can tell how far
the recorded trajectory is from it (float64: about 1e-13 relative).

Conventions: where ``α[t−1] = 0`` (in particular at ``t = 1``) ``r[t] := 0`` and the term
``β r Δ`` is 0 (there ``Δ[t] = 0``). Where ``α[t−1] = 0`` but ``α[t] ≠ 0`` for ``t > 1`` (a
window passing through 0, ``lr = 0``) the recursion does not determine ``Δ[t+1]`` (the filter
state is not visible in ``Δ[t] = 0``): those coordinates are left out of the check and counted.

``python -m autosgm.analysis.probe OUTDIR`` trains a small probed network and writes
``OUTDIR/traces.png`` and ``OUTDIR/trajectory.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import replacing, save_figure

__all__ = [
    "QUANTITIES",
    "STATISTICS",
    "SUMMARY_KEYS",
    "LTVCheck",
    "TrajectoryProbe",
    "ltv_residual",
    "trace_figure",
    "main",
]

#: Recorded quantities: oracle α[t], ratio r[t], input e[t], change Δw = Δ[t+1], margin |β r[t]|.
QUANTITIES: tuple[str, ...] = ("alpha", "r", "e", "dw", "margin")
#: Summary statistics of each quantity per tensor per step: sup = max|·|, mean, sample sd.
STATISTICS: tuple[str, ...] = ("sup", "mean", "sd")
#: Keys of one summary record (:meth:`TrajectoryProbe.records`), in column order.
SUMMARY_KEYS: tuple[str, ...] = (
    ("step", "param", "numel")
    + tuple(f"{q}_{s}" for q in QUANTITIES for s in STATISTICS)
    + ("ltv_residual", "unchecked")
)
#: Full-tensor quantities kept for the tensors chosen with ``full=`` (the prediction too).
FULL_QUANTITIES: tuple[str, ...] = QUANTITIES + ("dw_pred",)


@dataclass(frozen=True)
class LTVCheck:
    """Result of :meth:`TrajectoryProbe.check_ltv`.

    ``worst`` is the largest relative residual ``‖Δ_rec − Δ_pred‖∞ / max(‖Δ_rec‖∞, tiny)`` over
    all checked steps and tensors (NaN if any step produced a NaN), found for ``param`` at ``step``;
    ``per_param`` maps each tensor's name to its own ``(worst, step)``; ``steps`` counts the
    checked (tensor, step) pairs; ``unchecked`` counts coordinates the recursion does not determine
    (``α[t−1] = 0 ≠ α[t]``) and ``skipped`` steps seen without the previous step (e.g. after loading
    a state dict mid-run).
    """

    worst: float
    param: str | None
    step: int | None
    per_param: dict[str, tuple[float, int]] = field(default_factory=dict)
    steps: int = 0
    unchecked: int = 0
    skipped: int = 0

    def passed(self, tol: float) -> bool:
        """True when at least one step was checked and ``worst ≤ tol`` (False for NaN)."""
        return self.steps > 0 and self.worst <= tol


@dataclass
class _Memory:
    """What the recursion needs from step t − 1 for one tensor."""

    step: int
    g_in: Tensor  # filter input g + ρ w (coupled) or g
    u: Tensor | None  # ρ_d w̃ = ρ_d S d w (decoupled decay), None when 0
    alpha: Tensor
    dw: Tensor  # Δ[t] (the update of step t − 1)


def _worse(new: float, old: float) -> bool:
    """NaN counts as the worst value."""
    if math.isnan(old):
        return False
    return math.isnan(new) or new > old


class TrajectoryProbe:
    r"""Record ``α``, ``r``, ``e``, ``Δw`` and ``|β r|`` of an AutoSGM run and check the LTV recursion.

    Args:
        optimizer: an :class:`~autosgm.AutoSGM` (anything with ``register_trajectory_hook``).
        full: tensors whose full values are kept each step (CPU clones), given as parameters or
            names; None keeps none.
        summary: keep per-step summary statistics (sup, mean, sd of each quantity).
        named_params: ``{name: parameter}``, e.g. ``dict(model.named_parameters())``; other
            parameters are called ``param{i}`` (``i`` = position in the optimizer's groups).

    Use ``with TrajectoryProbe(opt) as probe: ...`` or :meth:`attach`/:meth:`detach`. The probe is
    itself a hook, ``probe(optimizer, record)``, so it can also be fed records by hand. It keeps
    four tensors per parameter (previous ``g_in``, ``α``, ``Δ`` and, with decoupled decay, ``ρ w̃``)
    on the parameter's device.
    """

    def __init__(
        self,
        optimizer: Any,
        *,
        full: Iterable[Tensor | str] | None = None,
        summary: bool = True,
        named_params: Mapping[str, Tensor] | None = None,
    ) -> None:
        if not callable(getattr(optimizer, "register_trajectory_hook", None)):
            raise TypeError(
                f"optimizer must have register_trajectory_hook (an AutoSGM), got {type(optimizer).__name__}"
            )
        if not isinstance(summary, bool):
            raise TypeError(f"summary must be a bool, got {type(summary).__name__} {summary!r}")
        if named_params is not None:
            if not isinstance(named_params, Mapping):
                raise TypeError(
                    f"named_params must be a mapping of names to tensors, got {type(named_params).__name__}"
                )
            for k, v in named_params.items():
                if not isinstance(k, str) or not isinstance(v, Tensor):
                    raise TypeError(f"named_params must map str to Tensor; got {k!r}: {type(v).__name__}")
        self.optimizer = optimizer
        self.summary = summary
        self._named = dict(named_params or {})
        self._handle: Any = None
        self._by_id: dict[int, str] = {}
        self._by_ptr: dict[tuple, str] = {}
        self._names: list[str] = []
        self._index_names()
        self._full = self._resolve_full(full)
        self._memory: dict[str, _Memory] = {}
        self._records: list[dict[str, Any]] = []
        self._tensors: dict[str, dict[str, list[Tensor]]] = {
            name: {q: [] for q in FULL_QUANTITIES} for name in self._full
        }
        self._full_steps: dict[str, list[int]] = {name: [] for name in self._full}
        self._worst: dict[str, tuple[float, int]] = {}
        self._steps = 0
        self._unchecked = 0
        self._skipped = 0

    # ------------------------------------------------------------------------------------------
    # names
    # ------------------------------------------------------------------------------------------
    def _index_names(self) -> None:
        by_name = {id(p): n for n, p in self._named.items()}
        self._by_id, self._by_ptr, self._names = {}, {}, []
        i = 0
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                name = by_name.get(id(p), f"param{i}")
                i += 1
                self._by_id[id(p)] = name
                self._names.append(name)
                if torch.is_complex(p) and p.numel():
                    real = torch.view_as_real(p)
                    self._by_ptr[(real.data_ptr(), tuple(real.shape), real.dtype)] = name
        if len(set(self._names)) != len(self._names):
            raise ValueError("named_params gives the same name to two parameters")

    def _name_of(self, param: Tensor) -> str | None:
        name = self._by_id.get(id(param))
        if name is None and param.numel():
            name = self._by_ptr.get((param.data_ptr(), tuple(param.shape), param.dtype))
        return name

    def _lookup(self, param: Tensor) -> str:
        name = self._name_of(param)
        if name is None:  # a group added after the probe was made
            self._index_names()
            name = self._name_of(param)
        if name is None:
            name = f"unknown{len(self._by_id)}"
            self._by_id[id(param)] = name
        return name

    def _resolve_full(self, full: Iterable[Tensor | str] | None) -> tuple[str, ...]:
        if full is None:
            return ()
        if isinstance(full, (str, Tensor)):
            full = [full]
        out = []
        for item in full:
            if isinstance(item, str):
                if item not in self._names:
                    known = ", ".join(self._names)
                    raise ValueError(f"full: unknown parameter name {item!r}; known: {known}")
                name = item
            elif isinstance(item, Tensor):
                name = self._by_id.get(id(item))
                if name is None:
                    raise ValueError("full: a tensor that is not a parameter of the optimizer")
            else:
                raise TypeError(f"full must hold parameters or names, got {type(item).__name__}")
            if name not in out:
                out.append(name)
        return tuple(out)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the optimizer's parameters, in group order."""
        return tuple(self._names)

    # ------------------------------------------------------------------------------------------
    # attach / detach
    # ------------------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._handle is not None

    def attach(self) -> "TrajectoryProbe":
        """Register the probe as a trajectory hook of its optimizer; returns ``self``."""
        if self._handle is not None:
            raise RuntimeError("the probe is already attached")
        self._handle = self.optimizer.register_trajectory_hook(self)
        return self

    def detach(self) -> None:
        """Remove the hook (the recorded data stay)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "TrajectoryProbe":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # ------------------------------------------------------------------------------------------
    # the hook
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, optimizer: Any, record: Any) -> None:
        """Process one :class:`~autosgm.StepRecord`: recursion, summaries, full tensors."""
        name = self._lookup(record.param)
        cfg = record.config
        beta, gamma, eta, rho = cfg.beta, cfg.gamma, cfg.eta, cfg.weight_decay
        t = int(record.step)
        g, w, dw = record.grad, record.weight, record.update.clone()
        alpha = record.alpha.clone()

        g_in = g + rho * w if (rho != 0.0 and not cfg.decoupled_weight_decay) else g.clone()
        u = None
        if rho != 0.0 and cfg.decoupled_weight_decay:  # ρ_d w̃ = ρ S d w
            u = w * (rho * record.debias)
            if record.denominator is not None:
                u = u * record.denominator

        prev = self._memory.get(name)
        if t == 1:
            prev, known = None, True  # zero initial conditions
        else:
            known = prev is not None and prev.step == t - 1
            if not known:  # the previous step was not seen (probe attached mid-run, state loaded)
                prev = None
                self._skipped += 1

        unchecked = 0
        residual = math.nan
        hidden = pred = None
        if known:
            # e[t] = γ g_in[t−1] − g_in[t] + (β ρ_d w̃[t−1] − ρ_d w̃[t]) / η
            e = -g_in
            if prev is not None and gamma != 0.0:
                e = e + gamma * prev.g_in
            if u is not None:
                e = e - u / eta
            if prev is not None and prev.u is not None:
                e = e + (beta / eta) * prev.u
            if prev is None:  # t = 1: α[0] = 0, r[1] := 0
                r = torch.zeros_like(alpha)
                pred = eta * alpha * e
            else:
                nz = prev.alpha != 0
                safe = torch.where(nz, prev.alpha, torch.ones_like(prev.alpha))
                r = torch.where(nz, alpha / safe, torch.zeros_like(alpha))
                pred = beta * r * prev.dw + eta * alpha * e
                hidden = (~nz) & (alpha != 0)
        else:
            e = torch.full_like(alpha, math.nan)
            r = torch.full_like(alpha, math.nan)
        margin = (beta * r).abs()

        if pred is not None:
            diff = (dw - pred).abs()
            ref = dw.abs()
            count = diff.new_zeros(())
            if hidden is not None:
                diff = diff.masked_fill(hidden, 0.0)
                ref = ref.masked_fill(hidden, 0.0)
                count = hidden.sum()
            if dw.numel():
                tiny = torch.finfo(dw.dtype).tiny
                stats = torch.stack([diff.max().double(), ref.max().double(), count.double()])
                num, den, hid = stats.tolist()  # one host-device synchronisation
                unchecked = int(hid)
                residual = num / max(den, tiny) if not (math.isnan(den) or math.isnan(num)) else math.nan
            else:
                residual = 0.0
            self._steps += 1
            self._unchecked += unchecked
            old = self._worst.get(name)
            if old is None or _worse(residual, old[0]):
                self._worst[name] = (residual, t)

        self._memory[name] = _Memory(step=t, g_in=g_in, u=u, alpha=alpha, dw=dw)

        values = {"alpha": alpha, "r": r, "e": e, "dw": dw, "margin": margin}
        if self.summary:
            row: dict[str, Any] = {"step": t, "param": name, "numel": dw.numel()}
            row.update(_summaries(values))
            row["ltv_residual"] = residual
            row["unchecked"] = unchecked
            self._records.append(row)
        if name in self._tensors:
            store = self._tensors[name]
            for q, x in values.items():
                store[q].append(x.detach().to("cpu", copy=True))
            if pred is None:
                pred = torch.full(dw.shape, math.nan, dtype=dw.dtype)
            store["dw_pred"].append(pred.detach().to("cpu", copy=True))
            self._full_steps[name].append(t)

    # ------------------------------------------------------------------------------------------
    # results
    # ------------------------------------------------------------------------------------------
    def check_ltv(self) -> LTVCheck:
        """Worst relative residual of the recorded updates against the recursion (see :class:`LTVCheck`)."""
        worst, where = -math.inf, (None, None)
        for name, (res, step) in self._worst.items():
            if where[0] is None or _worse(res, worst):
                worst, where = res, (name, step)
        if where[0] is None:
            worst = math.nan
        return LTVCheck(
            worst=worst, param=where[0], step=where[1], per_param=dict(self._worst),
            steps=self._steps, unchecked=self._unchecked, skipped=self._skipped,
        )  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        """Summary rows, one per tensor per step, with the keys :data:`SUMMARY_KEYS`."""
        return [dict(row) for row in self._records]

    def tensors(self, param: Tensor | str) -> dict[str, Tensor]:
        """Full values of a tensor chosen with ``full=``: ``{quantity: (steps, *shape)}`` plus ``"step"``.

        Quantities are :data:`FULL_QUANTITIES` (``dw_pred`` is the recursion's prediction of ``dw``).
        """
        name = param if isinstance(param, str) else self._by_id.get(id(param))
        if name not in self._tensors:
            kept = ", ".join(self._full) or "none"
            raise ValueError(f"param {name!r} was not chosen with full=; full tensors kept for: {kept}")
        store = self._tensors[name]
        out = {q: torch.stack(xs) if xs else torch.empty(0) for q, xs in store.items()}
        out["step"] = torch.tensor(self._full_steps[name], dtype=torch.long)
        return out

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`records` as CSV (header :data:`SUMMARY_KEYS`), atomically; returns the path."""
        path = Path(path)
        with replacing(path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(SUMMARY_KEYS))
            writer.writeheader()
            for row in self._records:
                writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        return path

    def to_pandas(self) -> Any:
        """:meth:`records` as a ``pandas.DataFrame`` (columns :data:`SUMMARY_KEYS`)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "TrajectoryProbe.to_pandas needs pandas (pip install pandas); "
                "records() and to_csv() work without it"
            ) from exc
        return pd.DataFrame(self._records, columns=list(SUMMARY_KEYS))


def _summaries(values: Mapping[str, Tensor]) -> dict[str, float]:
    """sup = max|x|, mean and sample sd (0 for one element, NaN for none) of each quantity."""
    out: dict[str, float] = {}
    stats = []
    for q in QUANTITIES:
        x = values[q]
        if x.numel() == 0:
            stats.append(torch.full((3,), math.nan, dtype=torch.float64))
            continue
        x = x.detach().reshape(-1)
        sd = x.std() if x.numel() > 1 else x.new_zeros(())
        stats.append(torch.stack([x.abs().max(), x.mean(), sd]).to("cpu", torch.float64))
    flat = torch.stack(stats).tolist()
    for q, row in zip(QUANTITIES, flat):
        for s, v in zip(STATISTICS, row):
            out[f"{q}_{s}"] = v
    return out


def ltv_residual(probe: TrajectoryProbe) -> float:
    """Worst relative residual ``‖Δ_rec − Δ_pred‖∞ / max(‖Δ_rec‖∞, tiny)`` of a probed run.

    Raises ``ValueError`` when the probe has checked no step (so a check cannot pass vacuously).
    """
    if not isinstance(probe, TrajectoryProbe):
        raise TypeError(f"probe must be a TrajectoryProbe, got {type(probe).__name__}")
    result = probe.check_ltv()
    if result.steps == 0:
        raise ValueError("the probe has checked no step: attach it and run optimizer.step() first")
    return result.worst


# ----------------------------------------------------------------------------------------------
# figure
# ----------------------------------------------------------------------------------------------
def trace_figure(
    probe: TrajectoryProbe,
    path: str | Path,
    params: Sequence[str | Tensor] | None = None,
) -> Path:
    """Plot α (mean and sup), r (mean, sup) and the margin |β r| (sup) per step for a few tensors.

    ``params`` defaults to the first four recorded tensors. Needs ``summary=True`` and matplotlib.
    """
    if not isinstance(probe, TrajectoryProbe):
        raise TypeError(f"probe must be a TrajectoryProbe, got {type(probe).__name__}")
    rows = probe.records()
    if not rows:
        raise ValueError("the probe has no summary records (summary=False, or no step was recorded)")
    seen = list(dict.fromkeys(row["param"] for row in rows))
    if params is None:
        chosen = seen[:4]
    else:
        chosen = []
        for p in params:
            name = p if isinstance(p, str) else probe._by_id.get(id(p))
            if name not in seen:
                raise ValueError(f"params: {name!r} has no records; recorded: {', '.join(seen)}")
            chosen.append(name)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(7.5, 8.0), sharex=True, constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(chosen):
        sel = [row for row in rows if row["param"] == name]
        steps = [row["step"] for row in sel]
        c = colors[i % len(colors)]
        axes[0].plot(steps, [row["alpha_mean"] for row in sel], color=c, lw=1.2, label=f"{name} mean")
        axes[0].plot(steps, [row["alpha_sup"] for row in sel], color=c, lw=0.8, ls="--", label=f"{name} sup")
        axes[1].plot(steps, [row["r_mean"] for row in sel], color=c, lw=1.2, label=f"{name} mean")
        axes[1].plot(steps, [row["r_sup"] for row in sel], color=c, lw=0.8, ls="--", label=f"{name} sup")
        axes[2].plot(steps, [row["margin_mean"] for row in sel], color=c, lw=1.2, label=f"{name} mean")
        axes[2].plot(steps, [row["margin_sup"] for row in sel], color=c, lw=0.8, ls="--", label=f"{name} sup")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("α[t]")
    axes[0].set_title("oracle α[t] = μ F a / (S d)   (solid: mean, dashed: sup = max|·| per tensor)")
    axes[1].set_ylabel("r[t] = α[t]/α[t−1]")
    axes[1].axhline(1.0, color="0.6", lw=0.6)
    axes[2].set_ylabel("|β r[t]|")
    axes[2].axhline(1.0, color="0.3", lw=0.8, ls="--")
    axes[2].set_title("stability margin (< 1: contracting)")
    axes[2].set_xlabel("step t")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------------
# demo run
# ----------------------------------------------------------------------------------------------
def _demo(steps: int, seed: int) -> TrajectoryProbe:
    """Train a small MLP (float64, CPU) with the Adam point and a cosine window, probed."""
    from torch import nn

    from ..optimizer import AutoSGM
    from ..windows import Window

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    teacher = torch.randn(8, 1, generator=gen, dtype=torch.float64)
    opt = AutoSGM.adam(net.parameters(), lr=3e-3, window=Window(shape="cosine", tau=1, spe=steps))
    with TrajectoryProbe(opt, named_params=dict(net.named_parameters())) as probe:
        for _ in range(steps):
            x = torch.randn(64, 8, generator=gen, dtype=torch.float64)
            y = torch.sin(x @ teacher) + 0.05 * torch.randn(64, 1, generator=gen, dtype=torch.float64)
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
    return probe


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m autosgm.analysis.probe OUTDIR``: probe a small run; write traces.png, trajectory.csv.

    Returns 0, or 1 when the LTV check fails (residual above ``--tol``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m autosgm.analysis.probe",
        description="Train a small probed network (float64, Adam point, cosine window) and write "
        "OUTDIR/traces.png and OUTDIR/trajectory.csv; checks the LTV recursion.",
    )
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tol", type=float, default=1e-8,
        help="largest accepted relative residual (default 1e-8: at the window's end Δ is ~1e-7 and the "
        "rounding of w alone gives ~1e-9)",
    )
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    args.outdir.mkdir(parents=True, exist_ok=True)
    probe = _demo(args.steps, args.seed)
    csv_path = probe.to_csv(args.outdir / "trajectory.csv")
    png_path = trace_figure(probe, args.outdir / "traces.png")
    check = probe.check_ltv()
    print(f"wrote {png_path} and {csv_path}")
    print(
        f"LTV recursion: worst relative residual {check.worst:.3e} "
        f"({check.param}, step {check.step}) over {check.steps} tensor-steps"
    )
    if not check.passed(args.tol):
        print(f"LTV recursion violated: residual above {args.tol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
