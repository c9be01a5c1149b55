import sys
from pathlib import Path

import pytest
import torch

# Make tests/helpers.py importable as `helpers` from every test module.
sys.path.insert(0, str(Path(__file__).parent))

# The tests step small tensors: one intra-op thread is faster than two spinning on a 2-core machine.
torch.set_num_threads(1)


#: torch.optim.Muon, the matrix oracle's reference point, arrived in torch 2.9.
HAS_TORCH_MUON = hasattr(torch.optim, "Muon")


def pytest_collection_modifyitems(config, items):
    """Skip the comparisons with torch.optim.Muon on a torch that has none."""
    if HAS_TORCH_MUON:
        return
    skip = pytest.mark.skip(reason="torch.optim.Muon arrived in torch 2.9")
    for item in items:
        if item.get_closest_marker("torch_muon") or {"torch_muon", "torch_muon_in_float32"} & set(
                getattr(item, "fixturenames", ())):  # fmt: skip
            item.add_marker(skip)


@pytest.fixture
def torch_muon():
    """torch's Muon module (private names are read by the tests only, never by the package)."""
    import torch.optim._muon as module

    return module


@pytest.fixture
def torch_muon_in_float32(monkeypatch):
    """torch's Muon casts to bfloat16 (on every device); redirect that cast to a float32 copy, so that
    its Newton–Schulz runs in float32. Test-only. The cast is ``Tensor.bfloat16()`` in torch 2.13 and
    ``.to(dtype=torch.bfloat16, copy=True)`` in 2.15: the first is patched on the tensor class, the
    second by giving torch's Muon module a ``torch`` whose ``bfloat16`` is float32."""
    import types

    import torch.optim._muon as muon_module

    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self: self.to(torch.float32, copy=True))
    float32_torch = types.ModuleType("torch")
    float32_torch.__dict__.update(torch.__dict__)
    float32_torch.bfloat16 = torch.float32
    monkeypatch.setattr(muon_module, "torch", float32_torch)
