"""Optimizer configurations, the training loop, result files and resumable sweeps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from autosgm.experiments import (
    OptimizerConfig,
    completed_keys,
    grid,
    make_task,
    parse_gamma,
    read_results,
    resolve_gamma,
    run,
    run_key,
    run_sweep,
)
from autosgm.experiments.optimizers import param_groups
from autosgm.experiments.results import append_result


@pytest.fixture(scope="module")
def digits():
    """A tiny digits task, loaded once for the module."""
    return make_task("digits", preset="tiny", overrides={"steps": 12, "eval_every": 6, "hidden": 16})


# --------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_named_gammas(beta):
    assert resolve_gamma("nag", beta) == pytest.approx(beta / (1 + beta), abs=0)
    assert resolve_gamma("mls", beta) == pytest.approx(1 - math.sqrt(2 * (1 - beta)), abs=0)
    assert resolve_gamma("0", beta) == 0.0 == resolve_gamma(0, beta)
    assert resolve_gamma("0.25", beta) == 0.25


def test_mls_at_0p9_is_the_documented_value():
    assert resolve_gamma("mls", 0.9) == pytest.approx(0.5528, abs=1e-4)
    assert resolve_gamma("NAG", 0.9) == pytest.approx(0.473684, abs=1e-6)


@pytest.mark.parametrize("bad", ["nesterov", "", "nan", "inf"])
def test_bad_gamma_is_refused(bad):
    with pytest.raises(ValueError, match="gamma"):
        parse_gamma(bad)
    with pytest.raises(TypeError, match="gamma"):
        parse_gamma(True)


def test_config_key_is_stable_and_ignores_the_label():
    a = OptimizerConfig.autosgm(1e-3, "parcor-markov", "nag", label="mine")
    b = OptimizerConfig(name="autosgm", lr=0.001, numerator="parcor-markov", gamma="NAG")
    assert a.key() == b.key() and a != b  # equal keys, different labels
    assert a.key() == (
        "autosgm:lr=0.001,numerator=parcor-markov,gamma=nag,beta=0.9,beta_a=0.999,eta=None,debias=True,"
        "normalize=True,nesterov=False,weight_decay=0.0,decoupled=True,eps=1e-08,zero_tensor_start=0.01,"
        "schedule=cosine"
    )  # (c₀ is in a parcor key since 0.3: runs from before the zero-tensor remedy are not taken for new ones)
    assert OptimizerConfig.autosgm(1e-3, gamma="0").key() == OptimizerConfig.autosgm(1e-3, gamma=0).key()
    assert OptimizerConfig.autosgm(1e-3, gamma="nag").key() != OptimizerConfig.autosgm(1e-3, gamma=0.9 / 1.9).key()
    assert OptimizerConfig.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    with pytest.raises(ValueError, match="unknown optimizer config fields"):
        OptimizerConfig.from_dict({**a.to_dict(), "momentum": 0.9})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "adam"}, "name"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"numerator": "parcor"}, "numerator"),
        ({"beta": 1.0}, "beta"),
        ({"beta": 0.5, "gamma": 0.6}, "low-pass"),
        ({"eta": 0.0}, "eta"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"schedule": "linear"}, "schedule"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**kwargs)


def test_design_point_presets():
    nag = OptimizerConfig.nesterov_point(0.1, beta=0.9)
    assert (nag.gamma_value, nag.eta, nag.debias, nag.normalize) == (pytest.approx(0.9 / 1.9), 1.9, False, False)
    assert not nag.decoupled  # coupled weight decay, as torch SGD
    hb = OptimizerConfig.heavy_ball_point(0.1)
    assert (hb.gamma_value, hb.eta, hb.debias, hb.normalize) == (0.0, 1.0, False, False)
    assert nag.is_baseline and hb.is_baseline and OptimizerConfig.torch_adamw(1e-3).is_baseline
    assert not OptimizerConfig.autosgm(1e-3).is_baseline
    assert OptimizerConfig.autosgm(1e-3, "corr", "mls").display == "AutoSGM corr γ=0.553 (mls)"


def test_param_groups_decay_only_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4


# --------------------------------------------------------------------------------------- runs
def test_run_is_deterministic_per_seed(digits):
    cfg = OptimizerConfig.autosgm(3e-3, "parcor-markov", "nag")
    a = run(digits, cfg, seed=3, progress=False)
    b = run(digits, cfg, seed=3, progress=False)
    c = run(digits, cfg, seed=4, progress=False)
    assert a["curves"]["val_loss"] == b["curves"]["val_loss"]
    assert a["curves"]["train_batch_loss"] == b["curves"]["train_batch_loss"]
    assert a["curves"]["val_loss"] != c["curves"]["val_loss"]
    assert a["key"] == b["key"] != c["key"]


def test_record_fields(digits):
    cfg = OptimizerConfig.autosgm(3e-3, gamma="mls")
    record = run(digits, cfg, seed=0, progress=False)
    assert record["key"] == run_key("digits", digits.settings_dict(), cfg.key(), 0)
    assert record["optimizer"] == cfg.to_dict() and record["optimizer_key"] == cfg.key()
    assert record["gamma_value"] == pytest.approx(1 - math.sqrt(0.2))
    assert set(record["versions"]) == {"python", "torch", "autosgm"}
    assert record["versions"]["torch"] == torch.__version__
    assert record["settings"]["steps"] == 12 and record["device"] == "cpu"
    assert record["wall_time_s"] > 0 and record["steps_done"] == 12
    assert record["curves"]["step"] == [0, 6, 12]
    assert record["final"]["val_acc"] == record["curves"]["val_acc"][-1]
    json.dumps(record)  # JSON-ready


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_adam_point_equals_torch_adamw(digits, schedule):
    """AutoSGM at (unity, γ = 0) with decoupled decay is AdamW, window included (WindowLR for torch)."""
    ours = run(digits, OptimizerConfig.autosgm(3e-3, weight_decay=0.05, schedule=schedule), seed=0, progress=False)
    ref = run(digits, OptimizerConfig.torch_adamw(3e-3, weight_decay=0.05, schedule=schedule), seed=0, progress=False)
    for column in ("train_batch_loss", "train_loss", "val_loss"):
        assert ours["curves"][column] == pytest.approx(ref["curves"][column], rel=1e-5, abs=1e-6)


def test_nesterov_point_equals_torch_sgd_nesterov(digits):
    ours = run(digits, OptimizerConfig.nesterov_point(0.1, weight_decay=1e-3), seed=1, progress=False)
    ref = run(digits, OptimizerConfig.torch_sgd_nesterov(0.1, weight_decay=1e-3), seed=1, progress=False)
    assert ours["curves"]["val_loss"] == pytest.approx(ref["curves"]["val_loss"], rel=1e-5, abs=1e-6)


def test_divergence_is_recorded_not_raised(digits):
    # a step of 1e30 overflows float32: the loss becomes inf/NaN in the first few steps
    record = run(digits, OptimizerConfig(name="sgd", lr=1e30, schedule="constant"), seed=0, progress=False)
    assert record["status"] == "diverged"
    assert record["steps_done"] < digits.settings.steps
    assert record["curves"]["step"] == [0]  # only the evaluation before training


def test_bad_seed(digits):
    with pytest.raises(ValueError, match="seed"):
        run(digits, OptimizerConfig.autosgm(1e-3), seed=-1, progress=False)


# --------------------------------------------------------------------------------------- sweeps
def test_grid_contents():
    configs = grid(numerators=["unity", "parcor-markov"], gammas=[0, "nag"], lrs=[1e-3, 3e-3], sgd_lrs=[0.1])
    assert len(configs) == 2 * 2 * 2 + 2 + 1
    autosgm = [c for c in configs if c.name == "autosgm"]
    assert {(c.numerator, c.gamma, c.lr) for c in autosgm} == {
        (n, g, lr) for n in ("unity", "parcor-markov") for g in (0.0, "nag") for lr in (1e-3, 3e-3)
    }
    assert [c.name for c in configs[-3:]] == ["adamw", "adamw", "sgd"] and configs[-1].nesterov
    assert len(grid(numerators=["unity"], gammas=[0], baselines=[])) == 1
    own = grid(numerators=["unity", "corr"], gammas=[0, "nag"], lrs=[1e-3], numerator_lrs={"corr": [1e-2, 3e-2]},
               baselines=["adamw"])
    assert [(c.name, c.numerator, c.lr) for c in own[::2]] == [
        ("autosgm", "unity", 1e-3), ("autosgm", "corr", 1e-2), ("autosgm", "corr", 3e-2), ("adamw", "unity", 1e-3)
    ]
    with pytest.raises(ValueError, match="not in the grid"):
        grid(numerators=["unity"], numerator_lrs={"corr": [1e-2]})
    with pytest.raises(ValueError, match="duplicate"):
        grid(numerators=["unity"], gammas=[0, "0"], baselines=[])
    with pytest.raises(ValueError, match="baselines"):
        grid(baselines=["adam"])


def test_sweep_resumes(digits, tmp_path):
    out = tmp_path / "runs" / "digits.jsonl"
    configs = grid(numerators=["unity", "parcor-markov"], gammas=[0], lrs=[3e-3], baselines=["adamw"])
    first = run_sweep(digits, configs, range(2), out, progress=False, log=None)
    assert len(first.ran) == 6 and first.skipped == []
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and len(completed_keys(out)) == 6

    again = run_sweep(digits, configs, range(2), out, progress=False, log=None)
    assert again.ran == [] and len(again.skipped) == 6
    assert out.read_text().splitlines() == lines  # nothing re-ran, nothing appended

    removed = json.loads(lines[3])
    out.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    third = run_sweep(digits, configs, range(2), out, progress=False, log=None)
    assert third.ran == [removed["key"]] and len(third.skipped) == 5
    redo = [r for r in read_results(out) if r["key"] == removed["key"]]
    assert len(redo) == 1 and redo[0]["curves"]["val_loss"] == removed["curves"]["val_loss"]  # same seed: same run

    more = run_sweep(digits, configs, range(3), out, progress=False, log=None)  # one more seed
    assert len(more.ran) == 3 and {r["seed"] for r in read_results(out)} == {0, 1, 2}


def test_sweep_reruns_a_line_cut_short(digits, tmp_path):
    out = tmp_path / "r.jsonl"
    configs = grid(numerators=["unity"], gammas=[0, "nag"], lrs=[3e-3], baselines=[])
    run_sweep(digits, configs, [0], out, progress=False, log=None)
    lines = out.read_text().splitlines()
    cut = json.loads(lines[1])["key"]
    out.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a crash while writing line 2
    with pytest.warns(RuntimeWarning, match="not valid JSON"):
        summary = run_sweep(digits, configs, [0], out, progress=False, log=None)
    assert summary.ran == [cut]
    with pytest.warns(RuntimeWarning):
        records = read_results(out)
    assert [r["key"] for r in records] == [json.loads(lines[0])["key"], cut]


def _record(key: str) -> dict:
    """A minimal record: the fields every record has."""
    return {"key": key, "task": "digits", "seed": 0, "optimizer": {}, "optimizer_key": "k", "curves": {"step": []}}


def test_append_result_starts_a_fresh_line(tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text(json.dumps(_record("a")))  # no trailing newline
    append_result(out, _record("b"))
    assert [r["key"] for r in read_results(out)] == ["a", "b"]
    assert read_results(tmp_path / "missing.jsonl") == []


# --------------------------------------------------------------------------------------- one file, several writers
def _sweep_worker(out: str, seeds: list[int], start, done) -> None:
    """A second process running the same sweep on the same file (started together with the test's)."""
    torch.set_num_threads(1)
    task = make_task("digits", preset="tiny", overrides={"steps": 12, "eval_every": 6, "hidden": 16})
    configs = grid(numerators=["unity", "parcor-markov"], gammas=[0, "nag"], lrs=[3e-3], baselines=["adamw"])
    start.wait()
    summary = run_sweep(task, configs, seeds, out, progress=False, log=None)
    done.put(len(summary.ran))


def test_two_sweeps_on_one_file_share_its_runs(digits, tmp_path):
    """Every run is recorded once: a run claimed by the other sweep is left to it."""
    import multiprocessing

    out = tmp_path / "shared.jsonl"
    configs = grid(numerators=["unity", "parcor-markov"], gammas=[0, "nag"], lrs=[3e-3], baselines=["adamw"])
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Event(), ctx.Queue()
    other = ctx.Process(target=_sweep_worker, args=(str(out), [0, 1], start, done))
    other.start()
    start.set()
    mine = run_sweep(digits, configs, [0, 1], out, progress=False, log=None)
    other.join(timeout=300)
    theirs = done.get(timeout=10)
    keys = [json.loads(line)["key"] for line in out.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 10 == len(mine.ran) + theirs
    assert not list(tmp_path.glob(".*.claim"))  # the claims are gone


def test_a_claimed_run_is_left_to_its_claimant(digits, tmp_path):
    from autosgm.experiments import claim_run

    out = tmp_path / "r.jsonl"
    configs = grid(numerators=["unity"], gammas=[0, "nag"], lrs=[3e-3], baselines=[])
    key = run_key(digits.name, digits.settings_dict(), configs[0].key(), 0)
    with claim_run(out, key) as held:
        assert held
        summary = run_sweep(digits, configs, [0], out, progress=False, log=None)
        with claim_run(out, key) as again:
            assert not again  # (a claim excludes every other claimant, in this process too)
    assert summary.busy == [key] and len(summary.ran) == 1
    assert key not in completed_keys(out)
    assert run_sweep(digits, configs, [0], out, progress=False, log=None).ran == [key]  # released: run now


def test_a_run_finished_by_another_process_is_not_repeated(digits, tmp_path, monkeypatch):
    """Between the sweep's first look at the file and a run, another process may have recorded it."""
    import autosgm.experiments.sweep as sweep_mod

    out = tmp_path / "r.jsonl"
    configs = grid(numerators=["unity"], gammas=[0], lrs=[3e-3], baselines=[])
    record = run(digits, configs[0], 0, progress=False)
    real_claim = sweep_mod.claim_run

    def claim_after_the_other_finished(path, key):
        append_result(path, record)  # the other process finishes just before this one claims
        return real_claim(path, key)

    monkeypatch.setattr(sweep_mod, "claim_run", claim_after_the_other_finished)
    summary = run_sweep(digits, configs, [0], out, progress=False, log=None)
    assert summary.ran == [] and summary.skipped == [record["key"]]
    assert len(out.read_text().splitlines()) == 1


def test_readers_keep_one_record_per_run(digits, tmp_path):
    """A file that holds a run twice (e.g. two old sweeps) counts it once, with a warning."""
    from autosgm.experiments.report import summarize

    out = tmp_path / "dup.jsonl"
    configs = grid(numerators=["unity"], gammas=[0], lrs=[3e-3], baselines=[])
    run_sweep(digits, configs, [0, 1, 2], out, progress=False, log=None)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines + lines) + "\n")  # every run twice
    with pytest.warns(RuntimeWarning, match=r"dropping 3 duplicate record\(s\).*line 4, 5, 6"):
        records = read_results(out)
    assert [r["key"] for r in records] == [json.loads(line)["key"] for line in lines]
    (row,) = summarize(records)
    assert row["runs"] == 3 and row["val_loss"][2] == 3


def test_a_result_line_that_is_not_utf8_or_lacks_fields_is_skipped(tmp_path):
    out = tmp_path / "x.jsonl"
    good = _record("good")
    out.write_bytes(b"\xff\xfe\n" + json.dumps({"key": "k"}).encode() + b"\n" + json.dumps(good).encode() + b"\n")
    with pytest.warns(RuntimeWarning) as caught:
        assert read_results(out) == [good]
    messages = [str(w.message) for w in caught]
    assert any("x.jsonl:1: skipping a line that is not UTF-8" in m for m in messages)
    assert any("x.jsonl:2: skipping a line without 'task'" in m for m in messages)


def test_the_result_file_is_checked_before_the_first_run(digits, tmp_path):
    from autosgm._files import OutputPathError

    configs = grid(numerators=["unity"], gammas=[0], lrs=[3e-3], baselines=[])
    with pytest.raises(OutputPathError, match="is a directory"):
        run_sweep(digits, configs, [0], tmp_path, progress=False, log=None)
