"""Training one model with one optimizer configuration and one seed, and recording the run.

The loop is the same for every task and optimizer::

    torch.manual_seed(seed); model = task.make_model()          # same initial weights for every optimizer
    batches = task.sampler(torch.Generator().manual_seed(seed))  # same batch order for every optimizer
    for t in 1..steps:  loss(model, batch).backward(); [clip]; optimizer.step(); [scheduler.step()]
    evaluate at t = 0, every eval_every steps, and at the end

An optimizer with ``eval()`` and ``train()`` methods (Schedule-Free AdamW, which evaluates at its
averaged weights) is put in training mode before the first step and in evaluation mode for every
evaluation (:func:`evaluation_mode`).

A run whose training loss becomes NaN or infinite stops early and is recorded with
``"status": "diverged"`` (it is finished: a resumed sweep does not repeat it).
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from datetime import datetime, timezone
from typing import Any, Iterator

import torch

from .optimizers import OptimizerConfig
from .results import FORMAT_VERSION, run_key
from .tasks.base import Task

__all__ = ["evaluation_mode", "resolve_device", "run", "set_optimizer_mode", "versions"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def set_optimizer_mode(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """Call ``optimizer.train()`` or ``optimizer.eval()`` (``mode``) when the optimizer has that method;
    the others (torch's, AutoSGM) have no modes and are left alone."""
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    method = getattr(optimizer, mode, None)
    if callable(method):
        method()


@contextlib.contextmanager
def evaluation_mode(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """The optimizer in evaluation mode while the block runs, in training mode afterwards
    (see :func:`set_optimizer_mode`)."""
    set_optimizer_mode(optimizer, "eval")
    try:
        yield
    finally:
        set_optimizer_mode(optimizer, "train")


def versions() -> dict[str, str]:
    """Versions of Python, torch and autosgm (recorded with every run)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            autosgm_version = version("autosgm")
        except PackageNotFoundError:
            import autosgm

            autosgm_version = getattr(autosgm, "__version__", "unknown")
    except Exception:  # pragma: no cover - metadata is always importable on Python >= 3.8
        autosgm_version = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "autosgm": str(autosgm_version)}


def run(
    task: Task,
    optimizer: OptimizerConfig,
    seed: int = 0,
    *,
    progress: bool = True,
    desc: str | None = None,
    position: int | None = None,
) -> dict[str, Any]:
    """Train ``task``'s model with ``optimizer`` from ``seed`` and return the run's record (a JSON-ready dict).

    The record holds ``curves`` — lists ``step``, ``time_s`` (wall time since the start),
    ``train_time_s`` (the part of it spent in training steps rather than evaluations),
    ``train_<metric>``, ``val_<metric>`` for each of the task's metrics, and ``train_batch_loss`` (mean
    mini-batch loss since the previous evaluation; at step 0 the first evaluation's train loss) —
    plus ``final`` (the last evaluation), ``wall_time_s``, ``train_time_s`` (the wall time less the
    evaluations), ``status`` (``"ok"`` or ``"diverged"``), the configuration, and
    ``unchanged_tensors``: the names of the trainable tensors whose weights were exactly the same at
    the end as at the start (out of ``trainable_tensors``) — a tensor an optimizer never moved.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    s = task.settings
    torch.manual_seed(seed)
    if task.device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    model = task.make_model()
    model.train()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    initial = [p.detach().clone() for _, p in trainable]
    opt, scheduler = optimizer.build(model, s.steps)
    set_optimizer_mode(opt, "train")
    next_batch = task.sampler(torch.Generator().manual_seed(seed))

    columns = ["step", "time_s", "train_time_s", "train_batch_loss"]
    columns += [f"{split}_{m}" for m in task.metrics for split in ("train", "val")]
    curves: dict[str, list[Any]] = {c: [] for c in columns}
    eval_time = 0.0

    def record(step: int, elapsed: float, batch_loss: float | None) -> dict[str, float]:
        nonlocal eval_time
        curves["step"].append(step)
        curves["time_s"].append(round(elapsed, 4))
        curves["train_time_s"].append(round(elapsed - eval_time, 4))
        began = time.perf_counter()
        with evaluation_mode(opt):
            metrics = task.evaluate(model)
        eval_time += time.perf_counter() - began
        curves["train_batch_loss"].append(metrics["train_loss"] if batch_loss is None else batch_loss)
        for key, value in metrics.items():
            curves.setdefault(key, []).append(value)
        return metrics

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.steps, desc=desc or optimizer.display, leave=False, position=position, dynamic_ncols=True)

    status = "ok"
    start = time.perf_counter()
    record(0, 0.0, None)
    running = torch.zeros((), dtype=torch.float64, device=task.device)
    count = 0
    step = 0
    try:
        for step in range(1, s.steps + 1):
            batch = next_batch()
            loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            opt.step()
            if scheduler is not None:
                scheduler.step()
            running += loss.detach().double()
            count += 1
            if step % s.eval_every == 0 or step == s.steps:
                batch_loss = running.item() / count
                running.zero_()
                count = 0
                if not math.isfinite(batch_loss):
                    status = "diverged"
                    break
                metrics = record(step, time.perf_counter() - start, batch_loss)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k.startswith("val_")})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    unchanged = [name for (name, p), p0 in zip(trainable, initial) if torch.equal(p.detach(), p0)]
    del initial

    settings = task.settings_dict()
    return {
        "format": FORMAT_VERSION,
        "key": run_key(task.name, settings, optimizer.key(), seed),
        "task": task.name,
        "settings": settings,
        "optimizer": optimizer.to_dict(),
        "optimizer_key": optimizer.key(),
        "label": optimizer.display,
        "gamma_value": optimizer.gamma_value,
        "seed": seed,
        "status": status,
        "steps_done": step,  # optimizer steps taken (fewer than settings.steps when diverged)
        "curves": curves,
        "final": {k: curves[k][-1] for k in columns if k not in ("step", "time_s", "train_time_s")},
        "wall_time_s": round(wall, 3),
        "train_time_s": round(wall - eval_time, 3),
        "trainable_tensors": len(trainable),
        "unchanged_tensors": unchanged,  # trainable tensors whose weights never moved
        "device": str(task.device),
        "data": task.describe(),
        "versions": versions(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
