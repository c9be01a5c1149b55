"""The experiment tasks, by name. Each task module holds its data loading, model and metric.

=====================  ======================================================================
``digits``             MLP on scikit-learn's bundled 8×8 handwritten digits (offline)
``shakespeare-char``   character-level GPT on tiny-shakespeare
``cifar10``            ResNet-18 (CIFAR stem) or a small ViT on CIFAR-10
``wikitext103``        GPT on a local WikiText-103 raw directory
=====================  ======================================================================

Task classes are imported on first use, so listing tasks costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from .base import Task, TaskSettings

__all__ = ["TASKS", "Task", "TaskSettings", "get_task_class", "make_task"]

#: Task name -> "module:Class" (imported lazily).
TASKS: dict[str, str] = {
    "digits": "digits:DigitsTask",
    "shakespeare-char": "shakespeare_char:ShakespeareCharTask",
    "cifar10": "cifar10:Cifar10Task",
    "wikitext103": "wikitext103:WikiText103Task",
}


def get_task_class(name: str) -> type[Task]:
    """The task class registered under ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    module_name, class_name = TASKS[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)


def make_task(
    name: str,
    *,
    preset: str = "cpu",
    overrides: dict[str, Any] | None = None,
    data: str | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = True,
    progress: bool = True,
) -> Task:
    """Build a task: settings from ``preset`` plus ``overrides``, data loaded from ``data`` (or the defaults)."""
    cls = get_task_class(name)
    settings = cls.make_settings(preset, overrides)
    kwargs: dict[str, Any] = {"allow_download": allow_download, "progress": progress}
    return cls(settings, torch.device(device), data, **kwargs)
