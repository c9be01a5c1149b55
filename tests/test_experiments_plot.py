"""The γ-grid figure and the summary table, on small hand-made result files."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from autosgm.experiments import OptimizerConfig, append_result, read_results, run_key  # noqa: E402
from autosgm.experiments.plot import COLORS, grid_figure, plot_grid  # noqa: E402
from autosgm.experiments.report import format_table, summarize  # noqa: E402

STEPS = [0, 10, 20, 30]
SETTINGS = {"steps": 30, "batch_size": 8, "eval_every": 10}


def record(cfg: OptimizerConfig, seed: int, level: float, *, acc: bool = True, status: str = "ok") -> dict:
    """A run whose losses fall from 2 to ``level`` (+ a seed offset of 0.01·seed)."""
    losses = [2.0, (2.0 + level) / 2, level + 0.1, level]
    losses = [v + 0.01 * seed for v in losses]
    curves = {"step": STEPS, "time_s": [0.0, 1.0, 2.0, 3.0], "train_batch_loss": losses,
              "train_loss": [v - 0.05 for v in losses], "val_loss": losses}
    if acc:
        curves["train_acc"] = [0.1, 0.5, 0.8, 1 - level / 4]
        curves["val_acc"] = [0.1, 0.5, 0.8, 1 - level / 4 - 0.01 * seed]
    return {
        "format": 1, "key": run_key("digits", SETTINGS, cfg.key(), seed), "task": "digits", "settings": SETTINGS,
        "optimizer": cfg.to_dict(), "optimizer_key": cfg.key(), "label": cfg.display, "gamma_value": cfg.gamma_value,
        "seed": seed, "status": status, "curves": curves,
        "final": {k: v[-1] for k, v in curves.items() if k not in ("step", "time_s")}, "wall_time_s": 3.0,
    }


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.jsonl"
    configs = {
        OptimizerConfig.autosgm(1e-3, "unity", 0): 0.6,
        OptimizerConfig.autosgm(1e-3, "parcor-markov", 0): 0.4,
        OptimizerConfig.autosgm(1e-3, "unity", "nag"): 0.7,
        OptimizerConfig.autosgm(1e-3, "parcor-markov", "nag"): 0.5,
        OptimizerConfig.torch_adamw(1e-3): 0.6,
        OptimizerConfig.torch_sgd_nesterov(0.1): 0.9,
    }
    for seed in range(3):
        for cfg, level in configs.items():
            append_result(path, record(cfg, seed, level))
    return path


def lines_of(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_grid_layout_colours_and_bands(results):
    fig = grid_figure(results)
    axes = np.array(fig.axes).reshape(2, 2)
    assert axes[0, 0].get_title() == "γ = 0"
    assert axes[0, 1].get_title() == "γ = 0.474 (NAG)"
    assert axes[0, 0].get_ylabel() == "Train loss" and axes[1, 0].get_ylabel() == "Validation loss"
    for ax in axes.flat:
        lines = lines_of(ax)
        assert to_hex(lines["unity"].get_color()) == COLORS["unity"]  # red
        assert to_hex(lines["parcor-markov"].get_color()) == COLORS["parcor"]  # blue
        assert lines["unity"].get_linestyle() == "-"
        assert lines["torch AdamW"].get_linestyle() == "--" and lines["torch SGD-Nesterov"].get_linestyle() == "--"
        assert len(ax.collections) == 4  # a ±sd band per curve (3 seeds each)
    # the validation curve of (parcor, γ = 0) is the mean over seeds 0, 1, 2 (offsets 0, .01, .02)
    parcor = lines_of(axes[1, 0])["parcor-markov"]
    assert list(parcor.get_xdata()) == STEPS
    assert parcor.get_ydata() == pytest.approx([2.01, 1.21, 0.51, 0.41])
    band = axes[1, 0].collections[1].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.41 - 0.01)  # mean − sd, sd of (0.40, 0.41, 0.42) = 0.01
    plt.close(fig)


def test_accuracy_rows_and_written_file(results, tmp_path):
    out = plot_grid(results, tmp_path / "figs" / "grid.png", metric="acc")
    assert out.is_file() and out.stat().st_size > 10_000
    fig = grid_figure(results, metric="acc", title="custom")
    assert fig.axes[0].get_ylabel() == "Train accuracy" and fig._suptitle.get_text() == "custom"
    plt.close(fig)


def test_learning_rate_selection(tmp_path):
    path = tmp_path / "lrs.jsonl"
    for seed in range(2):
        append_result(path, record(OptimizerConfig.autosgm(1e-3), seed, 0.8))
        append_result(path, record(OptimizerConfig.autosgm(3e-3), seed, 0.3))  # the better lr
        append_result(path, record(OptimizerConfig.autosgm(1e-2), seed, 0.5))
    best = lines_of(grid_figure(path).axes[1])
    assert list(best) == ["unity, lr=0.003"]
    fixed = lines_of(grid_figure(path, lr=1e-2).axes[1])
    assert list(fixed) == ["unity, lr=0.01"]
    plt.close("all")


def test_per_numerator_learning_rates_are_shown(tmp_path):
    path = tmp_path / "num-lrs.jsonl"
    append_result(path, record(OptimizerConfig.autosgm(3e-3, "unity"), 0, 0.6))
    append_result(path, record(OptimizerConfig.autosgm(3e-2, "parcor-markov"), 0, 0.4))
    append_result(path, record(OptimizerConfig.torch_adamw(3e-3), 0, 0.6))
    labels = list(lines_of(grid_figure(path).axes[0]))
    assert labels == ["unity, lr=0.003", "parcor-markov, lr=0.03", "torch AdamW, lr=0.003"]
    plt.close("all")


def test_diverged_runs_and_errors(tmp_path):
    path = tmp_path / "div.jsonl"
    append_result(path, record(OptimizerConfig.autosgm(1e-3), 0, 0.5, acc=False))
    bad = record(OptimizerConfig.autosgm(1e-3), 1, 0.5, acc=False, status="diverged")
    bad["curves"] = {k: v[:1] for k, v in bad["curves"].items()}
    append_result(path, bad)
    rows = summarize(read_results(path))
    assert rows[0]["runs"] == 2 and rows[0]["diverged"] == 1
    assert rows[0]["val_loss"][2] == 1  # the mean is over the finished run only
    table = format_table(rows)
    assert "diverged" in table.splitlines()[0]
    with pytest.raises(ValueError, match="'acc'"):
        grid_figure(path, metric="acc")
    other = record(OptimizerConfig.autosgm(1e-3), 0, 0.5)
    other["task"] = "cifar10"
    other["key"] = run_key("cifar10", SETTINGS, other["optimizer_key"], 0)
    append_result(path, other)
    with pytest.raises(ValueError, match="several tasks"):
        grid_figure(path)
    plt.close(grid_figure(path, task="digits"))


def test_summary_table(results):
    rows = summarize(read_results(results))
    assert [r["label"] for r in rows][:2] == ["AutoSGM unity γ=0", "AutoSGM parcor-markov γ=0"]
    mean, sd, n = rows[1]["val_loss"]
    assert (mean, n) == (pytest.approx(0.41), 3) and sd == pytest.approx(0.01)
    markdown = format_table(rows, markdown=True).splitlines()
    assert markdown[0].startswith("| optimizer |") and len(markdown) == 2 + len(rows)
    assert "0.4100 ± 0.0100" in markdown[3]
    assert math.isnan(summarize([record(OptimizerConfig.autosgm(1e-3), 0, 0.5, status="diverged")])[0]["val_loss"][0])


# --------------------------------------------------------------------------------------- atomic outputs
def _failing_savefig(self, fname, *args, **kwargs):
    """A savefig that dies half-way: part of a file written, then an error (a full disk, a kill)."""
    with open(fname, "wb") as fh:
        fh.write(b"\x89PNG partial")
    raise OSError("disk full")


def test_a_failed_figure_leaves_the_previous_one_whole(results, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from autosgm.experiments.demo import plot_demo

    figure = tmp_path / "grid.png"
    plot_grid(results, figure)
    before = figure.read_bytes()
    monkeypatch.setattr(Figure, "savefig", _failing_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_grid(results, figure)
    with pytest.raises(OSError, match="disk full"):
        plot_demo(read_results(results), figure)
    assert figure.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "results.jsonl"]  # no temporary left


def test_outputs_appear_by_one_rename(results, tmp_path, monkeypatch):
    """Figures, the demo's summary.md and the probe's CSV are written beside and renamed over."""
    import os

    import torch

    from autosgm import AutoSGM
    from autosgm import _files
    from autosgm.analysis import TrajectoryProbe
    from autosgm.analysis.figures import design_space_figure
    from autosgm.experiments.demo import plot_demo

    renamed = []
    real_replace = os.replace

    def spy(src, dst):
        renamed.append(Path(dst).name)
        assert Path(src).parent == Path(dst).parent and Path(src).suffix == Path(dst).suffix
        real_replace(src, dst)

    monkeypatch.setattr(_files.os, "replace", spy)
    plot_grid(results, tmp_path / "grid.pdf")
    plot_demo(read_results(results), tmp_path / "demo.png")
    _files.write_text(tmp_path / "summary.md", "| a |\n")
    design_space_figure(tmp_path / "design.png", dpi=40)
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = AutoSGM([w], lr=1e-2)
    with TrajectoryProbe(opt) as probe:
        for _ in range(2):
            w.grad = torch.ones(3, dtype=torch.float64)
            opt.step()
    probe.to_csv(tmp_path / "trajectory.csv")
    assert renamed == ["grid.pdf", "demo.png", "summary.md", "design.png", "trajectory.csv"]
    assert (tmp_path / "grid.pdf").read_bytes().startswith(b"%PDF") and (tmp_path / "trajectory.csv").stat().st_size
