"""docs/recipes.md: every code block runs as written (HF Trainer, Lightning, accelerate, parameter
groups), and the parameter-grouping helper ``autosgm.weight_decay_groups``.

A block follows a ``<!-- recipe: NAME -->`` line; it is executed in an empty directory, and a block
whose framework is not installed is skipped.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from autosgm import AutoSGM, Window, WindowLR, weight_decay_groups

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def recipes() -> dict[str, str]:
    """Recipe name -> the code of its block."""
    text = RECIPES.read_text(encoding="utf-8")
    found = re.findall(r"<!-- recipe: ([\w-]+) -->\n```python\n(.*?)\n```", text, flags=re.S)
    return dict(found)


def execute(name: str, tmp_path, monkeypatch) -> dict:
    """Run the recipe ``name`` in an empty directory; its namespace afterwards."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"recipe_{name.replace('-', '_')}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frameworks' advice (workers, logging, ...)
        exec(compile(recipes()[name], f"docs/recipes.md:{name}", "exec"), namespace)
    return namespace


def test_every_recipe_is_here():
    assert set(recipes()) == {"param-groups", "hf-trainer", "lightning", "accelerate"}


def test_param_groups_recipe(tmp_path, monkeypatch):
    ns = execute("param-groups", tmp_path, monkeypatch)
    assert isinstance(ns["opt"], AutoSGM) and len(ns["opt"].param_groups) == 2


def test_hf_trainer_resumes_exactly(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    ns = execute("hf-trainer", tmp_path, monkeypatch)  # asserts equal parameters itself
    straight, resumed = ns["straight"], ns["resumed"]
    assert straight.state.global_step == resumed.state.global_step == ns["STEPS"]
    opts = [getattr(t.optimizer, "optimizer", t.optimizer) for t in (straight, resumed)]  # accelerate's wrapper
    assert all(isinstance(opt, AutoSGM) for opt in opts)
    for (p, q) in zip(straight.model.parameters(), resumed.model.parameters()):
        assert opts[0].state[p]["step"].item() == opts[1].state[q]["step"].item() == ns["STEPS"]
    assert isinstance(resumed.lr_scheduler, WindowLR)
    assert resumed.lr_scheduler.get_last_lr() == straight.lr_scheduler.get_last_lr()
    fresh = ns["make_trainer"]("unused").model
    assert any(not torch.equal(p, q) for p, q in zip(fresh.parameters(), resumed.model.parameters()))  # it trained
    assert (tmp_path / "interrupted" / "checkpoint-4" / "optimizer.pt").is_file()


def test_lightning_recipe(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    ns = execute("lightning", tmp_path, monkeypatch)
    trainer = ns["trainer"]
    assert trainer.global_step == ns["STEPS"]
    opt = trainer.optimizers[0]
    assert isinstance(opt, AutoSGM) and [g["weight_decay"] for g in opt.param_groups] == [1e-2, 0.0]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * Window(shape="cosine", tau=1, spe=16)(17), abs=1e-12)


def test_accelerate_recipe_equals_the_plain_loop(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    ns = execute("accelerate", tmp_path, monkeypatch)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = AutoSGM(weight_decay_groups(model, 1e-2), lr=1e-2, numerator="parcor-markov",
                  weight_decay=1e-2, decoupled_weight_decay=True)
    scheduler = WindowLR(opt, Window(shape="cosine", tau=1, spe=ns["STEPS"]))
    x = ns["x"]
    for inputs, targets in zip(x.split(32), x.sum(1, keepdim=True).split(32)):
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
        scheduler.step()
        opt.zero_grad()
    prepared = ns["accelerator"].unwrap_model(ns["model"])
    for p, q in zip(prepared.parameters(), model.parameters()):
        assert torch.equal(p, q)
    assert (tmp_path / "checkpoint").is_dir()


# --------------------------------------------------------------------------------------- the helper
def test_weight_decay_groups_split_by_dimension():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    decay, no_decay = weight_decay_groups(model, 0.05)
    assert [p.ndim for p in decay["params"]] == [4, 2] and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    from autosgm.experiments.optimizers import param_groups

    assert param_groups is weight_decay_groups  # one helper, not two


def test_weight_decay_groups_shared_frozen_and_matrix_only():
    embed = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied
    frozen = torch.nn.Linear(4, 4)
    frozen.requires_grad_(False)
    groups = weight_decay_groups(torch.nn.ModuleList([embed, head, frozen]), 0.1)
    assert len(groups) == 1 and groups[0]["params"] == [embed.weight]  # once; no empty vector group
    assert weight_decay_groups(torch.nn.Linear(2, 2), 0)[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("model, wd, error, match", [
    ([torch.nn.Parameter(torch.ones(2))], 0.1, TypeError, "model"),
    (torch.nn.Linear(2, 2), "0.1", TypeError, "weight_decay"),
    (torch.nn.Linear(2, 2), -0.1, ValueError, "weight_decay"),
    (torch.nn.Linear(2, 2), float("nan"), ValueError, "weight_decay"),
])
def test_weight_decay_groups_refuses(model, wd, error, match):
    with pytest.raises(error, match=match):
        weight_decay_groups(model, wd)


def test_the_readmes_first_example_runs_as_written():
    """The README's quick start (the configuration the robustness study supports) is executed as
    written, with a small ``loader``; the loss goes down."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=gen)
    y = x[:, :1] * 2.0 - x[:, 1:2]
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)] * 8
    scope = {"loader": loader}
    exec(compile(code, "README.md", "exec"), scope)
    model = scope["model"]
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(x), y).item()
    assert "parcor-markov" in code and scope["opt"].param_groups[0]["lr"] == 0.1
    assert final < 0.5 * torch.nn.functional.mse_loss(torch.zeros_like(y), y).item()
