"""The learning-rate robustness study: its grids, the 2 % range and its width, the table and figures,
and the ``autosgm robustness`` command (resumable, outputs checked before the first run)."""

from __future__ import annotations

import math
from collections import Counter

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from autosgm._files import OutputPathError  # noqa: E402
from autosgm.cli import main  # noqa: E402
from autosgm.experiments import OptimizerConfig, make_task, recommended_lr, run_key  # noqa: E402
from autosgm.experiments.robustness import (  # noqa: E402
    best_curves_figure,
    format_profiles,
    lr_figure,
    lr_grid,
    lr_profiles,
    output_paths,
    robustness_grid,
    run_robustness,
)
from autosgm.experiments.tasks import get_task_class  # noqa: E402

SETTINGS = {"steps": 30, "batch_size": 8, "eval_every": 10}


def fake(cfg: OptimizerConfig, seed: int, loss: float, status: str = "ok") -> dict:
    """A finished run whose validation loss falls from 2.3 to ``loss``."""
    curves = {"step": [0, 15, 30], "time_s": [0.0, 0.2, 0.4], "train_time_s": [0.0, 0.1, 0.2],
              "val_loss": [2.3, (2.3 + loss) / 2, loss], "train_loss": [2.3, 1.5, loss]}
    return {"key": run_key("digits", SETTINGS, cfg.key(), seed), "task": "digits", "settings": SETTINGS,
            "optimizer": cfg.to_dict(), "optimizer_key": cfg.key(), "label": cfg.display, "seed": seed,
            "status": status, "steps_done": 30, "curves": curves, "train_time_s": 0.2, "wall_time_s": 0.4,
            "final": {"val_loss": loss if status == "ok" else math.nan, "train_loss": loss}}


def profile_of(losses: list[float | None], name: str = "adamw"):
    """The profile of one optimizer at lrs 1e-3 · 2^k with the given mean losses (None: one seed diverged)."""
    records = []
    for k, loss in enumerate(losses):
        cfg = OptimizerConfig(name=name, lr=1e-3 * 2**k)
        for seed, offset in enumerate((-0.001, 0.001)):
            diverged = loss is None and seed == 1
            records.append(fake(cfg, seed, (1.0 if loss is None else loss) + offset, "diverged" if diverged else "ok"))
    (profile,) = lr_profiles(records)
    return profile


# --------------------------------------------------------------------------------------- grids
def test_lr_grid_is_centred_and_log_spaced():
    lrs = lr_grid(3e-3)
    assert len(lrs) == 11 and lrs[5] == 3e-3
    assert lrs[-1] / lrs[0] == pytest.approx(10**2.5, rel=1e-3)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) / min(ratios) < 1.001
    assert lr_grid(1.0, points=7, span=1000) == [0.03162, 0.1, 0.3162, 1.0, 3.162, 10.0, 31.62]
    assert len(lr_grid(1.0, points=4, span=8)) == 4


@pytest.mark.parametrize("kwargs, error, match", [
    ({"centre": 0.0}, ValueError, "centre"), ({"centre": math.inf}, ValueError, "centre"),
    ({"centre": 1.0, "points": 1}, ValueError, "points"), ({"centre": 1.0, "points": 3.0}, TypeError, "points"),
    ({"centre": 1.0, "span": 1.0}, ValueError, "span"), ({"centre": 1.0, "points": 5000, "span": 1.01}, ValueError, "repeat"),
])
def test_lr_grid_refuses(kwargs, error, match):
    with pytest.raises(error, match=match):
        lr_grid(**kwargs)


def test_the_default_study():
    """AutoSGM red and blue at γ ∈ {0, NAG} and every baseline, each over >= 7 lrs spanning >= 300×
    around its own recommended lr."""
    digits = get_task_class("digits")
    configs = robustness_grid(digits)
    families = Counter((c.name, c.numerator, c.gamma) if c.name == "autosgm" else c.name for c in configs)
    assert len(families) == 12 and set(families.values()) == {11}
    for family in families:
        lrs = sorted(c.lr for c in configs if ((c.name, c.numerator, c.gamma) if c.name == "autosgm" else c.name) == family)
        assert lrs[-1] / lrs[0] >= 300
        name = family[1] if isinstance(family, tuple) else ("sgd-nesterov" if family == "sgd" else family)
        assert lrs[5] == pytest.approx(recommended_lr(name, digits), rel=1e-3)
    assert {(c.numerator, c.gamma) for c in configs if c.name == "autosgm"} == {
        (n, g) for n in ("unity", "parcor-markov", "parcor-bounded") for g in (0.0, "nag")}
    assert {c.name for c in configs} == {"autosgm", "adamw", "sgd", "prodigy", "schedulefree-adamw", "dadapt-adam", "lion"}
    shakespeare = robustness_grid(get_task_class("shakespeare-char"), numerators=[], baselines=["lion", "adamw"], points=7,
                                  centres={"adamw": 1e-3})
    assert {c.name: c.weight_decay for c in shakespeare} == {"lion": pytest.approx(0.3), "adamw": 0.1}
    assert sorted(c.lr for c in shakespeare if c.name == "adamw")[3] == 1e-3


@pytest.mark.parametrize("kwargs, match", [
    ({"numerators": ["parcor"]}, "numerators"), ({"baselines": ["adam"]}, "baselines"),
    ({"numerators": [], "baselines": []}, "at least one"), ({"centres": {"lion": 1e-3}, "baselines": ["adamw"]}, "centres"),
    ({"gammas": []}, "gammas"),
])
def test_robustness_grid_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        robustness_grid(get_task_class("digits"), **kwargs)


# --------------------------------------------------------------------------------------- the 2 % range
def test_width_of_the_range_within_two_percent_of_the_best():
    p = profile_of([1.0, 0.509, 0.5, 0.505, 0.6, 0.501])
    assert (p.best, p.low, p.high) == (2, 1, 3)  # contiguous: the 0.501 beyond the 0.6 does not count
    assert p.width == pytest.approx(4.0) and not p.at_edge
    assert p.mean[2] == pytest.approx(0.5) and p.sd[2] == pytest.approx(0.002 / math.sqrt(2))
    assert p.step_ms == pytest.approx(1000 * 0.2 / 30)


def test_a_looser_tolerance_gives_a_wider_range():
    p = profile_of([0.54, 0.509, 0.5, 0.505, 0.6, 0.7])
    assert p.tolerances == (0.02, 0.1, 0.25) and p.ranges == [(1, 3), (0, 3), (0, 4)]
    assert (p.width_at(0), p.at_edge_at(0)) == (4.0, False) and (p.width_at(1), p.at_edge_at(1)) == (8.0, True)
    row = format_profiles([p], markdown=True).splitlines()
    assert row[0].endswith("| lr range within 2 % | width 2 % | width 10 % | width 25 % | diverged | ms/step |")
    assert "| 4× | ≥ 8× | ≥ 16× |" in row[2]
    assert lr_profiles(profile_of([0.5]).groups[0].records, tolerances=[0.05])[0].tolerances == (0.05,)
    with pytest.raises(ValueError, match="tolerances"):
        lr_profiles([], tolerances=[])


def test_a_range_at_the_end_of_the_grid_is_a_lower_bound():
    p = profile_of([0.5, 0.505, 0.9])
    assert (p.best, p.low, p.high) == (0, 0, 1) and p.at_edge
    assert "≥ 2×" in format_profiles([p], markdown=True)


def test_a_diverged_seed_breaks_the_range():
    p = profile_of([0.5, None, 0.501])
    assert math.isnan(p.mean[1]) and (p.best, p.low, p.high) == (0, 0, 0)
    assert p.diverged == 1 and p.runs == 6
    assert "1/6" in format_profiles([p])
    everything_diverged = profile_of([None])
    assert everything_diverged.best is None and math.isnan(everything_diverged.width)


def test_table_and_figures_of_several_optimizers():
    records = []
    for name, levels in (("autosgm", [0.9, 0.5, 0.7]), ("adamw", [0.6, 0.55, 0.56])):
        for k, level in enumerate(levels):
            cfg = OptimizerConfig(name=name, lr=1e-3 * 10**k)
            records += [fake(cfg, seed, level + 0.01 * seed) for seed in range(3)]
    profiles = lr_profiles(records)
    assert [p.label for p in profiles] == ["AutoSGM unity γ=0", "torch AdamW"]
    table = format_profiles(profiles, markdown=True).splitlines()
    assert table[0].startswith("| optimizer | recommended lr | val loss there | best lr | val loss at best |")
    assert table[2].split(" | ")[1:5] == ["0.01", "0.5100 ± 0.0100", "0.01", "0.5100 ± 0.0100"]
    assert "| 0.01 – 0.1 | ≥ 10× | ≥ 100× | ≥ 100× |" in table[3]  # 0.57 is within 2 % of 0.56 (0.61 within 10 %)
    fig = lr_figure(profiles)
    left, right = fig.axes[:2]
    assert left.get_xscale() == right.get_xscale() == "log"
    assert len(left.collections) == 2  # one mean ± sd band per optimizer
    plt.close(fig)
    fig = best_curves_figure(profiles)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["AutoSGM unity γ=0, lr 0.01", "torch AdamW, lr 0.01"]
    assert list(fig.axes[1].get_lines()[0].get_xdata()) == pytest.approx([0.0, 0.1, 0.2])  # training time, not wall time
    plt.close(fig)


# --------------------------------------------------------------------------------------- the study
@pytest.fixture(scope="module")
def digits():
    return make_task("digits", preset="tiny", overrides={"steps": 6, "eval_every": 3})


def test_run_robustness_writes_everything_and_resumes(digits, tmp_path):
    configs = robustness_grid(digits, numerators=["unity"], gammas=[0], baselines=["adamw"], points=3, span=10)
    first = run_robustness(digits, configs, [0, 1], tmp_path / "study", progress=False, log=None)
    paths = output_paths(tmp_path / "study")
    assert all(path.is_file() for path in paths.values())
    assert len(first.summary.ran) == 12 and [p.label for p in first.profiles] == ["AutoSGM unity γ=0", "torch AdamW"]
    unity, adamw = first.profiles
    assert unity.mean == pytest.approx(adamw.mean, rel=1e-6)  # the Adam point is AdamW
    table = paths["table"].read_text()
    assert "| AutoSGM unity γ=0 | 0.003 |" in table and "# Learning-rate robustness: digits" in table
    again = run_robustness(digits, configs, [0, 1], tmp_path / "study", progress=False, log=None)
    assert again.summary.ran == [] and len(again.summary.skipped) == 12
    assert paths["table"].read_text() == table  # the report comes from the recorded runs


def test_a_process_that_finishes_while_another_still_runs_writes_no_report(digits, tmp_path, monkeypatch):
    """Two processes share a study: the one that finishes first (runs of the other still busy) must
    not write a table of part of the study; the last one, or a rerun, writes it with every run."""
    import autosgm.experiments.robustness as robustness_mod
    from autosgm.experiments.results import run_key

    configs = robustness_grid(digits, numerators=["unity"], gammas=[0], baselines=[], points=2, span=10)
    real_sweep = robustness_mod.run_sweep

    def busy_sweep(task, cfgs, seeds, path, **kw):  # the other process holds the second seed's runs
        summary = real_sweep(task, cfgs, [0], path, **kw)
        settings = task.settings_dict()
        summary.busy = [run_key(task.name, settings, c.key(), 1) for c in cfgs]
        return summary

    monkeypatch.setattr(robustness_mod, "run_sweep", busy_sweep)
    lines = []
    first = run_robustness(digits, configs, [0, 1], tmp_path / "study", progress=False, log=lines.append)
    paths = output_paths(tmp_path / "study")
    assert first.profiles == [] and not paths["table"].exists() and not paths["lr_figure"].exists()
    assert any("still running in another process" in line for line in lines)
    monkeypatch.setattr(robustness_mod, "run_sweep", real_sweep)
    last = run_robustness(digits, configs, [0, 1], tmp_path / "study", progress=False, log=None)
    assert paths["table"].is_file() and last.profiles[0].seeds == 2


def test_outputs_are_checked_before_the_first_run(digits, tmp_path, monkeypatch):
    import autosgm.experiments.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "run", lambda *a, **k: pytest.fail("trained before checking the outputs"))
    configs = robustness_grid(digits, numerators=[], baselines=["adamw"], points=2)
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(OutputPathError, match="not a directory"):
        run_robustness(digits, configs, [0], blocker, progress=False, log=None)
    (tmp_path / "study" / "lr.png").mkdir(parents=True)
    with pytest.raises(OutputPathError, match="is a directory"):
        run_robustness(digits, configs, [0], tmp_path / "study", progress=False, log=None)
    assert blocker.read_text() == "keep" and not (tmp_path / "study" / "results.jsonl").exists()


def test_the_robustness_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["robustness", "--task", "digits", "--preset", "tiny", "--steps", "4", "--numerators", "unity",
            "--gammas", "0,nag", "--baselines", "none", "--points", "3", "--span", "10", "--seeds", "2",
            "--centre", "unity=1e-2", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 optimizers × 3 learning rates × 2 seeds" in out and "12 runs done, 0 skipped" in out
    assert "lr range within 2 %" in out and "width 10 %" in out and "AutoSGM unity γ=0.474 (nag)" in out
    study = tmp_path / "runs" / "robustness-digits"
    assert sorted(p.name for p in study.iterdir()) == ["curves.png", "lr.png", "results.jsonl", "table.md"]
    assert "| AutoSGM unity γ=0 | 0.01 |" in (study / "table.md").read_text()
    assert main(argv) == 0
    assert "0 runs done, 12 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--centre", "lion=1e-3", "--baselines", "adamw"], "centres given for optimizers not in the study"),
    (["--baselines", "adam"], "--baselines: unknown name 'adam'"),
    (["--numerators", "parcor"], "--numerators: unknown numerator 'parcor'"),
])
def test_bad_study_values_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["robustness", "--task", "digits", "--preset", "tiny", "-q"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["--points", "1"], ["--span", "1"], ["--span", "inf"], ["--tolerances", "0.02,0"],
                                  ["--tolerances", "x"]])
def test_argparse_refuses_bad_grids(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["robustness", "--task", "digits"] + argv)
    assert info.value.code == 2 and "error:" in capsys.readouterr().err
