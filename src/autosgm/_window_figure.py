"""Figure of every window shape: ``python -m autosgm._window_figure OUTDIR`` writes OUTDIR/windows.png.

Rows: the shapes rcm 1..6; columns: half window (anneal) and full window (warm-up, anneal).
Lines are uniform windows (three orders n per shape); markers are the Kronecker window of the
middle order on a short frame, so the low-discrepancy positions are visible. The last row shows
the flat top and floor, and the three step units with their restarts.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from autosgm._files import replacing
from autosgm.windows import SHAPES, Window

#: Orders n drawn for each shape (the middle one is also drawn with the Kronecker sequence).
ORDERS: dict[str, tuple[float, float, float]] = {
    "cosine": (1.0, 2.0, 4.0),
    "polynomial": (0.5, 1.0, 2.0),
    "beta-exp": (0.5, 0.1, 0.01),
    "simple-poly": (1.5, 2.0, 4.0),
    "logistic": (1.0, 4.0, 8.0),
    "logistic-late": (1.0, 4.0, 8.0),
}
TITLES: dict[str, str] = {
    "cosine": r"1 cosine  $\cos(\pi f/2)^n$",
    "polynomial": r"2 polynomial  $(1-f)^n$",
    "beta-exp": r"3 beta-exp  $(n^f-n)/(1-n)$",
    "simple-poly": r"4 simple-poly  $(1-f^n)^2$",
    "logistic": "5 logistic (inflection 0.5)",
    "logistic-late": "6 logistic-late (inflection 0.875)",
}
LINE_L = 400  # frame length of the uniform curves
KRON_L = 41  # frame length of the Kronecker markers (odd: the full window has a doubled peak)


def _positions(big_l: int) -> list[float]:
    return [k / big_l for k in range(big_l)]


def draw(path: Path, dpi: int = 80) -> Path:
    """Draw the grid figure into ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = SHAPES[1:]
    fig, axes = plt.subplots(len(shapes) + 1, 2, figsize=(11, 3.0 * (len(shapes) + 1)), sharex=False)
    colors = ("tab:blue", "tab:orange", "tab:green")
    for row, shape in enumerate(shapes):
        for col, full in enumerate((False, True)):
            ax = axes[row, col]
            for n, color in zip(ORDERS[shape], colors):
                w = Window(shape, n, full=full, tau=1, spe=LINE_L)
                ax.plot(_positions(LINE_L), w.frame_values(), color=color, lw=1.6, label=f"uniform n={n:g}")
            n = ORDERS[shape][1]
            wk = Window(shape, n, full=full, kronecker=True, tau=1, spe=KRON_L)
            ax.plot(_positions(KRON_L), wk.frame_values(), "o", ms=3.5, mfc="none", color="black",
                    label=f"Kronecker n={n:g} (L={KRON_L})")
            ax.set_title(f"{TITLES[shape]} — {'full' if full else 'half'}", fontsize=10)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
            if col == 0:  # one legend per row: the full window uses the same orders
                ax.set_ylabel("F")
                ax.legend(fontsize=7, loc="best", framealpha=0.85)

    # flat top e and floor x
    ax = axes[-1, 0]
    for full, color in ((False, "tab:blue"), (True, "tab:red")):
        w = Window("cosine", 2.0, floor=0.2, flat=0.3, full=full, tau=1, spe=LINE_L)
        ax.plot(_positions(LINE_L), w.frame_values(), color=color, lw=1.6,
                label=f"cosine n=2, x=0.2, e=0.3, {'full' if full else 'half'}")
        wk = Window("cosine", 2.0, floor=0.2, flat=0.3, full=full, kronecker=True, tau=1, spe=KRON_L)
        ax.plot(_positions(KRON_L), wk.frame_values(), "o", ms=3.5, mfc="none", color=color)
    ax.axhline(0.2, color="gray", ls=":", lw=1)
    ax.set_title("flat top e and floor x (markers: Kronecker)", fontsize=10)
    ax.set_xlabel("position in the frame  k / L")
    ax.set_ylabel("F")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", framealpha=0.85)
    axes[-2, 1].set_xlabel("position in the frame  k / L")
    axes[-2, 0].set_xlabel("position in the frame  k / L")

    # the three step units over four epochs of spe steps (restarts when a frame ends)
    ax = axes[-1, 1]
    spe, epochs = 50, 4
    steps = list(range(1, epochs * spe + 1))
    for unit, tau, color in (("iteration", 2, "tab:blue"), ("epoch-restart", 2, "tab:orange"),
                             ("epoch", 4, "tab:green")):
        w = Window("cosine", 2.0, tau=tau, spe=spe, unit=unit)
        ax.plot(steps, [w(t) for t in steps], color=color, lw=1.6, label=f"unit={unit}, tau={tau}, spe={spe}")
    for e in range(1, epochs):
        ax.axvline(e * spe + 0.5, color="gray", ls=":", lw=1)
    ax.set_title("step units and restarts (cosine n=2)", fontsize=10)
    ax.set_xlabel("optimizer step t")
    ax.set_ylim(-0.45, 1.05)
    ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlim(1, epochs * spe)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", framealpha=0.85)

    fig.suptitle("AutoSGM window functions F (half: anneal; full: warm-up then anneal)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    # a 64-colour palette keeps the checked-in PNG small (a few hundred KB -> ~100 KB)
    from PIL import Image

    buf.seek(0)
    with Image.open(buf) as image, replacing(path) as tmp:
        image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: write OUTDIR/windows.png; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m autosgm._window_figure",
        description="Draw every AutoSGM window shape (half and full, uniform and Kronecker).",
    )
    parser.add_argument("outdir", type=Path, help="folder to write windows.png into")
    parser.add_argument("--dpi", type=int, default=80, help="resolution of the PNG (default 80)")
    args = parser.parse_args(argv)
    if args.dpi < 10:
        parser.error(f"--dpi must be >= 10; got {args.dpi}")
    path = draw(args.outdir / "windows.png", dpi=args.dpi)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
