"""Result files: one JSON object per line, one line per finished run.

A line holds the run's ``key`` (a hash of task, task settings, optimizer configuration and seed), the
configuration itself, the seed, the versions of Python/torch/autosgm, the evaluation curves and the
wall time. See ``docs/experiments.md`` for the full format.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

__all__ = ["FORMAT_VERSION", "append_result", "completed_keys", "read_results", "run_key"]

#: Version of the line format (stored in every line as ``"format"``).
FORMAT_VERSION = 1


def run_key(task: str, settings: dict[str, Any], optimizer_key: str, seed: int) -> str:
    """Stable 16-hex-digit key of a run: SHA-1 of its task, settings, optimizer key and seed.

    The data location and the device are not part of it: moving the data or changing the machine does
    not make a finished run count as new.
    """
    payload = json.dumps(
        {"task": task, "settings": settings, "optimizer": optimizer_key, "seed": int(seed)},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a result file (empty when the file does not exist).

    Lines that are not valid JSON objects — e.g. the last line of a run killed while writing — are
    skipped with a warning; their runs will be run again by a resumed sweep.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipping a line that is not valid JSON", RuntimeWarning, stacklevel=2)
                continue
            if not isinstance(record, dict) or "key" not in record:
                warnings.warn(f"{path}:{number}: skipping a line without a run key", RuntimeWarning, stacklevel=2)
                continue
            records.append(record)
    return records


def completed_keys(path: str | os.PathLike[str]) -> set[str]:
    """Keys of the runs recorded in a result file."""
    return {r["key"] for r in read_results(path)}


def append_result(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record as a line (creating the file and its directory), flushed to disk at once.

    If the file does not end with a newline (a line cut short by a crash), one is added first so the
    new record starts on its own line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=False, allow_nan=True, separators=(",", ":"))
    prefix = ""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                prefix = "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(prefix + line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def iter_curves(records: Iterable[dict[str, Any]], column: str) -> Iterable[tuple[list[int], list[float]]]:
    """``(steps, values)`` of ``column`` (e.g. ``"val_loss"``) for each record that has it."""
    for record in records:
        curves = record.get("curves", {})
        if column in curves:
            yield curves["step"], curves[column]
