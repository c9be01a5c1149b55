"""``autosgm demo``: AutoSGM design points against torch AdamW on the bundled digits, in about a minute.

The same MLP (same initial weights and batch order per seed) is trained with

* AutoSGM at the Adam point — unity numerator, γ = 0 (this *is* Adam/AdamW);
* AutoSGM with a partial-correlation numerator (``parcor-markov`` by default), γ = 0, at its own,
  larger μ (the numerator ``a ≤ 1`` rises from 0 and scales the step down);
* AutoSGM at Nesterov's point — constant oracle, γ = β/(1+β), η = 1+β (this is SGD-Nesterov);
* AutoSGM at Polyak's heavy ball — constant oracle, γ = 0, η = 1 (this is SGD with momentum);
* torch.optim.AdamW, the reference,

all under the same cosine window. The default rates are the best of a three-seed scan on this task
(unity: 1e-2 of {3e-3, 1e-2, 3e-2}; parcor-markov: 0.1 of {1e-2, 3e-2, 0.1, 0.3}). The demo prints a table (final train/validation loss and accuracy,
mean ± sd over seeds), writes the figure ``demo.png``, the table ``summary.md`` and the runs
``results.jsonl`` into the output directory. Runs already in ``results.jsonl`` are reused.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from .._files import check_output_dir, check_output_file, save_figure, write_text
from .optimizers import OptimizerConfig
from .report import format_table, group_runs, summarize, unchanged_warnings
from .results import read_results, run_key
from .sweep import run_sweep
from .tasks import make_task

__all__ = ["DEFAULTS", "demo_configs", "plot_demo", "run_demo"]

DEFAULTS = {"steps": 500, "seeds": 5, "lr": 1e-2, "numerator_lr": 0.1, "sgd_lr": 0.1, "numerator": "parcor-markov"}


def demo_configs(
    lr: float = DEFAULTS["lr"],
    sgd_lr: float = DEFAULTS["sgd_lr"],
    numerator: str = DEFAULTS["numerator"],
    numerator_lr: float = DEFAULTS["numerator_lr"],
) -> list[OptimizerConfig]:
    """The demo's optimizer configurations (see the module docstring)."""
    return [
        OptimizerConfig.autosgm(lr, "unity", 0.0, label="AutoSGM unity, γ=0 (Adam point)"),
        OptimizerConfig.autosgm(numerator_lr, numerator, 0.0, label=f"AutoSGM {numerator}, γ=0"),
        OptimizerConfig.nesterov_point(sgd_lr, label="AutoSGM Nesterov point"),
        OptimizerConfig.heavy_ball_point(sgd_lr, label="AutoSGM heavy-ball point"),
        OptimizerConfig.torch_adamw(lr, label="torch AdamW"),
    ]


def run_demo(
    out_dir: str | os.PathLike[str] = "autosgm-demo",
    *,
    steps: int = DEFAULTS["steps"],
    seeds: int = DEFAULTS["seeds"],
    lr: float = DEFAULTS["lr"],
    sgd_lr: float = DEFAULTS["sgd_lr"],
    numerator: str = DEFAULTS["numerator"],
    numerator_lr: float = DEFAULTS["numerator_lr"],
    device: str = "auto",
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo and write its outputs; returns ``{"rows", "table", "figure", "results", "seconds"}``.

    Every output location is checked before the first run
    (:class:`~autosgm._files.OutputPathError`, a ``ValueError``, when one cannot be written).
    """
    from .runner import resolve_device

    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    out = check_output_dir(out_dir, "the demo's output directory")
    results, figure_path, summary_path = out / "results.jsonl", out / "demo.png", out / "summary.md"
    for what, path in (("the demo's results", results), ("the demo's figure", figure_path),
                       ("the demo's summary", summary_path)):  # fmt: skip
        check_output_file(path, what)
    if fresh and results.exists():
        results.unlink()
    start = time.perf_counter()
    task = make_task("digits", preset="cpu", overrides={"steps": steps}, device=resolve_device(device), progress=progress)
    configs = demo_configs(lr, sgd_lr, numerator, numerator_lr)
    log(f"digits: {task.describe()['n_train']} training and {task.describe()['n_val']} validation images, "
        f"MLP 64-{task.settings.hidden}x{task.settings.depth}-10, {steps} steps of batch {task.settings.batch_size}, "
        f"{seeds} seed{'s' if seeds > 1 else ''}, device {task.device}")
    run_sweep(task, configs, range(seeds), results, progress=progress, log=log)
    keys = {run_key(task.name, task.settings_dict(), c.key(), s) for c in configs for s in range(seeds)}
    records = [r for r in read_results(results) if r["key"] in keys]
    order = {c.key(): i for i, c in enumerate(configs)}
    records.sort(key=lambda r: (order[r["optimizer_key"]], r["seed"]))
    rows = summarize(records, ["loss", "acc"])
    table = format_table(rows)
    figure = plot_demo(records, figure_path)
    seconds = time.perf_counter() - start
    title = f"AutoSGM demo: digits MLP, {steps} steps, {seeds} seeds (mean ± sd), device {task.device}"
    write_text(summary_path, f"{title}\n\n{format_table(rows, markdown=True)}\n")
    log("")
    log(table)
    for line in unchanged_warnings(records):
        log(line)
    gap = _adam_gap(records, configs)
    if gap is not None:
        log(f"\nAutoSGM at the Adam point vs torch AdamW: largest validation-loss difference {gap:.2e}")
    log(f"\nfigure: {figure}\ntable:  {summary_path}\nruns:   {results}\n({seconds:.1f} s)")
    return {"rows": rows, "table": table, "figure": figure, "results": results, "seconds": seconds}


def _adam_gap(records: list[dict[str, Any]], configs: list[OptimizerConfig]) -> float | None:
    """Largest |val-loss difference| between AutoSGM's Adam point and torch AdamW over all evaluations."""
    by_key: dict[tuple[str, int], list[float]] = {(r["optimizer_key"], r["seed"]): r["curves"]["val_loss"] for r in records}
    a, b = configs[0].key(), configs[-1].key()
    gaps = []
    for (key, seed), curve in by_key.items():
        if key == a and (b, seed) in by_key:
            other = by_key[(b, seed)]
            gaps += [abs(x - y) for x, y in zip(curve, other)]
    return max(gaps) if gaps else None


def plot_demo(records: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    """Validation loss and accuracy against iterations, mean ± sd over seeds, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import COLORS

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        "unity": (COLORS["unity"], "-"), "parcor": (COLORS["parcor"], "-"),
        "Nesterov": ("#2ca02c", "--"), "heavy": ("#9467bd", "--"), "torch": ("#000000", ":"),
    }
    for g in group_runs(records):
        if g.label.startswith("torch"):
            color, ls = styles["torch"]
        elif "Nesterov" in g.label:
            color, ls = styles["Nesterov"]
        elif "heavy" in g.label:
            color, ls = styles["heavy"]
        else:
            color, ls = styles["parcor" if g.numerator.startswith("parcor") else "unity"]
        for ax, column in zip(axes, ("val_loss", "val_acc")):
            steps, mean, sd, _ = g.curve(column)
            ax.plot(steps, mean, color=color, ls=ls, lw=1.6, label=f"{g.label} (lr {g.lr:g})")
            if len(g.records) > 1:
                ax.fill_between(steps, mean - sd, mean + sd, color=color, alpha=0.15, lw=0)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("validation loss (log scale)")
    axes[1].set_ylabel("validation accuracy")
    finals = [v for r in records for v in r["curves"]["val_acc"][len(r["curves"]["val_acc"]) // 4 :] if math.isfinite(v)]
    if finals:
        axes[1].set_ylim(max(0.0, min(finals) - 0.02), 1.0)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.25, lw=0.5)
    axes[1].legend(fontsize=8, loc="lower right", frameon=False)
    seeds = len({r["seed"] for r in records})
    fig.suptitle(f"AutoSGM demo: MLP on scikit-learn digits, mean ± sd over {seeds} seed{'s' if seeds != 1 else ''}", fontsize=11)
    fig.tight_layout()
    try:
        return save_figure(fig, out, dpi=150)
    finally:
        plt.close(fig)
