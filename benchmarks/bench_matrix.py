"""Time one ``optimizer.step()`` of the matrix oracle beside torch.optim.Muon and AdamW, interleaved.

The parameter tensors are the weight matrices of a ``bench_step.py`` set that get the matrix oracle
(``autosgm.matrix.gets_matrix_oracle``: 2-D, both dims in [4, 2048]; torch's Muon takes only 2-D
parameters). On the transformer set these are the embedding (2048×384) and, per block, the QKV
(1152×384), projection (384×384) and MLP (1536×384, 384×1536) weights. Every optimizer steps the
*same* tensors with the same preset gradients, with ``bench_step.run_set``'s method: three warm-up
steps, then repetitions round-robin in a shuffled order, the weights and gradients restored after
each repetition; the table gives the median milliseconds per step, the ratio to torch's Muon and
the optimizer-state bytes per parameter element.

    PYTHONPATH=src python benchmarks/bench_matrix.py --threads 1          # the README's table
    PYTHONPATH=src python benchmarks/bench_matrix.py --quick --threads 1  # 3 blocks, 4 repetitions
    PYTHONPATH=src python benchmarks/bench_matrix.py --sets transformer,mlp --reps 6
    PYTHONPATH=src python benchmarks/bench_matrix.py --quick --threads 1 --diagnose  # dtype rows

Compared (all on the same tensors):

* ``torch Muon``: ``torch.optim.Muon`` (default 5 quintic Newton–Schulz steps, in bfloat16);
* ``AutoSGM muon``: ``AutoSGM.muon`` (the same step; the quintic iteration in float32);
* ``AutoSGM matrix NS×5``: ``oracle="matrix"``, coupled Newton–Schulz on ``M = V Vᵀ``, 5 iterations
  (the same number of iterations as Muon);
* ``AutoSGM matrix NS×16``: the same at the default count (converged for a well-conditioned ``M``);
* ``AutoSGM matrix pole 0.9``: ``M`` an average of ``V Vᵀ`` (``matrix_pole=0.9``), Newton–Schulz
  at the default count;
* ``torch AdamW``: ``torch.optim.AdamW(foreach=True)`` (an element-wise step, for scale).

The issue's target: ``AutoSGM muon`` at most 1.2× torch's Muon at equal iterations.

``--diagnose`` adds two rows that swap the working dtype of the quintic iteration (benchmark-only
patches, undone after each step): ``torch Muon (float32 NS)`` (its bfloat16 cast redirected to
float32, the tests' bit-for-bit setting) and ``AutoSGM muon (bfloat16 NS)``. On a CPU with a fast
bfloat16 matrix product (AMX, AVX512-BF16) they separate the cost of the dtype from the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (the method and its helpers: run_set, table, prime_allocator)
from bench_step import LR, Entry, median_ms  # noqa: E402

from autosgm import AutoSGM  # noqa: E402
from autosgm.matrix import NEWTON_SCHULZ_ITERS, gets_matrix_oracle  # noqa: E402

MUON = "torch Muon"
#: Rows kept from ``run_set``'s torch.optim entries (it also times Adam and SGD; left out here).
KEPT_TORCH = (MUON, "torch AdamW")
#: The issue's target: (configuration, largest ratio to torch's Muon).
TARGETS = {"muon": 1.2}


def tiny_shapes(quick: bool = False) -> list[tuple[int, ...]]:
    """Three small matrices (for the test that keeps this script working)."""
    return [(32, 16), (16, 48), (24, 24)]


SETS: dict[str, Callable[[bool], list[tuple[int, ...]]]] = {**bench_step.SETS, "tiny": tiny_shapes}
REPS = {"transformer": 12, "mlp": 30, "tiny": 4}


def matrix_shapes(name: str, quick: bool) -> list[tuple[int, ...]]:
    """The shapes of set ``name`` that get the matrix oracle."""
    return [s for s in SETS[name](quick) if gets_matrix_oracle(torch.empty(s, device="meta"))]


def configs() -> dict[str, tuple[Callable[..., torch.optim.Optimizer], str | None]]:
    """name -> (factory, reference) for ``run_set``'s ``extra`` entries."""
    matrix = dict(lr=LR, oracle="matrix", matrix_method="newton-schulz")
    return {
        MUON: (lambda p: torch.optim.Muon(p, lr=LR), None),
        "muon": (lambda p: AutoSGM.muon(p, lr=LR), MUON),
        "matrix NS×5": (lambda p: AutoSGM(p, matrix_iters=5, **matrix), MUON),
        f"matrix NS×{NEWTON_SCHULZ_ITERS}": (lambda p: AutoSGM(p, **matrix), MUON),
        "matrix pole 0.9": (lambda p: AutoSGM(p, matrix_pole=0.9, **matrix), MUON),
    }


class _TorchMuonFloat32(torch.optim.Muon if hasattr(torch.optim, "Muon") else object):  # type: ignore[misc]
    """torch's Muon with its bfloat16 cast redirected to a float32 copy during ``step`` (a
    benchmark-only patch of ``Tensor.bfloat16``, as in the tests' bit-for-bit comparison)."""

    def step(self, closure=None):
        cast = torch.Tensor.bfloat16
        torch.Tensor.bfloat16 = lambda self: self.to(torch.float32, copy=True)  # type: ignore[method-assign]
        try:
            return super().step(closure)
        finally:
            torch.Tensor.bfloat16 = cast  # type: ignore[method-assign]


class _AutoSGMBfloat16(AutoSGM):
    """AutoSGM whose quintic iteration runs in bfloat16 during ``step`` (a benchmark-only patch of
    ``autosgm.matrix._working_dtype``), as torch's Muon iterates."""

    def step(self, closure=None):
        import autosgm.matrix as module

        working = module._working_dtype

        def bfloat16_quintic(method: str, dtype: torch.dtype) -> torch.dtype:
            return torch.bfloat16 if method == "muon-quintic" else working(method, dtype)

        module._working_dtype = bfloat16_quintic
        try:
            return super().step(closure)
        finally:
            module._working_dtype = working


def diagnostic_configs() -> dict[str, tuple[Callable[..., torch.optim.Optimizer], str | None]]:
    """``--diagnose``: the two Muon implementations with each other's working dtype."""
    return {
        f"{MUON} (float32 NS)": (lambda p: _TorchMuonFloat32(p, lr=LR), MUON),
        "muon (bfloat16 NS)": (lambda p: _AutoSGMBfloat16.muon(p, lr=LR), MUON),
    }


def target_lines(name: str, entries: list[Entry]) -> list[str]:
    by_name = {e.name: e for e in entries}
    out = []
    for cname, limit in TARGETS.items():
        if cname in by_name and MUON in by_name:
            r = median_ms(by_name[cname]) / median_ms(by_name[MUON])
            verdict = "met" if r <= limit else "MISSED"
            out.append(f"| {name} | AutoSGM {cname} / {MUON} | {r:.2f} | ≤ {limit:.2f} | {verdict} |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sets")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per optimizer")
    parser.add_argument("--sets", default="transformer", help="comma-separated parameter sets (their matrices)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--diagnose", action="store_true",
                        help="add torch's Muon iterating in float32 and AutoSGM.muon in bfloat16")  # fmt: skip
    parser.add_argument("--no-prime", dest="prime", action="store_false",
                        help="do not free a large block first (bench_step.prime_allocator)")  # fmt: skip
    args = parser.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    for s in sets:
        if s not in SETS:
            parser.error(f"unknown set {s!r}; expected some of {', '.join(SETS)}")
        if not matrix_shapes(s, args.quick):
            parser.error(f"set {s!r} has no tensor that gets the matrix oracle")
    if not hasattr(torch.optim, "Muon"):
        parser.error(f"torch {torch.__version__} has no torch.optim.Muon (needs torch ≥ 2.9)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prime and args.device == "cpu":
        bench_step.prime_allocator()

    bench_step.print_header("bench_matrix", args.device, argv)
    targets = []
    for s in sets:
        reps = args.reps or max(2, REPS.get(s, 12) // (3 if args.quick else 1))
        run_args = argparse.Namespace(device=args.device, paths=["foreach"], configs=[], reps=reps)
        entries = bench_step.run_set(f"{s} matrices", matrix_shapes(s, args.quick), run_args,
                                     extra={**configs(), **(diagnostic_configs() if args.diagnose else {})},
                                     autosgm=False)  # fmt: skip
        entries = [e for e in entries if e.name in KEPT_TORCH or not e.name.startswith("torch")
                   or e.name.startswith(MUON)]  # fmt: skip
        entries.sort(key=lambda e: e.name != MUON)  # the reference first
        for e in entries:  # torch's Muon and the matrix steps are per tensor (run_set's label: foreach)
            if e.name.startswith(MUON) or not e.name.startswith("torch"):
                e.path = "single"
        print(f"median of {reps} interleaved repetitions\n")
        print(bench_step.table(s, entries), flush=True)
        targets += target_lines(s, entries)
        del entries
    bench_step.print_targets(targets, "target")


if __name__ == "__main__":
    main()
