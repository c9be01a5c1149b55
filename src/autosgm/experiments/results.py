"""Result files: one JSON object per line, one line per finished run.

A line holds the run's ``key`` (a hash of task, task settings, optimizer configuration and seed), the
configuration itself, the seed, the versions of Python/torch/autosgm, the evaluation curves and the
wall time. See ``docs/experiments.md`` for the full format.

Several processes may write one file: a line is appended under an exclusive lock on the file, and
a process runs a key only while it holds that key's claim (:func:`claim_run`), so two sweeps on one
file share its runs instead of running each twice. Readers keep one record per key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from .._files import exclusive_lock

__all__ = ["FORMAT_VERSION", "RECORD_FIELDS", "append_result", "claim_run", "completed_keys", "read_results",
           "run_key"]

#: Version of the line format (stored in every line as ``"format"``).
FORMAT_VERSION = 1
#: Fields every record has (a line without one of them is skipped with a warning).
RECORD_FIELDS = ("key", "task", "seed", "optimizer", "optimizer_key", "curves")


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
    """All records of a result file, one per run key (empty when the file does not exist).

    Lines that are not run records — not UTF-8 text, not a JSON object (e.g. the last line of a run
    killed while writing), or without one of :data:`RECORD_FIELDS` — are skipped with a warning;
    their runs will be run again by a resumed sweep. A run recorded twice counts once (the first
    record is kept, with a warning), so a duplicate never counts as another seed.
    """
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    duplicates: list[int] = []
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            record = _parse_line(line, f"{path}:{number}")
            if record is None:
                continue
            if record["key"] in seen:
                duplicates.append(number)
                continue
            seen.add(record["key"])
            records.append(record)
    if duplicates:
        lines = ", ".join(map(str, duplicates[:10])) + (", ..." if len(duplicates) > 10 else "")
        warnings.warn(f"{path}: dropping {len(duplicates)} duplicate record(s) of runs already in the file "
                      f"(line {lines}); each run counts once", RuntimeWarning, stacklevel=2)  # fmt: skip
    return records


def _parse_line(line: bytes, where: str) -> dict[str, Any] | None:
    """The record of one line, or None (with a warning naming ``where``) when it is not one."""
    if not line.strip():
        return None
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        reason = "that is not UTF-8 text"
    except json.JSONDecodeError:
        reason = "that is not valid JSON"
    else:
        if not isinstance(record, dict) or "key" not in record:
            reason = "without a run key"
        else:
            missing = [f for f in RECORD_FIELDS if f not in record]
            if not missing:
                return record
            reason = f"without {', '.join(repr(f) for f in missing)}"
    warnings.warn(f"{where}: skipping a line {reason}", RuntimeWarning, stacklevel=3)
    return None


def completed_keys(path: str | os.PathLike[str]) -> set[str]:
    """Keys of the runs recorded in a result file."""
    return {r["key"] for r in read_results(path)}


def append_result(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record as a line (creating the file and its directory), flushed to disk at once.

    The file is locked while the line is written (other processes append after it). If the file
    does not end with a newline (a line cut short by a crash), one is added first so the new record
    starts on its own line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=False, allow_nan=True, separators=(",", ":")) + "\n"
    with exclusive_lock(path), open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def claim_run(path: str | os.PathLike[str], key: str) -> Iterator[bool]:
    """Claim run ``key`` of the result file ``path`` while the block runs.

    Yields False when another process (a sweep or run writing the same file) holds the claim.
    The claim is a lock on a small file beside the results (``.NAME.KEY.claim``), removed at the
    end; the system releases the lock when its process dies, and the next claimant takes the file
    over, so a killed sweep blocks nothing.
    A process that gets the claim should check :func:`completed_keys` again: the run may have
    been finished meanwhile.
    """
    path = Path(path)
    with exclusive_lock(path.with_name(f".{path.name}.{key}.claim"), wait=False, remove=True) as held:
        yield held


def iter_curves(records: Iterable[dict[str, Any]], column: str) -> Iterable[tuple[list[int], list[float]]]:
    """``(steps, values)`` of ``column`` (e.g. ``"val_loss"``) for each record that has it."""
    for record in records:
        curves = record.get("curves", {})
        if column in curves:
            yield curves["step"], curves[column]
