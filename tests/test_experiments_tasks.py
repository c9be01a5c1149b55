"""Experiment tasks end to end at tiny sizes, their models, and where their data come from.

No test touches the network: the downloader is replaced, and CIFAR-10 / WikiText-103 are generated
in the tests' own file formats. The Shakespeare test uses the real corpus next to the checkout when it
is there (../shared/data/tinyshakespeare.txt), else a generated text.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from autosgm.experiments import DataNotFoundError, OptimizerConfig, data, make_task, run
from autosgm.experiments.gpt import GPT, GPTConfig
from autosgm.experiments.tasks import cifar10, shakespeare_char, wikitext103
from autosgm.experiments.tasks.base import EpochSampler, coerce_settings
from autosgm.experiments.tasks.digits import DigitsSettings

CORPUS = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"
DATA_VARS = ("AUTOSGM_SHAKESPEARE", "AUTOSGM_CIFAR10", "AUTOSGM_WIKITEXT103", "AUTOSGM_OFFLINE")
REAL_DOWNLOAD = data.download  # kept before the fixture below replaces it


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
    """Every test gets an empty cache, no data variables, and a downloader that fails loudly."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for var in DATA_VARS:
        monkeypatch.delenv(var, raising=False)

    def no_network(url, dest, **kw):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(data, "download", no_network)


def generated_text(n_lines: int = 400) -> str:
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
    lines = []
    for i in range(n_lines):
        speaker = ["HAMLET:", "OPHELIA:", "KING:"][i % 3]
        lines.append(speaker + "\n" + " ".join(rng.choice(words, size=8)).capitalize() + ".\n")
    return "\n".join(lines)


def write_cifar(root: Path, n_per_batch: int = 16, n_test: int = 12) -> Path:
    """CIFAR-10 python batches in the official format (pickled dicts with bytes keys)."""
    directory = root / cifar10.BATCH_DIR
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in [*((f, n_per_batch) for f in cifar10.TRAIN_FILES), (cifar10.TEST_FILE, n_test)]:
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=n).tolist(),
        }
        with open(directory / name, "wb") as fh:
            pickle.dump(batch, fh)
    return directory


def write_wikitext(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = " = Valkyria Chronicles = \n\n Senjō no Valkyria 3 : Unrecorded Chronicles is a game . \n" * 40
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        (root / name).write_text(text, encoding="utf-8")
    return root


def assert_valid_record(record: dict, task) -> None:
    curves = record["curves"]
    steps = task.settings.steps
    expected_steps = [0, *range(task.settings.eval_every, steps + 1, task.settings.eval_every)]
    if expected_steps[-1] != steps:
        expected_steps.append(steps)
    assert curves["step"] == expected_steps
    for metric in task.metrics:
        for split in ("train", "val"):
            values = curves[f"{split}_{metric}"]
            assert len(values) == len(expected_steps)
            assert all(math.isfinite(v) for v in values)
    if "acc" in task.metrics:
        assert all(0.0 <= v <= 1.0 for v in curves["val_acc"])
    assert record["status"] == "ok"
    assert record["task"] == task.name


# --------------------------------------------------------------------------------------- digits
def test_digits_end_to_end_learns():
    task = make_task("digits", preset="tiny", overrides={"steps": 30, "eval_every": 15, "hidden": 32})
    assert task.describe() == {"n_train": 1438, "n_val": 359, "n_classes": 10}
    record = run(task, OptimizerConfig.autosgm(1e-2), seed=0, progress=False)
    assert_valid_record(record, task)
    loss = record["curves"]["train_loss"]
    assert loss[-1] < 0.8 * loss[0]  # 30 Adam-point steps cut the loss of a random MLP clearly
    assert record["curves"]["val_acc"][-1] > 0.5  # far above chance (0.1)


def test_digits_split_is_fixed_and_disjoint():
    a = make_task("digits", preset="tiny")
    b = make_task("digits", preset="tiny")
    assert torch.equal(a.x_val, b.x_val)
    rows_train = {tuple(r) for r in a.x_train.tolist()}
    rows_val = [tuple(r) for r in a.x_val.tolist()]
    # sklearn's digits contain a few duplicate images, but nearly all validation images are unseen
    assert sum(r in rows_train for r in rows_val) < 10


def test_digits_refuses_data_path():
    with pytest.raises(ValueError, match="digits"):
        make_task("digits", preset="tiny", data="somewhere")


# --------------------------------------------------------------------------------------- settings
def test_settings_overrides_are_typed_and_checked():
    s = coerce_settings(DigitsSettings, {}, {"steps": "7", "hidden": "12", "val_fraction": "0.25", "grad-clip": "1"})
    assert (s.steps, s.hidden, s.val_fraction, s.grad_clip) == (7, 12, 0.25, 1.0)
    with pytest.raises(ValueError, match="unknown setting 'widht'"):
        coerce_settings(DigitsSettings, {}, {"widht": "3"})
    with pytest.raises(ValueError, match="hidden expects an integer"):
        coerce_settings(DigitsSettings, {}, {"hidden": "3.5"})
    with pytest.raises(ValueError, match="steps must be >= 1"):
        coerce_settings(DigitsSettings, {}, {"steps": "0"})
    s = coerce_settings(cifar10.Cifar10Settings, {}, {"augment": "false", "arch": "vit"})
    assert s.augment is False and s.arch == "vit"
    with pytest.raises(ValueError, match="arch"):
        coerce_settings(cifar10.Cifar10Settings, {}, {"arch": "vgg"})


def test_epoch_sampler_visits_every_example_once_per_epoch():
    sampler = EpochSampler(10, 3, torch.Generator().manual_seed(0))
    epoch = torch.cat([sampler.next() for _ in range(3)])  # 9 of 10, the incomplete last batch dropped
    assert len(set(epoch.tolist())) == 9
    second = torch.cat([sampler.next() for _ in range(3)])
    assert len(set(second.tolist())) == 9 and not torch.equal(epoch, second)


# --------------------------------------------------------------------------------------- GPT
def test_gpt_is_causal_tied_and_starts_at_log_vocab():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16))
    assert model.head.weight is model.wte.weight
    idx = torch.randint(0, 50, (3, 12))
    logits, loss = model(idx, torch.randint(0, 50, (3, 12)))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    logits2, _ = model(changed)
    assert torch.allclose(logits[:, :7], logits2[:, :7], atol=1e-6)  # no position sees the future
    assert not torch.allclose(logits[:, 7:], logits2[:, 7:])
    assert abs(loss.item() - math.log(50)) < 0.05  # N(0, 0.02) weights: near-uniform predictions
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=10, n_embd=10, n_head=3)


# --------------------------------------------------------------------------------------- shakespeare
def test_shakespeare_char_end_to_end(tmp_path):
    if CORPUS.is_file():
        path, vocab = CORPUS, 65
    else:
        text = generated_text()
        path = tmp_path / "input.txt"
        path.write_text(text, encoding="utf-8")
        vocab = len(set(text))
    task = make_task("shakespeare-char", preset="tiny", data=str(path), overrides={"steps": 12, "eval_every": 6})
    assert task.vocab_size == vocab
    n = len(task.train_tokens) + len(task.val_tokens)
    assert len(task.train_tokens) == int(0.9 * n)  # 90/10 split, train first
    text = path.read_text(encoding="utf-8")
    assert task.decode(task.val_tokens[:50]) == text[int(0.9 * n) : int(0.9 * n) + 50]
    record = run(task, OptimizerConfig.autosgm(1e-2, gamma="nag"), seed=1, progress=False)
    assert_valid_record(record, task)
    assert abs(record["curves"]["val_loss"][0] - math.log(vocab)) < 0.1
    assert record["curves"]["train_loss"][-1] < record["curves"]["train_loss"][0]


def test_shakespeare_sources_in_order(tmp_path, monkeypatch):
    env_file = tmp_path / "env.txt"
    env_file.write_text(generated_text(), encoding="utf-8")
    arg_dir = tmp_path / "argdir"
    arg_dir.mkdir()
    (arg_dir / "input.txt").write_text(generated_text(), encoding="utf-8")
    monkeypatch.setenv("AUTOSGM_SHAKESPEARE", str(env_file))
    assert shakespeare_char.find_corpus(str(arg_dir)) == arg_dir / "input.txt"  # --data wins
    assert shakespeare_char.find_corpus(None) == env_file  # then the variable
    monkeypatch.setenv("AUTOSGM_SHAKESPEARE", str(tmp_path / "missing.txt"))
    with pytest.raises(DataNotFoundError, match="AUTOSGM_SHAKESPEARE.*missing.txt"):
        shakespeare_char.find_corpus(None)  # a variable that points nowhere is an error, not a fallback


def test_shakespeare_downloads_into_the_cache_once(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dest, **kw):
        calls.append((url, Path(dest)))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_text(generated_text(), encoding="utf-8")
        return Path(dest)

    monkeypatch.setattr(data, "download", fake_download)
    cached = tmp_path / "xdg-cache" / "autosgm" / "tinyshakespeare.txt"
    task = make_task("shakespeare-char", preset="tiny")
    assert calls == [(shakespeare_char.SHAKESPEARE_URL, cached)]
    assert task.path == cached
    make_task("shakespeare-char", preset="tiny")
    assert len(calls) == 1  # the second time it comes from the cache


def test_shakespeare_missing_data_messages(tmp_path, monkeypatch):
    cached = tmp_path / "xdg-cache" / "autosgm" / "tinyshakespeare.txt"
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataNotFoundError, match=str(missing)) as info:
        make_task("shakespeare-char", preset="tiny", data=str(missing))
    assert isinstance(info.value, FileNotFoundError)

    monkeypatch.setenv("AUTOSGM_OFFLINE", "1")
    with pytest.raises(DataNotFoundError) as info:
        make_task("shakespeare-char", preset="tiny")
    message = str(info.value)
    assert "AUTOSGM_SHAKESPEARE" in message and str(cached) in message and "offline" in message
    monkeypatch.delenv("AUTOSGM_OFFLINE")

    def failing(url, dest, **kw):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(data, "download", failing)
    with pytest.raises(DataNotFoundError, match="no route to host") as info:
        make_task("shakespeare-char", preset="tiny")
    assert "--data PATH" in str(info.value)
    assert not cached.exists()


def test_download_is_atomic(tmp_path, monkeypatch):
    """The real downloader writes through a .part file: a complete file, or nothing at all."""
    import urllib.request

    class Response(io.BytesIO):
        headers = {"Content-Length": "11"}

        def __init__(self, payload: bytes, fail: bool) -> None:
            super().__init__(payload)
            self.fail = fail

        def read(self, n=-1):
            chunk = super().read(n)
            if self.fail and not chunk:
                raise OSError("connection reset")
            return chunk

    outcome = {"fail": True}
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response(b"hello world", outcome["fail"]))
    dest = tmp_path / "sub" / "file.txt"
    with pytest.raises(OSError, match="connection reset"):
        REAL_DOWNLOAD("https://example.invalid/file.txt", dest, progress=False)
    assert not dest.exists() and list((tmp_path / "sub").iterdir()) == []
    outcome["fail"] = False
    assert REAL_DOWNLOAD("https://example.invalid/file.txt", dest, progress=False) == dest
    assert dest.read_bytes() == b"hello world" and list((tmp_path / "sub").iterdir()) == [dest]


# --------------------------------------------------------------------------------------- cifar10
@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_cifar10_end_to_end(tmp_path, arch):
    write_cifar(tmp_path)
    task = make_task("cifar10", preset="tiny", data=str(tmp_path), overrides={"arch": arch})
    assert task.describe() == {"n_train": 80, "n_val": 12, "n_classes": 10}
    record = run(task, OptimizerConfig.autosgm(1e-3, numerator="parcor-markov", gamma="mls"), seed=0, progress=False)
    assert_valid_record(record, task)


def test_cifar10_reads_the_batches_exactly(tmp_path):
    directory = write_cifar(tmp_path)
    x_train, y_train, x_test, y_test = cifar10.load_cifar10(directory)
    with open(directory / "data_batch_2", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    assert x_train.shape == (80, 3, 32, 32) and x_test.shape == (12, 3, 32, 32)
    # rows are channel-major: 1024 red, 1024 green, 1024 blue values
    assert torch.equal(x_train[16:32].reshape(16, -1), torch.as_tensor(batch[b"data"]))
    assert y_train[16:32].tolist() == batch[b"labels"]
    # the parent directory and the batch directory itself are both accepted
    assert cifar10.find_cifar10(str(directory)) == directory == cifar10.find_cifar10(str(tmp_path))


def test_resnet18_has_the_cifar_shape():
    model = cifar10.ResNet18(10, width=64)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the standard CIFAR ResNet-18
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    small = cifar10.ResNet18(10, width=4)
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    vit = cifar10.ViT(10, dim=16, depth=1, heads=2, patch=4)
    assert vit.pos.shape == (1, 64, 16) and vit(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_cifar10_augmentation_is_a_padded_crop_or_its_mirror(tmp_path):
    write_cifar(tmp_path)
    task = make_task("cifar10", preset="tiny", data=str(tmp_path))
    x = task.x_train[:6]
    out = task.augment(x, torch.Generator().manual_seed(3))
    again = task.augment(x, torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == x.shape and torch.equal(out, again)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(x.shape[0]):
        crops = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    task.settings.augment = False
    assert torch.equal(task.augment(x, torch.Generator()), x)


def _cifar_archive(tmp_path: Path) -> bytes:
    src = tmp_path / "src"
    write_cifar(src)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(src / cifar10.BATCH_DIR, arcname=cifar10.BATCH_DIR)
    return buffer.getvalue()


def _batch_md5(directory: Path) -> dict[str, str]:
    """The MD5 digests of generated batch files (the official ones are in cifar10.BATCH_MD5)."""
    return {name: data.file_md5(directory / name) for name in (*cifar10.TRAIN_FILES, cifar10.TEST_FILE)}


def test_cifar10_download_and_extract(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(cifar10, "BATCH_MD5", _batch_md5(tmp_path / "src" / cifar10.BATCH_DIR))
    calls = []

    def fake_download(url, dest, **kw):
        calls.append(url)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(archive)
        return Path(dest)

    monkeypatch.setattr(data, "download", fake_download)
    task = make_task("cifar10", preset="tiny")
    assert calls == [cifar10.CIFAR10_URL]
    assert task.path == tmp_path / "xdg-cache" / "autosgm" / cifar10.BATCH_DIR
    make_task("cifar10", preset="tiny")
    assert len(calls) == 1


def test_cifar10_corrupt_download_is_refused(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", "0" * 32)
    monkeypatch.setattr(data, "download", lambda url, dest, **kw: Path(dest).write_bytes(archive) and Path(dest))
    with pytest.raises(DataNotFoundError, match="MD5"):
        make_task("cifar10", preset="tiny")
    assert not (tmp_path / "xdg-cache" / "autosgm" / "cifar-10-python.tar.gz").exists()


def test_cifar10_missing_data_messages(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError, match="data_batch_1") as info:
        make_task("cifar10", preset="tiny", data=str(empty))
    assert str(empty) in str(info.value)
    monkeypatch.setenv("AUTOSGM_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="AUTOSGM_CIFAR10"):
        make_task("cifar10", preset="tiny")


# --------------------------------------------------------------------------------------- wikitext103
def test_wikitext103_end_to_end_bytes(tmp_path, monkeypatch):
    root = write_wikitext(tmp_path / "wikitext-103-raw")
    monkeypatch.setattr(wikitext103, "gpt2_encoding_cached", lambda: False)
    monkeypatch.setenv("AUTOSGM_WIKITEXT103", str(tmp_path))  # the parent of wikitext-103-raw/ works
    task = make_task("wikitext103", preset="tiny")
    assert task.path == root
    assert task.vocab_size == 256 and task.settings.tokenizer == "byte"  # auto resolved, part of the key
    raw = (root / "wiki.train.raw").read_bytes()
    assert bytes(task.train_tokens[:200]) == raw[:200]
    record = run(task, OptimizerConfig.torch_adamw(3e-3), seed=0, progress=False)
    assert_valid_record(record, task)
    assert record["settings"]["tokenizer"] == "byte"


def test_wikitext103_gpt2_needs_tiktoken(tmp_path):
    write_wikitext(tmp_path)
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tiktoken"):
            make_task("wikitext103", preset="tiny", data=str(tmp_path), overrides={"tokenizer": "gpt2"})
        assert wikitext103.gpt2_encoding_cached() is False
    else:  # pragma: no cover - tiktoken is optional and absent in CI
        pytest.skip("tiktoken is installed")


def test_wikitext103_missing_data_message(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        make_task("wikitext103", preset="tiny")
    message = str(info.value)
    assert "AUTOSGM_WIKITEXT103" in message and "wiki.train.raw" in message
    assert str(tmp_path / "xdg-cache" / "autosgm" / "wikitext-103-raw") in message
    too_short = tmp_path / "short"
    too_short.mkdir()
    for name in ("wiki.train.raw", "wiki.valid.raw"):
        (too_short / name).write_text("tiny", encoding="utf-8")
    with pytest.raises(ValueError, match="fewer than block_size"):
        make_task("wikitext103", preset="tiny", data=str(too_short), overrides={"tokenizer": "byte"})


# --------------------------------------------------------------------------------------- cifar10: pickles are not trusted
class _RunsCode:
    """A pickle payload that creates ``marker`` when unpickled by a plain ``pickle.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _poison(directory: Path, marker: Path, name: str = "data_batch_1") -> None:
    with open(directory / name, "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), dtype=np.uint8), b"labels": [_RunsCode(marker)]}, fh)


def test_cifar10_a_batch_never_runs_code(tmp_path):
    directory = write_cifar(tmp_path)
    marker = tmp_path / "ran"
    _poison(directory, marker)
    with pytest.raises(ValueError, match=r"data_batch_1 is not a CIFAR-10 python batch.*builtins\.exec"):
        make_task("cifar10", preset="tiny", data=str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_reads_batches_of_every_pickle_protocol(tmp_path, protocol):
    """The official batches are protocol-2 pickles of Python 2; labels may be numpy integers."""
    directory = write_cifar(tmp_path)
    batch = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [np.int64(3), 7],
             b"batch_label": b"training batch 1 of 5", b"filenames": [b"a.png", b"b.png"]}
    with open(directory / "data_batch_1", "wb") as fh:
        pickle.dump(batch, fh, protocol=protocol)
    x, y = cifar10._read_batch(directory / "data_batch_1")
    assert y.tolist() == [3, 7] and torch.equal(x.reshape(2, -1), torch.as_tensor(batch[b"data"]))


def test_cifar10_cache_is_checked_before_it_is_read(tmp_path, monkeypatch):
    """Batches in the cache are read only when they are the official files (MD5)."""
    cache = tmp_path / "xdg-cache" / "autosgm"
    directory = write_cifar(cache)
    marker = tmp_path / "ran"
    _poison(directory, marker)
    monkeypatch.setenv("AUTOSGM_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="offline"):
        make_task("cifar10", preset="tiny")
    assert not marker.exists()
    monkeypatch.setattr(cifar10, "BATCH_MD5", _batch_md5(directory))  # (the poisoned file is "official" now)
    with pytest.raises(ValueError, match="builtins.exec"):
        make_task("cifar10", preset="tiny")
    assert not marker.exists()


def test_cifar10_archive_is_checked_before_it_is_extracted(tmp_path, monkeypatch):
    """An archive already in the cache (not just downloaded) is checked too, and removed when it fails."""
    cache = tmp_path / "xdg-cache" / "autosgm"
    cache.mkdir(parents=True)
    (cache / "cifar-10-python.tar.gz").write_bytes(_cifar_archive(tmp_path))
    with pytest.raises(DataNotFoundError, match="MD5"):
        make_task("cifar10", preset="tiny")
    assert not (cache / cifar10.BATCH_DIR).exists() and not (cache / "cifar-10-python.tar.gz").exists()


def test_cifar10_is_never_extracted_without_the_data_filter(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())
    cache = tmp_path / "xdg-cache" / "autosgm"
    cache.mkdir(parents=True)
    (cache / "cifar-10-python.tar.gz").write_bytes(archive)
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(DataNotFoundError, match="extraction filters"):
        make_task("cifar10", preset="tiny")
    assert not (cache / cifar10.BATCH_DIR).exists()


def test_cifar10_cache_that_fails_is_extracted_again_from_the_archive(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(cifar10, "BATCH_MD5", _batch_md5(tmp_path / "src" / cifar10.BATCH_DIR))
    cache = tmp_path / "xdg-cache" / "autosgm"
    directory = write_cifar(cache, n_per_batch=3)  # another (say, truncated) copy in the cache
    (cache / "cifar-10-python.tar.gz").write_bytes(archive)
    task = make_task("cifar10", preset="tiny")
    assert task.path == directory and task.describe()["n_train"] == 5 * 16
    assert cifar10._failed_md5(directory) is None


def test_digits_batch_larger_than_the_data_is_refused_when_built():
    with pytest.raises(ValueError, match=r"batch_size \(5000\) exceeds the number of training examples of digits"):
        make_task("digits", preset="tiny", overrides={"batch_size": 5000})
