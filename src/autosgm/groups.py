"""Parameter groups in the convention of GPT and ViT training: no weight decay for vectors.

nanoGPT and timm decay the weight matrices and convolution kernels (tensors of two or more
dimensions) and leave biases, normalization gains and other vectors undecayed. ::

    from autosgm import AutoSGM, weight_decay_groups

    opt = AutoSGM(weight_decay_groups(model, 0.1), lr=3e-3, numerator="parcor-markov", weight_decay=0.1)

The groups work with any ``torch.optim`` optimizer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["weight_decay_groups"]


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups of ``model``'s trainable parameters: tensors with two or more dimensions
    decay with ``weight_decay``, vectors and scalars (biases, norms) get ``weight_decay = 0``.

    The no-decay group is left out when the model has no vectors; a parameter shared by two modules
    appears once. With ``weight_decay = 0`` the groups change nothing.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module`` or ``weight_decay`` not a real number.
        ValueError: ``weight_decay`` is negative or not finite.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise TypeError(f"weight_decay must be a number, got {type(weight_decay).__name__}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
