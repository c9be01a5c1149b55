"""``shakespeare-char``: a character-level GPT on the tiny-shakespeare corpus (nanoGPT's classic).

Data: the 1.1 MB tiny-shakespeare text. The task looks for it, in order, at ``--data PATH``, at
``$AUTOSGM_SHAKESPEARE``, in the cache (``$XDG_CACHE_HOME/autosgm/tinyshakespeare.txt``, default
``~/.cache/autosgm/``), and finally downloads the public file into the cache. The vocabulary is the
set of characters of the text (65 for the real corpus); the first 90 % of the characters are the
training split, the last 10 % the validation split.

Model: :class:`autosgm.experiments.gpt.GPT`; the ``cpu`` preset is a 2-layer, 64-wide model with a
64-character context that trains in well under a minute on two cores; the ``paper`` preset is the
study's set-up for a GPU: about 30 M parameters (6 layers, 640 wide), a 128-character context,
batch 64, 10,000 iterations.
Metric: next-character cross-entropy (nats per character).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import data as data_mod
from ..gpt import LanguageModelTask, LMSettings

__all__ = ["ShakespeareCharTask", "find_corpus", "SHAKESPEARE_URL", "ENV_VAR"]

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
ENV_VAR = "AUTOSGM_SHAKESPEARE"
CACHE_NAME = "tinyshakespeare.txt"


def find_corpus(path: str | None = None, *, allow_download: bool = True, progress: bool = True) -> Path:
    """The corpus file: ``path``, else ``$AUTOSGM_SHAKESPEARE``, else the cache, else a download into the cache.

    ``path`` (or the variable) may name the text file itself or a directory holding ``input.txt`` or
    ``tinyshakespeare.txt``. Raises :class:`~autosgm.experiments.data.DataNotFoundError` when no copy
    can be found or fetched.
    """
    given = data_mod.from_env_or_arg(path, ENV_VAR, "tiny-shakespeare corpus")
    if given is not None:
        if given.is_dir():
            for name in ("input.txt", CACHE_NAME):
                if (given / name).is_file():
                    return given / name
            raise data_mod.DataNotFoundError(
                f"tiny-shakespeare corpus: the directory {given} holds neither input.txt nor {CACHE_NAME}"
            )
        return given
    cached = data_mod.cache_dir() / CACHE_NAME
    if cached.is_file():
        return cached
    message = (
        f"tiny-shakespeare corpus not found: pass --data PATH, set {ENV_VAR}=PATH, or save "
        f"{SHAKESPEARE_URL} as {cached}"
    )
    return data_mod.fetch_or_explain(SHAKESPEARE_URL, cached, message, allow_download=allow_download, progress=progress)


class ShakespeareCharTask(LanguageModelTask):
    """Character-level GPT on tiny-shakespeare, 90/10 train/validation split."""

    name = "shakespeare-char"
    summary = "character-level GPT on tiny-shakespeare (download or --data; nanoGPT-style)"
    Settings = LMSettings
    presets = {
        **LanguageModelTask.LM_PRESETS,
        "paper": {"steps": 10000, "batch_size": 64, "eval_every": 200, "eval_batches": 20, "block_size": 128,
                  "n_layer": 6, "n_head": 10, "n_embd": 640, "dropout": 0.2},
    }
    default_lr = 3e-3
    default_sgd_lr = 0.3
    default_weight_decay = 0.1
    data_help = f"--data PATH or ${ENV_VAR} (text file), else the cache, else a download of {SHAKESPEARE_URL}"

    def __init__(self, settings: LMSettings, device: torch.device, data: str | None = None, *,
                 allow_download: bool = True, progress: bool = True) -> None:
        import numpy as np

        super().__init__(settings, device)
        self.path = find_corpus(data, allow_download=allow_download, progress=progress)
        text = data_mod.read_text(self.path, "tiny-shakespeare corpus")
        if len(text) < 100:
            raise ValueError(f"the corpus {self.path} is too short ({len(text)} characters)")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        self.chars = np.unique(codes)
        self.vocab_size = int(self.chars.size)
        tokens = np.searchsorted(self.chars, codes).astype(np.int16 if self.vocab_size < 2**15 else np.int32)
        n_train = int(0.9 * tokens.size)
        self.train_tokens, self.val_tokens = tokens[:n_train], tokens[n_train:]
        self._setup_eval()

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of a sequence of token ids."""
        return "".join(chr(int(self.chars[int(i)])) for i in ids)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "corpus_chars": int(len(self.train_tokens) + len(self.val_tokens))}
