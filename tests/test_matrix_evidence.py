"""The runner compares the matrix oracle with Muon: AutoSGM points with ``oracle="matrix"``, the ``muon``
baseline (torch.optim.Muon for the weight matrices, torch.optim.AdamW for the rest), the ``--oracles``
option of ``robustness`` and ``sweep`` — and every earlier key and default run list unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from autosgm.cli import main
from autosgm.experiments import OptimizerConfig, grid, make_task, recommended_lr, run
from autosgm.experiments.optimizers import (
    ALL_BASELINES,
    BASELINES,
    MUON_LR_SCALE,
    MissingBaselineError,
    MuonAdamW,
    baseline_config,
    recommended_weight_decay,
)
from autosgm.experiments.robustness import robustness_grid, run_robustness
from autosgm.experiments.tasks import get_task_class
from autosgm.matrix import gets_matrix_oracle
from autosgm.optimizer import DEFAULTS

DIGITS_STUDY = Path(__file__).resolve().parents[1] / "docs" / "results" / "robustness-digits" / "results.jsonl"


@pytest.fixture(scope="module")
def digits():
    return make_task("digits", preset="tiny", overrides={"steps": 6, "eval_every": 3})


def _digest(configs) -> tuple[int, str]:
    keys = [c.key() for c in configs]
    return len(keys), hashlib.sha256("\n".join(keys).encode()).hexdigest()


# --------------------------------------------------------------------------------------- keys and defaults
def test_the_key_of_a_recorded_element_wise_run_is_unchanged():
    """The first run of the committed digits study: its key, computed before the oracle fields existed."""
    record = json.loads(DIGITS_STUDY.read_text().splitlines()[0])
    cfg = OptimizerConfig.from_dict(record["optimizer"])
    assert cfg.key() == record["optimizer_key"] == (
        "autosgm:lr=0.0001687,numerator=unity,gamma=0.0,beta=0.9,beta_a=0.999,eta=None,debias=True,normalize=True,"
        "nesterov=False,weight_decay=0.0,decoupled=True,eps=1e-08,schedule=cosine")
    assert cfg.to_dict() == record["optimizer"]  # records read (and group in reports) as before


def test_every_key_of_the_committed_study_is_reproduced():
    records = [json.loads(line) for line in DIGITS_STUDY.read_text().splitlines()]
    for record in records:
        cfg = OptimizerConfig.from_dict(record["optimizer"])
        assert cfg.key() == record["optimizer_key"] and cfg.to_dict() == record["optimizer"]


def test_the_default_commands_plan_the_same_runs():
    """Digests of the default study's and sweep's configuration keys, taken before ``--oracles``/``muon``."""
    assert _digest(robustness_grid(get_task_class("digits"))) == (
        132, "b6c9262ff418ef3ece7484ab14e243344be534c34343ae8e61297301fa2e321c")
    assert _digest(robustness_grid(get_task_class("shakespeare-char"))) == (
        132, "b82e37266c247655eac4133fe091582ec7c7a1e7377598f8a04fa85c8b2e64df")
    assert _digest(grid(lrs=[3e-3])) == (8, "86e77b1b04f6fead5728cf9471ac78acc9d8d1e2e0c74aa3a35033feceabc9f4")
    assert "muon" not in BASELINES and "muon" in ALL_BASELINES


def test_the_dry_run_of_the_default_command_finds_every_committed_run(capsys):
    assert main(["robustness", "--task", "digits", "--seeds", "3", "--out", str(DIGITS_STUDY.parent),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 optimizers × 11 learning rates × 3 seeds = 396 runs, 396 already in" in out and "0 to run" in out


def test_matrix_fields_enter_the_key_only_where_they_act():
    element = OptimizerConfig.autosgm(3e-3, "unity", "nag")
    matrix = element.with_(oracle="matrix", matrix_lr_scale=MUON_LR_SCALE)
    assert "oracle" not in element.key() and "oracle" not in element.to_dict()
    assert matrix.key() == element.key() + (f",oracle=matrix,matrix_method={DEFAULTS['matrix_method']},"
                                            f"matrix_pole={DEFAULTS['matrix_pole']!r},matrix_lr_scale={MUON_LR_SCALE}")
    assert OptimizerConfig.from_dict(json.loads(json.dumps(matrix.to_dict()))) == matrix
    assert matrix.display == "AutoSGM unity γ=0.474 (nag) (matrix)"
    assert matrix.with_(matrix_pole=0.9).display == "AutoSGM unity γ=0.474 (nag) (matrix, pole 0.9)"
    muon = baseline_config("muon", 3e-3, weight_decay=0.1)
    assert muon.key().startswith("muon:lr=0.003,") and muon.key().endswith(f",matrix_lr_scale={MUON_LR_SCALE}")
    assert "oracle" not in muon.key() and muon.display == "torch Muon + AdamW"


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "adamw", "oracle": "matrix"}, "oracle applies to autosgm"),
    ({"matrix_pole": 0.5}, "oracle='matrix' only"),
    ({"name": "adamw", "matrix_lr_scale": "original"}, "matrix_lr_scale"),
    ({"oracle": "matrix", "numerator": "corr"}, "corr"),
    ({"oracle": "matrix", "normalize": False}, "normalize"),
    ({"oracle": "matrix", "matrix_method": "muon-quintic", "matrix_pole": 0.5}, "muon-quintic"),
    ({"oracle": "tensor"}, "oracle must be"),
    ({"oracle": "matrix", "matrix_method": "svd"}, "matrix_method"),
])
def test_matrix_settings_that_do_not_apply_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**kwargs)


def test_recommended_settings_of_muon():
    digits = get_task_class("digits")
    assert recommended_lr("muon", digits) == recommended_lr("adamw", digits)
    assert recommended_weight_decay("muon", 0.1) == 0.1


# --------------------------------------------------------------------------------------- the muon baseline
@pytest.mark.torch_muon
def test_muon_steps_the_matrices_and_adamw_the_rest(digits):
    cfg = baseline_config("muon", recommended_lr("muon", digits), weight_decay=0.1)
    torch.manual_seed(0)
    model = digits.make_model()
    opt, scheduler = cfg.build(model, total_steps=6)
    assert isinstance(opt, MuonAdamW) and isinstance(opt.muon, torch.optim.Muon)
    assert isinstance(opt.adamw, torch.optim.AdamW)
    matrices = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    others = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    for p in model.parameters():
        assert (id(p) in matrices) == (p.ndim == 2 and gets_matrix_oracle(p)) != (id(p) in others)
    assert matrices and others
    assert all(g["adjust_lr_fn"] == MUON_LR_SCALE for g in opt.muon.param_groups)
    assert {g["weight_decay"] for g in opt.muon.param_groups} == {0.1}
    record = run(digits, cfg, seed=0, progress=False)
    assert record["status"] == "ok" and record["unchanged_tensors"] == [] and record["label"] == "torch Muon + AdamW"
    assert record["final"]["train_loss"] < record["curves"]["train_loss"][0]
    # the window drives both parts: the same dicts
    x, y = digits.sampler(torch.Generator().manual_seed(0))()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        scheduler.step()
    lrs = {g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups}
    assert len(lrs) == 1 and lrs.pop() < cfg.lr
    assert all("momentum_buffer" in opt.muon.state[p] for g in opt.muon.param_groups for p in g["params"])
    assert all("exp_avg_sq" in opt.adamw.state[p] for g in opt.adamw.param_groups for p in g["params"])
    twin = MuonAdamW(model.parameters(), lr=cfg.lr)
    twin.load_state_dict(opt.state_dict())
    assert twin.state_dict()["muon"]["state"].keys() == opt.state_dict()["muon"]["state"].keys()


def test_a_torch_without_muon_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(MissingBaselineError) as info:
        baseline_config("muon", 1e-3).build(torch.nn.Linear(8, 8), total_steps=4)
    message = str(info.value)
    assert "\n" not in message and "torch.optim.Muon (torch >= 2.9)" in message
    monkeypatch.chdir(tmp_path)
    assert main(["robustness", "--task", "digits", "--preset", "tiny", "--numerators", "none", "--baselines", "muon",
                 "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the muon baseline needs torch.optim.Muon (torch >= 2.9)" in err[0]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------- matrix rows
def test_the_study_adds_matrix_rows_after_the_element_wise_ones():
    digits = get_task_class("digits")
    element = robustness_grid(digits, numerators=["unity"], gammas=["nag"], baselines=["adamw"], points=3)
    both = robustness_grid(digits, numerators=["unity"], gammas=["nag"], baselines=["adamw", "muon"],
                           oracles=["element", "matrix"], points=3)
    assert [c.key() for c in both[:3]] == [c.key() for c in element[:3]]
    assert [(c.oracle, c.matrix_lr_scale, c.lr) for c in both[3:6]] == [
        ("matrix", MUON_LR_SCALE, c.lr) for c in element[:3]]
    assert [c.name for c in both[6:]] == ["adamw"] * 3 + ["muon"] * 3
    with pytest.raises(ValueError, match="oracles"):
        robustness_grid(digits, oracles=["tensor"])
    with pytest.raises(ValueError, match="corr"):
        robustness_grid(digits, numerators=["corr"], oracles=["matrix"])
    sweep = grid(numerators=["unity"], gammas=[0], baselines=["muon"], oracles=["element", "matrix"], lrs=[1e-3])
    assert [(c.name, c.oracle) for c in sweep] == [("autosgm", "element"), ("autosgm", "matrix"), ("muon", "element")]


@pytest.mark.torch_muon
def test_matrix_rows_run_and_are_reported_apart(digits, tmp_path):
    configs = robustness_grid(digits, numerators=["unity"], gammas=["nag"], baselines=[], points=2, span=10)
    first = run_robustness(digits, configs, [0], tmp_path, progress=False, log=None)
    matrix = robustness_grid(digits, numerators=["unity"], gammas=["nag"], baselines=["muon"], oracles=["matrix"],
                             points=2, span=10)
    opt, _ = matrix[0].build(digits.make_model(), total_steps=6)
    assert {g["oracle"] for g in opt.param_groups} == {"matrix"}
    assert {g["matrix_lr_scale"] for g in opt.param_groups} == {MUON_LR_SCALE}
    added = run_robustness(digits, matrix, [0], tmp_path, progress=False, log=None, report_all=True)
    assert len(first.summary.ran) == 2 and len(added.summary.ran) == 4 and added.summary.skipped == []
    assert [p.label for p in added.profiles] == [
        "AutoSGM unity γ=0.474 (nag)", "AutoSGM unity γ=0.474 (nag) (matrix)", "torch Muon + AdamW"]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" and r["unchanged_tensors"] == [] for r in records)
    table = (tmp_path / "table.md").read_text()
    assert "| AutoSGM unity γ=0.474 (nag) (matrix) |" in table and "| AutoSGM unity γ=0.474 (nag) |" in table
    only = run_robustness(digits, matrix, [0], tmp_path, progress=False, log=None)  # without report_all: its rows
    assert len(only.summary.skipped) == 4 and len(only.profiles) == 2


@pytest.mark.torch_muon
def test_the_command_line_takes_oracles_and_muon(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["robustness", "--task", "digits", "--preset", "tiny", "--steps", "3", "--numerators", "unity",
            "--gammas", "0", "--oracles", "matrix", "--baselines", "muon", "--points", "2", "--seeds", "1", "-q"]
    assert main(argv + ["--dry-run"]) == 0
    assert "2 optimizers × 2 learning rates × 1 seeds = 4 runs, 0 already in" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "AutoSGM unity γ=0 (matrix)" in out and "torch Muon + AdamW" in out and "4 runs done" in out
    out_file = tmp_path / "s.jsonl"
    assert main(["sweep", "--task", "digits", "--preset", "tiny", "--steps", "3", "--seeds", "1", "--numerators",
                 "unity", "--gammas", "0", "--oracles", "element,matrix", "--baselines", "muon", "--out",
                 str(out_file), "-q"]) == 0
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["label"] for r in records] == ["AutoSGM unity γ=0", "AutoSGM unity γ=0 (matrix)", "torch Muon + AdamW"]
    assert (tmp_path / "s.png").is_file()
    assert main(["run", "--task", "digits", "--preset", "tiny", "--steps", "2", "--optimizer", "adamw",
                 "--oracle", "matrix", "-q"]) == 2
    assert "--oracle applies to --optimizer autosgm" in capsys.readouterr().err
