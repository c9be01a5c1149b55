"""The task interface shared by the runner: data, model, training batches, loss and evaluation."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

__all__ = ["ClassificationTask", "EpochSampler", "Task", "TaskSettings", "coerce_settings"]


@dataclass
class TaskSettings:
    """Settings every task has.

    Attributes:
        steps: optimizer steps of a run.
        batch_size: examples (or sequences) per step.
        eval_every: evaluate train and validation metrics every this many steps (and at 0 and the end).
        eval_batches: batches per split in an evaluation (0 = the whole split, where the task allows it).
        grad_clip: clip the global gradient norm to this value before each step (0 = off).
    """

    steps: int = 500
    batch_size: int = 64
    eval_every: int = 50
    eval_batches: int = 8
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_batches < 0:
            raise ValueError(f"eval_batches must be >= 0, got {self.eval_batches}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")


def _coerce(value: str, annotation: Any, name: str) -> Any:
    """Convert a command-line string to the type of a settings field."""
    target = annotation
    if isinstance(annotation, str):  # postponed annotations
        target = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, str)
    origin = typing.get_origin(target)
    if origin is typing.Union or (origin is not None and type(None) in typing.get_args(target)):
        args = [a for a in typing.get_args(target) if a is not type(None)]
        target = args[0] if args else str
    if target is bool:
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} expects a boolean (true/false), got {value!r}")
    if target is int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{name} expects an integer, got {value!r}") from None
    if target is float:
        try:
            result = float(value)
        except ValueError:
            raise ValueError(f"{name} expects a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ValueError(f"{name} expects a finite number, got {value!r}")
        return result
    return value


def coerce_settings(cls: type, base: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Instantiate the settings dataclass ``cls`` from ``base`` updated with ``overrides``.

    String values of ``overrides`` (from ``--set KEY=VALUE``) are converted to the field's type.
    Unknown keys raise ValueError listing the valid ones.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    values = dict(base)
    for key, value in overrides.items():
        field_name = key.replace("-", "_")
        if field_name not in names:
            raise ValueError(f"unknown setting {key!r}; valid settings: {', '.join(names)}")
        if isinstance(value, str):
            value = _coerce(value, hints.get(field_name, str), field_name)
        values[field_name] = value
    return cls(**values)


class EpochSampler:
    """Mini-batches of indices that visit ``n`` examples once per epoch in a shuffled order.

    The order comes from ``generator``, so a seed fixes the whole sequence of batches. The last
    incomplete batch of an epoch is dropped (every step sees ``batch_size`` examples).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if batch_size > n:
            raise ValueError(f"batch_size ({batch_size}) exceeds the number of training examples ({n})")
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def next(self) -> torch.Tensor:
        if self._pos + self.batch_size > self._perm.numel():
            self._perm = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx


class Task:
    """A training task: its data (loaded once), a model factory, batches, a loss and its metrics.

    Subclasses set the class attributes and implement :meth:`make_model`, :meth:`sampler`,
    :meth:`loss` and :meth:`evaluate`. A task instance is built once per process and reused by every
    run of a sweep; all randomness of a run comes from the run's seed.
    """

    #: Registry name, e.g. ``"digits"``.
    name: ClassVar[str] = ""
    #: One line for ``autosgm tasks`` and ``--help``.
    summary: ClassVar[str] = ""
    #: The settings dataclass of the task (a subclass of :class:`TaskSettings`).
    Settings: ClassVar[type] = TaskSettings
    #: Named settings: ``"tiny"`` (tests), ``"cpu"`` (the default), ``"paper"`` (the study's scale, a GPU).
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}, "cpu": {}, "paper": {}}
    #: Metrics reported for each split: ``("loss", "acc")`` or ``("loss",)``.
    metrics: ClassVar[tuple[str, ...]] = ("loss",)
    #: Default peak learning rates: normalized optimizers (AutoSGM, AdamW) and SGD-Nesterov.
    default_lr: ClassVar[float] = 1e-3
    default_sgd_lr: ClassVar[float] = 0.05
    #: Default peak learning rate of AutoSGM's correlation numerators (``parcor-*``, ``corr``): they scale
    #: the step down (``a ≤ 1``, rising from 0) and want a larger μ; 0.1 was the best of a scan on digits
    #: and on shakespeare-char.
    default_parcor_lr: ClassVar[float] = 0.1
    #: Default decoupled weight decay (AutoSGM, AdamW); SGD gets :attr:`default_sgd_weight_decay` (coupled).
    default_weight_decay: ClassVar[float] = 0.0
    default_sgd_weight_decay: ClassVar[float] = 0.0
    #: Where the data comes from, for the error messages and docs.
    data_help: ClassVar[str] = ""

    def __init__(self, settings: TaskSettings, device: torch.device) -> None:
        self.settings = settings
        self.device = torch.device(device)

    @classmethod
    def make_settings(cls, preset: str = "cpu", overrides: dict[str, Any] | None = None) -> TaskSettings:
        """Settings from a named preset plus ``overrides`` (strings are converted to the field types)."""
        if preset not in cls.presets:
            raise ValueError(f"unknown preset {preset!r} for task {cls.name!r}; choose from {sorted(cls.presets)}")
        return coerce_settings(cls.Settings, cls.presets[preset], overrides or {})

    def settings_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (part of a run's key)."""
        return dataclasses.asdict(self.settings)

    def describe(self) -> dict[str, Any]:
        """Facts about the loaded data and model worth recording with a run (sizes, vocabulary)."""
        return {}

    # ---------------------------------------------------------------- to implement
    def make_model(self) -> torch.nn.Module:  # pragma: no cover - interface
        """A freshly initialized model on the task's device (the caller seeds the global RNG)."""
        raise NotImplementedError

    def sampler(self, generator: torch.Generator) -> typing.Callable[[], Any]:  # pragma: no cover - interface
        """A function returning the next training batch, drawing its randomness from ``generator``."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:  # pragma: no cover - interface
        """The scalar training loss of ``model`` on ``batch``."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:  # pragma: no cover - interface
        """``{"train_loss", "val_loss", ...}`` for each metric, on fixed evaluation batches."""
        raise NotImplementedError


class ClassificationTask(Task):
    """A classification task on in-memory tensors: cross-entropy loss, accuracy metric.

    Subclasses load ``x_train, y_train, x_val, y_val`` (on the device) in ``__init__`` and may override
    :meth:`inputs` (stored examples → model inputs, e.g. uint8 → normalized float) and :meth:`augment`
    (random changes of stored training examples, before :meth:`inputs`).
    Evaluation uses a fixed subset of each split: the first ``eval_batches * batch_size`` examples of
    a permutation drawn once with seed 0 (the whole split when ``eval_batches = 0``).
    """

    metrics = ("loss", "acc")
    eval_chunk: ClassVar[int] = 1000

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs from stored examples (identity by default)."""
        return x

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random training-time augmentation of a batch of stored examples (none by default)."""
        return x

    def _eval_indices(self, n: int) -> torch.Tensor:
        k = n if self.settings.eval_batches == 0 else min(n, self.settings.eval_batches * self.settings.batch_size)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        return perm[:k].sort().values

    def _setup_eval(self) -> None:
        """Check the settings against the loaded data and fix the evaluation subsets (called by the
        subclasses once their data are loaded)."""
        n_train = self.y_train.numel()
        if self.settings.batch_size > n_train:
            raise ValueError(f"batch_size ({self.settings.batch_size}) exceeds the number of training examples of "
                             f"{self.name} ({n_train})")  # fmt: skip
        self._eval_train = self._eval_indices(self.y_train.numel())
        self._eval_val = self._eval_indices(self.y_val.numel())

    def sampler(self, generator: torch.Generator):
        order = EpochSampler(self.y_train.numel(), self.settings.batch_size, generator)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            idx = order.next().to(self.x_train.device)
            x = self.inputs(self.augment(self.x_train[idx], generator))
            return x, self.y_train[idx]

        return next_batch

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def _split_metrics(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[float, float]:
        total_loss = torch.zeros((), dtype=torch.float64, device=y.device)
        correct = torch.zeros((), dtype=torch.int64, device=y.device)
        idx = idx.to(y.device)
        for start in range(0, idx.numel(), self.eval_chunk):
            part = idx[start : start + self.eval_chunk]
            logits = model(self.inputs(x[part]))
            total_loss += torch.nn.functional.cross_entropy(logits.float(), y[part], reduction="sum").double()
            correct += (logits.argmax(dim=-1) == y[part]).sum()
        n = max(idx.numel(), 1)
        return total_loss.item() / n, correct.item() / n

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if not hasattr(self, "_eval_train"):
            self._setup_eval()
        was_training = model.training
        model.eval()
        try:
            train_loss, train_acc = self._split_metrics(model, self.x_train, self.y_train, self._eval_train)
            val_loss, val_acc = self._split_metrics(model, self.x_val, self.y_val, self._eval_val)
        finally:
            model.train(was_training)
        return {"train_loss": train_loss, "val_loss": val_loss, "train_acc": train_acc, "val_acc": val_acc}
