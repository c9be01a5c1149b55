"""The ``autosgm`` command: a demo, experiment runs and sweeps, figures.

Run ``autosgm --help`` or ``autosgm COMMAND --help``. Also available as ``python -m autosgm``.
Everything heavy (the experiment runner, matplotlib, the analysis figures) is imported only by the
subcommand that needs it, so ``autosgm --help`` is quick.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["build_parser", "main"]

PROG = "autosgm"

DESCRIPTION = """\
AutoSGM: heavy ball, Nesterov and Adam as points of one design space — a first-order low-pass
filter on the gradient (pole β, zero γ) times an iteration-dependent learning-rate oracle.

This command runs the study's experiments: a one-minute demo on bundled data, single runs,
resumable sweeps over numerator × γ × seed × learning rate, a learning-rate robustness study
against the baselines, and the study's figures."""

EPILOG = """\
examples:
  autosgm demo                                   # ~1 min on a laptop CPU; writes ./autosgm-demo/
  autosgm tasks                                  # tasks, presets, settings and where data comes from
  autosgm run --task digits --numerator parcor-markov --gamma nag
  autosgm sweep --task shakespeare-char --seeds 3 --out runs/shakespeare.jsonl
  autosgm plot runs/shakespeare.jsonl --out runs/shakespeare.png
  autosgm robustness --task digits --seeds 3     # every optimizer over its learning-rate grid
  autosgm windows figures/                       # the window-function (lr schedule) figure
  autosgm analyze figures/                       # quadratic-model and learning-dynamics figures

Data are looked for at --data, then in an environment variable (AUTOSGM_SHAKESPEARE, AUTOSGM_CIFAR10,
AUTOSGM_WIKITEXT103), then in $XDG_CACHE_HOME/autosgm (~/.cache/autosgm), then downloaded when the
task has a public download (set AUTOSGM_OFFLINE=1 or pass --offline to forbid downloads)."""


class UsageError(Exception):
    """A bad command-line value; printed without a traceback, exit status 2."""


def _check_outputs(outputs: dict[str, Path], inputs: dict[str, Path] | None = None) -> None:
    """Before any work: every output of the command can be written, and none is at the path of
    another output or of an input (:class:`~autosgm._files.OutputPathError`, reported as a usage error)."""
    from autosgm._files import check_distinct, check_output_file

    check_distinct({**(inputs or {}), **outputs})
    for what, path in outputs.items():
        check_output_file(path, what)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=100)


# --------------------------------------------------------------------------------------- parsing
def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    if any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"learning rates must be positive, got {text!r}")
    return values


def _str_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _gamma(text: str) -> float | str:
    from autosgm.experiments.optimizers import parse_gamma

    try:
        return parse_gamma(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gamma_list(text: str) -> list[float | str]:
    return [_gamma(x) for x in _str_list(text)]


def _seeds(text: str) -> list[int]:
    """``N`` → 0..N−1; ``A-B`` → A..B; ``A,B,C`` → that list."""
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(x) for x in text.split(",") if x.strip()]
        elif "-" in text.lstrip("-"):
            lo, hi = (int(x) for x in text.split("-", 1))
            if hi < lo:
                raise ValueError
            seeds = list(range(lo, hi + 1))
        else:
            n = int(text)
            if n < 1:
                raise ValueError
            seeds = list(range(n))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds: give a count N (seeds 0..N-1), a range A-B, or a list A,B,C; got {text!r}"
        ) from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be non-negative, got {text!r}")
    return seeds


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _name_lrs(text: str) -> tuple[str, list[float]]:
    name, value = _key_value(text)
    return name, _float_list(value)


def _centre(text: str) -> tuple[str, float]:
    name, value = _key_value(text)
    return name, _positive_float(value)


def _tolerances(text: str) -> list[float]:
    try:
        values = [float(x) for x in _str_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(not (0 < v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"tolerances must be positive finite numbers, got {text!r}")
    return values


def _span(text: str) -> float:
    value = _positive_float(text)
    if not (value > 1 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 1, got {text!r}")
    return value


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


TASK_NAMES = ("digits", "shakespeare-char", "cifar10", "wikitext103")
NUMERATOR_NAMES = ("unity", "parcor-bounded", "parcor-maxbound", "parcor-markov", "parcor-chebyshev", "corr")


def _add_task_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task")
    group.add_argument("--task", required=True, choices=TASK_NAMES, help="the task to train (see `autosgm tasks`)")
    group.add_argument("--preset", default="cpu", choices=("tiny", "cpu", "paper"),
                       help="settings preset: tiny (seconds), cpu (default; minutes on a laptop), paper (the study's scale, a GPU)")
    group.add_argument("--data", metavar="PATH", help="data file or directory (else the task's environment variable, the cache, a download)")
    group.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N (default: auto)")
    group.add_argument("--steps", metavar="N", type=_positive_int, help="optimizer steps per run (overrides the preset)")
    group.add_argument("--batch-size", metavar="N", type=_positive_int, help="batch size (overrides the preset)")
    group.add_argument("--eval-every", metavar="N", type=_positive_int, help="evaluate every N steps (overrides the preset)")
    group.add_argument("--eval-batches", metavar="N", type=_nonneg_int, help="batches per split in an evaluation, 0 = whole split where possible")
    group.add_argument("--set", dest="settings", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                       help="any other task setting, repeatable, e.g. --set n_layer=4 --set arch=vit")
    group.add_argument("--offline", action="store_true", help="never download data (same as AUTOSGM_OFFLINE=1)")
    group.add_argument("--threads", type=_positive_int, metavar="N",
                       help="CPU threads of torch (default: torch's choice; 1 is often fastest for tiny models)")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


BASELINE_NAMES = ("adamw", "sgd-nesterov", "prodigy", "schedulefree-adamw", "dadapt-adam", "lion")
#: Baselines chosen by name only (not in the default baselines of `robustness`): torch's Muon + AdamW.
EXTRA_BASELINE_NAMES = ("muon",)
BASELINE_CHOICES = BASELINE_NAMES + EXTRA_BASELINE_NAMES
EXTERNAL_NOTE = ("prodigy, schedulefree-adamw, dadapt-adam and lion need pip install 'autosgm[baselines]'; "
                 "muon (torch.optim.Muon for the weight matrices, AdamW for the rest) needs torch >= 2.9")
ORACLE_NAMES = ("element", "matrix")


def _add_beta_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--beta", type=float, default=0.9,
                       help="filter pole β (AdamW's β1, SGD's momentum, Lion's β1) (default: 0.9)")
    group.add_argument("--beta-a", type=float, default=0.999,
                       help="moment pole β_a (AdamW's β2; Lion keeps its own 0.99) (default: 0.999)")


def _add_common_optimizer_options(group: argparse._ArgumentGroup, wd_help: str) -> None:
    _add_beta_options(group)
    group.add_argument("--weight-decay", type=_nonneg_float, help=wd_help)
    group.add_argument("--schedule", choices=("cosine", "constant"),
                       help="learning-rate window over the run: cosine annealing to 0, or constant (default: cosine; "
                            "schedulefree-adamw runs without one)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``autosgm`` command."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    # demo ----------------------------------------------------------------------------------------
    p = sub.add_parser(
        "demo", help="AutoSGM design points vs torch AdamW on bundled digits (~1 min, offline)",
        description=textwrap.dedent("""\
            Train one MLP on scikit-learn's bundled handwritten digits with AutoSGM at the Adam point
            (unity numerator, γ = 0), with a partial-correlation numerator (at its own, larger lr), at
            Nesterov's and at the heavy-ball point, and with torch AdamW — same initial weights and
            batches per seed, same cosine window. Prints a table, writes demo.png, summary.md and results.jsonl.
            Runs already in results.jsonl are reused (pass --fresh to train again)."""),
        epilog="example:\n  autosgm demo --out autosgm-demo --seeds 3", formatter_class=_formatter)
    p.add_argument("--out", default="autosgm-demo", metavar="DIR", help="output directory (default: ./autosgm-demo)")
    p.add_argument("--steps", type=_positive_int, default=500, help="optimizer steps per run (default: 500)")
    p.add_argument("--seeds", type=_positive_int, default=5, help="seeds per configuration (default: 5)")
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="peak lr of the Adam point and AdamW (default: 1e-2)")
    p.add_argument("--numerator-lr", type=_positive_float, default=0.1,
                   help="peak lr of the correlation numerator, which scales steps down (default: 0.1)")
    p.add_argument("--sgd-lr", type=_positive_float, default=0.1, help="peak lr of the Nesterov and heavy-ball points (default: 0.1)")
    p.add_argument("--numerator", default="parcor-markov", choices=NUMERATOR_NAMES[1:],
                   help="the correlation numerator shown beside unity (default: parcor-markov)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--fresh", action="store_true", help="delete the demo's results.jsonl and train everything again")
    p.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                   help="CPU threads of torch (default: 1, the fastest for the demo's small MLP)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    # run -----------------------------------------------------------------------------------------
    p = sub.add_parser(
        "run", help="train one task with one optimizer configuration and seed",
        description=textwrap.dedent("""\
            Train one task with one optimizer configuration and one seed, print the final metrics, and
            (with --out) append the run as one JSON line to a result file. A run already in the file
            (same task settings, configuration and seed) is not repeated."""),
        epilog=textwrap.dedent("""\
            examples:
              autosgm run --task digits --numerator parcor-markov --gamma nag --lr 3e-3
              autosgm run --task shakespeare-char --optimizer adamw --steps 500 --out runs/shk.jsonl
              autosgm run --task cifar10 --set arch=vit --data ~/data/cifar10 --device cuda"""),
        formatter_class=_formatter)
    _add_task_options(p)
    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", default="autosgm",
                   choices=("autosgm", "autosgm-nesterov", "autosgm-heavy-ball", "sgd") + BASELINE_CHOICES,
                   help="autosgm (any design point), AutoSGM's constant-oracle Nesterov/heavy-ball points, a torch "
                        f"baseline (adamw, sgd-nesterov, sgd) or an external one ({EXTERNAL_NOTE}) (default: autosgm)")
    g.add_argument("--lr", type=_positive_float,
                   help="peak learning rate μ (default: the recommended one, see docs/experiments.md: the task's for "
                        "AdamW and AutoSGM's unity numerator, the task's parcor rate for the correlation numerators, 1 for prodigy and dadapt-adam, 2.5e-3 for schedulefree-adamw, "
                        "AdamW's / 3 for lion, AdamW's for muon)")
    g.add_argument("--numerator", default="unity", choices=NUMERATOR_NAMES, help="AutoSGM numerator (default: unity)")
    g.add_argument("--oracle", default="element", choices=ORACLE_NAMES,
                   help="AutoSGM's oracle: element-wise, or matrix (weight matrices get M^(-1/2)V scaled to AdamW's "
                        "update RMS, the other tensors the element-wise step; docs/matrix-oracle.md) (default: element)")
    g.add_argument("--gamma", type=_gamma, default=0.0, help="filter zero γ: a number, nag = β/(1+β), mls = 1-sqrt(2(1-β)) (default: 0)")
    g.add_argument("--eta", type=_positive_float, help="filter gain η (default: (1-β)/(1-γ))")
    g.add_argument("--no-debias", action="store_true", help="no filter/moment bias correction")
    g.add_argument("--constant-oracle", action="store_true", help="AutoSGM without moment normalization (a = d = 1)")
    _add_common_optimizer_options(g, "weight decay ρ: decoupled for AutoSGM, AdamW and the external baselines, coupled "
                                     "for SGD and AutoSGM's constant oracle (default: the task's; 3× it for lion)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of initial weights, batch order, dropout (default: 0)")
    p.add_argument("--out", metavar="FILE", help="append the run to this JSON-lines result file")
    p.set_defaults(func=_cmd_run)

    # sweep ---------------------------------------------------------------------------------------
    p = sub.add_parser(
        "sweep", help="the study's grid: numerator × γ × lr × seeds, plus baselines (resumable)",
        description=textwrap.dedent("""\
            Run the grid numerator × γ × lr (AutoSGM, normalized oracle) and the baselines torch AdamW
            (same lrs) and torch SGD-Nesterov (its own lrs), for every seed. Each finished run is
            appended to --out as one JSON line; runs already there are skipped, so an interrupted sweep
            continues where it stopped. Afterwards prints a summary table and writes the γ-grid figure
            next to the result file (unless --no-plot)."""),
        epilog=textwrap.dedent("""\
            examples:
              autosgm sweep --task digits --seeds 3
              autosgm sweep --task shakespeare-char --seeds 3 --gammas 0,nag,mls --out runs/shk.jsonl
              autosgm sweep --task cifar10 --preset paper --set arch=vit --lrs 1e-3 --device cuda"""),
        formatter_class=_formatter)
    _add_task_options(p)
    g = p.add_argument_group("grid")
    g.add_argument("--numerators", type=_str_list, metavar="NAME[,NAME...]", default=["unity", "parcor-markov"],
                   help="comma-separated AutoSGM numerators (default: unity,parcor-markov)")
    g.add_argument("--gammas", type=_gamma_list, metavar="G[,G...]", default=[0.0, "nag", "mls"],
                   help="comma-separated filter zeros: numbers, nag, mls (default: 0,nag,mls)")
    g.add_argument("--oracles", type=_str_list, metavar="NAME[,NAME...]", default=["element"],
                   help="AutoSGM's oracles of every point: element, matrix (weight matrices get M^(-1/2)V scaled to "
                        "AdamW's update RMS) (default: element)")
    g.add_argument("--lrs", type=_float_list, metavar="LR[,LR...]", help="comma-separated peak lrs of AutoSGM and AdamW (default: the task's)")
    g.add_argument("--lr-for", dest="lr_for", action="append", default=[], type=_name_lrs, metavar="NAME=LR[,LR...]",
                   help="learning rates of one numerator or baseline instead of its default, repeatable "
                        "(e.g. --lr-for parcor-markov=3e-2 --lr-for lion=1e-3)")
    g.add_argument("--seeds", type=_seeds, metavar="SEEDS", default=list(range(3)), help="N (seeds 0..N-1), A-B, or A,B,C (default: 3)")
    g.add_argument("--baselines", default="adamw,sgd-nesterov", metavar="NAME[,NAME...]",
                   help=f"comma-separated baselines from {', '.join(BASELINE_CHOICES)}, or none; each at its recommended "
                        f"lr ({EXTERNAL_NOTE}) (default: adamw,sgd-nesterov)")
    g.add_argument("--sgd-lrs", type=_float_list, metavar="LR[,LR...]", help="comma-separated peak lrs of SGD-Nesterov (default: the task's)")
    g.add_argument("--sgd-weight-decay", type=_nonneg_float, help="coupled weight decay of SGD-Nesterov (default: the task's)")
    _add_common_optimizer_options(g, "decoupled weight decay of AutoSGM and AdamW (default: the task's)")
    p.add_argument("--out", metavar="FILE", help="result file (default: runs/TASK.jsonl)")
    p.add_argument("--no-plot", action="store_true", help="do not write the figure after the sweep")
    p.set_defaults(func=_cmd_sweep)

    # robustness ----------------------------------------------------------------------------------
    p = sub.add_parser(
        "robustness", help="learning-rate robustness: every optimizer over a log grid of its lr (resumable)",
        description=textwrap.dedent("""\
            How much tuning does each optimizer need? Run every AutoSGM point (numerator × γ) and every
            baseline on a log-spaced grid of its peak learning rate centred on its recommended value, for
            every seed, into DIR/results.jsonl (resumable: finished runs are skipped). Then print and write
            the table (DIR/table.md: per optimizer the recommended and the best lr with their mean ± sd final
            validation loss, the range of lrs within 2 % of the best and its width max/min, time per step),
            the figure of final validation loss against the lr (DIR/lr.png) and of the validation loss
            against steps and training time at each optimizer's best lr (DIR/curves.png)."""),
        epilog=textwrap.dedent("""\
            examples:
              autosgm robustness --task digits --seeds 3 --threads 1 --out docs/results/robustness-digits
              autosgm robustness --task shakespeare-char --seeds 3 --threads 1 --out runs/robustness-shakespeare
              autosgm robustness --task digits --baselines adamw --numerators unity --points 7 --span 1000"""),
        formatter_class=_formatter)
    _add_task_options(p)
    g = p.add_argument_group("study")
    g.add_argument("--numerators", type=_str_list, metavar="NAME[,NAME...]", default=["unity", "parcor-markov", "parcor-bounded"],
                   help="AutoSGM numerators, or none (default: unity,parcor-markov,parcor-bounded)")
    g.add_argument("--gammas", type=_gamma_list, metavar="G[,G...]", default=[0.0, "nag"],
                   help="filter zeros of every numerator: numbers, nag, mls (default: 0,nag)")
    g.add_argument("--oracles", type=_str_list, metavar="NAME[,NAME...]", default=["element"],
                   help="AutoSGM's oracles of every numerator × γ: element, matrix (weight matrices get M^(-1/2)V "
                        "scaled to AdamW's update RMS; rows '... (matrix)') (default: element)")
    g.add_argument("--baselines", default=",".join(BASELINE_NAMES), metavar="NAME[,NAME...]",
                   help=f"baselines from {','.join(BASELINE_CHOICES)}, or none ({EXTERNAL_NOTE}) "
                        f"(default: {','.join(BASELINE_NAMES)})")
    g.add_argument("--points", type=_int_at_least(2), default=11, metavar="N",
                   help="learning rates per optimizer (default: 11)")
    g.add_argument("--span", type=_span, default=10**2.5, metavar="X",
                   help="largest / smallest learning rate of each grid (default: 10^2.5 ≈ 316)")
    g.add_argument("--centre", dest="centres", action="append", default=[], type=_centre, metavar="NAME=LR",
                   help="centre of a numerator's or baseline's grid instead of its recommended lr, repeatable")
    g.add_argument("--seeds", type=_seeds, metavar="SEEDS", default=list(range(3)), help="N (seeds 0..N-1), A-B, or A,B,C (default: 3)")
    g.add_argument("--tolerances", type=_tolerances, default=[0.02, 0.1, 0.25], metavar="T[,T...]",
                   help="a learning rate is as good as the best within this share of its loss; the table gives "
                        "the width of that lr range for each, the range itself for the first (default: 0.02,0.1,0.25)")
    _add_beta_options(g)
    g.add_argument("--weight-decay", type=_nonneg_float,
                   help="decoupled weight decay of AutoSGM and AdamW; the other baselines get theirs from it "
                        "(3× for lion) (default: the task's)")
    g.add_argument("--sgd-weight-decay", type=_nonneg_float, help="coupled weight decay of SGD-Nesterov (default: the task's)")
    p.add_argument("--out", metavar="DIR", help="directory of the results, table and figures (default: runs/robustness-TASK)")
    p.add_argument("--report-all", action="store_true",
                   help="the table and figures cover every run of DIR/results.jsonl with this task's settings, not "
                        "only this command's (e.g. rows added to an earlier study)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned runs (how many are already in DIR/results.jsonl, the new ones) and stop; "
                        "loads no data and trains nothing")
    p.set_defaults(func=_cmd_robustness)

    # plot ----------------------------------------------------------------------------------------
    p = sub.add_parser(
        "plot", help="the study's γ-grid figure from a result file",
        description=textwrap.dedent("""\
            Draw the study's grid from a result file: one column per filter zero γ, rows train and
            validation metric, mean ± sd over seeds; red = unity numerator, blue = partial-correlation
            numerator, dashed = baselines. Also prints the summary table."""),
        epilog="example:\n  autosgm plot runs/shakespeare.jsonl --out runs/shakespeare.png",
        formatter_class=_formatter)
    p.add_argument("results", metavar="RESULTS", help="a JSON-lines result file of `autosgm sweep` / `autosgm run`")
    p.add_argument("--out", metavar="FILE", help="image file, .png/.pdf/.svg (default: RESULTS with .png)")
    p.add_argument("--metric", choices=("loss", "acc"), default="loss", help="loss or acc (classification) (default: loss)")
    p.add_argument("--task", choices=TASK_NAMES, help="the task to draw when the file holds several")
    p.add_argument("--lr", type=_positive_float, help="draw each configuration at this lr where run (default: its best lr)")
    p.add_argument("--title", help="figure title")
    p.add_argument("--markdown", action="store_true", help="print the summary table as Markdown")
    p.set_defaults(func=_cmd_plot)

    # tasks ---------------------------------------------------------------------------------------
    p = sub.add_parser("tasks", help="list the tasks, their presets, settings and data sources",
                       description="List the tasks with their presets, settings (for --set), default learning "
                                   "rates and where their data come from.", formatter_class=_formatter)
    p.add_argument("name", nargs="?", choices=TASK_NAMES, help="show only this task")
    p.set_defaults(func=_cmd_tasks)

    # windows / analyze ---------------------------------------------------------------------------
    p = sub.add_parser("windows", help="draw the window-function (learning-rate schedule) figure into OUTDIR",
                       description="Draw the window functions F[t] (all shapes, full/half, Kronecker input) into OUTDIR.",
                       formatter_class=_formatter)
    p.add_argument("outdir", metavar="OUTDIR", help="directory for the figure files")
    p.set_defaults(func=_cmd_windows)
    p = sub.add_parser("analyze", help="draw the quadratic-model and learning-dynamics figures into OUTDIR",
                       description="Draw the analysis figures (quadratic model: PHB, NAG, the optimal point; "
                                   "step/impulse responses; stability) into OUTDIR.", formatter_class=_formatter)
    p.add_argument("outdir", metavar="OUTDIR", help="directory for the figure files")
    p.set_defaults(func=_cmd_analyze)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("autosgm")
    except Exception:
        return "0.1.0"


# --------------------------------------------------------------------------------------- commands
def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in args.settings:
        out[key.replace("-", "_")] = value
    for name in ("steps", "batch_size", "eval_every", "eval_batches"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _make_task(args: argparse.Namespace):
    from autosgm.experiments.runner import resolve_device
    from autosgm.experiments.tasks import make_task

    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device: {exc}") from None
    _set_threads(args)
    try:
        return make_task(args.task, preset=args.preset, overrides=_overrides(args), data=args.data, device=device,
                         allow_download=not args.offline, progress=not args.quiet)
    except (ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from None


def _describe(task: Any) -> str:
    items = task.describe().items()
    return ", ".join(f"{k} {v:,}" if type(v) is int else f"{k} {v}" for k, v in items)


def _print_table(records: list[dict[str, Any]], markdown: bool = False) -> None:
    from autosgm.experiments.report import format_table, summarize

    print(format_table(summarize(records), markdown=markdown))


def _warn_unchanged(records: list[dict[str, Any]]) -> None:
    """Say which runs left a trainable tensor untouched (it was never trained)."""
    from autosgm.experiments.report import unchanged_warnings

    for line in unchanged_warnings(records):
        print(line)


def _cmd_demo(args: argparse.Namespace) -> int:
    from autosgm.experiments.demo import run_demo

    _set_threads(args)
    try:
        run_demo(args.out, steps=args.steps, seeds=args.seeds, lr=args.lr, sgd_lr=args.sgd_lr,
                 numerator=args.numerator, numerator_lr=args.numerator_lr, device=args.device, fresh=args.fresh,
                 progress=not args.quiet)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _optimizer_from_args(args: argparse.Namespace, task_cls) -> Any:
    from autosgm.experiments.optimizers import MUON_LR_SCALE, OptimizerConfig, recommended_lr

    kind = args.optimizer
    if kind in BASELINE_CHOICES:
        if args.oracle != "element":
            raise UsageError(f"--oracle applies to --optimizer autosgm, not {kind}")
        return _baseline_from_args(args, task_cls)
    sgd_like = kind in ("autosgm-nesterov", "autosgm-heavy-ball", "sgd") or args.constant_oracle
    if args.lr is not None:
        lr = args.lr
    elif sgd_like:
        lr = task_cls.default_sgd_lr
    else:  # the Adam point at the task's rate, a correlation numerator at its own (a ≤ 1 scales steps down)
        lr = recommended_lr(args.numerator, task_cls)
    if args.weight_decay is not None:
        wd = args.weight_decay
    else:  # SGD-type optimizers use the task's coupled (L2) decay, the normalized ones its decoupled decay
        wd = task_cls.default_sgd_weight_decay if sgd_like else task_cls.default_weight_decay
    common = dict(beta=args.beta, weight_decay=wd, schedule=args.schedule or "cosine")
    try:
        if args.oracle != "element" and kind != "autosgm":
            raise UsageError(f"--oracle applies to --optimizer autosgm, not {kind}")
        if kind == "autosgm":
            matrix = {} if args.oracle == "element" else {"oracle": args.oracle, "matrix_lr_scale": MUON_LR_SCALE}
            return OptimizerConfig.autosgm(lr, args.numerator, args.gamma, beta_a=args.beta_a, eta=args.eta,
                                           debias=not args.no_debias, normalize=not args.constant_oracle,
                                           decoupled=not args.constant_oracle, **common, **matrix)
        if kind == "autosgm-nesterov":
            return OptimizerConfig.nesterov_point(lr, **common)
        if kind == "autosgm-heavy-ball":
            return OptimizerConfig.heavy_ball_point(lr, **common)
        return OptimizerConfig(name="sgd", lr=lr, **common)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _baseline_from_args(args: argparse.Namespace, task_cls) -> Any:
    """A baseline of ``run``: its recommended lr and weight decay unless given, its own schedule."""
    from autosgm.experiments.optimizers import baseline_config, recommended_lr, recommended_weight_decay

    kind = args.optimizer
    lr = args.lr if args.lr is not None else recommended_lr(kind, task_cls)
    wd = args.weight_decay
    if wd is None:
        wd = recommended_weight_decay(kind, task_cls.default_weight_decay, task_cls.default_sgd_weight_decay)
    schedule = {"schedule": args.schedule} if args.schedule else {}
    try:
        return baseline_config(kind, lr, weight_decay=wd, beta=args.beta, beta_a=args.beta_a, **schedule)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _require(configs: Any) -> None:
    """Every baseline's package is installed (else a usage error naming the extra), before any work."""
    from autosgm.experiments.optimizers import MissingBaselineError, require_optimizers

    try:
        require_optimizers(configs)
    except MissingBaselineError as exc:
        raise UsageError(str(exc)) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from autosgm.experiments.results import claim_run, run_key
    from autosgm.experiments.tasks import get_task_class

    cfg = _optimizer_from_args(args, get_task_class(args.task))
    _require([cfg])
    if args.out:
        _check_outputs({"the result file --out": Path(args.out)})
    task = _make_task(args)
    if not args.out:
        _train_and_report(task, cfg, args)
        return 0
    key = run_key(task.name, task.settings_dict(), cfg.key(), args.seed)
    with claim_run(args.out, key) as claimed:
        if not claimed:
            print(f"run {key} ({cfg.display}, seed {args.seed}) is being run by another process writing {args.out}; "
                  "not repeated")
        else:
            _train_and_report(task, cfg, args, key)
    return 0


def _train_and_report(task: Any, cfg: Any, args: argparse.Namespace, key: str | None = None) -> None:
    """Train one run and print it; with ``key``, append it to ``args.out`` unless it is there already."""
    from autosgm.experiments.results import append_result, completed_keys, read_results
    from autosgm.experiments.runner import run

    if key is not None and key in completed_keys(args.out):
        print(f"run {key} ({cfg.display}, seed {args.seed}) is already in {args.out}; not repeated")
        _print_table([r for r in read_results(args.out) if r["key"] == key])
        return
    print(f"{task.name} ({args.preset} preset; {_describe(task)}): {cfg.display}, lr {cfg.lr:g}, seed {args.seed}, "
          f"device {task.device}")
    record = run(task, cfg, args.seed, progress=not args.quiet)
    if key is not None:
        append_result(args.out, record)
    _print_table([record])
    _warn_unchanged([record])
    if record["status"] != "ok":
        print(f"the run diverged (non-finite training loss) after {record['steps_done']} steps")
    if key is not None:
        print(f"appended to {args.out}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from autosgm.experiments.results import read_results
    from autosgm.experiments.sweep import grid, run_sweep
    from autosgm.experiments.tasks import get_task_class

    cls = get_task_class(args.task)
    baselines = _names(args.baselines, "--baselines", BASELINE_CHOICES)
    numerators = _names(",".join(args.numerators), "--numerators", NUMERATOR_NAMES)
    oracles = _names(",".join(args.oracles), "--oracles", ORACLE_NAMES)
    lr_for = dict(args.lr_for)
    stray = sorted(set(lr_for) - set(NUMERATOR_NAMES) - set(BASELINE_CHOICES))
    if stray:
        raise UsageError(f"--lr-for: {', '.join(stray)} is neither a numerator nor a baseline")
    try:
        configs = grid(
            numerators=numerators, gammas=args.gammas, lrs=args.lrs or [cls.default_lr],
            numerator_lrs={k: v for k, v in lr_for.items() if k in NUMERATOR_NAMES},
            baseline_lrs={k: v for k, v in lr_for.items() if k in BASELINE_CHOICES}, oracles=oracles,
            beta=args.beta, beta_a=args.beta_a,
            weight_decay=cls.default_weight_decay if args.weight_decay is None else args.weight_decay,
            baselines=baselines, sgd_lrs=args.sgd_lrs or [cls.default_sgd_lr],
            sgd_weight_decay=cls.default_sgd_weight_decay if args.sgd_weight_decay is None else args.sgd_weight_decay,
            schedule=args.schedule or "cosine",
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    _require(configs)
    out = Path(args.out) if args.out else Path("runs") / f"{args.task}.jsonl"
    plots = [] if args.no_plot else [("loss", "the figure (--out with .png)", out.with_suffix(".png"))]
    if plots and "acc" in cls.metrics:
        plots.append(("acc", "the accuracy figure (--out with -acc.png)", out.with_name(out.stem + "-acc.png")))
    _check_outputs({"the result file --out": out, **{what: path for _, what, path in plots}})
    task = _make_task(args)
    print(f"{task.name} ({args.preset} preset; {_describe(task)}), device {task.device}")
    summary = run_sweep(task, configs, args.seeds, out, progress=not args.quiet)
    keys = set(summary.ran) | set(summary.skipped)
    records = [r for r in read_results(out) if r["key"] in keys]
    print()
    _print_table(records)
    _warn_unchanged(records)
    print(f"\n{len(summary.ran)} runs done, {len(summary.skipped)} skipped (already in {out})"
          + (f", {len(summary.busy)} left to another process writing {out}" if summary.busy else "")
          + (f", {len(summary.diverged)} diverged" if summary.diverged else ""))
    if records:
        from autosgm.experiments.plot import plot_grid

        for metric, _, path in plots:
            print(f"figure: {plot_grid(records, path, metric=metric)}")
    return 0


def _names(text: str, option: str, allowed: Sequence[str]) -> list[str]:
    """A comma-separated list of names from ``allowed`` (``none`` = empty), else a usage error."""
    if text.strip().lower() == "none":
        return []
    names = _str_list(text)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        kind = {"--numerators": "numerator", "--oracles": "oracle"}.get(option, "name")
        raise UsageError(f"{option}: unknown {kind} {unknown[0]!r}; choose from {', '.join(allowed)}")
    return names


def _cmd_robustness(args: argparse.Namespace) -> int:
    from autosgm.experiments import robustness
    from autosgm.experiments.tasks import get_task_class

    cls = get_task_class(args.task)
    numerators = _names(",".join(args.numerators), "--numerators", NUMERATOR_NAMES)
    baselines = _names(args.baselines, "--baselines", BASELINE_CHOICES)
    oracles = _names(",".join(args.oracles), "--oracles", ORACLE_NAMES)
    try:
        configs = robustness.robustness_grid(
            cls, numerators=numerators, gammas=args.gammas, baselines=baselines, oracles=oracles, points=args.points,
            span=args.span, centres=dict(args.centres), weight_decay=args.weight_decay,
            sgd_weight_decay=args.sgd_weight_decay, beta=args.beta, beta_a=args.beta_a,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.out) if args.out else Path("runs") / f"robustness-{args.task}"
    paths = robustness.output_paths(out)
    if args.dry_run:
        return _plan_robustness(args, cls, configs, paths["results"])
    _require(configs)
    _check_outputs({f"the study's {what.replace('_', ' ')}": path for what, path in paths.items()})
    task = _make_task(args)
    print(f"{task.name} ({args.preset} preset; {_describe(task)}), device {task.device}: "
          f"{len(configs) // args.points} optimizers × {args.points} learning rates × {len(args.seeds)} seeds")
    result = robustness.run_robustness(task, configs, args.seeds, out, tolerances=args.tolerances,
                                       progress=not args.quiet, report_all=args.report_all)
    summary = result.summary
    print()
    print(robustness.format_profiles(result.profiles))
    print(f"\n{len(summary.ran)} runs done, {len(summary.skipped)} skipped (already in {paths['results']})"
          + (f", {len(summary.busy)} left to another process writing it" if summary.busy else "")
          + (f", {len(summary.diverged)} diverged" if summary.diverged else ""))
    if result.profiles:
        for what in ("table", "lr_figure", "curves_figure"):
            print(f"{what.replace('_', ' ')}: {paths[what]}")
    return 0


def _plan_robustness(args: argparse.Namespace, cls: Any, configs: list[Any], results: Path) -> int:
    """``robustness --dry-run``: the study's runs, those already in the result file, and the new ones by
    optimizer; nothing is loaded, trained or written."""
    import dataclasses
    from collections import Counter

    from autosgm.experiments.results import completed_keys, run_key

    try:
        settings = dataclasses.asdict(cls.make_settings(args.preset, _overrides(args)))
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    done = completed_keys(results) if results.is_file() else set()
    jobs = [(cfg, run_key(cls.name, settings, cfg.key(), seed)) for seed in args.seeds for cfg in configs]
    new = Counter(cfg.display for cfg, key in jobs if key not in done)
    print(f"{cls.name} ({args.preset} preset): {len(configs) // args.points} optimizers × {args.points} learning "
          f"rates × {len(args.seeds)} seeds = {len(jobs)} runs, {len(jobs) - sum(new.values())} already in "
          f"{results}, {sum(new.values())} to run")
    for label, count in new.items():
        print(f"  {label}: {count} new runs")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from autosgm.experiments.plot import plot_grid
    from autosgm.experiments.report import select_task
    from autosgm.experiments.results import read_results

    path = Path(args.results)
    if not path.is_file():
        raise UsageError(f"no such result file: {path}")
    out = Path(args.out) if args.out else path.with_suffix(".png")
    _check_outputs({"the figure": out}, inputs={"the result file": path})
    records = read_results(path)
    if not records:
        raise UsageError(f"{path} holds no runs")
    try:
        figure = plot_grid(records, out, metric=args.metric, task=args.task, lr=args.lr, title=args.title)
        _print_table(select_task(records, args.task), markdown=args.markdown)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"figure: {figure}")
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    import dataclasses

    from autosgm.experiments.tasks import TASKS, get_task_class

    for name in [args.name] if args.name else list(TASKS):
        cls = get_task_class(name)
        print(f"{name}: {cls.summary}")
        print(f"  data:     {cls.data_help}")
        print(f"  metrics:  {', '.join(cls.metrics)}")
        print(f"  default lr: {cls.default_lr:g} (AutoSGM, AdamW), {cls.default_parcor_lr:g} (correlation numerators "
              f"in `robustness`), {cls.default_sgd_lr:g} (SGD-Nesterov, constant oracle); "
              f"weight decay {cls.default_weight_decay:g} (decoupled), {cls.default_sgd_weight_decay:g} (SGD, coupled)")
        fields = [f.name for f in dataclasses.fields(cls.Settings)]
        for preset, values in cls.presets.items():
            settings = dataclasses.asdict(cls.make_settings(preset))
            text = ", ".join(f"{k}={settings[k]}" for k in fields)
            print(textwrap.fill(f"{preset}: {text}", width=100, initial_indent="  preset ", subsequent_indent="      "))
        print()
    return 0


def _cmd_windows(args: argparse.Namespace) -> int:
    from autosgm import _window_figure
    from autosgm._files import check_output_dir

    check_output_dir(args.outdir, "OUTDIR")
    result = _window_figure.main([args.outdir])
    return int(result) if isinstance(result, int) else 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from autosgm._files import check_output_dir
    from autosgm.analysis import figures

    check_output_dir(args.outdir, "OUTDIR")
    result = figures.main([args.outdir])
    return int(result) if isinstance(result, int) else 0


# --------------------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autosgm`` console script; returns the exit status.

    Missing data (:class:`~autosgm.experiments.data.DataNotFoundError`), a baseline whose package is
    not installed (:class:`~autosgm.experiments.optimizers.MissingBaselineError`), bad values and output
    locations that cannot be written (:class:`~autosgm._files.OutputPathError`, found before any
    training) are reported in one line on stderr without a traceback, with exit status 2; warnings
    (e.g. a result line that is skipped) in one line each.
    """
    from autosgm._files import OutputPathError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{PROG} {args.command}: warning: {message}", file=sys.stderr if file is None else file)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            return func(args)
    except (UsageError, OutputPathError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        from autosgm.experiments.data import DataNotFoundError

        if isinstance(exc, DataNotFoundError):
            print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    except ImportError as exc:
        from autosgm.experiments.optimizers import MissingBaselineError

        if isinstance(exc, MissingBaselineError):  # a baseline's package, found after the checks
            print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"\n{PROG} {args.command}: interrupted (finished runs are saved; run the command again to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
