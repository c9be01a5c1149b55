"""``digits``: a small MLP on scikit-learn's bundled handwritten digits (offline, seconds on a CPU).

Data: ``sklearn.datasets.load_digits`` — 1,797 grey-scale 8×8 images of the digits 0–9, pixel values
0–16 scaled to [0, 1]. It ships with scikit-learn, so the task needs no download. A fixed split
(permutation with seed 0) keeps 20 % of the images for validation.

Model: a multi-layer perceptron 64 → hidden → … → 10 with ReLU activations.
Metrics: cross-entropy loss and accuracy on the train and validation splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import ClassificationTask, TaskSettings

__all__ = ["DigitsSettings", "DigitsTask", "mlp"]


@dataclass
class DigitsSettings(TaskSettings):
    """Settings of ``digits``: the common ones plus the MLP's width and depth.

    Attributes:
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        val_fraction: share of the images held out for validation.
    """

    hidden: int = 128
    depth: int = 2
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden < 1 or self.depth < 0:
            raise ValueError(f"hidden must be >= 1 and depth >= 0, got hidden={self.hidden}, depth={self.depth}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Sequential:
    """``depth`` hidden ReLU layers of width ``hidden`` between ``n_in`` inputs and ``n_out`` logits."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class DigitsTask(ClassificationTask):
    """An MLP classifying scikit-learn's 8×8 handwritten digits."""

    name = "digits"
    summary = "MLP on scikit-learn's bundled 8x8 handwritten digits (offline; seconds on a CPU)"
    Settings = DigitsSettings
    presets = {
        "tiny": {"steps": 20, "batch_size": 32, "eval_every": 10, "eval_batches": 0, "hidden": 16, "depth": 1},
        "cpu": {"steps": 500, "batch_size": 64, "eval_every": 25, "eval_batches": 0, "hidden": 128, "depth": 2},
        "paper": {"steps": 3000, "batch_size": 64, "eval_every": 100, "eval_batches": 0, "hidden": 256, "depth": 3},
    }
    default_lr = 3e-3
    default_sgd_lr = 0.1
    default_weight_decay = 0.0
    data_help = "bundled with scikit-learn (sklearn.datasets.load_digits); nothing to download"

    def __init__(self, settings: DigitsSettings, device: torch.device, data: str | None = None, *,
                 allow_download: bool = True, progress: bool = True) -> None:
        super().__init__(settings, device)
        if data is not None:
            raise ValueError("the digits task takes no --data: its images ship with scikit-learn")
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - part of the experiments extra
            raise ImportError("the digits task needs scikit-learn: pip install 'autosgm[experiments]'") from exc
        bunch = load_digits()
        x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0
        y = torch.as_tensor(bunch.target, dtype=torch.long)
        perm = torch.randperm(y.numel(), generator=torch.Generator().manual_seed(0))
        n_val = int(round(settings.val_fraction * y.numel()))
        val, train = perm[:n_val], perm[n_val:]
        self.x_train, self.y_train = x[train].to(self.device), y[train].to(self.device)
        self.x_val, self.y_val = x[val].to(self.device), y[val].to(self.device)
        self._setup_eval()

    def describe(self) -> dict[str, object]:
        return {"n_train": int(self.y_train.numel()), "n_val": int(self.y_val.numel()), "n_classes": 10}

    def make_model(self) -> nn.Module:
        s = self.settings
        return mlp(64, s.hidden, s.depth, 10).to(self.device)
