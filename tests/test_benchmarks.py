"""The benchmark scripts run, and the floor chain of ``floor_parcor.py`` is AutoSGM's step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_step
        import floor_parcor

        yield bench_step, floor_parcor
    finally:
        sys.path.remove(str(BENCH))


def test_floor_chain_follows_the_reference_path(bench):
    _, floor = bench
    assert floor.check() < 1e-12


def test_bench_step_prints_table_and_targets(bench, capsys):
    bench_step, _ = bench
    bench_step.main(["--sets", "mlp", "--paths", "foreach", "--configs", "adam", "--reps", "2"])
    out = capsys.readouterr().out
    assert "| AutoSGM adam | foreach |" in out and "× torch Adam" in out
    assert "| mlp | AutoSGM adam foreach / torch Adam foreach |" in out


def test_floor_script_adds_its_row(bench, capsys):
    _, floor = bench
    floor.main(["--sets", "mlp", "--configs", "adam", "--reps", "2"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| floor parcor-chebyshev | foreach |"))
    assert "× torch Adam | 16.00 |" in row  # a ratio, and the state of a parcor numerator


def test_bench_step_rejects_unknown_names(bench):
    bench_step, _ = bench
    with pytest.raises(SystemExit):
        bench_step.main(["--sets", "nope"])


def test_bench_revision_times_this_tree_beside_a_git_revision(capsys):
    import shutil
    import subprocess

    root = BENCH.parent
    if shutil.which("git") is None or subprocess.run(["git", "rev-parse", "HEAD"], cwd=root,
                                                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("needs the git repository")
    sys.path.insert(0, str(BENCH))
    try:
        import bench_revision

        bench_revision.main(["HEAD", "--sets", "mlp", "--paths", "foreach", "--configs", "parcor-markov",
                             "--reps", "2"])  # fmt: skip
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("autosgm_at_rev", None)
    out = capsys.readouterr().out
    assert "| parcor-markov foreach |" in out and "state bytes per element equal to HEAD's: True" in out
