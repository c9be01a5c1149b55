"""``cifar10``: ResNet-18 (CIFAR variant) or a small ViT on CIFAR-10.

Data: the standard CIFAR-10 python batches — ``data_batch_1`` … ``data_batch_5`` (50,000 training
images) and ``test_batch`` (10,000 images, the validation split here), each a pickled dict with
``b"data"`` (N × 3072 uint8, channel-major 32×32 images) and ``b"labels"``. The task looks for the
directory ``cifar-10-batches-py`` (or a directory holding the batch files) at ``--data DIR``, at
``$AUTOSGM_CIFAR10``, in the cache (``$XDG_CACHE_HOME/autosgm/``), and finally downloads and extracts
the official archive into the cache. Images are normalized with the usual per-channel mean and
standard deviation; training batches get a random 4-pixel-padded crop and a horizontal flip.

The batches are pickles. They are read by an unpickler that builds arrays, lists, numbers and
strings and nothing else, so loading one runs no code it may contain; the batches in the cache are
checked against the MD5 digests of the official files first, and the archive against its published
MD5 before it is extracted (with ``tarfile``'s ``"data"`` filter). A ``--data`` directory or
``$AUTOSGM_CIFAR10`` is the user's own copy and is not checked: it must be trusted.

Models:

* ``resnet18`` — the CIFAR ResNet-18: a 3×3 stride-1 stem (no max-pool), four stages of two basic
  blocks with widths w, 2w, 4w, 8w (w = 64 in the original), global average pooling, a linear head;
* ``vit`` — a small vision transformer: 4×4 patches (64 tokens), learned position embeddings,
  pre-LN transformer blocks, mean pooling, a linear head.

Metrics: cross-entropy loss and accuracy on (fixed subsets of) the train and test splits.
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .. import data as data_mod
from ..gpt import Block
from .base import ClassificationTask, TaskSettings

__all__ = ["Cifar10Settings", "Cifar10Task", "ResNet18", "ViT", "find_cifar10", "load_cifar10", "BATCH_MD5", "CIFAR10_URL",
           "ENV_VAR"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: MD5 of the official archive (checked before it is extracted).
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
#: MD5 of each batch file of the official archive (checked before the cache's copies are read).
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
ENV_VAR = "AUTOSGM_CIFAR10"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _batch_dir(root: Path) -> Path | None:
    for candidate in (root / BATCH_DIR, root):
        if all((candidate / name).is_file() for name in (*TRAIN_FILES, TEST_FILE)):
            return candidate
    return None


def find_cifar10(path: str | None = None, *, allow_download: bool = True, progress: bool = True) -> Path:
    """The directory holding the CIFAR-10 python batches.

    Looks at ``path``, else ``$AUTOSGM_CIFAR10`` (the user's copy, used as it is), else the cache,
    whose batches must match the official files' MD5 digests (:data:`BATCH_MD5`); each may be the
    ``cifar-10-batches-py`` directory or its parent. Otherwise extracts the official archive in the
    cache (downloaded first if missing) once it matches its published MD5. Raises
    :class:`~autosgm.experiments.data.DataNotFoundError` with the path to set when none works.
    """
    given = data_mod.from_env_or_arg(path, ENV_VAR, "CIFAR-10")
    needed = ", ".join((*TRAIN_FILES, TEST_FILE))
    if given is not None:
        found = _batch_dir(given)
        if found is None:
            raise data_mod.DataNotFoundError(
                f"CIFAR-10: {given} is not a CIFAR-10 python directory; it (or its sub-directory {BATCH_DIR}) "
                f"must hold {needed}"
            )
        return found
    cache = data_mod.cache_dir()
    found = _batch_dir(cache)
    if found is not None and _failed_md5(found) is None:
        return found
    archive = cache / "cifar-10-python.tar.gz"
    message = (
        f"CIFAR-10 not found: pass --data DIR or set {ENV_VAR}=DIR (the directory {BATCH_DIR} with {needed}, "
        f"or its parent), or extract {CIFAR10_URL} into {cache}"
    )
    if not archive.is_file():
        data_mod.fetch_or_explain(CIFAR10_URL, archive, message, allow_download=allow_download, progress=progress)
    if data_mod.file_md5(archive) != CIFAR10_MD5:
        archive.unlink()
        raise data_mod.DataNotFoundError(f"{message} (the archive {archive} failed its MD5 check and was removed)")
    _extract_batches(archive, cache, message)
    found = _batch_dir(cache)
    if found is None:
        raise data_mod.DataNotFoundError(f"{message} (the archive {archive} does not contain {BATCH_DIR}/ with {needed})")
    failed = _failed_md5(found)
    if failed is not None:
        raise data_mod.DataNotFoundError(f"{message} ({found / failed} does not match the official file's MD5)")
    return found


def _failed_md5(directory: Path) -> str | None:
    """The first batch file in ``directory`` whose MD5 is not the official file's, or None."""
    for name in (*TRAIN_FILES, TEST_FILE):
        if data_mod.file_md5(directory / name) != BATCH_MD5[name]:
            return name
    return None


def _extract_batches(archive: Path, cache: Path, message: str) -> None:
    """Extract the batch directory of the (verified) archive into ``cache``, through tarfile's
    ``"data"`` filter (no links out of the directory, no special files, no absolute paths)."""
    if not hasattr(tarfile, "data_filter"):  # Python < 3.10.12 / 3.11.4
        raise data_mod.DataNotFoundError(
            f"{message} (this Python has no tarfile extraction filters, needed to extract the archive safely: "
            "use Python >= 3.10.12, or extract it yourself)"
        )
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(BATCH_DIR + "/") and (m.isfile() or m.isdir())]
        tar.extractall(cache, members=members, filter="data")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR-10 batch holds (numpy arrays, lists, numbers, strings) and refuses
    any other object, so that loading a file runs no code it may contain."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # (protocol 5)
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it holds an object of type {module}.{name}, which a CIFAR-10 batch does not")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one batch file; ValueError naming the file when it is not a batch."""
    try:
        with open(path, "rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch: it holds a {type(batch).__name__}, not a dict")
    images = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if images is None or labels is None:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no data/labels entries)")
    try:
        x = torch.as_tensor(images, dtype=torch.uint8).reshape(-1, 3, 32, 32)
        y = torch.as_tensor(list(labels), dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 batch: its data or labels have the wrong form ({exc})") from None
    if y.numel() != x.shape[0]:
        raise ValueError(f"{path} is not a CIFAR-10 batch: {x.shape[0]} images but {y.numel()} labels")
    return x, y


def load_cifar10(directory: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: uint8 images ``(N, 3, 32, 32)`` and int64 labels."""
    parts = [_read_batch(directory / name) for name in TRAIN_FILES]
    x_test, y_test = _read_batch(directory / TEST_FILE)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), x_test, y_test


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with an identity (or 1×1 conv–BN) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 inputs: 3×3 stem, stages [2, 2, 2, 2] of widths w·(1, 2, 4, 8)."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, c_in = [], width
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for j in range(2):
                layers.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ViT(nn.Module):
    """A small vision transformer: patch embedding, position embedding, pre-LN blocks, mean pooling."""

    def __init__(self, num_classes: int = 10, *, image_size: int = 32, patch: int = 4, dim: int = 192,
                 depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"patch ({patch}) must divide image_size ({image_size})")
        n_tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            Block(dim, heads, causal=False, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


@dataclass
class Cifar10Settings(TaskSettings):
    """Settings of ``cifar10``.

    Attributes:
        arch: ``"resnet18"`` or ``"vit"``.
        width: ResNet-18 base width w (64 in the original).
        vit_dim, vit_depth, vit_heads, vit_patch: the ViT's width, blocks, heads and patch size.
        augment: random crop (4-pixel padding) and horizontal flip of training images.
        train_subset: train on the first N training images only (0 = all 50,000).
    """

    arch: str = "resnet18"
    width: int = 64
    vit_dim: int = 192
    vit_depth: int = 6
    vit_heads: int = 3
    vit_patch: int = 4
    augment: bool = True
    train_subset: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arch not in ("resnet18", "vit"):
            raise ValueError(f"arch must be 'resnet18' or 'vit', got {self.arch!r}")
        if self.width < 1 or self.train_subset < 0:
            raise ValueError(f"width must be >= 1 and train_subset >= 0, got {self.width}, {self.train_subset}")


class Cifar10Task(ClassificationTask):
    """ResNet-18 or a small ViT on CIFAR-10."""

    name = "cifar10"
    summary = "ResNet-18 (CIFAR stem) or a small ViT on CIFAR-10 (--data DIR, $AUTOSGM_CIFAR10 or download)"
    Settings = Cifar10Settings
    presets = {
        "tiny": {"steps": 4, "batch_size": 8, "eval_every": 2, "eval_batches": 1, "width": 4,
                 "vit_dim": 16, "vit_depth": 1, "vit_heads": 2, "vit_patch": 8},
        "cpu": {"steps": 300, "batch_size": 64, "eval_every": 50, "eval_batches": 8, "width": 16,
                "vit_dim": 96, "vit_depth": 4, "vit_heads": 3, "train_subset": 10000},
        "paper": {"steps": 78200, "batch_size": 128, "eval_every": 391, "eval_batches": 0, "width": 64,
                  "vit_dim": 192, "vit_depth": 6, "vit_heads": 3},
    }
    default_lr = 1e-3
    default_sgd_lr = 0.1
    default_weight_decay = 0.05
    default_sgd_weight_decay = 5e-4
    data_help = (f"--data DIR or ${ENV_VAR} (directory with the python batches; must be trusted), else the cache "
                 f"(MD5-checked), else a download of {CIFAR10_URL}")

    def __init__(self, settings: Cifar10Settings, device: torch.device, data: str | None = None, *,
                 allow_download: bool = True, progress: bool = True) -> None:
        super().__init__(settings, device)
        self.path = find_cifar10(data, allow_download=allow_download, progress=progress)
        x_train, y_train, x_val, y_val = load_cifar10(self.path)
        if settings.train_subset:
            x_train, y_train = x_train[: settings.train_subset], y_train[: settings.train_subset]
        self.x_train, self.y_train = x_train.to(self.device), y_train.to(self.device)
        self.x_val, self.y_val = x_val.to(self.device), y_val.to(self.device)
        self._mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        self._setup_eval()

    def describe(self) -> dict[str, object]:
        return {"n_train": int(self.y_train.numel()), "n_val": int(self.y_val.numel()), "n_classes": 10}

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self._mean) / self._std

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop of the 4-pixel zero-padded image and a horizontal flip with probability 1/2."""
        if not self.settings.augment:
            return x
        b, _, h, w = x.shape
        padded = F.pad(x, (4, 4, 4, 4))
        dy = torch.randint(0, 9, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 9, (b,), generator=generator).to(x.device)
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (b, h)
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (b, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        batch = torch.arange(b, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (b, h, w, c)
        return out.permute(0, 3, 1, 2).contiguous()

    def make_model(self) -> nn.Module:
        s = self.settings
        if s.arch == "resnet18":
            model: nn.Module = ResNet18(10, width=s.width)
        else:
            model = ViT(10, patch=s.vit_patch, dim=s.vit_dim, depth=s.vit_depth, heads=s.vit_heads)
        return model.to(self.device)
