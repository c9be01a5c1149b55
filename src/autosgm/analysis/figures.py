"""Figures of the filter design space and of the quadratic model (spec §2, §8).

``python -m autosgm.analysis.figures OUTDIR`` writes ``design_space.png`` and ``responses.png``.
matplotlib is imported inside the functions (Agg backend).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..design import mls_gamma, nesterov_gamma
from .._files import save_figure
from .filter import LowpassFilter, _real
from .quadratic import (
    mean_square_rate,
    mean_square_trajectory,
    mean_trajectory,
    optimal_design,
    plain_matching_alpha,
    simulate,
    spectral_radius,
)

__all__ = ["Design", "comparison_designs", "design_space_figure", "responses_figure", "main"]

_COLORS = {"RAW": "0.35", "PHB": "tab:blue", "NAG": "tab:orange", "OPT": "tab:green", "MLS": "tab:red"}


def _save(fig, path: str | Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` (atomically) and release it."""
    import matplotlib.pyplot as plt

    try:
        return save_figure(fig, path, dpi=dpi)
    finally:
        plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt




def design_space_figure(path: str | Path, *, resolution: int = 240, dpi: int = 110) -> Path:
    """Write the (β, γ) design-space map to ``path`` (PNG) and return the path.

    Left: mean convergence rate ρ(A) at the two-step gain ``αηλ = 1 + β`` (zero on the Nesterov
    curve, unstable where ``γ < (β − 1)/(β + 1)``). Right: mean-square rate of ``E ε²`` at
    ``αηλ = 1/3`` (plain SGM's mean-square-optimal step), with its stability boundary.
    Both panels mark PHB (γ = 0), NAG (γ = β/(1+β)), MLS (γ = 1 − √(2(1−β))) and the low-pass
    boundary γ = β (above it, not a low-pass filter).
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 10:
        raise ValueError(f"resolution must be an int >= 10, got {resolution!r}")
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    betas = np.linspace(0.0, 0.995, resolution)
    gammas = np.linspace(-1.0, 1.0, resolution)
    b_grid, g_grid = np.meshgrid(betas, gammas)
    lowpass = g_grid <= b_grid
    # eta = 1 and lam = 1, so that alpha is the loop gain kappa = alpha * eta * lam.
    with np.errstate(invalid="ignore"):
        rho_mean = spectral_radius(b_grid, g_grid, 1.0, 1.0 + b_grid, 1.0)
        rho_ms = mean_square_rate(b_grid, g_grid, 1.0, 1.0 / 3.0, 1.0)

    fig, axes = plt.subplots(1, 2, figsize=(12.4, 5.3), constrained_layout=True)
    panels = [
        (axes[0], rho_mean, r"mean: spectral radius $\rho(A)$ at $\alpha\eta\lambda = 1+\beta$"),
        (axes[1], rho_ms, r"mean square: rate of $E\,\epsilon^2$ at $\alpha\eta\lambda = 1/3$"),
    ]
    cmap = plt.get_cmap("viridis").copy()
    unstable_cmap = ListedColormap(["#f2d7d5"])
    for ax, rho, title in panels:
        stable = lowpass & (rho < 1.0)
        shown = np.where(stable, rho, np.nan)
        mesh = ax.pcolormesh(b_grid, g_grid, shown, cmap=cmap, vmin=0.0, vmax=1.0, shading="auto")
        ax.pcolormesh(
            b_grid, g_grid, np.where(lowpass & ~stable, 1.0, np.nan), cmap=unstable_cmap, shading="auto"
        )
        ax.fill_between(betas, betas, 1.0, color="0.88", hatch="///", edgecolor="0.6", lw=0)
        ax.contour(b_grid, g_grid, np.where(lowpass, rho, np.nan), [1.0], colors="firebrick", linewidths=1.6)
        ax.plot(betas, betas, color="k", lw=1.2)
        ax.plot(betas, np.zeros_like(betas), color="w", lw=2.2, ls="--", label=r"PHB  $\gamma=0$")
        ax.plot(betas, nesterov_gamma(betas), color="w", lw=2.2, label=r"NAG  $\gamma=\beta/(1+\beta)$")
        ax.plot(
            betas, mls_gamma(betas), color="w", lw=2.2, ls=":", label=r"MLS  $\gamma=1-\sqrt{2(1-\beta)}$"
        )
        ax.text(0.12, 0.62, "not low-pass\n" + r"($\gamma>\beta$)", fontsize=10, color="0.25")
        ax.text(0.35, 0.295, r"$\gamma=\beta$", rotation=33, fontsize=9, color="k")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(-1.0, 1.0)
        ax.set_xlabel(r"pole $\beta$")
        ax.set_ylabel(r"zero $\gamma$")
        ax.set_title(title, fontsize=11)
        fig.colorbar(mesh, ax=ax, shrink=0.9, label="rate per step (stable < 1)")
    axes[0].text(0.62, -0.82, "pink: unstable\nred line: rate = 1", fontsize=9, color="firebrick")
    axes[0].annotate(
        r"$\rho=0$ on NAG: two-step" + "\n" + r"convergence (OPT)",
        (0.3, 0.3 / 1.3), (0.4, -0.3), color="w", fontsize=9.5,
        arrowprops={"arrowstyle": "->", "color": "w"},
    )
    axes[1].text(0.72, -0.55, "mean-square\nunstable", fontsize=9.5, color="firebrick")
    for ax in axes:
        legend = ax.legend(loc="lower left", fontsize=9, facecolor="0.3", framealpha=0.9)
        for text in legend.get_texts():
            text.set_color("w")
    fig.suptitle(
        r"Filter design space $H(z)=\eta\,(1-\gamma z^{-1})/(1-\beta z^{-1})$ on the quadratic model"
        r" $f=\frac{1}{2}u^2\epsilon^2$, $u\sim N(0,\lambda)$",
        fontsize=12,
    )
    return _save(fig, path, dpi)


@dataclass(frozen=True)
class Design:
    """One curve of :func:`responses_figure`: filter ``(β, γ, η)`` and step ``α``."""

    name: str
    beta: float
    gamma: float
    eta: float
    alpha: float

    @property
    def filter(self) -> LowpassFilter:
        return LowpassFilter(self.beta, self.gamma, self.eta)


def comparison_designs(beta: float = 0.9, lam: float = 1.0, alpha: float | None = None) -> list[Design]:
    """RAW, PHB, NAG, MLS at one step ``α`` and OPT at its own step.

    Every filter has unit DC gain (the default ``η = (1 − β)/(1 − γ)``), so a common ``α`` is the
    same long-run step size for all; only the transient differs. ``alpha=None`` is
    ``1/(3λ)``, plain SGM's mean-square-optimal step. OPT is the two-step design
    (``γ = β/(1+β)``, ``α = (1+β)/(ηλ) = 1/((1 − β)λ)``): NAG's filter with a larger step.
    """
    beta = _real("beta", beta)
    if alpha is None:
        alpha = plain_matching_alpha(lam)
    alpha = _real("alpha", alpha)
    opt = optimal_design(beta, lam)
    out = [Design("RAW", 0.0, 0.0, 1.0, alpha)]
    for name, gamma in (("PHB", 0.0), ("NAG", nesterov_gamma(beta)), ("MLS", mls_gamma(beta))):
        f = LowpassFilter(beta, gamma, None)
        out.append(Design(name, f.beta, f.gamma, float(f.eta), alpha))
    out.append(Design("OPT", opt.beta, opt.gamma, opt.eta, opt.alpha))
    return out


def responses_figure(
    path: str | Path,
    beta: float = 0.9,
    lam: float = 1.0,
    *,
    alpha: float | None = None,
    steps: int = 60,
    n_paths: int = 20_000,
    seed: int = 0,
    dpi: int = 110,
) -> Path:
    """Write the responses figure for :func:`comparison_designs` to ``path`` (PNG); return it.

    (a) step response: ``E w[t]`` when the optimum steps from 0 to 1 (``w[0] = 0``), i.e.
    ``1 − E ε[t]/ε[0]``; (b) impulse response: its first difference, the mean change ``E Δ[t]``;
    (c) exact ``E ε[t]²`` with Monte-Carlo estimates (markers); (d) filter magnitude ``|H(e^{jω})|``.
    """
    plt = _pyplot()
    designs = comparison_designs(beta, lam, alpha)
    t = np.arange(steps + 1)
    fig, axes = plt.subplots(2, 2, figsize=(12.4, 8.6), constrained_layout=True)
    ax_step, ax_imp, ax_ms, ax_mag = axes.flat
    omega = np.linspace(0.0, math.pi, 400)
    # The sample mean of the heavy-tailed ε² (a product of random factors) falls below its
    # expectation once rare paths dominate it; Monte Carlo is shown where it is reliable.
    mc_steps = min(steps, 30)
    for d in designs:
        c = _COLORS[d.name]
        traj = mean_trajectory(d.beta, d.gamma, d.eta, d.alpha, lam, eps0=-1.0, steps=steps)
        kappa = d.alpha * d.eta * lam
        label = rf"{d.name}  $\beta$={d.beta:.2g} $\gamma$={d.gamma:.3g} $\alpha\eta\lambda$={kappa:.3g}"
        ax_step.plot(t, 1.0 + traj.error, color=c, lw=1.8, marker="." if d.name == "OPT" else None, label=label)
        ax_imp.plot(t[1:], traj.change[1:], color=c, lw=1.5, marker=".", ms=3)
        ms = mean_square_trajectory(d.beta, d.gamma, d.eta, d.alpha, lam, eps0=1.0, steps=steps)
        rate = mean_square_rate(d.beta, d.gamma, d.eta, d.alpha, lam)
        note = "" if rate < 1.0 else " (unstable)"
        ax_ms.semilogy(t, ms, color=c, lw=1.8, label=rf"{d.name}  rate {rate:.3g}{note}")
        if rate < 1.0:
            sim = simulate(d.beta, d.gamma, d.eta, d.alpha, lam, 1.0, mc_steps, n_paths, seed)
            shown = t[: mc_steps + 1 : 3]
            ax_ms.semilogy(shown, sim.mean_square[shown], "o", color=c, ms=4, mfc="none")
        if d.name != "OPT":  # OPT's filter is NAG's
            ax_mag.plot(omega / math.pi, d.filter.magnitude_response_db(omega), color=c, lw=1.8, label=d.name)
    ax_step.axhline(1.0, color="k", lw=0.8)
    ax_step.set_title(r"(a) step response: mean $E\,w[t]$ after the optimum moves from 0 to 1", fontsize=11)
    ax_step.set_ylabel(r"$E\,w[t]$")
    ax_step.legend(fontsize=8.5, loc="lower right")
    ax_imp.axhline(0.0, color="k", lw=0.8)
    opt_change = mean_trajectory(
        designs[-1].beta, designs[-1].gamma, designs[-1].eta, designs[-1].alpha, lam, eps0=-1.0, steps=2
    ).change
    ax_imp.set_ylim(-0.12, 0.42)
    ax_imp.annotate(
        f"OPT (off scale): {opt_change[1]:.3g} at t=1, {opt_change[2]:.3g} at t=2, then 0",
        (1.0, 0.41), (6.0, 0.36), color=_COLORS["OPT"], fontsize=9,
        arrowprops={"arrowstyle": "->", "color": _COLORS["OPT"]},
    )
    ax_imp.set_title(r"(b) impulse response: mean change $E\,\Delta[t] = E\,w[t]-E\,w[t-1]$", fontsize=11)
    ax_imp.set_ylabel(r"$E\,\Delta[t]$")
    ax_ms.set_ylim(1e-8, 1e3)
    ax_ms.set_title(
        rf"(c) mean square $E\,\epsilon[t]^2$: exact (lines), Monte Carlo (circles, {n_paths} paths)", fontsize=11
    )
    ax_ms.set_ylabel(r"$E\,\epsilon[t]^2$,  $\epsilon[0]=1$")
    ax_ms.legend(fontsize=8.5, loc="lower left", ncol=2)
    for ax in (ax_step, ax_imp, ax_ms):
        ax.set_xlabel("step t")
        ax.set_xlim(0, steps)
        ax.grid(alpha=0.3)
    ax_mag.set_title(r"(d) filter magnitude $|H(e^{j\omega})|$ (OPT uses NAG's filter)", fontsize=11)
    ax_mag.set_xlabel(r"$\omega/\pi$")
    ax_mag.set_ylabel("dB")
    ax_mag.set_xlim(0.0, 1.0)
    ax_mag.grid(alpha=0.3)
    ax_mag.legend(fontsize=9)
    a_common = designs[0].alpha
    fig.suptitle(
        rf"Quadratic model, $\lambda$={lam:g}, $\beta$={beta:g}: unit-DC-gain filters at a common "
        rf"$\alpha$={a_common:.3g}; OPT: $\gamma=\beta/(1+\beta)$, $\alpha\eta\lambda=1+\beta$",
        fontsize=12,
    )
    return _save(fig, path, dpi)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m autosgm.analysis.figures OUTDIR [--beta B] [--lam L] [--alpha A]``."""
    parser = argparse.ArgumentParser(
        prog="python -m autosgm.analysis.figures",
        description="Write design_space.png and responses.png (filter design space, quadratic model) "
        "and, from a probed training run, traces.png and trajectory.csv (alpha, r and the margin |beta r|).",
    )
    parser.add_argument("outdir", type=Path, help="directory for the PNG files (created if missing)")
    parser.add_argument("--beta", type=float, default=0.9, help="filter pole for the responses (default 0.9)")
    parser.add_argument("--lam", type=float, default=1.0, help="curvature E[u^2] (default 1)")
    parser.add_argument("--alpha", type=float, default=None, help="common step (default 1/(3 lam))")
    parser.add_argument("--seed", type=int, default=0, help="Monte-Carlo seed (default 0)")
    parser.add_argument("--dpi", type=int, default=110, help="resolution (default 110)")
    parser.add_argument("--trace-steps", type=int, default=300,
                        help="steps of the probed training run (default 300; 0 skips the traces)")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    for written in (
        design_space_figure(args.outdir / "design_space.png", dpi=args.dpi),
        responses_figure(
            args.outdir / "responses.png", args.beta, args.lam, alpha=args.alpha, seed=args.seed, dpi=args.dpi
        ),
    ):
        print(written)
    if args.trace_steps > 0:
        from . import probe

        return probe.main([str(args.outdir), "--steps", str(args.trace_steps), "--seed", str(args.seed)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
