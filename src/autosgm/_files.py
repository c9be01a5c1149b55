"""Writing output files safely: checks before a long run, atomic replacement, exclusive locks.

* :func:`check_output_file`, :func:`check_output_dir` and :func:`check_distinct` find an output that
  cannot be written (a read-only directory, a directory where a file is expected, a file where a
  directory is, two outputs at one path) before any work is done, with a one-line
  :class:`OutputPathError`.
* :func:`replacing`, :func:`write_text` and :func:`save_figure` write a file beside its destination
  and rename it over it (``os.replace``): a reader sees the old file or the new one, never a part.
* :func:`exclusive_lock` holds an ``flock`` on a file between processes (Linux, macOS; elsewhere
  it is a no-op), released by the system when its holder dies.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Mapping

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no file locks
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "OutputPathError",
    "check_distinct",
    "check_output_dir",
    "check_output_file",
    "exclusive_lock",
    "replacing",
    "save_figure",
    "write_text",
]

PathLike = str | os.PathLike[str]


class OutputPathError(ValueError):
    """An output location that cannot be written; the message names it and says why."""


# ----------------------------------------------------------------------------------------------
# checks before a run
# ----------------------------------------------------------------------------------------------
def check_output_dir(path: PathLike, what: str) -> Path:
    """Make sure ``path`` is a directory this process can create files in (created if missing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{what} {path} cannot be created: {exc.strerror or exc}") from None
    probe = path / f".write-check-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise OutputPathError(f"{what} {path} is not writable: {exc.strerror or exc}") from None
    return path


def check_output_file(path: PathLike, what: str) -> Path:
    """Make sure ``path`` can be written as a file (its directory is created if missing); an existing
    file is opened for appending, which changes nothing in it."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a directory; give a file name")
    check_output_dir(path.parent, f"the directory of {what}")
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as exc:
            raise OutputPathError(f"{what} {path} cannot be written: {exc.strerror or exc}") from None
    return path


def check_distinct(paths: Mapping[str, PathLike]) -> None:
    """Refuse two of ``paths`` (``{description: path}``, the outputs and inputs of one command)
    that are the same file: one would be written over the other."""
    seen: dict[Path, str] = {}
    for what, path in paths.items():
        where = Path(path).expanduser().resolve()
        if where in seen:
            raise OutputPathError(f"{what} and {seen[where]} are the same file ({path}); one would overwrite the other")
        seen[where] = what


# ----------------------------------------------------------------------------------------------
# atomic replacement
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def replacing(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block succeeds it replaces ``path``
    in one rename, otherwise it is removed. The temporary name keeps ``path``'s suffix."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def save_figure(fig, path: PathLike, **kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically, in the format of its suffix (PNG without one)."""
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:].lower() or "png", **kwargs)
    return path


# ----------------------------------------------------------------------------------------------
# locks
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def exclusive_lock(path: PathLike, *, wait: bool = True, remove: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` (created if missing) while the block runs.

    Yields True when the lock is held, False when ``wait`` is False and another process holds it.
    With ``remove`` the file is deleted before the lock is released (a claim that leaves nothing
    behind); a process that finds the file replaced after it got the lock takes the new one.
    Without ``fcntl`` (Windows) nothing is locked and True is yielded.
    """
    path = Path(path)
    if fcntl is None:  # pragma: no cover
        yield True
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the previous holder removed it: lock the file now at ``path``
    try:
        yield True
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.close(fd)
