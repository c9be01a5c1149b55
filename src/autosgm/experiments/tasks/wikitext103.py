"""``wikitext103``: a GPT language model on a local copy of WikiText-103 (raw).

Data: the raw WikiText-103 files ``wiki.train.raw`` and ``wiki.valid.raw`` (``wiki.test.raw`` is not
used for training decisions) in a directory given by ``--data DIR`` or ``$AUTOSGM_WIKITEXT103``, or in
the cache (``$XDG_CACHE_HOME/autosgm/wikitext-103-raw/``); the directory may also be the parent of
``wikitext-103-raw/``. The task never downloads this 500 MB set.

Tokenizer (setting ``tokenizer``):

* ``"gpt2"`` — GPT-2's byte-pair encoding through ``tiktoken`` (optional dependency; vocabulary
  padded to 50,304). Token streams are cached as ``.npy`` files next to the data cache.
* ``"byte"`` — the UTF-8 bytes of the text, 256 symbols (no dependency; the files are memory-mapped).
* ``"auto"`` (default) — ``gpt2`` when tiktoken is installed and its GPT-2 encoding files are already
  in tiktoken's cache (so nothing is fetched), otherwise ``byte``.

Model: :class:`autosgm.experiments.gpt.GPT` (the ``paper`` preset is GPT-2 small, 124 M parameters,
with a 128-token context). Metric: next-token cross-entropy on the train and validation splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..._files import replacing
from .. import data as data_mod
from ..gpt import LanguageModelTask, LMSettings

__all__ = ["WikiText103Settings", "WikiText103Task", "find_wikitext103", "gpt2_encoding_cached", "ENV_VAR"]

ENV_VAR = "AUTOSGM_WIKITEXT103"
SUBDIR = "wikitext-103-raw"
SPLIT_FILES = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
GPT2_FILES = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)
GPT2_VOCAB_PADDED = 50304  # 50,257 rounded up to a multiple of 64


def _raw_dir(root: Path) -> Path | None:
    for candidate in (root, root / SUBDIR):
        if all((candidate / SPLIT_FILES[s]).is_file() for s in ("train", "val")):
            return candidate
    return None


def find_wikitext103(path: str | None = None) -> Path:
    """The directory holding ``wiki.train.raw`` and ``wiki.valid.raw``: ``path``, ``$AUTOSGM_WIKITEXT103`` or the cache."""
    given = data_mod.from_env_or_arg(path, ENV_VAR, "WikiText-103")
    needed = f"{SPLIT_FILES['train']} and {SPLIT_FILES['val']}"
    if given is not None:
        found = _raw_dir(given)
        if found is None:
            raise data_mod.DataNotFoundError(f"WikiText-103: {given} (or its sub-directory {SUBDIR}) does not hold {needed}")
        return found
    cached = data_mod.cache_dir() / SUBDIR
    found = _raw_dir(cached)
    if found is None:
        raise data_mod.DataNotFoundError(
            f"WikiText-103 not found: pass --data DIR or set {ENV_VAR}=DIR (a directory with {needed}), "
            f"or unpack the raw WikiText-103 files into {cached}"
        )
    return found


def _tiktoken_cache_dirs() -> list[Path]:
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return [Path(os.environ["TIKTOKEN_CACHE_DIR"])]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return [Path(os.environ["DATA_GYM_CACHE_DIR"])]
    import tempfile

    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    # Recent tiktoken versions cache in ~/.cache/tiktoken, older ones in <tmp>/data-gym-cache.
    return [Path(xdg) / "tiktoken", Path(tempfile.gettempdir()) / "data-gym-cache"]


def gpt2_encoding_cached() -> bool:
    """True when tiktoken is installed and its GPT-2 files are in its cache (loading needs no network)."""
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return False
    keys = [hashlib.sha1(url.encode()).hexdigest() for url in GPT2_FILES]
    return any(all((d / k).is_file() for k in keys) for d in _tiktoken_cache_dirs())


def _gpt2_tokens(path: Path, progress: bool):
    """GPT-2 token ids of a text file as a uint16 array, cached as ``.npy`` (keyed by path, size, mtime)."""
    import numpy as np
    import tiktoken

    stat = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = data_mod.cache_dir() / "tokens" / f"wikitext103-gpt2-{path.stem}-{tag}.npy"
    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    enc = tiktoken.get_encoding("gpt2")
    pieces = []
    lines = io.StringIO(data_mod.read_text(path, "WikiText-103")).readlines()
    chunk = 20000
    steps = range(0, len(lines), chunk)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"tokenize {path.name}", leave=False)
    for start in steps:
        ids = enc.encode_ordinary("".join(lines[start : start + chunk]))
        pieces.append(np.asarray(ids, dtype=np.uint16))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with replacing(cache) as tmp:
        np.save(tmp, tokens)
    return tokens


@dataclass
class WikiText103Settings(LMSettings):
    """Settings of ``wikitext103``: the language-model settings plus the tokenizer (auto, gpt2 or byte)."""

    tokenizer: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer not in ("auto", "gpt2", "byte"):
            raise ValueError(f"tokenizer must be 'auto', 'gpt2' or 'byte', got {self.tokenizer!r}")


class WikiText103Task(LanguageModelTask):
    """A GPT on local WikiText-103 raw files (GPT-2 BPE via tiktoken when available, else bytes)."""

    name = "wikitext103"
    summary = "GPT on a local WikiText-103 raw directory (--data DIR or $AUTOSGM_WIKITEXT103)"
    Settings = WikiText103Settings
    presets = {
        **LanguageModelTask.LM_PRESETS,
        "paper": {"steps": 20000, "batch_size": 64, "eval_every": 500, "eval_batches": 20, "block_size": 128,
                  "n_layer": 12, "n_head": 12, "n_embd": 768},
    }
    default_lr = 1e-3
    default_sgd_lr = 0.1
    default_weight_decay = 0.1
    data_help = f"--data DIR or ${ENV_VAR} (directory with wiki.train.raw and wiki.valid.raw); no download"

    def __init__(self, settings: WikiText103Settings, device: torch.device, data: str | None = None, *,
                 allow_download: bool = True, progress: bool = True) -> None:
        import numpy as np

        super().__init__(settings, device)
        self.path = find_wikitext103(data)
        tokenizer = settings.tokenizer
        if tokenizer == "auto":
            tokenizer = "gpt2" if gpt2_encoding_cached() else "byte"
        if tokenizer == "gpt2":
            try:
                import tiktoken  # noqa: F401
            except ImportError as exc:
                raise ImportError("tokenizer=gpt2 needs the optional package tiktoken (pip install tiktoken); "
                                  "use tokenizer=byte or auto otherwise") from exc
            self.train_tokens = _gpt2_tokens(self.path / SPLIT_FILES["train"], progress)
            self.val_tokens = _gpt2_tokens(self.path / SPLIT_FILES["val"], progress)
            self.vocab_size = GPT2_VOCAB_PADDED
        else:
            self.train_tokens = np.memmap(self.path / SPLIT_FILES["train"], dtype=np.uint8, mode="r")
            self.val_tokens = np.memmap(self.path / SPLIT_FILES["val"], dtype=np.uint8, mode="r")
            self.vocab_size = 256
        self.tokenizer = tokenizer
        # Record the concrete tokenizer in the settings, so that it is part of a run's key.
        self.settings = dataclasses.replace(settings, tokenizer=tokenizer)
        self._setup_eval()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "tokenizer": self.tokenizer}
