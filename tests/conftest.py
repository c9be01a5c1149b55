import sys
from pathlib import Path

import torch

# Make tests/helpers.py importable as `helpers` from every test module.
sys.path.insert(0, str(Path(__file__).parent))

# The tests step small tensors: one intra-op thread is faster than two spinning on a 2-core machine.
torch.set_num_threads(1)
