"""Grouping runs over seeds and summarizing them as tables (used by the demo, ``sweep`` and ``plot``)."""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

__all__ = ["Group", "family_key", "format_table", "group_runs", "select_task", "summarize", "unchanged_warnings"]


class Group:
    """The runs of one optimizer configuration (same task settings and optimizer key), over seeds."""

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            raise ValueError("a group needs at least one record")
        self.records = sorted(records, key=lambda r: r["seed"])
        first = self.records[0]
        self.optimizer: dict[str, Any] = first["optimizer"]
        self.optimizer_key: str = first["optimizer_key"]
        self.label: str = first.get("label") or self.optimizer.get("label") or self.optimizer_key
        self.gamma_value: float = float(first.get("gamma_value", 0.0))

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.records]

    @property
    def is_autosgm_normalized(self) -> bool:
        return self.optimizer.get("name") == "autosgm" and bool(self.optimizer.get("normalize", True))

    @property
    def numerator(self) -> str:
        return str(self.optimizer.get("numerator", "unity"))

    @property
    def lr(self) -> float:
        return float(self.optimizer["lr"])

    def final(self, column: str) -> list[float]:
        """The final value of ``column`` in each run (NaN for diverged runs)."""
        out = []
        for r in self.records:
            value = r.get("final", {}).get(column, math.nan)
            out.append(math.nan if r.get("status", "ok") != "ok" or value is None else float(value))
        return out

    def curve(self, column: str):
        """``(steps, mean, sd, n)`` of ``column`` over seeds (numpy arrays; NaN where no run has a value)."""
        import numpy as np

        steps = sorted({s for r in self.records for s in r["curves"]["step"]})
        index = {s: i for i, s in enumerate(steps)}
        values = np.full((len(self.records), len(steps)), np.nan)
        for row, r in enumerate(self.records):
            col = r["curves"].get(column)
            if col is None:
                continue
            for s, v in zip(r["curves"]["step"], col):
                values[row, index[s]] = np.nan if v is None else v
        values[~np.isfinite(values)] = np.nan
        n = np.sum(~np.isnan(values), axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(values, axis=0)
            sd = np.where(n > 1, np.nanstd(values, axis=0, ddof=1) if len(self.records) > 1 else 0.0, 0.0)
        return np.asarray(steps), mean, sd, n


def select_task(records: Iterable[dict[str, Any]], task: str | None = None) -> list[dict[str, Any]]:
    """The records of one task and one settings dict.

    With ``task=None`` the file must hold a single task. When the runs of the task used several
    settings (say a sweep re-run with more steps), the most common settings are kept, with a warning.
    """
    records = list(records)
    tasks = sorted({r["task"] for r in records})
    if task is None:
        if len(tasks) > 1:
            raise ValueError(f"the results hold several tasks ({', '.join(tasks)}); choose one with --task")
        task = tasks[0] if tasks else None
    chosen = [r for r in records if r["task"] == task]
    if not chosen:
        raise ValueError(f"no runs of task {task!r} in the results (tasks present: {', '.join(tasks) or 'none'})")
    counts = Counter(_settings_id(r) for r in chosen)
    if len(counts) > 1:
        common = counts.most_common(1)[0][0]
        warnings.warn(
            f"runs of {task} with {len(counts)} different settings; keeping the {counts[common]} runs of the most common",
            RuntimeWarning, stacklevel=2,
        )
        chosen = [r for r in chosen if _settings_id(r) == common]
    return chosen


def _settings_id(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record.get("settings", {}), sort_keys=True)


def group_runs(records: Iterable[dict[str, Any]]) -> list[Group]:
    """Runs grouped by optimizer key, in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["optimizer_key"]].append(r)
    return [Group(rs) for rs in groups.values()]


def family_key(group: Group) -> tuple:
    """Configurations that differ only in the learning rate belong to one family (same key)."""
    opt = {k: v for k, v in group.optimizer.items() if k not in ("lr", "label")}
    return tuple(sorted((k, repr(v)) for k, v in opt.items()))


def _mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return statistics.fmean(finite), sd, len(finite)


def summarize(records: Iterable[dict[str, Any]], metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per optimizer configuration: label, lr, seeds, and mean/sd of the final metrics and wall time."""
    records = list(records)
    if metrics is None:
        metrics = ["loss"] + (["acc"] if any("val_acc" in r.get("final", {}) for r in records) else [])
    rows = []
    for g in group_runs(records):
        row: dict[str, Any] = {"label": g.label, "lr": g.lr, "runs": len(g.records),
                               "diverged": sum(r.get("status") != "ok" for r in g.records)}
        for m in metrics:
            for split in ("train", "val"):
                row[f"{split}_{m}"] = _mean_sd(g.final(f"{split}_{m}"))
        row["wall_time_s"] = _Seconds(*_mean_sd([float(r.get("wall_time_s", math.nan)) for r in g.records]))
        rows.append(row)
    return rows


class _Seconds(tuple):
    """(mean, sd, n) of a duration, printed with one decimal."""

    def __new__(cls, mean: float, sd: float, n: int) -> "_Seconds":
        return super().__new__(cls, (mean, sd, n))


def _cell(value: Any) -> str:
    if isinstance(value, _Seconds):
        mean, sd, n = value
        return f"{mean:.1f} ± {sd:.1f}" if n > 1 else f"{mean:.1f}"
    if isinstance(value, tuple):
        mean, sd, n = value
        if n == 0:
            return "diverged"
        if abs(mean) >= 100:
            return f"{mean:.0f} ± {sd:.0f}" if n > 1 else f"{mean:.0f}"
        return f"{mean:.4f} ± {sd:.4f}" if n > 1 else f"{mean:.4f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """Rows of :func:`summarize` as an aligned text table (or a Markdown table)."""
    if not rows:
        return "(no runs)"
    headers = list(rows[0].keys())
    if not any(r.get("diverged") for r in rows):
        headers.remove("diverged")
    names = {"label": "optimizer", "wall_time_s": "time/run (s)", "runs": "seeds"}
    head = [names.get(h, h.replace("_", " ")) for h in headers]
    body = [[_cell(r[h]) for h in headers] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    lines = [fmt.format(*head), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*row) for row in body]
    return "\n".join(lines)


def unchanged_warnings(records: Iterable[dict[str, Any]], shown: int = 4) -> list[str]:
    """One line per run that left a trainable tensor exactly as it started (``unchanged_tensors``).

    Such a tensor was never trained: the model that was trained is smaller than the one defined.
    Records written before the field existed are not checked.
    """
    lines = []
    for r in records:
        names = r.get("unchanged_tensors") or []
        if not names:
            continue
        listed = ", ".join(names[:shown]) + (f", … ({len(names) - shown} more)" if len(names) > shown else "")
        total = r.get("trainable_tensors", "?")
        label = r.get("label") or r.get("optimizer_key", "?")
        lines.append(f"warning: {label}, seed {r.get('seed', '?')}: {len(names)} of {total} trainable tensors "
                     f"never moved ({listed})")
    return lines
