"""The ``autosgm`` command: help, errors without tracebacks, and each subcommand at a tiny size."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from autosgm.cli import build_parser, main
from autosgm.experiments import data, read_results

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = ("demo", "run", "sweep", "robustness", "plot", "tasks", "windows", "analyze")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run in an empty directory with an empty cache, no data variables and no network."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("AUTOSGM_SHAKESPEARE", "AUTOSGM_CIFAR10", "AUTOSGM_WIKITEXT103", "AUTOSGM_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def no_network(url, dest, **kw):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(data, "download", no_network)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert f"\n    {command} " in text or f"\n    {command}\n" in text  # a long name has its help below
    assert "examples:" in text and "AUTOSGM_SHAKESPEARE" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: autosgm {command}" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: autosgm" in capsys.readouterr().out


def test_python_dash_m():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "autosgm", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: autosgm" in result.stdout and "sweep" in result.stdout


def test_missing_data_exits_2_without_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-corpus.txt"
    assert main(["run", "--task", "shakespeare-char", "--preset", "tiny", "--data", str(missing), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autosgm run: error: ") and str(missing) in err and "Traceback" not in err

    assert main(["sweep", "--task", "wikitext103", "--preset", "tiny", "-q"]) == 2
    err = capsys.readouterr().err
    assert "AUTOSGM_WIKITEXT103" in err and "Traceback" not in err


def test_offline_missing_data_names_the_variable_and_cache(tmp_path, capsys):
    assert main(["run", "--task", "shakespeare-char", "--preset", "tiny", "--offline", "-q"]) == 2
    err = capsys.readouterr().err
    assert "AUTOSGM_SHAKESPEARE" in err and str(tmp_path / "cache" / "autosgm" / "tinyshakespeare.txt") in err


def test_missing_data_from_a_subprocess(tmp_path):
    """The installed entry point path: one line on stderr, exit status 2."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "AUTOSGM_OFFLINE": "1"}
    env.pop("AUTOSGM_CIFAR10", None)
    result = subprocess.run([sys.executable, "-m", "autosgm", "run", "--task", "cifar10", "--preset", "tiny", "-q"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "AUTOSGM_CIFAR10" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--task", "digits", "--set", "hidden=wide"], "hidden expects an integer"),
        (["run", "--task", "digits", "--set", "colour=red"], "unknown setting 'colour'"),
        (["run", "--task", "digits", "--gamma", "0.95", "--beta", "0.9"], "low-pass"),
        (["sweep", "--task", "digits", "--numerators", "unity,parcor"], "unknown numerator 'parcor'"),
        (["sweep", "--task", "digits", "--baselines", "adam"], "baselines"),
        (["plot", "nothing.jsonl"], "no such result file"),
    ],
)
def test_bad_values_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["run", "--task", "digits", "--gamma", "fast"], ["sweep", "--task", "digits", "--seeds", "0"],
                                  ["run", "--task", "mnist"], ["sweep", "--task", "digits", "--lrs", "-1"]])
def test_argparse_rejects(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_seed_syntax():
    parser = build_parser()
    parse = lambda s: parser.parse_args(["sweep", "--task", "digits", "--seeds", s]).seeds  # noqa: E731
    assert parse("3") == [0, 1, 2] and parse("2-4") == [2, 3, 4] and parse("5,1") == [5, 1]
    args = parser.parse_args(["sweep", "--task", "digits", "--gammas", "0,nag,mls,0.3",
                              "--lr-for", "parcor-markov=3e-2,0.1", "--lr-for", "unity=3e-3"])
    assert args.gammas == [0.0, "nag", "mls", 0.3]
    assert dict(args.lr_for) == {"parcor-markov": [3e-2, 0.1], "unity": [3e-3]}


def test_demo_defaults_match_the_library():
    from autosgm.experiments.demo import DEFAULTS

    args = build_parser().parse_args(["demo"])
    assert {k: getattr(args, k) for k in DEFAULTS} == DEFAULTS


def test_tasks_command(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "shakespeare-char", "cifar10", "wikitext103"):
        assert f"{name}: " in out
    assert "preset cpu:" in out and "AUTOSGM_CIFAR10" in out


def test_run_appends_once(tmp_path, capsys):
    out = tmp_path / "one.jsonl"
    argv = ["run", "--task", "digits", "--preset", "tiny", "--numerator", "parcor-markov", "--gamma", "nag",
            "--seed", "2", "--out", str(out), "-q"]
    assert main(argv) == 0
    (line,) = out.read_text().splitlines()
    record = json.loads(line)
    assert record["optimizer"]["numerator"] == "parcor-markov" and record["optimizer"]["gamma"] == "nag"
    assert record["seed"] == 2 and record["optimizer"]["lr"] == 0.1  # the task's parcor rate
    assert "val loss" in capsys.readouterr().out
    assert main(argv) == 0
    assert "already in" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 1


def test_run_baselines_use_their_defaults(tmp_path):
    out = tmp_path / "b.jsonl"
    for name in ("sgd-nesterov", "autosgm-heavy-ball", "adamw"):
        assert main(["run", "--task", "digits", "--preset", "tiny", "--optimizer", name, "--steps", "4",
                     "--out", str(out), "-q"]) == 0
    sgd, hb, adamw = (json.loads(x)["optimizer"] for x in out.read_text().splitlines())
    assert (sgd["name"], sgd["nesterov"], sgd["lr"]) == ("sgd", True, 0.1)
    assert (hb["name"], hb["normalize"], hb["eta"], hb["lr"]) == ("autosgm", False, 1.0, 0.1)
    assert (adamw["name"], adamw["lr"]) == ("adamw", 3e-3)


def test_sweep_then_plot(tmp_path, capsys):
    out = tmp_path / "runs" / "digits.jsonl"
    argv = ["sweep", "--task", "digits", "--preset", "tiny", "--steps", "6", "--eval-every", "3", "--seeds", "2",
            "--gammas", "0,nag", "--lr-for", "parcor-markov=1e-2", "--out", str(out), "-q"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "12 runs done, 0 skipped" in text  # (2 numerators × 2 γ + AdamW + SGD-Nesterov) × 2 seeds
    lrs = {(r["optimizer"]["name"], r["optimizer"]["numerator"], r["optimizer"]["lr"]) for r in read_results(out)}
    assert lrs == {("autosgm", "unity", 3e-3), ("autosgm", "parcor-markov", 1e-2), ("adamw", "unity", 3e-3),
                   ("sgd", "unity", 0.1)}
    assert out.with_suffix(".png").is_file() and (out.parent / "digits-acc.png").is_file()
    assert main(argv) == 0
    assert "0 runs done, 12 skipped" in capsys.readouterr().out
    figure = tmp_path / "grid.pdf"
    assert main(["plot", str(out), "--out", str(figure), "--metric", "acc", "--markdown"]) == 0
    text = capsys.readouterr().out
    assert figure.is_file() and "| optimizer |" in text and "torch SGD-Nesterov" in text


def test_demo_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "8", "--seeds", "1", "-q"]) == 0
    text = capsys.readouterr().out
    for label in ("Adam point", "parcor-markov", "Nesterov point", "heavy-ball point", "torch AdamW"):
        assert label in text
    assert "AutoSGM at the Adam point vs torch AdamW" in text
    assert {p.name for p in out.iterdir()} == {"demo.png", "summary.md", "results.jsonl"}
    assert len((out / "results.jsonl").read_text().splitlines()) == 5
    assert main(["demo", "--out", str(out), "--steps", "8", "--seeds", "1", "-q"]) == 0
    assert "5 already in" in capsys.readouterr().out  # reused, not retrained
    assert main(["demo", "--out", str(out), "--steps", "8", "--seeds", "1", "--fresh", "-q"]) == 0
    assert "0 already in" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- output locations
@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a command gets as far as loading data or training."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command went on to load data or train")

    import autosgm.experiments.demo as demo_mod
    import autosgm.experiments.runner as runner_mod
    import autosgm.experiments.tasks as tasks_mod

    monkeypatch.setattr(tasks_mod, "make_task", refuse)
    monkeypatch.setattr(demo_mod, "make_task", refuse)
    monkeypatch.setattr(runner_mod, "run", refuse)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith(f"autosgm {command}: error: "), err
    return lines[0]


def test_sweep_figure_never_overwrites_the_results(tmp_path, capsys, no_training):
    out = tmp_path / "res.png"
    out.write_bytes(b"results\n")
    assert main(["sweep", "--task", "digits", "--preset", "tiny", "--out", str(out), "-q"]) == 2
    assert "same file" in _one_line_error(capsys, "sweep")
    assert out.read_bytes() == b"results\n" and {p.name for p in tmp_path.iterdir()} == {"res.png"}


def test_plot_never_overwrites_its_results(tmp_path, capsys):
    results = tmp_path / "runs.png"  # a result file with an image's name: the default figure path
    results.write_bytes(b'{"key": "a"}\n')
    assert main(["plot", str(results)]) == 2
    assert "same file" in _one_line_error(capsys, "plot")
    assert main(["plot", str(results), "--out", str(tmp_path / "." / "runs.png")]) == 2
    assert "same file" in _one_line_error(capsys, "plot")
    assert results.read_bytes() == b'{"key": "a"}\n'


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--task", "digits", "--preset", "tiny", "--out", "{dir}"], "is a directory"),
        (["sweep", "--task", "digits", "--preset", "tiny", "--out", "{file}/res.jsonl"], "not a directory"),
        (["sweep", "--task", "digits", "--preset", "tiny", "--out", "{dir}"], "is a directory"),
        (["demo", "--out", "{file}"], "not a directory"),
        (["run", "--task", "digits", "--preset", "tiny", "--out", "{file}/sub/res.jsonl"], "cannot be created"),
        (["windows", "{file}"], "not a directory"),
        (["analyze", "{file}"], "not a directory"),
    ],
)
def test_an_unwritable_output_is_found_before_any_work(argv, message, tmp_path, capsys, no_training):
    (tmp_path / "adir").mkdir()
    afile = tmp_path / "afile"
    afile.write_bytes(b"keep me")
    argv = [a.format(dir=tmp_path / "adir", file=afile) for a in argv]
    assert main(argv + (["-q"] if argv[0] in ("run", "sweep", "demo") else [])) == 2
    assert message in _one_line_error(capsys, argv[0])
    assert afile.read_bytes() == b"keep me" and list((tmp_path / "adir").iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses Linux permissions and /proc")
def test_a_read_only_output_is_found_before_any_work(tmp_path, capsys, no_training):
    """A directory where no file can be created: chmod 555 (or, as root whom permissions do not
    bind, /proc); a result file that cannot be written: chmod 444 (not as root)."""
    root = os.geteuid() == 0
    locked = Path("/proc") if root else tmp_path / "locked"
    results = tmp_path / "res.jsonl"
    results.write_bytes(b"")
    try:
        if not root:
            locked.mkdir()
            locked.chmod(0o555)
            results.chmod(0o444)
        assert main(["sweep", "--task", "digits", "--preset", "tiny", "--out", str(locked / "res.jsonl"), "-q"]) == 2
        assert "not writable" in _one_line_error(capsys, "sweep")
        if not root:
            assert main(["run", "--task", "digits", "--preset", "tiny", "--out", str(results), "-q"]) == 2
            assert "cannot be written" in _one_line_error(capsys, "run")
    finally:
        if not root:
            locked.chmod(0o755)
            results.chmod(0o644)


# --------------------------------------------------------------------------------------- bad input: one line, exit 2
def test_batch_size_larger_than_the_data(capsys):
    assert main(["run", "--task", "digits", "--preset", "tiny", "--batch-size", "5000", "-q"]) == 2
    assert "batch_size (5000) exceeds the number of training examples" in _one_line_error(capsys, "run")


def test_a_result_line_that_is_not_a_record(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'\xff\xfe{"key": "x"}\n{"key": "y"}\n')
    before = path.read_bytes()
    assert main(["plot", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(line.startswith("autosgm plot: ") for line in err.strip().splitlines())
    assert "not UTF-8" in err and "without 'task'" in err and "error: " in err
    assert path.read_bytes() == before


def test_a_binary_data_file_is_named(tmp_path, capsys):
    corpus = tmp_path / "corpus.bin"
    corpus.write_bytes(bytes(range(256)) * 8)
    assert main(["run", "--task", "shakespeare-char", "--preset", "tiny", "--data", str(corpus), "-q"]) == 2
    assert f"{corpus} is not UTF-8 text" in _one_line_error(capsys, "run")


@pytest.mark.parametrize("content", [b"not a pickle at all", pickle.dumps([1, 2, 3])], ids=["binary", "list"])
def test_a_cifar_batch_that_is_not_one_is_named(content, tmp_path, capsys):
    from test_experiments_tasks import write_cifar

    directory = write_cifar(tmp_path)
    (directory / "data_batch_2").write_bytes(content)
    assert main(["run", "--task", "cifar10", "--preset", "tiny", "--data", str(tmp_path), "-q"]) == 2
    assert f"{directory / 'data_batch_2'} is not a CIFAR-10 python batch" in _one_line_error(capsys, "run")


def test_run_defaults_each_numerator_to_its_own_learning_rate():
    """Without --lr a correlation numerator runs at the task's parcor rate, not at Adam's."""
    from autosgm.cli import _optimizer_from_args
    from autosgm.experiments.tasks import get_task_class

    digits = get_task_class("digits")
    parse = build_parser().parse_args
    cfg = _optimizer_from_args(parse(["run", "--task", "digits", "--numerator", "parcor-markov"]), digits)
    assert cfg.lr == digits.default_parcor_lr
    cfg = _optimizer_from_args(parse(["run", "--task", "digits"]), digits)
    assert cfg.lr == digits.default_lr
    cfg = _optimizer_from_args(parse(["run", "--task", "digits", "--numerator", "corr", "--lr", "0.02"]), digits)
    assert cfg.lr == 0.02
