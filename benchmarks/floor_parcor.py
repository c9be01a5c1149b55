"""The eager floor of the partial-correlation numerator: a hand-written chain, timed beside torch.

``FloorChebyshev`` steps AutoSGM's ``parcor-chebyshev`` point (defaults: β = 0.9, η = 1 − β,
β_a = 0.999, β_n = 0.9999, per-tensor numerator) with the fewest eager torch calls found for it:
no Python layers, every temporary in one of three reused scratch buffers, ``v̄`` written over the
denominator, the Chebyshev variance from two sums (``E[(x − μ)²] = E[x²] − 2 μ E[x] + μ²``, one
pass fewer than AutoSGM's subtraction, and less robust to cancellation, which is why AutoSGM does
not use it). It is not part of the library: it measures how fast the multi-tensor CPU path could
be with torch's eager kernels, beside AutoSGM's own path and torch's ``Adam(foreach=True)``, in
one interleaved run of ``bench_step.py``:

    PYTHONPATH=src python benchmarks/floor_parcor.py --threads 1
    PYTHONPATH=src python benchmarks/floor_parcor.py --threads 1 --sets mlp --small-alone

Small tensors (fewer than 65 536 elements) are stepped in one flat pack, as AutoSGM does (the
pack's weights and gradients are copied in and the weights copied out; its per-tensor means are
segment sums); ``--small-alone`` steps them one by one instead. Before timing, the script checks
that the chain follows AutoSGM's reference path (relative difference of the weights after a few
steps, float64).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402

ALONE = 1 << 16
K = 4.0


class FloorChebyshev(torch.optim.Optimizer):
    """``parcor-chebyshev`` (per-tensor numerator) as one flat sequence of eager torch calls."""

    def __init__(self, params, lr: float, small_alone: bool = False) -> None:
        super().__init__(params, dict(lr=lr))
        self.beta, self.beta_a, self.beta_n, self.eps = 0.9, 0.999, 0.9999, 1e-8
        self.small_alone = small_alone
        self.t = 0
        self.plan: list | None = None

    def _build(self, params: list[Tensor]) -> None:
        big = [p for p in params if p.numel() >= ALONE or self.small_alone]
        small = [p for p in params if not (p.numel() >= ALONE or self.small_alone)]
        dtype, n_max = params[0].dtype, max(p.numel() for p in params)

        def buffers(shape) -> dict:
            z = lambda: torch.zeros(shape, dtype=dtype)  # noqa: E731
            return dict(s=z(), m=z(), c=z(), w2=z())

        self.alone = [(p, buffers(p.shape), _Alone(p.numel())) for p in big]
        self.stats = {id(p): torch.zeros(3, dtype=dtype) for p in big}  # mean, var, a
        self.scratch = [torch.empty(max(n_max, sum(p.numel() for p in small)), dtype=dtype) for _ in range(5)]
        self.small = small
        if small:
            sizes = [p.numel() for p in small]
            n = sum(sizes)
            self.pack = buffers((n,))
            self.sizes = sizes
            self.packed = _Packed(sizes, dtype)
            self.pstats = torch.zeros(3, len(small), dtype=dtype)
        for p, st, _ in self.alone:  # in ``state`` too, so that the table counts its bytes
            self.state[p] = {**st, "stats": self.stats[id(p)]}
        if small:
            for i, (p, *views) in enumerate(zip(small, *(v.split(sizes) for v in self.pack.values()))):
                self.state[p] = dict(zip(self.pack, views), stats=self.pstats[:, i])
        self.plan = [id(p) for p in params]

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if self.plan != [id(p) for p in params]:
            self._build(params)
        self.t += 1
        t, b, ba, bn, eps = self.t, self.beta, self.beta_a, self.beta_n, self.eps
        S, root = 1.0 - b**t, math.sqrt(1.0 - ba**t)
        lr = self.param_groups[0]["lr"]
        eps_s = torch.tensor(eps * S, dtype=params[0].dtype)
        for p, st, red in self.alone:
            n = p.numel()
            u, x, y = (buf[:n].view(p.shape) for buf in self.scratch[:3])
            self._chain(p, p.grad, st, self.stats[id(p)], u, x, y, S / root, eps_s, lr, red)
        if self.small:
            n = sum(self.sizes)
            fw, fg, u, x, y = (buf[:n] for buf in self.scratch)
            torch._foreach_copy_(fw.split(self.sizes), [p.view(-1) for p in self.small])
            torch._foreach_copy_(fg.split(self.sizes), [p.grad.view(-1) for p in self.small])
            self._chain(fw, fg, self.pack, self.pstats, u, x, y, S / root, eps_s, lr, self.packed)
            torch._foreach_copy_([p.view(-1) for p in self.small], fw.split(self.sizes))

    def _chain(self, w, g, st, stats, u, x, y, scale, eps_s, lr, red) -> None:
        """One step of a tensor (``red``: :class:`_Alone`) or of a pack (:class:`_Packed`)."""
        ba, bn = self.beta_a, self.beta_n
        mean, var, a = stats[0], stats[1], stats[2]
        st["s"].lerp_(g, 1.0 - self.beta)  # v
        st["m"].mul_(ba).addcmul_(g, g, value=1.0 - ba)
        torch.sqrt(st["m"], out=u)
        torch.add(eps_s, u, alpha=scale, out=u)  # S d
        torch.div(st["s"], u, out=u)  # v̄
        torch.mul(w, u, out=x)  # x = w v̄
        sx, sxx = red.total(x), red.total_sq(x, y)
        mean.lerp_(sx * red.inv, 1.0 - ba)
        var.lerp_(((sxx - 2.0 * mean * sx) * red.inv + mean * mean).clamp_min_(0.0), 1.0 - ba)
        sd = var.sqrt()
        torch.maximum(x, red.each(torch.add(mean, sd, alpha=-K)), out=x)
        torch.minimum(x, red.each(torch.add(mean, sd, alpha=K)), out=x)
        torch.add(x, st["c"], alpha=bn, out=st["c"])  # c ← β_n c + x
        st["w2"].mul_(bn).addcmul_(w, w, value=1.0 - bn)
        torch.add(st["w2"], 1.0, out=y)
        torch.abs(st["c"], out=x)
        torch.minimum(x, y, out=x)
        a.lerp_(red.total(x) * red.inv, 0.9)
        w.addcmul_(u, red.each(a), value=-lr)


class _Alone:
    """Per-tensor sums of one tensor (0-d)."""

    def __init__(self, n: int) -> None:
        self.inv = 1.0 / max(n, 1)

    total = staticmethod(torch.sum)

    @staticmethod
    def total_sq(x: Tensor, scratch: Tensor) -> Tensor:
        return torch.dot(x.view(-1), x.view(-1))

    @staticmethod
    def each(q: Tensor) -> Tensor:
        return q


class _Packed:
    """Per-tensor sums of a pack (segment sums), broadcast back to the elements by index."""

    def __init__(self, sizes: list[int], dtype: torch.dtype) -> None:
        self.lengths = torch.tensor(sizes)
        self.seg = torch.repeat_interleave(torch.arange(len(sizes)), self.lengths)
        self.inv = torch.tensor([1.0 / s for s in sizes], dtype=dtype)

    def total(self, x: Tensor) -> Tensor:
        return torch.segment_reduce(x, "sum", lengths=self.lengths)

    def total_sq(self, x: Tensor, scratch: Tensor) -> Tensor:
        return self.total(torch.mul(x, x, out=scratch))

    def each(self, q: Tensor) -> Tensor:
        return q[self.seg]


def check(steps: int = 6) -> float:
    """Largest relative difference of the weights from AutoSGM's reference path (float64)."""
    from autosgm import AutoSGM

    gen = torch.Generator().manual_seed(0)
    shapes = [(300, 300), (300,), (20, 30), (7,)]
    a = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64) * 0.1) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fa = FloorChebyshev(a, lr=1e-2)
    fb = AutoSGM(b, lr=1e-2, numerator="parcor-chebyshev", foreach=False)
    for _ in range(steps):
        for p, q in zip(a, b):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.01 + 0.3 * p.detach()
            p.grad, q.grad = g.clone(), g.clone()
        fa.step()
        fb.step()
    return max(float((p.detach() - q.detach()).abs().max() / q.detach().abs().max()) for p, q in zip(a, b))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every other option is bench_step.py's (--sets, --paths, --configs, --reps, --threads, "
               "--no-prime, ...); the defaults here are --sets mlp,transformer --paths foreach "
               "--configs adam,parcor-chebyshev.")  # fmt: skip
    parser.add_argument("--small-alone", action="store_true", help="step small tensors one by one")
    args, rest = parser.parse_known_args(argv)
    diff = check()
    print(f"# floor chain vs AutoSGM reference (float64, 6 steps): max relative weight difference {diff:.1e}")
    if diff > 1e-9:
        raise SystemExit("the floor chain does not follow AutoSGM's parcor-chebyshev step")
    if not any(a.startswith("--sets") for a in rest):
        rest += ["--sets", "mlp,transformer"]
    if not any(a.startswith("--paths") for a in rest):
        rest += ["--paths", "foreach"]
    if not any(a.startswith("--configs") for a in rest):
        rest += ["--configs", "adam,parcor-chebyshev"]
    make = lambda p: FloorChebyshev(p, lr=bench_step.LR, small_alone=args.small_alone)  # noqa: E731
    bench_step.main(rest, extra={"floor parcor-chebyshev": (make, "torch Adam")})


if __name__ == "__main__":
    main()
