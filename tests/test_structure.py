"""The shape of the code the architecture promises: the step's math knows no backend, and the
default and multi-tensor paths reach the first parameter-sized kernel in at most four frames of
the package."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import autosgm.step
from autosgm import AutoSGM

_PACKAGE = Path(autosgm.step.__file__).resolve().parent

#: Tensor methods and functions that look at a tensor without computing on its elements.
_NOT_ARITHMETIC = {"__get__", "__getitem__", "__setitem__", "_base", "clone", "copy_", "count_nonzero", "data_ptr",
                   "detach", "device", "dim", "dtype", "element_size", "empty", "fill_", "grad", "is_complex",
                   "is_contiguous", "is_cuda", "is_floating_point", "is_sparse", "numel", "requires_grad",
                   "reshape", "shape", "size", "split", "stride", "to", "unbind", "view", "view_as_real",
                   "zeros_like", "stack", "cat", "_foreach_copy_"}  # fmt: skip


class _FirstKernel(TorchFunctionMode):
    """Records the package's frames at the first torch call that computes on a tensor of at least
    ``numel`` elements (a parameter, or a pack of them)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.frames = numel, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.frames is None and name not in _NOT_ARITHMETIC:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
            if any(t.numel() >= self.numel for t in tensors):
                names = [f.function for f in inspect.stack() if Path(f.filename).resolve().is_relative_to(_PACKAGE)]
                self.frames = list(reversed(names[: names.index("step") + 1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape", [(64, 48), (300, 300)], ids=["packed", "alone"])
@pytest.mark.parametrize("path", [dict(), dict(foreach=True)], ids=["default", "foreach"])
@pytest.mark.parametrize("numerator", ["unity", "parcor-markov"])
def test_the_first_kernel_is_at_most_four_package_frames_below_step(path, numerator, shape):
    """On the CPU a numerator's multi-tensor step packs small tensors and steps large ones alone
    (with a workspace): both count, and copying weights into a pack is not arithmetic."""
    params = [torch.nn.Parameter(torch.randn(shape)) for _ in range(2)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = AutoSGM(params, lr=1e-3, numerator=numerator, **path)
    opt.step()
    probe = _FirstKernel(params[0].numel())
    with probe:
        opt.step()
    assert probe.frames is not None and probe.frames[0] == "step"
    assert len(probe.frames) <= 4, probe.frames


def test_the_step_module_imports_no_backend():
    """The math imports the settings, the design points and the matrix functions, never the
    primitives (ops), the workspace (packing), the compiled path (fused) or the optimizer."""
    tree = ast.parse(Path(autosgm.step.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {node.module} if node.module else {alias.name for alias in node.names}
    assert imported <= {"__future__", "math", "typing", "torch", "config", "design", "matrix"}, imported
