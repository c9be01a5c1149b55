"""The study's grid figure: one column per filter zero γ, rows train and validation metric.

In every panel the AutoSGM runs at that γ are drawn as the mean over seeds with a ±1 standard
deviation band — red for the unity numerator (the Adam-like baseline of the study), blue for a
partial-correlation (``parcor-*``) numerator, green for ``corr``; dotted and labelled "(matrix)" with
the matrix oracle — and the baselines (torch AdamW, torch SGD-Nesterov, AutoSGM's constant-oracle
points) as dashed lines.

When the results hold several learning rates of the same configuration, each configuration is drawn
at the given ``lr`` if it was run there, otherwise at its best learning rate (lowest mean final
validation loss, or highest accuracy). The legend shows the learning rates whenever a configuration
had several or the AutoSGM curves use different ones (e.g. a larger μ for a correlation numerator).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from .._files import save_figure
from .report import Group, family_key, group_runs, select_task

__all__ = ["COLORS", "choose_groups", "grid_figure", "plot_grid"]

#: Line colours by numerator: red = unity (the study's baseline), blue = partial correlation.
COLORS = {"unity": "#d62728", "parcor": "#1f77b4", "corr": "#2ca02c"}
BASELINE_STYLES = [("#000000", "--"), ("#7f7f7f", "--"), ("#9467bd", "--"), ("#8c564b", "--"), ("#e377c2", "--"),
                   ("#bcbd22", "--"), ("#ff7f0e", "--")]  # fmt: skip

_NAMED = {"nag": "NAG", "mls": "MLS"}


def _color(numerator: str) -> str:
    if numerator.startswith("parcor"):
        return COLORS["parcor"]
    return COLORS.get(numerator, "#ff7f0e")


def _matrix(group: Group) -> bool:
    """An AutoSGM point with the matrix oracle (drawn dotted, labelled "(matrix)")."""
    return group.optimizer.get("oracle", "element") == "matrix"


def _score(group: Group, metric: str) -> float:
    values = [v for v in group.final(f"val_{metric}") if math.isfinite(v)]
    if not values:
        return math.inf
    mean = sum(values) / len(values)
    return -mean if metric == "acc" else mean


def choose_groups(groups: Sequence[Group], metric: str = "loss", lr: float | None = None) -> tuple[list[Group], bool]:
    """One group per family (configuration up to the learning rate), and whether the legend should show
    learning rates (a family was run at several, or the AutoSGM curves use different ones)."""
    families: dict[tuple, list[Group]] = defaultdict(list)
    for g in groups:
        families[family_key(g)].append(g)
    chosen, several = [], False
    for members in families.values():
        several |= len(members) > 1
        if lr is not None:
            exact = [g for g in members if math.isclose(g.lr, lr, rel_tol=1e-9)]
            if exact:
                chosen.append(exact[0])
                continue
        chosen.append(min(members, key=lambda g: _score(g, metric)))
    several |= len({g.lr for g in chosen if g.is_autosgm_normalized}) > 1
    return chosen, several


def _gamma_title(groups: Sequence[Group]) -> str:
    value = groups[0].gamma_value
    names = {str(g.optimizer.get("gamma")) for g in groups} & set(_NAMED)
    text = f"γ = {value:.3g}"
    return f"{text} ({', '.join(_NAMED[n] for n in sorted(names))})" if names else text


def plot_grid(
    records: Iterable[dict[str, Any]] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    metric: str = "loss",
    task: str | None = None,
    lr: float | None = None,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw the γ-grid figure of a result file (or list of records) into ``out`` (PNG, PDF or SVG).

    Args:
        records: records, or the path of a JSON-lines result file.
        out: the image file to write (its directory is created; written atomically).
        metric: ``"loss"`` or ``"acc"`` (classification tasks only).
        task: the task to draw when the file holds several.
        lr: draw every configuration at this learning rate where it was run (else at its best).
        title: figure title (default: task, seeds, iterations).
    """
    import matplotlib.pyplot as plt

    fig = grid_figure(records, metric=metric, task=task, lr=lr, title=title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return save_figure(fig, out, dpi=dpi)
    finally:
        plt.close(fig)


def grid_figure(
    records: Iterable[dict[str, Any]] | str | os.PathLike[str],
    *,
    metric: str = "loss",
    task: str | None = None,
    lr: float | None = None,
    title: str | None = None,
):
    """The γ-grid as a matplotlib Figure (2 rows × one column per γ); see :func:`plot_grid`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .results import read_results

    if isinstance(records, (str, os.PathLike)):
        records = read_results(records)
    records = select_task(records, task)
    if metric not in ("loss", "acc"):
        raise ValueError(f"metric must be 'loss' or 'acc', got {metric!r}")
    if not any(f"val_{metric}" in r["curves"] for r in records):
        raise ValueError(f"the runs of {records[0]['task']} have no {metric!r} metric")
    groups, several_lrs = choose_groups(group_runs(records), metric, lr)
    autosgm = [g for g in groups if g.is_autosgm_normalized]
    baselines = [g for g in groups if not g.is_autosgm_normalized]
    columns: dict[float, list[Group]] = defaultdict(list)
    for g in autosgm:
        columns[round(g.gamma_value, 9)].append(g)
    gammas = sorted(columns) or [None]
    ncols = len(gammas)
    fig, axes = plt.subplots(2, ncols, figsize=(3.6 * ncols + 0.4, 6.2), sharex=True, sharey="row", squeeze=False)
    style = {id(g): BASELINE_STYLES[i % len(BASELINE_STYLES)] for i, g in enumerate(baselines)}

    def draw(ax, g: Group, column: str, color: str, ls: str, label: str) -> tuple[Any, Any]:
        steps, mean, sd, _ = g.curve(column)
        ax.plot(steps, mean, color=color, ls=ls, lw=1.4, label=label)
        if len(g.records) > 1:
            ax.fill_between(steps, mean - sd, mean + sd, color=color, alpha=0.18, lw=0)
        return steps, mean

    limits: list[list[float]] = [[], []]
    last_step = 0
    for col, gamma in enumerate(gammas):
        members = sorted(columns.get(gamma, []), key=lambda g: (_matrix(g), g.numerator != "unity", g.numerator))
        for row, split in enumerate(("train", "val")):
            ax = axes[row][col]
            column = f"{split}_{metric}"
            for g in members:
                label = g.numerator + (" (matrix)" if _matrix(g) else "") + (f", lr={g.lr:g}" if several_lrs else "")
                steps, mean = draw(ax, g, column, _color(g.numerator), ":" if _matrix(g) else "-", label)
                limits[row].extend(_window_values(steps, mean))
                last_step = max(last_step, int(steps[-1]) if len(steps) else 0)
            for g in baselines:
                color, ls = style[id(g)]
                label = g.label + (f", lr={g.lr:g}" if several_lrs else "")
                steps, mean = draw(ax, g, column, color, ls, label)
                limits[row].extend(_window_values(steps, mean))
                last_step = max(last_step, int(steps[-1]) if len(steps) else 0)
            if row == 0:
                ax.set_title(_gamma_title(members) if members else "baselines", fontsize=10)
            if row == 1:
                ax.set_xlabel("iteration")
            if col == 0:
                name = "accuracy" if metric == "acc" else "loss"
                ax.set_ylabel(f"{'Train' if split == 'train' else 'Validation'} {name}")
            ax.grid(alpha=0.25, lw=0.5)
            ax.legend(fontsize=7, loc="upper right" if metric == "loss" else "lower right", frameon=False)
    for row in range(2):
        finite = [v for v in limits[row] if math.isfinite(v)]
        if finite:
            lo, hi = min(finite), max(finite)
            pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
            axes[row][0].set_ylim(lo - pad, hi + pad)
    if title is None:
        seeds = sorted({r["seed"] for r in records})
        title = f"{records[0]['task']}: mean ± sd over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}, {last_step} iterations"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _window_values(steps, mean) -> list[float]:
    """Values that set the y-range: the curve after its first 10 % of iterations (the initial transient
    would otherwise flatten everything)."""
    if len(steps) == 0:
        return []
    start = steps[0] + 0.1 * (steps[-1] - steps[0])
    return [float(m) for s, m in zip(steps, mean) if s >= start]
