"""Sweeps: the study's grid of AutoSGM design points and baselines, run resumably into a result file.

The grid is numerator × γ × learning rate (AutoSGM, normalized oracle), plus baselines — torch
AdamW (at the same learning rates), torch SGD-Nesterov (at its own), and Prodigy, Schedule-Free AdamW,
D-Adapt Adam and Lion (each at its recommended learning rate, see :func:`grid`) — each for every seed.
Every finished run is appended to the result file at once; a run whose key is already in the file
is skipped, so an interrupted sweep continues where it stopped and a finished one does nothing.
Two sweeps writing one file share its runs: each run is claimed first (:func:`~.results.claim_run`),
and a run claimed by the other sweep is left to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .._files import check_output_file
from .optimizers import (
    ALL_BASELINES,
    BASELINES,
    ESTIMATED_LR,
    LION_SCALE,
    MUON_LR_SCALE,
    ORACLES,
    SCHEDULEFREE_LR,
    OptimizerConfig,
    baseline_config,
    recommended_weight_decay,
)
from .results import append_result, claim_run, completed_keys, run_key
from .runner import run
from .tasks.base import Task

__all__ = ["BASELINES", "DEFAULT_BASELINES", "SweepSummary", "grid", "run_sweep"]

#: Baselines of a sweep unless chosen: the two that ship with torch.
DEFAULT_BASELINES = ("adamw", "sgd-nesterov")


@dataclass
class SweepSummary:
    """What a sweep did: runs executed, runs skipped (already in the file), runs left to another
    process writing the same file (``busy``), diverged runs, the file."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    path: Path | None = None
    busy: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.ran) + len(self.skipped) + len(self.busy)


def grid(
    *,
    numerators: Sequence[str] = ("unity", "parcor-markov"),
    gammas: Sequence[float | str] = (0.0, "nag", "mls"),
    lrs: Sequence[float] = (1e-3,),
    numerator_lrs: Mapping[str, Sequence[float]] | None = None,
    beta: float = 0.9,
    beta_a: float = 0.999,
    weight_decay: float = 0.0,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    sgd_lrs: Sequence[float] = (0.05,),
    sgd_weight_decay: float = 0.0,
    schedule: str = "cosine",
    baseline_lrs: Mapping[str, Sequence[float]] | None = None,
    oracles: Sequence[str] = ("element",),
) -> list[OptimizerConfig]:
    """The optimizer configurations of a sweep, AutoSGM points first, then the baselines.

    Every numerator is run at each of ``lrs`` (AdamW too), unless ``numerator_lrs`` gives it its own
    learning rates: the correlation numerators (``a ≤ 1``, rising from 0) usually want a larger μ than
    unity. AutoSGM points use decoupled weight decay ``weight_decay``; AdamW, Prodigy, D-Adapt Adam
    and Schedule-Free AdamW the same; Lion :data:`~.optimizers.LION_SCALE` times more; SGD-Nesterov
    coupled ``sgd_weight_decay`` (the usual setting of each optimizer).

    The baselines of :data:`BASELINES` run at ``baseline_lrs[name]`` when given, else at their
    recommended learning rates: AdamW at ``lrs``, SGD-Nesterov at ``sgd_lrs``, Lion at ``lrs`` divided
    by ``LION_SCALE``, Prodigy and D-Adapt Adam at 1, Schedule-Free AdamW at its default 2.5e-3
    (with its warm-up and no schedule); Muon (``muon``, chosen by name only) at ``lrs``.

    ``oracles``: AutoSGM's oracles of every point, ``"element"`` (the default) and/or ``"matrix"`` (the
    weight matrices get the matrix oracle, its step scaled to AdamW's update RMS,
    :data:`~.optimizers.MUON_LR_SCALE`), the element-wise points first.
    """
    unknown = set(baselines) - set(ALL_BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {ALL_BASELINES}")
    bad = [o for o in oracles if o not in ORACLES]
    if bad or not oracles or len(set(oracles)) != len(oracles):
        raise ValueError(f"oracles must be distinct names from {ORACLES}, got {list(oracles)}")
    if not lrs:
        raise ValueError("lrs must not be empty")
    numerator_lrs = _lr_table("numerator_lrs", numerator_lrs, numerators, "numerators")
    baseline_lrs = _lr_table("baseline_lrs", baseline_lrs, baselines, "baselines")
    configs = [
        OptimizerConfig.autosgm(lr, numerator=num, gamma=gamma, beta=beta, beta_a=beta_a,
                                weight_decay=weight_decay, schedule=schedule,
                                **({} if oracle == "element" else {"oracle": oracle, "matrix_lr_scale": MUON_LR_SCALE}))
        for oracle in oracles
        for num in numerators
        for lr in numerator_lrs.get(num, lrs)
        for gamma in gammas
    ]
    for name in baselines:
        decay = recommended_weight_decay(name, weight_decay, sgd_weight_decay)
        window = None if name == "schedulefree-adamw" else schedule  # it runs without a window
        for lr in baseline_lrs.get(name) or _default_baseline_lrs(name, lrs, sgd_lrs):
            configs.append(baseline_config(name, lr, weight_decay=decay, beta=beta, beta_a=beta_a, schedule=window))
    keys = [c.key() for c in configs]
    if len(set(keys)) != len(keys):
        raise ValueError("the sweep grid contains duplicate configurations (repeated numerators, gammas or lrs?)")
    return configs


def _lr_table(what: str, table: Mapping[str, Sequence[float]] | None, names: Sequence[str],
              chosen: str) -> dict[str, Sequence[float]]:
    """``table`` as a dict, checked: every name is in the grid and has at least one learning rate."""
    table = dict(table or {})
    stray = set(table) - set(names)
    if stray:
        raise ValueError(f"{what}: learning rates given for {chosen} not in the grid: {sorted(stray)}")
    if any(not v for v in table.values()):
        raise ValueError(f"{what}: every one of the {chosen} needs at least one learning rate")
    return table


def _default_baseline_lrs(name: str, lrs: Sequence[float], sgd_lrs: Sequence[float]) -> list[float]:
    """The learning rates of a baseline in a sweep at ``lrs`` (see :func:`grid`)."""
    if name in ("adamw", "muon"):
        return list(lrs)
    if name == "sgd-nesterov":
        return list(sgd_lrs)
    if name == "lion":
        return [float(f"{lr / LION_SCALE:.12g}") for lr in lrs]
    if name == "schedulefree-adamw":
        return [SCHEDULEFREE_LR]
    return [ESTIMATED_LR]  # prodigy, dadapt-adam


def run_sweep(
    task: Task,
    configs: Iterable[OptimizerConfig],
    seeds: Iterable[int],
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> SweepSummary:
    """Run every (seed, configuration) pair not yet in ``out``, appending one line per run.

    Seeds are the outer loop, so that a partial sweep already holds complete seeds. ``out`` is
    checked before the first run (:class:`~autosgm._files.OutputPathError` when it cannot be
    written). A run that another process writing ``out`` is running (or has just finished) is left
    to it.
    """
    out = check_output_file(out, "the result file")
    configs = list(configs)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    done = completed_keys(out)
    settings = task.settings_dict()
    jobs = [(seed, cfg) for seed in seeds for cfg in configs]
    summary = SweepSummary(path=out)
    todo = []
    for seed, cfg in jobs:
        key = run_key(task.name, settings, cfg.key(), seed)
        if key in done:
            summary.skipped.append(key)
        else:
            todo.append((key, seed, cfg))
    if log is not None:
        log(f"sweep {task.name}: {len(jobs)} runs, {len(summary.skipped)} already in {out}, {len(todo)} to run")
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sweep", position=0, dynamic_ncols=True)
    try:
        for key, seed, cfg in todo:
            with claim_run(out, key) as claimed:
                if not claimed:
                    summary.busy.append(key)
                elif key in completed_keys(out):  # finished by another process since the start
                    summary.skipped.append(key)
                else:
                    record = run(task, cfg, seed, progress=progress, desc=f"seed {seed} {cfg.display}",
                                 position=1 if bar else None)  # fmt: skip
                    append_result(out, record)
                    summary.ran.append(key)
                    if record["status"] != "ok":
                        summary.diverged.append(key)
                    if bar is not None:
                        bar.set_postfix_str(f"last: {cfg.display} seed {seed} "
                                            f"val_loss {record['final'].get('val_loss', float('nan')):.4g}")  # fmt: skip
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return summary
