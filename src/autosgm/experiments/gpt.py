"""A small, clean GPT (nanoGPT-style) and the language-modelling task base shared by two tasks.

Model: token + learned position embeddings, ``n_layer`` pre-LayerNorm transformer blocks (causal
multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``, then a
4×-wide GELU MLP, each in a residual branch), a final LayerNorm, and an output head tied to the token
embedding. Weights are initialized N(0, 0.02), residual projections N(0, 0.02/√(2·n_layer)) (GPT-2).

Task base: a language-modelling task holds its train and validation token streams as 1-D integer
arrays; a training batch is ``batch_size`` random windows of ``block_size + 1`` tokens (input and the
next-token targets); the metric is the mean next-token cross-entropy (nats per token) on fixed
evaluation windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from .tasks.base import Task, TaskSettings

__all__ = ["GPT", "GPTConfig", "Block", "SelfAttention", "LMSettings", "LanguageModelTask"]


@dataclass
class GPTConfig:
    """Shape of a :class:`GPT`."""

    vocab_size: int
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class SelfAttention(nn.Module):
    """Multi-head self-attention, ``softmax(q kᵀ/√d_head [+ causal mask]) v``, with an output projection."""

    def __init__(self, dim: int, n_head: int, *, causal: bool, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"dim ({dim}) must be divisible by n_head ({n_head})")
        self.n_head, self.causal, self.dropout = n_head, causal, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (MLP width ``mlp_ratio·dim``)."""

    def __init__(self, dim: int, n_head: int, *, causal: bool, mlp_ratio: float = 4.0, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.ln1 = nn.LayerNorm(dim, bias=bias)
        self.attn = SelfAttention(dim, n_head, causal=causal, dropout=dropout, bias=bias)
        self.ln2 = nn.LayerNorm(dim, bias=bias)
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    """A decoder-only transformer language model with weight tying (see the module docstring)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.n_embd, config.n_head, causal=True, dropout=config.dropout, bias=config.bias)
            for _ in range(config.n_layer)
        )
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(".proj.weight"):  # residual projections (attention and MLP)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights counted once; position embeddings excluded when ``non_embedding``)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(B, T, vocab)`` for token ids ``idx (B, T)``, and the mean cross-entropy against ``targets``."""
        b, t = idx.shape
        if t > self.config.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.config.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss


@dataclass
class LMSettings(TaskSettings):
    """Settings of the language-modelling tasks: the common ones plus the GPT's shape.

    Attributes:
        block_size: context length in tokens.
        n_layer, n_head, n_embd: depth, attention heads and width of the GPT.
        dropout: dropout probability (0 for the short CPU runs).
    """

    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0


class LanguageModelTask(Task):
    """Next-token prediction with a :class:`GPT` on two token streams (``train_tokens``, ``val_tokens``).

    Subclasses set ``train_tokens`` and ``val_tokens`` (1-D integer numpy arrays or memory maps) and
    ``vocab_size`` in ``__init__`` and then call :meth:`_setup_eval`.
    """

    metrics = ("loss",)
    #: The quick presets every language-model task shares (a subclass adds its "paper" one).
    LM_PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"steps": 10, "batch_size": 4, "eval_every": 5, "eval_batches": 1, "block_size": 16,
                 "n_layer": 1, "n_head": 2, "n_embd": 16},
        "cpu": {"steps": 600, "batch_size": 32, "eval_every": 30, "eval_batches": 4, "block_size": 64,
                "n_layer": 2, "n_head": 4, "n_embd": 64},
    }  # fmt: skip
    train_tokens: Any
    val_tokens: Any
    vocab_size: int

    def _windows(self, tokens: Any, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np

        span = self.settings.block_size + 1
        idx = starts.numpy()[:, None] + np.arange(span)[None, :]
        chunk = torch.from_numpy(np.asarray(tokens[idx]).astype(np.int64))
        chunk = chunk.to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]

    def _check_length(self, tokens: Any, split: str) -> None:
        if len(tokens) < self.settings.block_size + 2:
            raise ValueError(
                f"the {split} split has {len(tokens)} tokens, fewer than block_size + 2 = {self.settings.block_size + 2}"
            )

    def _setup_eval(self) -> None:
        self._check_length(self.train_tokens, "train")
        self._check_length(self.val_tokens, "validation")
        n_batches = max(self.settings.eval_batches, 1)
        gen = torch.Generator().manual_seed(0)
        span = self.settings.block_size + 1
        shape = (n_batches, self.settings.batch_size)
        self._eval_starts = {
            "train": torch.randint(len(self.train_tokens) - span + 1, shape, generator=gen),
            "val": torch.randint(len(self.val_tokens) - span + 1, shape, generator=gen),
        }

    def make_model(self) -> GPT:
        s = self.settings
        config = GPTConfig(
            vocab_size=self.vocab_size, block_size=s.block_size, n_layer=s.n_layer, n_head=s.n_head,
            n_embd=s.n_embd, dropout=s.dropout,
        )
        return GPT(config).to(self.device)

    def sampler(self, generator: torch.Generator):
        span = self.settings.block_size + 1
        high = len(self.train_tokens) - span + 1

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
            starts = torch.randint(high, (self.settings.batch_size,), generator=generator)
            return self._windows(self.train_tokens, starts)

        return next_batch

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return model(x, y)[1]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        try:
            for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
                total = torch.zeros((), dtype=torch.float64, device=self.device)
                for starts in self._eval_starts[split]:
                    x, y = self._windows(tokens, starts)
                    total += model(x, y)[1].double()
                out[f"{split}_loss"] = total.item() / len(self._eval_starts[split])
        finally:
            model.train(was_training)
        return out

    def describe(self) -> dict[str, Any]:
        return {"vocab_size": int(self.vocab_size), "train_tokens": int(len(self.train_tokens)), "val_tokens": int(len(self.val_tokens))}
