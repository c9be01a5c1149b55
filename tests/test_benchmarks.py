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


def test_bench_matrix_times_the_matrix_oracle_beside_torchs_muon(capsys):
    """The matrix benchmark's tiny set: every row, a ratio to torch's Muon, the state bytes, and the
    two dtype-swapping rows of ``--diagnose`` (whose patches are undone after each step)."""
    import torch

    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch ≥ 2.9")
    import autosgm.matrix

    cast, working = torch.Tensor.bfloat16, autosgm.matrix._working_dtype
    sys.path.insert(0, str(BENCH))
    try:
        import bench_matrix

        bench_matrix.main(["--sets", "tiny", "--reps", "1", "--diagnose"])
        with pytest.raises(SystemExit):
            bench_matrix.main(["--sets", "small"])  # no matrix in it
    finally:
        sys.path.remove(str(BENCH))
    assert torch.Tensor.bfloat16 is cast and autosgm.matrix._working_dtype is working
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    assert rows["torch Muon"].startswith("| torch Muon | single |") and "| 4.00 |" in rows["torch Muon"]
    assert "| 8.0" in rows["torch AdamW"]  # two moments and the step counters
    for name in ("AutoSGM muon", "AutoSGM matrix NS×5", "AutoSGM matrix NS×16", "AutoSGM matrix pole 0.9",
                 "torch Muon (float32 NS)", "AutoSGM muon (bfloat16 NS)"):  # fmt: skip
        assert "× torch Muon |" in rows[name], name
    assert "| tiny | AutoSGM muon / torch Muon |" in out


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
