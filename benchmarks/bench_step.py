"""Time one ``optimizer.step()``: AutoSGM's three paths beside torch.optim, interleaved.

For each parameter set (shapes only; gradients are preset once and reused, and the weights and
gradients are restored after every repetition) every optimizer is built on the *same* parameter
tensors, warmed up (state allocation, compilation), then stepped round-robin: each repetition steps every optimizer once, in a shuffled order, so that machine
noise hits all of them alike. The table gives the median milliseconds per step, the ratio to the
torch.optim reference of the same path, and the optimizer-state bytes per parameter element.

    PYTHONPATH=src python benchmarks/bench_step.py            # full run
    PYTHONPATH=src python benchmarks/bench_step.py --quick    # fewer repetitions, smaller sets
    PYTHONPATH=src python benchmarks/bench_step.py --device cuda --sets transformer
    PYTHONPATH=src python benchmarks/bench_step.py --threads 1 --cold-cache   # the README's table

Parameter sets: ``mlp`` (≈1M parameters in 20 tensors), ``transformer`` (≈22M in 147 tensors:
12 blocks of width 384 and an embedding), ``small`` (1000 tensors of 1024 elements).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

# ----------------------------------------------------------------------------------------------
# parameter sets
# ----------------------------------------------------------------------------------------------


def mlp_shapes(quick: bool = False) -> list[tuple[int, ...]]:
    """Ten 320×320 linear layers with biases: 20 tensors, 1.03M elements."""
    return [s for _ in range(10) for s in ((320, 320), (320,))]


def transformer_shapes(quick: bool = False) -> list[tuple[int, ...]]:
    """GPT-like stack, width 384: embedding, 12 blocks (LN, QKV, proj, LN, MLP 4×), final LN."""
    d, blocks = 384, (3 if quick else 12)
    shapes: list[tuple[int, ...]] = [(2048, d)]
    for _ in range(blocks):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,),
                   (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]  # fmt: skip
    return shapes + [(d,), (d,)]


def small_shapes(quick: bool = False) -> list[tuple[int, ...]]:
    """Many small tensors: 1000 × 1024 elements (300 in quick mode)."""
    return [(1024,)] * (300 if quick else 1000)


SETS: dict[str, Callable[[bool], list[tuple[int, ...]]]] = {
    "mlp": mlp_shapes,
    "transformer": transformer_shapes,
    "small": small_shapes,
}

# ----------------------------------------------------------------------------------------------
# optimizers
# ----------------------------------------------------------------------------------------------
LR = 1e-4


def _autosgm_configs(package: Any = None) -> dict[str, Callable[..., torch.optim.Optimizer]]:
    """AutoSGM's benchmarked configurations, from ``package`` (default: the imported ``autosgm``)."""
    if package is None:
        import autosgm as package
    AutoSGM, Window = package.AutoSGM, package.Window

    cosine = Window(shape="cosine", tau=1, spe=100_000)
    return {
        "adam": lambda p, **kw: AutoSGM.adam(p, lr=LR, **kw),
        "adam+cosine": lambda p, **kw: AutoSGM.adam(p, lr=LR, window=cosine, **kw),
        "heavy-ball": lambda p, **kw: AutoSGM.heavy_ball(p, lr=LR, momentum=0.9, **kw),
        "nesterov": lambda p, **kw: AutoSGM.nesterov(p, lr=LR, momentum=0.9, **kw),
        "parcor-bounded": lambda p, **kw: AutoSGM(p, lr=LR, numerator="parcor-bounded", **kw),
        "parcor-maxbound": lambda p, **kw: AutoSGM(p, lr=LR, numerator="parcor-maxbound", **kw),
        "parcor-markov": lambda p, **kw: AutoSGM(p, lr=LR, numerator="parcor-markov", **kw),
        "parcor-chebyshev": lambda p, **kw: AutoSGM(p, lr=LR, numerator="parcor-chebyshev", **kw),
    }


def _torch_configs() -> dict[str, Callable[..., torch.optim.Optimizer]]:
    from torch import optim

    return {
        "torch Adam": lambda p, **kw: optim.Adam(p, lr=LR, **kw),
        "torch AdamW": lambda p, **kw: optim.AdamW(p, lr=LR, weight_decay=1e-2, **kw),
        "torch SGD(momentum)": lambda p, **kw: optim.SGD(p, lr=LR, momentum=0.9, **kw),
        "torch SGD(nesterov)": lambda p, **kw: optim.SGD(p, lr=LR, momentum=0.9, nesterov=True, **kw),
    }


PATH_KWARGS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
#: The torch.optim optimizer each AutoSGM configuration is compared with (on the same path).
REFERENCE = {
    "adam": "torch Adam",
    "adam+cosine": "torch Adam",
    "heavy-ball": "torch SGD(momentum)",
    "nesterov": "torch SGD(nesterov)",
    "parcor-bounded": "torch Adam",
    "parcor-maxbound": "torch Adam",
    "parcor-markov": "torch Adam",
    "parcor-chebyshev": "torch Adam",
}
#: The issue's targets: (AutoSGM config, path) -> (torch reference, path, largest ratio).
TARGETS = {
    ("adam", "foreach"): ("torch Adam", "foreach", 1.10),
    ("heavy-ball", "foreach"): ("torch SGD(momentum)", "foreach", 1.10),
    ("nesterov", "foreach"): ("torch SGD(momentum)", "foreach", 1.10),
    ("parcor-bounded", "foreach"): ("torch Adam", "foreach", 1.6),
    ("parcor-maxbound", "foreach"): ("torch Adam", "foreach", 1.6),
    ("parcor-markov", "foreach"): ("torch Adam", "foreach", 1.6),
    ("parcor-chebyshev", "foreach"): ("torch Adam", "foreach", 1.6),
    ("adam", "fused"): ("torch Adam", "fused", 1.2),
}


@dataclass
class Entry:
    name: str
    path: str
    opt: torch.optim.Optimizer
    reference: str | None
    times: list[float]
    first_step_s: float = 0.0
    state_bytes: float = 0.0


def state_bytes_per_element(opt: torch.optim.Optimizer, numel: int) -> float:
    """Bytes of every state tensor (steps included) per parameter element."""
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total / numel


def prime_allocator(nbytes: int = 24 << 20) -> None:
    """Free one large host block, as a training loop's first step frees its activations.

    glibc's ``malloc`` serves a request above its mmap threshold (128 KiB at start) with fresh
    pages from the kernel, which must be mapped and zeroed on first touch; when such a block is
    freed it raises the threshold to the block's size (up to 32 MiB) and the trim threshold to
    twice that. From then on the temporaries of torch's multi-tensor kernels come from reused heap
    memory. Without this the time of ``Adam(foreach=True)`` depends on what the process freed
    before (on the MLP set, 2.1 to 4.7 ms on the same machine).
    """
    block = torch.empty(nbytes, dtype=torch.uint8)
    block.fill_(0)
    del block


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_set(name: str, shapes: list[tuple[int, ...]], args: argparse.Namespace,
            extra: dict[str, tuple[Callable[..., torch.optim.Optimizer], str]] | None = None,
            autosgm: bool = True) -> list[Entry]:
    """Time every optimizer on one parameter set; ``extra`` adds ``name -> (factory, torch
    reference)`` entries on the multi-tensor path (``floor_parcor.py``'s hand-written chain,
    ``bench_revision.py``'s two trees); ``autosgm=False`` leaves out AutoSGM's own configurations."""
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.02).to(device))
        p.grad = (torch.randn(shape, generator=gen) * 1e-2).to(device)  # preset once, reused
        params.append(p)
    numel = sum(p.numel() for p in params)
    print(f"\n## {name}: {len(params)} tensors, {numel / 1e6:.2f}M parameters", flush=True)

    entries: list[Entry] = []
    for cname, make in _torch_configs().items():
        for path in args.paths:
            if cname == "torch AdamW" and path != "foreach":
                continue
            entries.append(Entry(cname, path, make(params, **PATH_KWARGS[path]), None, []))
    for cname, make in (_autosgm_configs() if autosgm else {}).items():
        if args.configs and cname not in args.configs:
            continue
        for path in args.paths:
            entries.append(Entry(cname, path, make(params, **PATH_KWARGS[path]), REFERENCE[cname], []))
    for cname, (make, ref) in (extra or {}).items():
        entries.append(Entry(cname, "foreach", make(params), ref, []))

    # Every optimizer steps the same tensors with the same gradients, and torch's
    # SGD(nesterov=True, foreach=True) adds its momentum buffer into the gradients in place, so
    # over the repetitions the gradients (and with them the weights) would grow to overflow. The
    # weights and gradients are restored after each repetition (outside the timed region).
    initial = [p.detach().clone() for p in params]
    grads = [p.grad for p in params]
    initial_grads = [g.clone() for g in grads]

    def restore() -> None:
        with torch.no_grad():
            torch._foreach_copy_(params, initial)
            torch._foreach_copy_(grads, initial_grads)

    for e in entries:  # warm-up: allocate state, compile
        _sync(device)
        t0 = time.perf_counter()
        e.opt.step()
        _sync(device)
        e.first_step_s = time.perf_counter() - t0
        for _ in range(2):
            e.opt.step()
    restore()
    rng = random.Random(0)
    order = list(entries)
    for rep in range(args.reps):
        rng.shuffle(order)
        for e in order:
            _sync(device)
            t0 = time.perf_counter()
            e.opt.step()
            _sync(device)
            e.times.append(time.perf_counter() - t0)
        if not all(torch.isfinite(p).all() for p in params):
            raise RuntimeError("parameters became non-finite; lower LR")
        restore()
    for e in entries:
        e.state_bytes = state_bytes_per_element(e.opt, numel)
    return entries


def median_ms(e: Entry) -> float:
    return 1e3 * statistics.median(e.times)


def table(name: str, entries: list[Entry]) -> str:
    by_key = {(e.name, e.path): e for e in entries}
    lines = [
        "| optimizer | path | median ms | vs torch (same path) | state B/elem | first step s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for e in entries:
        ratio = ""
        if e.reference is not None and (e.reference, e.path) in by_key:
            ratio = f"{median_ms(e) / median_ms(by_key[(e.reference, e.path)]):.2f}× {e.reference}"
        label = e.name if e.name.startswith(("torch", "floor")) else f"AutoSGM {e.name}"
        lines.append(
            f"| {label} | {e.path} | {median_ms(e):.2f} | {ratio} | {e.state_bytes:.2f} | {e.first_step_s:.2f} |"
        )
    return "\n".join(lines)


def target_lines(name: str, entries: list[Entry]) -> list[str]:
    by_key = {(e.name, e.path): e for e in entries}
    out = []
    for (cname, path), (ref, rpath, limit) in TARGETS.items():
        if (cname, path) in by_key and (ref, rpath) in by_key:
            r = median_ms(by_key[(cname, path)]) / median_ms(by_key[(ref, rpath)])
            verdict = "met" if r <= limit else "MISSED"
            out.append(f"| {name} | AutoSGM {cname} {path} / {ref} {rpath} | {r:.2f} | ≤ {limit:.2f} | {verdict} |")
    return out


def main(argv: list[str] | None = None,
         extra: dict[str, tuple[Callable[..., torch.optim.Optimizer], str]] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sets")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per optimizer")
    parser.add_argument("--sets", default="mlp,transformer,small", help="comma-separated parameter sets")
    parser.add_argument("--paths", default="single,foreach,fused", help="comma-separated AutoSGM/torch paths")
    parser.add_argument("--configs", default="", help="comma-separated AutoSGM configurations (default all)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-prime", dest="prime", action="store_false",
                        help="do not free a large block first (see prime_allocator)")
    parser.add_argument("--cold-cache", action="store_true",
                        help="compile into a fresh inductor cache, so 'first step s' is a cold compilation")  # fmt: skip
    args = parser.parse_args(argv)
    args.paths = [p for p in args.paths.split(",") if p]
    args.configs = [c for c in args.configs.split(",") if c]
    for p in args.paths:
        if p not in PATH_KWARGS:
            parser.error(f"unknown path {p!r}; expected some of {', '.join(PATH_KWARGS)}")
    sets = [s for s in args.sets.split(",") if s]
    for s in sets:
        if s not in SETS:
            parser.error(f"unknown set {s!r}; expected some of {', '.join(SETS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prime and args.device == "cpu":
        prime_allocator()
    if args.cold_cache:
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_step_inductor_")

    print_header("bench_step", args.device, argv)
    targets = []
    for s in sets:
        reps = args.reps or {"mlp": 60, "transformer": 12, "small": 30}[s] // (3 if args.quick else 1)
        entries = run_set(s, SETS[s](args.quick), argparse.Namespace(**{**vars(args), "reps": reps}), extra)
        print(f"median of {reps} interleaved repetitions\n")
        print(table(s, entries), flush=True)
        targets += target_lines(s, entries)
        del entries
    if targets:
        print_targets(targets)


def print_header(script: str, device: str, argv: list[str] | None) -> None:
    """The run's first lines: the script, torch, Python, machine, threads and device, the command."""
    print(f"# {script}: torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"device {device}")  # fmt: skip
    print(f"command: python benchmarks/{script}.py " + " ".join(argv if argv is not None else sys.argv[1:]))


def print_targets(targets: list[str], heading: str = "targets") -> None:
    """The target lines of the sets (from :func:`target_lines`) as one Markdown table."""
    print(f"\n## {heading}\n")
    print("| set | ratio | measured | target | verdict |")
    print("|---|---|---:|---:|---|")
    print("\n".join(targets))


if __name__ == "__main__":
    main()
