"""Shared fixtures for the optimizer tests: a small real network and a deterministic data stream."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def make_net(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A small MLP with several layers and biases."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)
    ).to(dtype)


def two_groups(net: nn.Module, **second: object) -> list[dict]:
    """Two param groups: the first two layers, then the last one with its own settings."""
    layers = [m for m in net if isinstance(m, nn.Linear)]
    first = [p for m in layers[:-1] for p in m.parameters()]
    return [{"params": first}, {"params": list(layers[-1].parameters()), **second}]


def batch(step: int, dtype: torch.dtype = torch.float64, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable stream: fresh inputs each step, targets from a fixed teacher plus a little noise."""
    teacher = torch.randn(6, 3, generator=torch.Generator().manual_seed(7), dtype=dtype)
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 6, generator=gen, dtype=dtype)
    y = torch.sin(x @ teacher) + 0.05 * torch.randn(n, 3, generator=gen, dtype=dtype)
    return x, y


def loss_fn(net: nn.Module, step: int) -> torch.Tensor:
    x, y = batch(step, next(net.parameters()).dtype)
    return ((net(x) - y) ** 2).mean()


def train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0,
          each: Callable[[int], None] | None = None) -> list[float]:
    losses = []
    for k in range(start, start + steps):
        opt.zero_grad()
        loss = loss_fn(net, k)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if each is not None:
            each(k)
    return losses


def max_rel_diff(a: nn.Module | list, b: nn.Module | list) -> float:
    pa = list(a.parameters()) if isinstance(a, nn.Module) else a
    pb = list(b.parameters()) if isinstance(b, nn.Module) else b
    worst = 0.0
    for x, y in zip(pa, pb, strict=True):
        scale = max(1.0, y.detach().abs().max().item()) if y.numel() else 1.0
        if x.numel():
            worst = max(worst, (x.detach() - y.detach()).abs().max().item() / scale)
    return worst


def against_spec_reference(ws: list[torch.Tensor], package: dict, reference: dict, steps: int,
                           grads: Callable[[int, list[torch.Tensor]], list[torch.Tensor]]) -> tuple[float, tuple]:
    """Step ``AutoSGM(**package)`` and ``spec_reference.SpecReference(**reference)`` from the same
    weights ``ws`` with the same gradients ``grads(k, weights)`` for ``steps`` steps; returns the
    largest difference of the weights (relative to the larger of 1 and max|reference|) at any step
    and where it was, ``(step, tensor)``."""
    from autosgm import AutoSGM
    from spec_reference import SpecReference

    params = [nn.Parameter(w.clone()) for w in ws]
    mirror = [w.clone() for w in ws]
    opt = AutoSGM(params, **package)
    spec = SpecReference(mirror, **reference)
    worst, where = 0.0, ()
    for k in range(steps):
        gs = grads(k, [p.detach() for p in params])
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        spec.step([g.clone() for g in gs])
        for i, (p, r) in enumerate(zip(params, mirror)):
            err = ((p.detach() - r).abs().max() / max(1.0, r.abs().max().item())).item()
            if err > worst:
                worst, where = err, (k, i)
    return worst, where
