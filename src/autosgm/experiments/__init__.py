"""The experiment runner of the AutoSGM study: tasks, optimizer configurations, sweeps and figures.

Typical use from Python::

    from autosgm.experiments import OptimizerConfig, make_task, run, run_sweep, grid, plot_grid

    task = make_task("digits", preset="cpu")
    record = run(task, OptimizerConfig.autosgm(3e-3, numerator="parcor-markov", gamma="nag"), seed=0)
    run_sweep(task, grid(numerators=["unity", "parcor-markov"], gammas=[0, "nag", "mls"], lrs=[3e-3]),
              seeds=range(3), out="runs/digits.jsonl")
    plot_grid("runs/digits.jsonl", "runs/digits.png", metric="acc")
    run_robustness(task, robustness_grid(task), seeds=range(3), out_dir="runs/robustness-digits")

The same is available from the command line: ``autosgm demo | run | sweep | robustness | plot | tasks``.
Needs the ``experiments`` extra (numpy, matplotlib, tqdm, scikit-learn); the baselines Prodigy,
Schedule-Free AdamW, D-Adapt Adam and Lion need the ``baselines`` extra.
"""

from __future__ import annotations

from .data import DataNotFoundError, cache_dir
from .optimizers import (
    BASELINES,
    GAMMA_POINTS,
    NUMERATORS,
    MissingBaselineError,
    OptimizerConfig,
    baseline_config,
    parse_gamma,
    recommended_lr,
    resolve_gamma,
)
from .results import append_result, claim_run, completed_keys, read_results, run_key
from .robustness import lr_grid, lr_profiles, robustness_grid, run_robustness
from .runner import resolve_device, run
from .sweep import SweepSummary, grid, run_sweep
from .tasks import TASKS, Task, TaskSettings, get_task_class, make_task

__all__ = [
    "BASELINES",
    "DataNotFoundError",
    "GAMMA_POINTS",
    "MissingBaselineError",
    "NUMERATORS",
    "OptimizerConfig",
    "SweepSummary",
    "TASKS",
    "Task",
    "TaskSettings",
    "append_result",
    "baseline_config",
    "cache_dir",
    "claim_run",
    "completed_keys",
    "get_task_class",
    "grid",
    "lr_grid",
    "lr_profiles",
    "make_task",
    "parse_gamma",
    "plot_grid",
    "read_results",
    "recommended_lr",
    "resolve_device",
    "resolve_gamma",
    "robustness_grid",
    "run",
    "run_demo",
    "run_key",
    "run_robustness",
    "run_sweep",
]


def __getattr__(name: str):
    # matplotlib-heavy helpers are imported on first use.
    if name == "plot_grid":
        from .plot import plot_grid

        return plot_grid
    if name == "run_demo":
        from .demo import run_demo

        return run_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
