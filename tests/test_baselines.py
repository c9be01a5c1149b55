"""The baselines from their authors' packages — Prodigy, Schedule-Free AdamW, D-Adapt Adam, Lion — in the
runner, the sweep grid and the command line: their recommended settings, stable keys, the
evaluation mode of Schedule-Free AdamW, and a one-line message when a package is missing."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

from autosgm.cli import BASELINE_NAMES, main
from autosgm.experiments import BASELINES, OptimizerConfig, grid, make_task, recommended_lr, run
from autosgm.experiments.optimizers import (
    EXTERNAL_OPTIMIZERS,
    LION_SCALE,
    MissingBaselineError,
    baseline_config,
    external_optimizer_class,
    recommended_weight_decay,
)
from autosgm.experiments.runner import evaluation_mode, set_optimizer_mode
from autosgm.experiments.tasks import get_task_class

EXTERNAL = tuple(EXTERNAL_OPTIMIZERS)


def _needs(name: str) -> None:
    """Skip when the package of the external baseline ``name`` is not installed."""
    if name in EXTERNAL_OPTIMIZERS:
        pytest.importorskip(EXTERNAL_OPTIMIZERS[name].module, reason=f"{name} needs autosgm[baselines]")


@pytest.fixture(scope="module")
def digits():
    return make_task("digits", preset="tiny", overrides={"steps": 8, "eval_every": 4})


# --------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_trains_and_repeats_exactly(name, digits):
    _needs(name)
    cfg = baseline_config(name, recommended_lr(name, digits))
    first = run(digits, cfg, seed=1, progress=False)
    again = run(digits, cfg, seed=1, progress=False)
    assert first["status"] == "ok" and first["steps_done"] == 8 and first["unchanged_tensors"] == []
    assert first["optimizer"]["name"] == cfg.name and first["label"] == cfg.display
    assert first["curves"]["val_loss"] == again["curves"]["val_loss"]  # to the last digit on one thread
    assert first["final"]["train_loss"] < first["curves"]["train_loss"][0]
    assert 0 < first["train_time_s"] <= first["wall_time_s"]
    assert first["curves"]["train_time_s"][0] == 0 and first["curves"]["train_time_s"][-1] <= first["curves"]["time_s"][-1]


@pytest.mark.parametrize("name", EXTERNAL)
def test_each_external_baseline_builds_its_package_optimizer(name):
    _needs(name)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    cfg = baseline_config(name, 0.01, weight_decay=0.1)
    opt, scheduler = cfg.build(model, total_steps=20)
    assert type(opt).__name__ == EXTERNAL_OPTIMIZERS[name].cls
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # vectors are not decayed
    assert (scheduler is None) == (name == "schedulefree-adamw")  # schedule-free: no window


def test_schedulefree_is_evaluated_at_its_averaged_weights(digits, monkeypatch):
    """The runner puts it in training mode before the first step and in evaluation mode around every
    evaluation; the model is evaluated while the optimizer is in evaluation mode."""
    schedulefree = pytest.importorskip("schedulefree")
    cls = schedulefree.AdamWScheduleFree
    calls: list[str] = []
    for mode in ("train", "eval"):
        original = getattr(cls, mode)

        def spy(self, _original=original, _mode=mode):
            calls.append(_mode)
            return _original(self)

        monkeypatch.setattr(cls, mode, spy)
    opts: list = []
    build = OptimizerConfig.build

    def keep(self, model, total_steps):
        opt, scheduler = build(self, model, total_steps)
        opts.append(opt)
        return opt, scheduler

    monkeypatch.setattr(OptimizerConfig, "build", keep)
    evaluate = type(digits).evaluate

    def spy_evaluate(task, model):
        calls.append("evaluate" if not opts[-1].param_groups[0]["train_mode"] else "evaluate-in-train-mode")
        return evaluate(task, model)

    monkeypatch.setattr(type(digits), "evaluate", spy_evaluate)
    record = run(digits, OptimizerConfig.schedulefree_adamw(), seed=0, progress=False)
    evaluations = len(record["curves"]["step"])  # steps 0, 4, 8
    assert calls == ["train"] + ["eval", "evaluate", "train"] * evaluations
    assert opts[-1].param_groups[0]["warmup_steps"] == round(0.05 * 8)


def test_optimizer_mode_hook_leaves_other_optimizers_alone():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    with evaluation_mode(opt):  # torch's optimizers have no modes: nothing to call, nothing fails
        pass
    with pytest.raises(ValueError, match="mode"):
        set_optimizer_mode(opt, "test")


# --------------------------------------------------------------------------------------- settings and keys
def test_recommended_settings():
    digits, shakespeare = get_task_class("digits"), get_task_class("shakespeare-char")
    assert recommended_lr("adamw", digits) == recommended_lr("unity", digits) == digits.default_lr
    assert recommended_lr("parcor-markov", shakespeare) == recommended_lr("parcor-bounded", digits) == 0.1
    assert recommended_lr("prodigy", digits) == recommended_lr("dadapt-adam", digits) == 1.0
    assert recommended_lr("schedulefree-adamw", digits) == 2.5e-3
    assert recommended_lr("lion", shakespeare) == pytest.approx(shakespeare.default_lr / LION_SCALE)
    assert recommended_lr("sgd-nesterov", shakespeare) == shakespeare.default_sgd_lr
    assert recommended_weight_decay("lion", 0.1) == pytest.approx(0.3)  # the same lr·λ at a 3× smaller lr
    assert recommended_weight_decay("prodigy", 0.1) == recommended_weight_decay("adamw", 0.1) == 0.1
    assert recommended_weight_decay("sgd-nesterov", 0.1, 5e-4) == 5e-4
    with pytest.raises(ValueError, match="name"):
        recommended_lr("adam", digits)
    with pytest.raises(ValueError, match="name"):
        baseline_config("adam", 1e-3)
    lion = baseline_config("lion", 1e-3, beta_a=0.999)
    assert (lion.beta, lion.beta_a, lion.schedule) == (0.9, 0.99, "cosine")  # its authors' betas
    free = baseline_config("schedulefree-adamw", 2.5e-3)
    assert (free.schedule, free.warmup) == ("constant", 0.05)
    assert baseline_config("prodigy", 1.0).decoupled and baseline_config("dadapt-adam", 1.0).decoupled


def test_keys_of_earlier_configurations_are_unchanged():
    """Adding the baselines (and ``warmup``) kept every earlier key, hence every result file's runs."""
    assert OptimizerConfig.torch_adamw(3e-3, weight_decay=0.1).key() == (
        "adamw:lr=0.003,numerator=unity,gamma=0.0,beta=0.9,beta_a=0.999,eta=None,debias=True,normalize=True,"
        "nesterov=False,weight_decay=0.1,decoupled=True,eps=1e-08,schedule=cosine")
    assert OptimizerConfig.torch_sgd_nesterov(0.1).key() == (
        "sgd:lr=0.1,numerator=unity,gamma=0.0,beta=0.9,beta_a=0.999,eta=None,debias=True,normalize=True,"
        "nesterov=True,weight_decay=0.0,decoupled=True,eps=1e-08,schedule=cosine")
    assert OptimizerConfig.autosgm(0.1, "parcor-markov", "nag").key() == (
        "autosgm:lr=0.1,numerator=parcor-markov,gamma=nag,beta=0.9,beta_a=0.999,eta=None,debias=True,"
        "normalize=True,nesterov=False,weight_decay=0.0,decoupled=True,eps=1e-08,zero_tensor_start=0.01,"
        "schedule=cosine")
    assert "warmup" not in OptimizerConfig.torch_adamw(3e-3).to_dict()


@pytest.mark.parametrize("name", EXTERNAL)
def test_baseline_keys_are_stable_and_round_trip(name):
    cfg = baseline_config(name, 0.02, weight_decay=0.1)
    assert cfg.key().startswith(f"{name}:lr=0.02,") and "label" not in cfg.key()
    assert ("warmup=0.05" in cfg.key()) == (name == "schedulefree-adamw")
    assert cfg.key() == baseline_config(name, 0.02, weight_decay=0.1).key()
    back = OptimizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.key() == cfg.key()
    assert cfg.with_(label="other").key() == cfg.key()
    assert cfg.with_(lr=0.03).key() != cfg.key()
    assert cfg.display == EXTERNAL_OPTIMIZERS[name].label


def test_settings_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="warmup"):
        OptimizerConfig.torch_adamw(1e-3, warmup=0.1)
    with pytest.raises(ValueError, match="warmup"):
        OptimizerConfig.schedulefree_adamw(warmup=1.0)
    with pytest.raises(ValueError, match="schedule"):
        OptimizerConfig.schedulefree_adamw(schedule="cosine")
    with pytest.raises(ValueError, match="decoupled"):
        OptimizerConfig.lion(1e-3, decoupled=False)
    with pytest.raises(ValueError, match="name"):
        OptimizerConfig(name="adam")


def test_grid_adds_each_baseline_at_its_recommended_lr():
    configs = grid(numerators=["unity"], gammas=[0], lrs=[3e-3, 1e-2], weight_decay=0.1, baselines=BASELINES,
                   sgd_lrs=[0.1], baseline_lrs={"prodigy": [0.5, 1.0]})
    got = [(c.name, c.lr, c.weight_decay, c.schedule) for c in configs[2:]]
    assert got == [
        ("adamw", 3e-3, 0.1, "cosine"), ("adamw", 1e-2, 0.1, "cosine"),
        ("sgd", 0.1, 0.0, "cosine"),
        ("prodigy", 0.5, 0.1, "cosine"), ("prodigy", 1.0, 0.1, "cosine"),
        ("schedulefree-adamw", 2.5e-3, 0.1, "constant"),
        ("dadapt-adam", 1.0, 0.1, "cosine"),
        ("lion", 1e-3, pytest.approx(0.3), "cosine"), ("lion", pytest.approx(1e-2 / 3), pytest.approx(0.3), "cosine"),
    ]
    with pytest.raises(ValueError, match="not in the grid"):
        grid(baselines=["adamw"], baseline_lrs={"lion": [1e-3]})


def test_the_command_line_knows_every_baseline():
    assert BASELINE_NAMES == BASELINES


# --------------------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("name", EXTERNAL)
def test_run_takes_each_baseline_at_its_defaults(name, tmp_path):
    _needs(name)
    out = tmp_path / "b.jsonl"
    assert main(["run", "--task", "digits", "--preset", "tiny", "--optimizer", name, "--steps", "4",
                 "--out", str(out), "-q"]) == 0
    record = json.loads(out.read_text())
    assert record["optimizer"]["name"] == name and record["status"] == "ok"
    assert record["optimizer"]["lr"] == pytest.approx(recommended_lr(name, get_task_class("digits")))


def test_sweep_takes_the_baselines_and_their_lrs(tmp_path, capsys):
    _needs("lion")
    _needs("prodigy")
    out = tmp_path / "s.jsonl"
    assert main(["sweep", "--task", "digits", "--preset", "tiny", "--steps", "4", "--seeds", "1", "--numerators", "unity",
                 "--gammas", "0", "--baselines", "lion,prodigy", "--lr-for", "lion=2e-3", "--out", str(out),
                 "--no-plot", "-q"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["optimizer"]["name"], r["optimizer"]["lr"]) for r in records] == [
        ("autosgm", 3e-3), ("lion", 2e-3), ("prodigy", 1.0)]
    assert main(["sweep", "--task", "digits", "--lr-for", "adam=1e-3", "-q"]) == 2
    assert "neither a numerator nor a baseline" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- a missing package
@pytest.fixture
def without_prodigy(monkeypatch):
    """Make ``import prodigyopt`` fail as if the package were not installed."""
    monkeypatch.setitem(sys.modules, "prodigyopt", None)
    with pytest.raises(ImportError):
        importlib.import_module("prodigyopt")


def test_a_missing_package_is_a_clear_import_error(without_prodigy):
    with pytest.raises(MissingBaselineError) as info:
        external_optimizer_class("prodigy")
    message = str(info.value)
    assert isinstance(info.value, ImportError) and "\n" not in message
    assert "prodigyopt" in message and "pip install 'autosgm[baselines]'" in message
    with pytest.raises(MissingBaselineError, match=r"autosgm\[baselines\]"):
        OptimizerConfig.prodigy().build(torch.nn.Linear(2, 2), total_steps=4)


@pytest.mark.parametrize("argv", [
    ["run", "--task", "digits", "--preset", "tiny", "--optimizer", "prodigy"],
    ["sweep", "--task", "digits", "--preset", "tiny", "--baselines", "adamw,prodigy"],
    ["robustness", "--task", "digits", "--preset", "tiny"],
], ids=["run", "sweep", "robustness"])
def test_a_missing_package_stops_the_command_in_one_line(argv, without_prodigy, tmp_path, monkeypatch, capsys):
    import autosgm.experiments.runner as runner_mod
    import autosgm.experiments.tasks as tasks_mod

    def refuse(*args, **kwargs):
        raise AssertionError("the command went on to load data or train")

    monkeypatch.setattr(tasks_mod, "make_task", refuse)
    monkeypatch.setattr(runner_mod, "run", refuse)
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"autosgm {argv[0]}: error: the prodigy baseline needs")
    assert "pip install 'autosgm[baselines]'" in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written
