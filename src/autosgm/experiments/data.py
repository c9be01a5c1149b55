"""Where the experiment data sets live: explicit paths, environment variables, a cache, downloads.

Every task looks for its data in the same order:

1. the path given on the command line (``--data``), which must exist;
2. the task's environment variable (``AUTOSGM_SHAKESPEARE``, ``AUTOSGM_CIFAR10``, ``AUTOSGM_WIKITEXT103``);
3. the cache, ``$XDG_CACHE_HOME/autosgm`` (``~/.cache/autosgm`` when ``XDG_CACHE_HOME`` is unset);
4. a download of the public file into the cache, for the tasks that have one, unless downloads are
   disabled (``AUTOSGM_OFFLINE=1`` or ``--offline``).

When all of them fail the task raises :class:`DataNotFoundError`, whose message names the exact path
or variable to set.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from .._files import replacing

__all__ = [
    "DataNotFoundError",
    "cache_dir",
    "download",
    "downloads_allowed",
    "fetch_or_explain",
    "file_md5",
    "from_env_or_arg",
    "read_text",
]


class DataNotFoundError(FileNotFoundError):
    """A data set is not where the task looked.

    The message is complete and meant for the user: it says what is missing, where the task looked,
    and which path or environment variable to set. The command line prints it without a traceback
    and exits with status 2.
    """


def cache_dir() -> Path:
    """The data cache: ``$XDG_CACHE_HOME/autosgm``, or ``~/.cache/autosgm`` when the variable is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "autosgm"


def downloads_allowed() -> bool:
    """False when the environment variable ``AUTOSGM_OFFLINE`` is set to 1/true/yes."""
    return os.environ.get("AUTOSGM_OFFLINE", "").strip().lower() not in {"1", "true", "yes", "on"}


def from_env_or_arg(arg: str | os.PathLike[str] | None, env_var: str, what: str) -> Path | None:
    """The user-given location of a data set: ``arg`` if given, else ``$env_var`` if set, else None.

    A location that is given but does not exist raises :class:`DataNotFoundError` (a typo must not
    silently fall back to the cache or a download).
    """
    if arg is not None and str(arg) != "":
        path = Path(arg).expanduser()
        if not path.exists():
            raise DataNotFoundError(f"{what}: the path given with --data does not exist: {path}")
        return path
    value = os.environ.get(env_var, "")
    if value:
        path = Path(value).expanduser()
        if not path.exists():
            raise DataNotFoundError(
                f"{what}: the environment variable {env_var} points to a path that does not exist: {path}"
            )
        return path
    return None


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of the data file ``path``; a ValueError naming the file when it is not UTF-8
    text (e.g. a binary file given as ``--data``)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); give a text file") from None


def file_md5(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex MD5 digest of a file (used to check the official CIFAR-10 archive)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike[str], *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically (through a temporary file beside it), with a progress bar.

    Raises :class:`OSError` (``urllib.error.URLError`` and friends) when the download fails; the
    callers turn that into a :class:`DataNotFoundError` that says where to put the file by hand.
    Tests replace this function (``monkeypatch.setattr(data, "download", fake)``); the tasks call it
    through the module so that the replacement takes effect.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest) as part, urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", leave=False)
            except ImportError:  # pragma: no cover - tqdm is part of the experiments extra
                bar = None
        while True:
            block = response.read(1 << 16)
            if not block:
                break
            out.write(block)
            if bar is not None:
                bar.update(len(block))
        if bar is not None:
            bar.close()
    return dest


def fetch_or_explain(url: str, dest: Path, missing_message: str, *, allow_download: bool, progress: bool) -> Path:
    """Download ``url`` to ``dest`` when allowed; otherwise (or on failure) raise DataNotFoundError.

    ``missing_message`` says how to provide the file by hand; the reason for not downloading is appended.
    """
    if not (allow_download and downloads_allowed()):
        raise DataNotFoundError(f"{missing_message} (downloads are disabled: offline mode)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Look the function up on the module at call time so that a monkeypatched ``download`` is used.
        from autosgm.experiments import data as _self

        return _self.download(url, dest, progress=progress)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise DataNotFoundError(f"{missing_message} (the download of {url} failed: {exc})") from exc
