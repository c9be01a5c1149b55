"""The learning-rate robustness study: how much tuning does each optimizer need?

Every optimizer of the study — an AutoSGM design point (numerator × filter zero γ) or a baseline — is
run on a log-spaced grid of its peak learning rate centred on its recommended value
(:func:`~.optimizers.recommended_lr`), for several seeds, into one resumable result file
(:func:`~.sweep.run_sweep`). Then, per optimizer:

* its **best learning rate** and the mean ± sd final validation loss there, and the loss at the
  recommended rate (what an untuned run gets);
* the **2 % range**: the contiguous stretch of grid rates around the best whose mean final validation
  loss is at most 2 % above the best, and its **width** — largest / smallest rate in it, the single
  number that says how much tuning the optimizer needs (``≥`` when the range reaches an end of the grid);
  the same width at looser tolerances (10 % and 25 % by default), for tasks whose seed-to-seed
  spread is larger than 2 % of the loss;
* the wall-clock **time per training step** (evaluations excluded).

:func:`run_robustness` writes ``results.jsonl``, ``table.md`` (the table in Markdown), ``lr.png``
(final validation loss against the learning rate, absolute and relative to the recommended one, mean ±
sd over seeds) and ``curves.png`` (validation loss against steps and against training time at each
optimizer's best rate) into one directory, every file atomically, after checking all of them can be
written before the first run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .._files import check_output_file, save_figure, write_text
from .optimizers import (
    ALL_BASELINES,
    BASELINES,
    MUON_LR_SCALE,
    NUMERATORS,
    ORACLES,
    OptimizerConfig,
    baseline_config,
    recommended_lr,
    recommended_weight_decay,
    require_optimizers,
)
from .report import Group, family_key, group_runs
from .results import completed_keys, read_results
from .sweep import SweepSummary, run_sweep
from .tasks.base import Task

__all__ = [
    "DEFAULT_GAMMAS",
    "DEFAULT_NUMERATORS",
    "DEFAULT_ORACLES",
    "DEFAULT_POINTS",
    "DEFAULT_SPAN",
    "OUTPUT_FILES",
    "TOLERANCES",
    "LrProfile",
    "RobustnessResult",
    "best_curves_figure",
    "format_profiles",
    "lr_figure",
    "lr_grid",
    "lr_profiles",
    "output_paths",
    "robustness_grid",
    "run_robustness",
    "write_report",
]

#: AutoSGM points of the study by default: red (unity) and blue (partial correlation), at γ = 0 and NAG.
DEFAULT_NUMERATORS = ("unity", "parcor-markov", "parcor-bounded")
DEFAULT_GAMMAS: tuple[float | str, ...] = (0.0, "nag")
#: AutoSGM's oracles in the study by default: the element-wise one (``"matrix"`` adds the matrix oracle's
#: rows, each numerator × γ, with the matrix step scaled to AdamW's update RMS, :data:`~.optimizers.MUON_LR_SCALE`).
DEFAULT_ORACLES = ("element",)
#: Learning rates per optimizer and the ratio of the largest to the smallest (10^2.5 ≈ 316).
DEFAULT_POINTS = 11
DEFAULT_SPAN = 10**2.5
#: A learning rate is "as good as the best" when its mean final loss is within this share of the best;
#: the table reports the width of that range for each of these tolerances, the first in full.
TOLERANCES = (0.02, 0.10, 0.25)
#: The files of a study directory.
OUTPUT_FILES = {"results": "results.jsonl", "table": "table.md", "lr_figure": "lr.png", "curves_figure": "curves.png"}

_BASELINE_COLORS = {"adamw": "#000000", "sgd": "#7f7f7f", "prodigy": "#9467bd", "schedulefree-adamw": "#2ca02c",
                    "dadapt-adam": "#8c564b", "lion": "#ff7f0e", "muon": "#e377c2"}  # fmt: skip
_NUMERATOR_COLORS = {"unity": "#d62728", "parcor-markov": "#1f77b4", "parcor-bounded": "#17becf",
                     "parcor-maxbound": "#393b79", "parcor-chebyshev": "#6b6ecf", "corr": "#2ca02c"}  # fmt: skip


# ------------------------------------------------------------------------------------------ the grid
def lr_grid(centre: float, points: int = DEFAULT_POINTS, span: float = DEFAULT_SPAN) -> list[float]:
    """``points`` learning rates spaced evenly in log scale over a factor ``span``, centred on ``centre``
    (which is one of them when ``points`` is odd), each rounded to 4 significant digits.

    Raises:
        ValueError: ``centre`` not positive and finite, ``points`` < 2, or ``span`` not above 1.
        TypeError: ``points`` not an integer.
    """
    if isinstance(centre, bool) or not isinstance(centre, (int, float)) or not (centre > 0 and math.isfinite(centre)):
        raise ValueError(f"centre must be a positive finite number, got {centre!r}")
    if isinstance(points, bool) or not isinstance(points, int):
        raise TypeError(f"points must be an integer, got {type(points).__name__}")
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not (span > 1 and math.isfinite(span)):
        raise ValueError(f"span must be a finite number > 1, got {span!r}")
    lrs = [float(f"{centre * span ** (k / (points - 1) - 0.5):.4g}") for k in range(points)]
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"points ({points}) too many for span {span:g}: learning rates repeat at 4 digits")
    return lrs


def robustness_grid(
    task: type[Task] | Task,
    *,
    numerators: Sequence[str] = DEFAULT_NUMERATORS,
    gammas: Sequence[float | str] = DEFAULT_GAMMAS,
    baselines: Sequence[str] = BASELINES,
    oracles: Sequence[str] = DEFAULT_ORACLES,
    points: int = DEFAULT_POINTS,
    span: float = DEFAULT_SPAN,
    centres: Mapping[str, float] | None = None,
    weight_decay: float | None = None,
    sgd_weight_decay: float | None = None,
    beta: float = 0.9,
    beta_a: float = 0.999,
) -> list[OptimizerConfig]:
    """The configurations of the study: for every AutoSGM point (numerator × γ) and every baseline, its
    :func:`lr_grid` around its recommended learning rate on ``task`` (a Task class or instance).

    ``centres`` replaces the centre of a numerator (all its γ) or a baseline, e.g. ``{"adamw": 1e-3}``.
    ``weight_decay`` is the decoupled decay of AutoSGM and AdamW (default: the task's); each baseline
    gets its own from it (:func:`~.optimizers.recommended_weight_decay`: Lion 3× more, SGD-Nesterov
    ``sgd_weight_decay``, coupled).

    ``oracles`` are AutoSGM's oracles of every numerator × γ: ``"element"`` (the default) and/or
    ``"matrix"`` (the weight matrices get ``M^(−1/2) V`` scaled to AdamW's update RMS, every other tensor
    the element-wise step; same numerator, γ, decay and centre), the element-wise points first.
    """
    unknown = [o for o in oracles if o not in ORACLES]
    if unknown or len(set(oracles)) != len(oracles):
        raise ValueError(f"oracles: {'unknown ' + str(unknown) if unknown else 'repeated'}; choose from {ORACLES}")
    if numerators and not oracles:
        raise ValueError("oracles must not be empty when numerators are given")
    unknown = [n for n in numerators if n not in NUMERATORS]
    if unknown:
        raise ValueError(f"numerators: unknown {unknown}; choose from {NUMERATORS}")
    unknown = [b for b in baselines if b not in ALL_BASELINES]
    if unknown:
        raise ValueError(f"baselines: unknown {unknown}; choose from {ALL_BASELINES}")
    if not numerators and not baselines:
        raise ValueError("the study needs at least one numerator or baseline")
    if numerators and not gammas:
        raise ValueError("gammas must not be empty when numerators are given")
    centres = dict(centres or {})
    stray = sorted(set(centres) - set(numerators) - set(baselines))
    if stray:
        raise ValueError(f"centres given for optimizers not in the study: {stray}")
    if weight_decay is None:
        weight_decay = float(task.default_weight_decay)
    if sgd_weight_decay is None:
        sgd_weight_decay = float(task.default_sgd_weight_decay)

    def grid_of(name: str) -> list[float]:
        return lr_grid(centres.get(name, recommended_lr(name, task)), points, span)

    configs = [
        OptimizerConfig.autosgm(lr, numerator=num, gamma=gamma, beta=beta, beta_a=beta_a, weight_decay=weight_decay,
                                **_oracle_fields(oracle))
        for oracle in oracles
        for num in numerators
        for gamma in gammas
        for lr in grid_of(num)
    ]
    for name in baselines:
        decay = recommended_weight_decay(name, weight_decay, sgd_weight_decay)
        configs += [baseline_config(name, lr, weight_decay=decay, beta=beta, beta_a=beta_a) for lr in grid_of(name)]
    keys = [c.key() for c in configs]
    if len(set(keys)) != len(keys):
        raise ValueError("the study contains duplicate configurations (repeated numerators, gammas or baselines?)")
    return configs


def _oracle_fields(oracle: str) -> dict[str, Any]:
    """The fields of an AutoSGM point of the study under ``oracle`` (none for the element-wise one)."""
    return {} if oracle == "element" else {"oracle": oracle, "matrix_lr_scale": MUON_LR_SCALE}


# ------------------------------------------------------------------------------------------ the summary
@dataclass
class LrProfile:
    """One optimizer over its learning-rate grid: mean and sd of the final validation loss per rate.

    ``mean[i]`` is NaN when a run at ``lrs[i]`` diverged (such a rate is never "within" a tolerance).
    ``best`` is the index of the lowest mean (None when every rate diverged); ``ranges[k]`` the
    contiguous range of indices ``(low, high)`` around it whose means are within ``tolerances[k]`` of
    the best. ``low``, ``high``, ``width`` and ``at_edge`` are those of the first tolerance.
    """

    label: str
    groups: list[Group]
    tolerances: tuple[float, ...] = TOLERANCES
    lrs: list[float] = field(init=False)
    mean: list[float] = field(init=False)
    sd: list[float] = field(init=False)
    best: int | None = field(init=False)
    ranges: list[tuple[int, int] | None] = field(init=False)

    def __post_init__(self) -> None:
        self.groups = sorted(self.groups, key=lambda g: g.lr)
        self.tolerances = _check_tolerances(self.tolerances)
        self.lrs = [g.lr for g in self.groups]
        self.mean, self.sd = [], []
        for g in self.groups:
            values = g.final("val_loss")
            ok = values and all(math.isfinite(v) for v in values)
            self.mean.append(statistics.fmean(values) if ok else math.nan)
            self.sd.append(statistics.stdev(values) if ok and len(values) > 1 else (0.0 if ok else math.nan))
        self.best = _best(self.mean)
        self.ranges = [_within(self.mean, self.best, tol) for tol in self.tolerances]

    @property
    def is_autosgm(self) -> bool:
        return self.groups[0].is_autosgm_normalized

    @property
    def recommended(self) -> int | None:
        """Index of the recommended learning rate: the centre of an odd grid (None for an even one)."""
        return len(self.lrs) // 2 if len(self.lrs) % 2 else None

    @property
    def low(self) -> int | None:
        return None if self.ranges[0] is None else self.ranges[0][0]

    @property
    def high(self) -> int | None:
        return None if self.ranges[0] is None else self.ranges[0][1]

    def width_at(self, k: int = 0) -> float:
        """Largest / smallest learning rate of the range of ``tolerances[k]`` (NaN when all diverged)."""
        if self.ranges[k] is None:
            return math.nan
        low, high = self.ranges[k]
        return self.lrs[high] / self.lrs[low]

    def at_edge_at(self, k: int = 0) -> bool:
        """The range of ``tolerances[k]`` reaches an end of the grid: the true width may be larger."""
        return self.ranges[k] is not None and (self.ranges[k][0] == 0 or self.ranges[k][1] == len(self.lrs) - 1)

    @property
    def width(self) -> float:
        return self.width_at(0)

    @property
    def at_edge(self) -> bool:
        return self.at_edge_at(0)

    @property
    def runs(self) -> int:
        return sum(len(g.records) for g in self.groups)

    @property
    def diverged(self) -> int:
        return sum(r.get("status", "ok") != "ok" for g in self.groups for r in g.records)

    @property
    def seeds(self) -> int:
        return max(len(g.records) for g in self.groups)

    def final_at(self, index: int | None, column: str) -> tuple[float, float, int]:
        """(mean, sd, n) of a final column over the seeds at ``lrs[index]``."""
        if index is None:
            return math.nan, math.nan, 0
        values = [v for v in self.groups[index].final(column) if math.isfinite(v)]
        if not values:
            return math.nan, math.nan, 0
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)

    @property
    def step_ms(self) -> float:
        """Mean wall-clock milliseconds per training step over all runs (evaluations excluded)."""
        times = [_train_time(r) / r["steps_done"] for g in self.groups for r in g.records if r.get("steps_done")]
        times = [t for t in times if math.isfinite(t)]
        return 1000.0 * statistics.fmean(times) if times else math.nan


def _check_tolerances(tolerances: Sequence[float]) -> tuple[float, ...]:
    values = tuple(tolerances)
    if not values or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not (t >= 0 and math.isfinite(t))
                         for t in values):  # fmt: skip
        raise ValueError(f"tolerances must be one or more finite numbers >= 0, got {tolerances!r}")
    return tuple(float(t) for t in values)


def _train_time(record: dict[str, Any]) -> float:
    """Seconds of training steps of a run (records without ``train_time_s`` give their wall time)."""
    value = record.get("train_time_s", record.get("wall_time_s"))
    return math.nan if value is None else float(value)


def _best(mean: Sequence[float]) -> int | None:
    """Index of the lowest finite mean (None when there is none)."""
    finite = [i for i, m in enumerate(mean) if math.isfinite(m)]
    return min(finite, key=lambda i: mean[i]) if finite else None


def _within(mean: Sequence[float], best: int | None, tolerance: float) -> tuple[int, int] | None:
    """The contiguous range of indices around ``best`` with ``mean <= best + tolerance·|best|``."""
    if best is None:
        return None
    limit = mean[best] + tolerance * abs(mean[best])

    def ok(i: int) -> bool:
        return 0 <= i < len(mean) and math.isfinite(mean[i]) and mean[i] <= limit

    low = high = best
    while ok(low - 1):
        low -= 1
    while ok(high + 1):
        high += 1
    return low, high


def lr_profiles(records: Iterable[dict[str, Any]], tolerances: Sequence[float] = TOLERANCES) -> list[LrProfile]:
    """One :class:`LrProfile` per optimizer (configurations equal up to the learning rate), in order
    of first appearance in ``records``."""
    tolerances = _check_tolerances(tolerances)
    families: dict[tuple, list[Group]] = {}
    for g in group_runs(records):
        families.setdefault(family_key(g), []).append(g)
    return [LrProfile(members[0].label, members, tolerances) for members in families.values()]


def _loss(stats: tuple[float, float, int]) -> str:
    mean, sd, n = stats
    if n == 0:
        return "diverged"
    return f"{mean:.4f} ± {sd:.4f}" if n > 1 else f"{mean:.4f}"


def _width(profile: LrProfile, k: int = 0) -> str:
    if profile.best is None:
        return "–"
    return f"{'≥ ' if profile.at_edge_at(k) else ''}{profile.width_at(k):.3g}×"


def _percent(tolerance: float) -> str:
    return f"{100 * tolerance:g} %"


def _profile_row(p: LrProfile, with_acc: bool) -> list[str]:
    rec = p.recommended
    row = [
        p.label,
        f"{p.lrs[rec]:.3g}" if rec is not None else "–",
        _loss(p.final_at(rec, "val_loss")) if rec is not None else "–",
        f"{p.lrs[p.best]:.3g}" if p.best is not None else "–",
        _loss(p.final_at(p.best, "val_loss")),
    ]
    if with_acc:
        mean, sd, n = p.final_at(p.best, "val_acc")
        row.append(f"{mean:.4f} ± {sd:.4f}" if n > 1 else (f"{mean:.4f}" if n else "–"))
    row.append(f"{p.lrs[p.low]:.3g} – {p.lrs[p.high]:.3g}" if p.best is not None else "–")
    row += [_width(p, k) for k in range(len(p.tolerances))]
    row += [
        f"{p.diverged}/{p.runs}",
        f"{p.step_ms:.2f}",
    ]
    return row


def format_profiles(profiles: Sequence[LrProfile], *, markdown: bool = False) -> str:
    """The study's table: per optimizer the recommended and the best learning rate with their mean ±
    sd final validation loss (and accuracy at the best, for classification), the range within the
    first tolerance, the width of the range within each tolerance, diverged runs, and milliseconds
    per training step."""
    if not profiles:
        return "(no runs)"
    with_acc = any("val_acc" in r.get("final", {}) for p in profiles for g in p.groups for r in g.records)
    tolerances = profiles[0].tolerances
    head = ["optimizer", "recommended lr", "val loss there", "best lr", "val loss at best"]
    head += ["val acc at best"] if with_acc else []
    head += [f"lr range within {_percent(tolerances[0])}"] + [f"width {_percent(t)}" for t in tolerances]
    head += ["diverged", "ms/step"]
    body = [_profile_row(p, with_acc) for p in profiles]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), "  ".join("-" * w for w in widths)] + [fmt.format(*row) for row in body])


# ------------------------------------------------------------------------------------------ figures
def _style(profile: LrProfile) -> dict[str, Any]:
    """Colour by numerator or baseline (red = unity, blues = partial correlation), line by γ; the matrix
    oracle's rows dotted (γ = 0) or dash-dotted, with diamonds and triangles."""
    opt = profile.groups[0].optimizer
    if profile.is_autosgm:
        color = _NUMERATOR_COLORS.get(str(opt.get("numerator")), "#e377c2")
        gamma = profile.groups[0].gamma_value
        if opt.get("oracle", "element") == "matrix":
            return {"color": color, "ls": ":" if gamma == 0 else (0, (5, 1, 1, 1)), "marker": "D" if gamma == 0 else "v"}
        return {"color": color, "ls": "-" if gamma == 0 else "--", "marker": "o" if gamma == 0 else "s"}
    return {"color": _BASELINE_COLORS.get(str(opt.get("name")), "#bcbd22"), "ls": "-.", "marker": "^"}


def _initial_loss(profiles: Sequence[LrProfile]) -> float:
    values = [r["curves"]["val_loss"][0] for p in profiles for g in p.groups for r in g.records
              if r["curves"].get("val_loss")]  # fmt: skip
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def _title(profiles: Sequence[LrProfile]) -> str:
    record = profiles[0].groups[0].records[0]
    steps = record.get("settings", {}).get("steps", "?")
    seeds = max(p.seeds for p in profiles)
    return f"{record['task']}: {steps} steps, mean ± sd over {seeds} seed{'s' if seeds != 1 else ''}"


def lr_figure(profiles: Sequence[LrProfile]):
    """Final validation loss against the peak learning rate (left) and against the learning rate
    relative to the recommended one (right), log x, mean ± sd band; × marks rates where a run diverged;
    the y-axis stops a little above the loss before training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not profiles:
        raise ValueError("no runs to draw")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    top = _initial_loss(profiles) * 1.1
    lows = []
    for p in profiles:
        style = _style(p)
        centre = math.sqrt(p.lrs[0] * p.lrs[-1])
        mean, sd = np.asarray(p.mean), np.asarray(p.sd)
        lows += [float(m - s) for m, s in zip(mean, sd) if math.isfinite(m) and m - s > 0]
        for ax, scale in ((axes[0], 1.0), (axes[1], centre)):
            x = np.asarray(p.lrs) / scale
            widths = ", ".join(f"{_percent(t)}: {_width(p, k)}" for k, t in enumerate(p.tolerances))
            ax.plot(x, mean, color=style["color"], ls=style["ls"], marker=style["marker"], ms=3.5, lw=1.3,
                    label=f"{p.label} ({widths})")  # fmt: skip
            ax.fill_between(x, mean - sd, mean + sd, color=style["color"], alpha=0.15, lw=0)
            failed = [xi for xi, m in zip(x, mean) if not math.isfinite(m)]
            if failed and math.isfinite(top):
                ax.plot(failed, [top * 0.97] * len(failed), "x", color=style["color"], ms=6)
            if p.best is not None:
                ax.plot([x[p.best]], [mean[p.best]], marker=style["marker"], color=style["color"], ms=8)
    for ax, label in ((axes[0], "peak learning rate"), (axes[1], "learning rate / recommended learning rate")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.25, lw=0.5, which="both")
    if math.isfinite(top) and lows:
        axes[0].set_ylim(min(lows) * 0.9, top)
    axes[1].axvline(1.0, color="#999999", lw=0.8, ls=":")
    axes[0].set_ylabel("final validation loss")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                   title="optimizer (width of the lr range within a tolerance of the best)", title_fontsize=7)
    fig.suptitle(f"Final validation loss against the learning rate — {_title(profiles)}", fontsize=11)
    fig.tight_layout()
    return fig


def best_curves_figure(profiles: Sequence[LrProfile]):
    """Validation loss against steps (left) and against training time (right, mean over seeds of the
    cumulative time of the training steps) at each optimizer's best learning rate, mean ± sd band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    chosen = [p for p in profiles if p.best is not None]
    if not chosen:
        raise ValueError("every run diverged: no curve to draw")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    tail = []
    for p in chosen:
        style = _style(p)
        group = p.groups[p.best]
        steps, mean, sd, _ = group.curve("val_loss")
        _, seconds, _, _ = group.curve("train_time_s")
        if np.all(np.isnan(seconds)):  # records without the column: wall time
            _, seconds, _, _ = group.curve("time_s")
        label = f"{p.label}, lr {p.lrs[p.best]:.3g}"
        for ax, x in ((axes[0], steps), (axes[1], seconds)):
            ax.plot(x, mean, color=style["color"], ls=style["ls"], lw=1.3, label=label)
            ax.fill_between(x, mean - sd, mean + sd, color=style["color"], alpha=0.15, lw=0)
        tail += [float(m) for s, m in zip(steps, mean) if s >= 0.1 * steps[-1] and math.isfinite(m)]
    for ax, label in ((axes[0], "step"), (axes[1], "training time (s, evaluations excluded)")):
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.25, lw=0.5, which="both")
    if tail:
        axes[0].set_ylim(min(tail) * 0.9, max(tail) * 1.1)
    axes[0].set_ylabel("validation loss")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"Validation loss at each optimizer's best learning rate — {_title(chosen)}", fontsize=11)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ the study
def output_paths(out_dir: str | Path) -> dict[str, Path]:
    """The files of a study directory (:data:`OUTPUT_FILES`)."""
    out_dir = Path(out_dir)
    return {what: out_dir / name for what, name in OUTPUT_FILES.items()}


def _check_outputs(paths: Mapping[str, Path]) -> None:
    for what, path in paths.items():
        check_output_file(path, f"the study's {what.replace('_', ' ')}")


def _table_document(profiles: Sequence[LrProfile], grid_note: str) -> str:
    tolerances = profiles[0].tolerances
    tol = _percent(tolerances[0])
    others = ", ".join(_percent(t) for t in tolerances[1:])
    record = profiles[0].groups[0].records[0]
    settings = ", ".join(f"{k}={v}" for k, v in record.get("settings", {}).items())
    return (
        f"# Learning-rate robustness: {record['task']}\n\n"
        f"{_title(profiles)}; task settings: {settings}.\n{grid_note}\n"
        f"*val loss*: mean ± sd of the final validation loss over the seeds. *lr range within {tol}*: the "
        f"contiguous range of grid learning rates around the best whose mean final validation loss is at "
        f"most {tol} above the best; *width {tol}*: its largest / smallest rate (≥ when it reaches an end of "
        f"the grid)" + (f"; *width {others}*: the same at that tolerance" if others else "") +
        ". *ms/step*: wall-clock time of a training step, evaluations excluded.\n\n"
        f"{format_profiles(profiles, markdown=True)}\n"
    )


def _grid_note(profiles: Sequence[LrProfile]) -> str:
    sizes = sorted({len(p.lrs) for p in profiles})
    spans = sorted({round(p.lrs[-1] / p.lrs[0]) for p in profiles if len(p.lrs) > 1})
    return (f"Each optimizer: {', '.join(map(str, sizes))} learning rates, log-spaced over "
            f"{', '.join(f'{s:g}' for s in spans)}×, centred on its recommended rate.\n")  # fmt: skip


def write_report(records: Iterable[dict[str, Any]], paths: Mapping[str, Path],
                 tolerances: Sequence[float] = TOLERANCES) -> list[LrProfile]:
    """Write the table (``paths["table"]``) and both figures of the study's ``records``, atomically."""
    import matplotlib.pyplot as plt

    profiles = lr_profiles(records, tolerances)
    if not profiles:
        raise ValueError("no runs to report")
    write_text(paths["table"], _table_document(profiles, _grid_note(profiles)))
    for what, draw in (("lr_figure", lr_figure), ("curves_figure", best_curves_figure)):
        fig = draw(profiles)
        try:
            save_figure(fig, paths[what], dpi=150, bbox_inches="tight")
        finally:
            plt.close(fig)
    return profiles


@dataclass
class RobustnessResult:
    """What :func:`run_robustness` did: the sweep's summary, the optimizers' profiles, the files."""

    summary: SweepSummary
    profiles: list[LrProfile]
    paths: dict[str, Path]


def run_robustness(
    task: Task,
    configs: Sequence[OptimizerConfig],
    seeds: Iterable[int],
    out_dir: str | Path,
    *,
    tolerances: Sequence[float] = TOLERANCES,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    report_all: bool = False,
) -> RobustnessResult:
    """Run the study ``configs`` (from :func:`robustness_grid`) for every seed into
    ``out_dir/results.jsonl`` (resumable: finished runs are skipped), then write the table and the
    figures of its runs. Every output is checked before the first run
    (:class:`~autosgm._files.OutputPathError`), and every baseline's package
    (:class:`~.optimizers.MissingBaselineError`).

    The table and the figures cover the runs of ``configs`` and ``seeds``; with ``report_all`` every run
    of ``out_dir/results.jsonl`` with this task and these task settings (a study extended by later
    commands, e.g. matrix-oracle rows added to an element-wise study)."""
    tolerances = _check_tolerances(tolerances)
    paths = output_paths(out_dir)
    _check_outputs(paths)
    configs = list(configs)
    require_optimizers(configs)
    summary = run_sweep(task, configs, seeds, paths["results"], progress=progress, log=log)
    unfinished = set(summary.busy) - completed_keys(paths["results"])
    if unfinished:  # another process still runs them: the last one to finish writes the report
        if log is not None:
            log(f"{len(unfinished)} run(s) of this study are still running in another process; the table and "
                "the figures are written by the process that finishes last (or run this command again)")
        return RobustnessResult(summary, [], paths)
    keys = set(summary.ran) | set(summary.skipped) | set(summary.busy)
    if report_all:
        settings = task.settings_dict()
        records = [r for r in read_results(paths["results"]) if r["task"] == task.name and r["settings"] == settings]
    else:
        records = [r for r in read_results(paths["results"]) if r["key"] in keys]
    profiles = write_report(records, paths, tolerances) if records else []
    return RobustnessResult(summary, profiles, paths)
