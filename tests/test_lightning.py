"""AutoSGM under a PyTorch Lightning ``Trainer`` (automatic optimization: closure-driven steps).

Lightning calls ``optimizer.step(closure)``, where the closure runs ``training_step``, zeroes the
gradients and back-propagates. The trained parameters must equal a manual closure-driven loop
over the same batches, with and without an LR scheduler, and across a Lightning checkpoint.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from autosgm import AutoSGM, Window, WindowLR

from helpers import batch, make_net, max_rel_diff

L = pytest.importorskip("lightning")

STEPS = 8
BATCHES_PER_EPOCH = 4
OPT_KWARGS = dict(lr=1e-2, gamma=0.3, numerator="parcor-markov", weight_decay=1e-2, decoupled_weight_decay=True)


class _Batches(torch.utils.data.Dataset):
    """Item k is the whole k-th batch of the helpers' data stream."""

    def __len__(self) -> int:
        return BATCHES_PER_EPOCH

    def __getitem__(self, k: int):
        return batch(k)


class _Module(L.LightningModule):
    """``by_step``: train on batch ``global_step`` (mod 4) instead of the loader's batch, so that the
    data does not depend on where Lightning's loops resume inside an epoch."""

    def __init__(self, scheduled: bool = False, by_step: bool = False) -> None:
        super().__init__()
        self.net = make_net()
        self.scheduled = scheduled
        self.by_step = by_step
        self.calls = 0

    def training_step(self, data, batch_idx):
        self.calls += 1
        x, y = batch(self.global_step % BATCHES_PER_EPOCH) if self.by_step else data
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        opt = AutoSGM(self.parameters(), **OPT_KWARGS)
        if not self.scheduled:
            return opt
        sched = WindowLR(opt, Window(shape="cosine", tau=1, spe=STEPS))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _fit(module: _Module, max_steps: int, tmp_path, ckpt_path: str | None = None) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, precision="64-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path), num_sanity_val_steps=0,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(_Batches(), batch_size=None, shuffle=False, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on dataloader workers etc.
        trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


def _manual(steps: int, scheduled: bool = False):
    """The same training as a plain closure-driven loop."""
    net = make_net()
    opt = AutoSGM(net.parameters(), **OPT_KWARGS)
    sched = WindowLR(opt, Window(shape="cosine", tau=1, spe=STEPS)) if scheduled else None
    for k in range(steps):
        x, y = batch(k % BATCHES_PER_EPOCH)

        def closure():
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        if sched is not None:
            sched.step()
    return net, opt


@pytest.mark.parametrize("scheduled", [False, True], ids=["plain", "window-lr"])
def test_trainer_equals_a_manual_closure_loop(tmp_path, scheduled):
    module = _Module(scheduled)
    _fit(module, STEPS, tmp_path)
    ref, ref_opt = _manual(STEPS, scheduled)
    assert module.calls == STEPS  # one closure evaluation per step
    assert max_rel_diff(module.net, ref) <= 1e-12
    assert max_rel_diff(module.net, make_net()) > 1e-5  # it trained
    opt = module.optimizers().optimizer
    assert isinstance(opt, AutoSGM)
    assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-15)


def test_trainer_checkpoint_resumes_exactly(tmp_path):
    """Save through Lightning after 4 steps, resume in a fresh Trainer and module."""
    first = _Module(by_step=True)
    trainer = _fit(first, BATCHES_PER_EPOCH, tmp_path)
    ckpt = str(tmp_path / "half.ckpt")
    trainer.save_checkpoint(ckpt)
    resumed = _Module(by_step=True)
    torch.nn.init.zeros_(resumed.net[0].weight)  # other values: the checkpoint must restore them
    _fit(resumed, STEPS, tmp_path, ckpt_path=ckpt)
    ref, ref_opt = _manual(STEPS)
    assert resumed.calls == STEPS - BATCHES_PER_EPOCH
    assert max_rel_diff(resumed.net, ref) <= 1e-12
    opt = resumed.optimizers().optimizer
    for p, q in zip(resumed.net.parameters(), ref.parameters()):
        assert opt.state[p]["step"].item() == ref_opt.state[q]["step"].item() == STEPS
