"""Which remedy keeps the partial-correlation numerators from freezing zero-initialised tensors?

The partial-correlation numerator is a = E[w · v̄] (spec §4). While a tensor's weights are all zero,
x = w · v̄ = 0, so c, a and the step stay 0: the tensor never moves. This study trains the same
models with the numerator as the spec writes it (``none``) and with candidate remedies, each at a
grid of μ and several seeds, and records the final validation loss and the tensors that never moved.

Remedies (all but ``floor`` act only on a tensor whose weights are all zero; ``floor`` acts on all):

* ``none``      the spec's formulas as written (the trap);
* ``floor``     a ≥ a_min = 1e-3 for every tensor (changes tensors with non-zero weights too);
* ``unit``      the LAMB convention: a = 1 for a tensor whose weights are all zero;
* ``seed-c``    a tensor whose weights are all zero when its state is created starts c at c₀ = 1e-2
  (the package's ``zero_tensor_start``; ``seed-c-1e-3`` and ``seed-c-1e-1`` try other c₀);
* ``grad-seed`` while a tensor's weights are all zero, x = v̄ · v̄ (the normalized step correlated
  with itself) replaces x = w · v̄.

``seed-c`` is the package's remedy (this study selected it; ``none`` is ``zero_tensor_start=0``).
The others are applied here, outside the package, on the single-tensor path (each step checks
whether a tensor is all zero; the cost of that check is not the question here). See
docs/zero-tensors.md for the table and the choice.

Usage (one thread per process; results are appended and finished runs are skipped)::

    python studies/zero_tensors.py --task shakespeare-char --data tinyshakespeare.txt \\
        --lrs 0.03 0.1 0.3 --seeds 0 1 2 --out docs/results/zero-tensors.jsonl
    python studies/zero_tensors.py --task digits --lrs 0.03 0.1 0.3 --seeds 0 1 2 \\
        --out docs/results/zero-tensors.jsonl
    python studies/zero_tensors.py --table docs/results/zero-tensors.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

import autosgm.step as step_math
from autosgm.experiments.optimizers import OptimizerConfig
from autosgm.experiments.results import append_result, completed_keys, read_results, run_key
from autosgm.experiments.runner import run
from autosgm.experiments.tasks import make_task

A_MIN = 1e-3
C0 = 1e-2  # the package's default zero_tensor_start
#: c₀ of the ``seed-c`` remedies (the plain one and two others, to see how much c₀ matters).
SEEDS_C = {"seed-c": C0, "seed-c-1e-3": 1e-3, "seed-c-1e-1": 1e-1}
REMEDIES = ("none", "floor", "unit", "grad-seed", *SEEDS_C)

_spec_numerator = step_math.numerator
_active = {"remedy": "none"}


def _study_numerator(ops, st, w, g, vbar, d, cfg, debias=1.0):
    """The package's numerator with the study's remedy applied (single-tensor path only)."""
    remedy = _active["remedy"]
    zero = isinstance(w, torch.Tensor) and not bool(w.any())
    per_tensor = cfg.numerator_mode == "tensor"
    if remedy == "grad-seed" and zero:
        w2 = st.get("num_w2")
        saved = None if w2 is None else w2.clone()
        a = _spec_numerator(ops, st, vbar, g, vbar, d, cfg, debias)  # x = v̄ · v̄
        if w2 is not None:  # E[w²] saw w = 0: β_n E[w²]
            w2.copy_(saved * cfg.beta_n)
        return a
    if remedy == "unit" and zero:
        prev = st["num_a"].clone() if per_tensor else None
        a = _spec_numerator(ops, st, w, g, vbar, d, cfg, debias)
        if per_tensor:  # the short filter sees a = 1
            st["num_a"].copy_(prev * step_math.SHORT_POLE + (1.0 - step_math.SHORT_POLE))
            return st["num_a"]
        return torch.ones_like(a)
    a = _spec_numerator(ops, st, w, g, vbar, d, cfg, debias)
    if remedy == "floor" and a is not None:
        return torch.clamp_min(a, A_MIN)
    return a


step_math.numerator = _study_numerator


@dataclasses.dataclass(frozen=True)
class RemedyConfig(OptimizerConfig):
    """An AutoSGM configuration with a zero-tensor remedy (part of the run key)."""

    remedy: str = "none"

    def build(self, model, total_steps):
        if self.remedy not in REMEDIES:
            raise ValueError(f"remedy must be one of {REMEDIES}")
        _active["remedy"] = self.remedy
        opt, scheduler = super().build(model, total_steps)
        for group in opt.param_groups:
            group["foreach"] = False  # the study's remedies live on the single-tensor path
            # seed-c is the package's own remedy (zero_tensor_start); the others start from c = 0
            group["zero_tensor_start"] = SEEDS_C.get(self.remedy, 0.0)
        return opt, scheduler

    @property
    def display(self) -> str:
        return f"{self.numerator} μ={self.lr:g} remedy={self.remedy}"

    def key(self) -> str:
        # the remedy names c₀ (seed-c: the package's default, else 0): one key per remedy
        return ",".join(p for p in super().key().split(",") if not p.startswith("zero_tensor_start="))


def run_study(args) -> None:
    torch.set_num_threads(args.threads)
    overrides = {"steps": args.steps} if args.steps else None
    task = make_task(args.task, preset=args.preset, data=args.data, overrides=overrides, progress=False)
    done = completed_keys(args.out)
    settings = task.settings_dict()
    for seed in args.seeds:
        for lr in args.lrs:
            for remedy in args.remedies:
                cfg = RemedyConfig(lr=lr, numerator=args.numerator, weight_decay=task.default_weight_decay,
                                   remedy=remedy)
                key = run_key(task.name, settings, cfg.key(), seed)
                if key in done:
                    continue
                record = run(task, cfg, seed, progress=False)
                record["remedy"] = remedy
                append_result(args.out, record)
                print(f"{task.name} seed {seed} {cfg.display}: val_loss {record['final']['val_loss']:.4f} "
                      f"unchanged {len(record['unchanged_tensors'])}/{record['trainable_tensors']}",
                      flush=True)


def table(path: str) -> str:
    """Markdown table: per task, numerator, remedy and μ, mean ± sd of the final validation loss."""
    cells = defaultdict(list)
    frozen = defaultdict(list)
    for r in read_results(path):
        opt = r["optimizer"]
        k = (r["task"], opt["numerator"], r.get("remedy", opt.get("remedy", "none")), opt["lr"])
        cells[k].append(r["final"]["val_loss"] if r["status"] == "ok" else float("nan"))
        frozen[k].append(len(r["unchanged_tensors"]))
    lines = ["| task | numerator | remedy | μ | seeds | val loss (mean ± sd) | tensors never moved |",
             "|---|---|---|---|---|---|---|"]
    best = {}
    for k, v in cells.items():
        mean = statistics.fmean(v)
        if (k[:3] not in best) or mean < best[k[:3]][0]:
            best[k[:3]] = (mean, k[3])
    for k in sorted(cells):
        v = cells[k]
        mean = statistics.fmean(v)
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        mark = " **best μ**" if best[k[:3]][1] == k[3] else ""
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]:g} | {len(v)} | {mean:.4f} ± {sd:.4f}{mark} | "
                     f"{max(frozen[k])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("shakespeare-char", "digits"))
    p.add_argument("--preset", default="cpu")
    p.add_argument("--data")
    p.add_argument("--steps", type=int)
    p.add_argument("--numerator", default="parcor-markov")
    p.add_argument("--remedies", nargs="+", default=["none", "floor", "unit", "seed-c", "grad-seed"], choices=REMEDIES)
    p.add_argument("--lrs", nargs="+", type=float, default=[0.03, 0.1, 0.3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/results/zero-tensors.jsonl")
    p.add_argument("--table", metavar="RESULTS", help="print the table of a results file and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if not args.task:
        p.error("--task is required unless --table is given")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    run_study(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
