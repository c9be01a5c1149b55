"""Step time of this tree against another revision of the package, in one interleaved run.

A change that should not cost anything per step (or a refactoring that must not slow the step)
is checked here: the chosen AutoSGM configurations of ``bench_step.py`` are built from this tree
and from ``REV`` (the package exported from git into a temporary directory and imported under
another name), and every one of them is timed in the same interleaved repetitions, beside torch's
Adam. The table gives the medians and the ratio this tree / ``REV``::

    PYTHONPATH=src python benchmarks/bench_revision.py HEAD~1 --threads 1 \\
        --configs parcor-markov,parcor-chebyshev --paths foreach,fused
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load_revision(rev: str, into: Path):
    """The ``autosgm`` package of git revision ``rev``, imported as ``autosgm_at_rev``."""
    archive = subprocess.run(["git", "archive", rev, "src/autosgm"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    pkg_dir = into / "src" / "autosgm"
    spec = importlib.util.spec_from_file_location("autosgm_at_rev", pkg_dir / "__init__.py",
                                                  submodule_search_locations=[str(pkg_dir)])  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules["autosgm_at_rev"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="git revision to compare with (e.g. HEAD~1, a commit, a tag)")
    parser.add_argument("--configs", default="parcor-markov,parcor-chebyshev",
                        help="comma-separated configurations of bench_step.py")  # fmt: skip
    parser.add_argument("--paths", default="foreach,fused", help="comma-separated paths: single, foreach, fused")
    parser.add_argument("--sets", default="mlp,transformer,small", help="comma-separated parameter sets")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default: bench_step's per set)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    paths = [p for p in args.paths.split(",") if p]
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_step.prime_allocator()
    with tempfile.TemporaryDirectory(prefix="bench_revision_") as tmp:
        base = load_revision(args.rev, Path(tmp))
        here, there = bench_step._autosgm_configs(), bench_step._autosgm_configs(base)
        extra = {}
        for c in configs:
            for p in paths:
                kw = bench_step.PATH_KWARGS[p]
                extra[f"{c} {p}"] = (lambda ps, make=here[c], kw=kw: make(ps, **kw), "torch Adam")
                extra[f"{c} {p} @{args.rev}"] = (lambda ps, make=there[c], kw=kw: make(ps, **kw), "torch Adam")
        run_args = argparse.Namespace(device="cpu", paths=["foreach"], configs=[], quick=False)
        print(f"# bench_revision: this tree against {args.rev}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print("command: python benchmarks/bench_revision.py " + " ".join(argv if argv is not None else sys.argv[1:]))
        for s in [s for s in args.sets.split(",") if s]:
            reps = args.reps or {"mlp": 60, "transformer": 12, "small": 30}[s]
            entries = bench_step.run_set(s, bench_step.SETS[s](), argparse.Namespace(**{**vars(run_args), "reps": reps}),
                                         extra, autosgm=False)  # fmt: skip
            ms = {e.name: bench_step.median_ms(e) for e in entries if e.name in extra}
            adam = next(bench_step.median_ms(e) for e in entries if e.name == "torch Adam")
            print(f"median of {reps} interleaved repetitions; torch Adam (foreach) {adam:.3f} ms\n")
            print(f"| configuration | this tree, ms | {args.rev}, ms | ratio |")
            print("|---|---:|---:|---:|")
            for c in configs:
                for p in paths:
                    new, old = ms[f"{c} {p}"], ms[f"{c} {p} @{args.rev}"]
                    print(f"| {c} {p} | {new:.3f} | {old:.3f} | {new / old:.3f} |")
            state = {e.name: e.state_bytes for e in entries if e.name in extra}
            same = all(state[f"{c} {p}"] == state[f"{c} {p} @{args.rev}"] for c in configs for p in paths)
            print(f"\nstate bytes per element equal to {args.rev}'s: {same}", flush=True)


if __name__ == "__main__":
    main()
