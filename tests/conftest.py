import sys
from pathlib import Path

import pytest
import torch

# Make tests/helpers.py importable as `helpers` from every test module.
sys.path.insert(0, str(Path(__file__).parent))

# The tests step small tensors: one intra-op thread is faster than two spinning on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def torch_muon_in_float32(monkeypatch):
    """torch's Muon casts to bfloat16 (on every device); redirect that cast to a float32 copy, so that
    its Newton–Schulz runs in float32 (test-only: the cast is ``Tensor.bfloat16``)."""
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self: self.to(torch.float32, copy=True))
