"""A literal float64 transcription of the spec's formulas, sharing no code with the package.

It is slow and plain on purpose: the filter in its direct form ``v[t] = β v[t−1] + η (g[t] − γ g[t−1])``
(the package keeps one buffer in another, equivalent form), the debias by the step response S[t],
the moment, each numerator with textbook clipping, the per-tensor mean and its pole-0.1 smoothing,
the window value and both kinds of weight decay, each written as the spec writes it. Tests compare
every path of the package with it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ROBUST_K = 4.0
SHORT_POLE = 0.1
#: The zero-tensor remedy (spec §4): c starts here for a tensor whose weights are all zero when
#: its state is created (docs/zero-tensors.md).
ZERO_TENSOR_C0 = 1e-2


class SpecReference:
    """AutoSGM on a list of float64 tensors, one setting for all of them.

    ``numerator`` and ``numerator_mode`` as in the package; ``window`` is ``F(t)`` (default 1).
    """

    def __init__(self, params: list[torch.Tensor], *, lr: float, beta: float = 0.9, beta_a: float = 0.999,
                 gamma: float = 0.0, eta: float | None = None, beta_n: float = 0.9999, eps: float = 1e-8,
                 repeat_eps: bool = False, debias: bool = True, normalize: bool = True,
                 numerator: str = "unity", numerator_mode: str = "tensor", weight_decay: float = 0.0,
                 decoupled: bool = False, maximize: bool = False,
                 window: Callable[[int], float] | None = None, zero_tensor_c0: float = ZERO_TENSOR_C0) -> None:
        self.params = params
        self.lr, self.beta, self.beta_a, self.gamma, self.beta_n = lr, beta, beta_a, gamma, beta_n
        self.eta = (1.0 - beta) / (1.0 - gamma) if eta is None else eta
        self.eps, self.repeat_eps, self.debias, self.normalize = eps, repeat_eps, debias, normalize
        self.numerator, self.per_tensor = numerator, numerator_mode == "tensor"
        self.rho, self.decoupled, self.maximize = weight_decay, decoupled, maximize
        self.window = window or (lambda t: 1.0)
        self.zero_tensor_c0 = zero_tensor_c0
        self.state: list[dict] = [{} for _ in params]

    def _init(self, w: torch.Tensor) -> dict:
        z = torch.zeros_like(w)
        st = {"t": 0, "v": z.clone(), "g_prev": z.clone(), "m": z.clone(), "c": z.clone(), "w2": z.clone(),
              "absx": 0.0 if self.per_tensor else z.clone(), "xmean": 0.0 if self.per_tensor else z.clone(),
              "xvar": 0.0 if self.per_tensor else z.clone(), "a_s": 0.0}
        if self.numerator.startswith("parcor") and not bool((w != 0).any()):
            st["c"] = torch.full_like(w, self.zero_tensor_c0)  # the zero-tensor remedy
        return st

    def _stat(self, x: torch.Tensor):
        """What a prefilter statistic averages: the tensor's mean (per-tensor mode) or x itself."""
        return x.mean().item() if self.per_tensor else x

    def step(self, grads: list[torch.Tensor]) -> None:
        for i, (w, grad) in enumerate(zip(self.params, grads)):
            if grad is None:
                continue
            st = self.state[i] or self._init(w)
            self.state[i] = st
            st["t"] += 1
            t = st["t"]
            beta, gamma, eta, ba, bn = self.beta, self.gamma, self.eta, self.beta_a, self.beta_n
            # gradient input (§6 coupled decay; maximize negates the loss's gradient)
            g = -grad if self.maximize else grad.clone()
            if self.rho and not self.decoupled:
                g = g + self.rho * w
            # §2 low-pass filter, direct form, and the debias by its step response
            v = beta * st["v"] + eta * (g - gamma * st["g_prev"])
            st["v"], st["g_prev"] = v, g
            S = eta * ((1 - beta**t) - gamma * (1 - beta ** (t - 1))) / (1 - beta) if self.debias else 1.0
            v_hat = v / S
            # §3 moment
            if self.normalize:
                g2 = g * g + (self.eps**2 if self.repeat_eps else 0.0)
                st["m"] = ba * st["m"] + (1 - ba) * g2
                m_hat = st["m"] / (1 - ba**t) if self.debias else st["m"]
                d = torch.sqrt(m_hat) + self.eps
            else:
                d = torch.ones_like(w)
            vbar = v_hat / d
            # §4 numerator
            a = self._numerator(st, w, g, vbar, d) if self.normalize else 1.0
            # §1, §5, §6: Δ = −μ F a (v̄ + ρ_d w)
            F = self.window(t)
            rho_d = self.rho if self.decoupled else 0.0
            w.sub_(self.lr * F * a * (vbar + rho_d * w))

    def _numerator(self, st: dict, w: torch.Tensor, g: torch.Tensor, vbar: torch.Tensor, d: torch.Tensor):
        name, ba, bn, k = self.numerator, self.beta_a, self.beta_n, ROBUST_K
        if name == "unity":
            return 1.0
        if name == "corr":
            gbar = g / d
            st["c"] = bn * st["c"] + (1 - bn) * gbar * gbar
            a = torch.clamp(st["c"], max=1.0)
        else:
            x = w * vbar
            if name == "parcor-markov":
                st["absx"] = ba * st["absx"] + (1 - ba) * self._stat(x.abs())
                lim = k * st["absx"]
                x = torch.sign(x) * torch.minimum(x.abs(), torch.as_tensor(lim, dtype=x.dtype))
            if name in ("parcor-chebyshev", "parcor-bounded"):
                st["xmean"] = ba * st["xmean"] + (1 - ba) * self._stat(x)
                st["xvar"] = ba * st["xvar"] + (1 - ba) * self._stat((x - st["xmean"]) ** 2)
                sd = st["xvar"] ** 0.5 if self.per_tensor else torch.sqrt(st["xvar"])
                lo, hi = st["xmean"] - k * sd, st["xmean"] + k * sd
                x = torch.maximum(torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype)),
                                  torch.as_tensor(lo, dtype=x.dtype))
            st["c"] = bn * st["c"] + x
            if name == "parcor-bounded":
                cap = 1.0
            else:
                st["w2"] = bn * st["w2"] + (1 - bn) * w * w
                cap = 1.0 + st["w2"]
            a = torch.minimum(st["c"].abs(), torch.as_tensor(cap, dtype=w.dtype))
        if not self.per_tensor:
            return a
        st["a_s"] = SHORT_POLE * st["a_s"] + (1 - SHORT_POLE) * (a.mean().item() if a.numel() else 0.0)
        return st["a_s"]


def cosine(total: int) -> Callable[[int], float]:
    """Cosine annealing over ``total`` steps, F[t] = (1 + cos(π (t − 1)/total))/2 (spec §5)."""
    return lambda t: 0.5 * (1.0 + math.cos(math.pi * ((t - 1) % total) / total))
