"""Every path of the package against the independent transcription of the spec (float64, 1e-12).

:mod:`spec_reference` shares no code with the package: the filter in its direct form, the debias by
the step response, the moment, the numerators with textbook clipping, the window and both kinds of
weight decay, written as the spec writes them. Here each design point and option is stepped by the
package on the single-tensor, multi-tensor and fused paths and by the reference, from the same
weights with the same gradients, and the weights must agree at every step.
"""

from __future__ import annotations

import pytest
import torch

from autosgm import Window
from helpers import against_spec_reference

STEPS = 20
WINDOW = Window(shape="cosine", tau=1, spe=STEPS)

#: name -> (package keywords, reference keywords)
CASES: dict[str, tuple[dict, dict]] = {
    "adam": (dict(), dict()),
    "adamw": (dict(weight_decay=0.05, decoupled_weight_decay=True), dict(weight_decay=0.05, decoupled=True)),
    "sgd": (dict(betas=(0.0, 0.999), eta=1.0, debias=False, normalize=False),
            dict(beta=0.0, eta=1.0, debias=False, normalize=False)),
    "heavy-ball": (dict(eta=1.0, debias=False, normalize=False, weight_decay=0.01),
                   dict(eta=1.0, debias=False, normalize=False, weight_decay=0.01)),
    "nesterov": (dict(gamma=0.9 / 1.9, eta=1.9, debias=False, normalize=False),
                 dict(gamma=0.9 / 1.9, eta=1.9, debias=False, normalize=False)),
    "rmsprop-eps": (dict(betas=(0.0, 0.99), eta=1.0, debias=False, repeat_eps=True, eps=1e-3),
                    dict(beta=0.0, beta_a=0.99, eta=1.0, debias=False, repeat_eps=True, eps=1e-3)),
    "mls-window": (dict(gamma=0.5528, window=WINDOW), dict(gamma=0.5528, window=WINDOW)),
    "fir": (dict(betas=(0.0, 0.99), gamma=-0.5), dict(beta=0.0, beta_a=0.99, gamma=-0.5)),
    "maximize": (dict(maximize=True, weight_decay=0.01, numerator="parcor-chebyshev", gamma=0.2),
                 dict(maximize=True, weight_decay=0.01, numerator="parcor-chebyshev", gamma=0.2)),
}
for _num in ("parcor-bounded", "parcor-maxbound", "parcor-markov", "parcor-chebyshev", "corr"):
    for _mode in ("tensor", "element"):
        _kw = dict(numerator=_num, numerator_mode=_mode, beta_n=0.99, gamma=0.3)
        CASES[f"{_num}-{_mode}"] = (_kw, _kw)

PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
#: The fused path compiles a program per configuration: three of them in the default run, all with ``-m slow``.
FUSED_DEFAULT = ("adam", "nesterov", "parcor-chebyshev-tensor")
GRID = [pytest.param(name, path, marks=[pytest.mark.slow] if path == "fused" and name not in FUSED_DEFAULT else [])
        for name in CASES for path in PATHS]  # fmt: skip


def _start() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    ws = [torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in [(6, 4), (9,), (1,), (3, 2, 2)]]
    ws.append(torch.zeros(5, dtype=torch.float64))  # a zero-initialised bias
    return ws


def _grads(k: int, ws: list[torch.Tensor]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(500 + k)
    return [0.4 * w + 0.5 * torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in ws]


@pytest.mark.parametrize("name, path", GRID)
def test_every_path_steps_as_the_spec_says(name, path):
    pkg, ref = CASES[name]
    if "window" in ref:
        window = ref["window"]
        ref = dict(ref, window=lambda t: window(t))
    worst, where = against_spec_reference(_start(), dict(lr=0.03, **pkg, **PATHS[path]), dict(lr=0.03, **ref),
                                          STEPS, _grads)  # fmt: skip
    assert worst <= 1e-12, (name, path, where, worst)
