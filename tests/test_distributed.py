"""Multi-process training with torch.distributed on CPU (gloo): DDP, ZeRO and FSDP2.

Each test spawns 2 local processes (``torch.multiprocessing``, start method "spawn") that write
their results to a temporary file; the test compares them with one process training on the
combined batch, in float64. Every rank computes the mean loss over its half of the batch, so the
averaged gradient (DDP all-reduce, FSDP2 reduce-scatter) is the combined batch's gradient.
See docs/distributed.md for what is and is not supported.
"""

from __future__ import annotations

import datetime
import gc
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from autosgm import AutoSGM, Window

from helpers import batch

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

WORLD = 2
STEPS = 8
JOB_TIMEOUT_S = 150.0

#: name -> AutoSGM keyword arguments (module level so that the spawned processes can see them)
CONFIGS: dict[str, dict[str, Any]] = {
    "adam": dict(lr=1e-2),
    "nesterov": dict(lr=1e-2, betas=(0.9, 0.999), gamma=0.9 / 1.9, eta=1.9, debias=False, normalize=False),
    "parcor-markov-tensor-window": dict(
        lr=1e-2, gamma=0.3, numerator="parcor-markov", weight_decay=1e-2, decoupled_weight_decay=True,
        window=Window(shape="cosine", tau=2, spe=3)),  # fmt: skip
    "parcor-markov-element": dict(lr=1e-2, numerator="parcor-markov", numerator_mode="element"),
    "parcor-chebyshev-tensor": dict(lr=1e-2, gamma=0.3, numerator="parcor-chebyshev", weight_decay=1e-3),
    "parcor-bounded-tensor": dict(lr=1e-2, numerator="parcor-bounded"),
    "parcor-maxbound-tensor": dict(lr=1e-2, numerator="parcor-maxbound"),
    "corr-tensor": dict(lr=0.1, numerator="corr"),
    "corr-element": dict(lr=0.1, numerator="corr", numerator_mode="element"),
}
#: name -> (constructor, keyword arguments) of the matrix oracle (spec §9), on ``_matrix_net``: Muon's
#: point (the polar factor by the quintic iteration) and the averaged ``M`` (coupled Newton–Schulz)
#: with the matrix numerator
MATRIX_CONFIGS: dict[str, tuple[Callable[..., AutoSGM], dict[str, Any]]] = {
    "muon": (AutoSGM.muon, dict(lr=2e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")),
    "matrix-parcor-markov-averaged": (AutoSGM, dict(lr=1e-2, oracle="matrix", numerator="parcor-markov",
                                                    matrix_pole=0.9)),
}  # fmt: skip
ELEMENT_WISE = ["adam", "nesterov", "parcor-markov-element", "corr-element"]
PER_TENSOR = ["parcor-markov-tensor-window", "parcor-chebyshev-tensor", "parcor-bounded-tensor",
              "parcor-maxbound-tensor", "corr-tensor"]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# model, data, single-process reference
# ------------------------------------------------------------------------------------------------
def _net() -> nn.Module:
    """Layers whose rows do not split evenly over 2 ranks: 16 → 8/8, 3 → 2/1, 1 → 1/0 (empty);
    a bias whose first shard is zero and one that is zero (``zero_tensor_start`` looks at the whole
    tensor, as one process does)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3), nn.Tanh(), nn.Linear(3, 1)
    ).double()
    with torch.no_grad():  # zero tensors for the parcor remedy, decided over the whole tensor:
        net[0].bias[:8] = 0.0  # rank 0's shard all zero, the tensor not
        net[2].bias.zero_()  # all zero, split 2/1
    return net


def _data(step: int, rank: int | None = None, poison: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The combined batch of 32 (``rank=None``) or rank's half of it; ``poison``: a NaN in row 0."""
    x, y = batch(step, torch.float64, n=32)
    y = y.sum(dim=1, keepdim=True)
    if poison:
        x = x.clone()
        x[0, 0] = float("nan")
    if rank is None:
        return x, y
    half = x.shape[0] // WORLD
    return x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()


def _matrix_net() -> nn.Module:
    """Two hidden weights that get the matrix oracle (16×6 and 8×16, both dims ≥ 4; the first is
    transposed to 6×16); the biases and the 1×8 output weight keep the element-wise oracle."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _model(name: str) -> nn.Module:
    return _matrix_net() if name in MATRIX_CONFIGS else _net()


def _optimizer(name: str, params, **extra: Any) -> AutoSGM:
    """The optimizer of a ``CONFIGS`` or ``MATRIX_CONFIGS`` name."""
    if name in MATRIX_CONFIGS:
        make, kwargs = MATRIX_CONFIGS[name]
        return make(params, **kwargs, **extra)
    return AutoSGM(params, **CONFIGS[name], **extra)


def _reference(name: str, steps: int = STEPS, poison_step: int | None = None, **extra: Any):
    """One process, the combined batch: the parameters and the optimizer after ``steps`` steps."""
    net = _model(name)
    opt = _optimizer(name, net.parameters(), **extra)
    for k in range(steps):
        opt.zero_grad()
        _loss(net, *_data(k, poison=k == poison_step)).backward()
        opt.step()
    return net, opt


def _close(got: list[torch.Tensor], want: list[torch.Tensor], tol: float = 1e-12) -> float:
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        if a.numel():
            worst = max(worst, (a - b).abs().max().item() / max(1.0, b.abs().max().item()))
    assert worst <= tol, worst
    return worst


# ------------------------------------------------------------------------------------------------
# spawning
# ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, job: Callable[..., Any], port: int, out: str, args: tuple) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # 2 processes on a small machine: no oversubscription
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(job(rank, *args), os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
        gc.collect()  # DDP/ZeRO objects and their pending gloo work go before the process group
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown: gloo's worker threads can abort it ("terminate called without
    # an active exception", SIGABRT) after the results are safely written.
    os._exit(0)


def _spawn(job: Callable[..., Any], tmp_path: Path, *args: Any) -> list[Any]:
    """Run ``job(rank, *args)`` in 2 processes; return each rank's result."""
    ctx = mp.start_processes(_entry, args=(job, _free_port(), str(tmp_path), args), nprocs=WORLD,
                             join=False, start_method="spawn")  # fmt: skip
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed job {job.__name__} did not finish in {JOB_TIMEOUT_S} s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _plain(t: Any) -> torch.Tensor:
    """A DTensor's full value (a collective: every rank must call it), or the tensor itself."""
    return t.full_tensor().detach().clone() if hasattr(t, "full_tensor") else t.detach().clone()


# ------------------------------------------------------------------------------------------------
# DistributedDataParallel
# ------------------------------------------------------------------------------------------------
def _ddp_job(rank: int, names: list[str]) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    out: dict[str, Any] = {}
    for name in names:
        net = _model(name)
        model = DDP(net)
        opt = _optimizer(name, net.parameters())
        for k in range(STEPS):
            opt.zero_grad()
            _loss(model, *_data(k, rank)).backward()
            opt.step()
        out[name] = [p.detach().clone() for p in net.parameters()]
    # nonfinite="skip": a NaN in rank 0's data reaches every rank through the all-reduce
    net = _net()
    model = DDP(net)
    opt = AutoSGM(net.parameters(), nonfinite="skip", **CONFIGS["parcor-markov-tensor-window"])
    for k in range(STEPS):
        opt.zero_grad()
        _loss(model, *_data(k, rank, poison=(k == 3 and rank == 0))).backward()
        opt.step()
    out["skip"] = [p.detach().clone() for p in net.parameters()]
    out["skipped_steps"] = list(opt.skipped_steps)
    return out


DDP_NAMES = ["adam", "nesterov", "parcor-markov-tensor-window", "parcor-chebyshev-tensor", "corr-element"]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """One spawn for the element-wise and the matrix-oracle configurations."""
    return _spawn(_ddp_job, tmp_path_factory.mktemp("ddp"), DDP_NAMES + list(MATRIX_CONFIGS))


def test_ddp_equals_one_process_on_the_combined_batch(ddp_results):
    results = ddp_results
    names = DDP_NAMES
    for name in names:
        ref, _ = _reference(name)
        _close(results[0][name], list(ref.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(results[0][name], results[1][name]))  # replicas agree
    # a non-finite gradient is skipped on every rank, as in one process
    ref, ref_opt = _reference("parcor-markov-tensor-window", poison_step=3, nonfinite="skip")
    assert ref_opt.skipped_steps == [1]
    for r in range(WORLD):
        assert results[r]["skipped_steps"] == [1]
        _close(results[r]["skip"], list(ref.parameters()))


def test_ddp_equals_one_process_for_the_matrix_oracle(ddp_results):
    """The matrix step reads only the all-reduced gradient and its own state (no collective of its
    own), so DDP is one process on the combined batch, to the tolerance of the element-wise case."""
    for name in MATRIX_CONFIGS:
        ref, ref_opt = _reference(name)
        weights = [ref[0].weight, ref[2].weight]
        assert all("moment" not in ref_opt.state[w] for w in weights)  # they got the matrix step
        assert ("matrix_m" in ref_opt.state[weights[0]]) == (name != "muon")
        assert "moment" in ref_opt.state[ref[4].weight]  # the 1×8 output weight: element-wise
        _close(ddp_results[0][name], list(ref.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(ddp_results[0][name], ddp_results[1][name]))


# ------------------------------------------------------------------------------------------------
# ZeroRedundancyOptimizer (optimizer state sharded by whole tensors)
# ------------------------------------------------------------------------------------------------
def _zero(net: nn.Module, name: str, **extra: Any):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(net.parameters(), optimizer_class=AutoSGM, **CONFIGS[name], **extra)


def _zero_job(rank: int, names: list[str], ckpt: str) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    out: dict[str, Any] = {}
    for name in names:
        net = _net()
        model = DDP(net)
        opt = _zero(net, name)
        for k in range(STEPS):
            opt.zero_grad()
            _loss(model, *_data(k, rank)).backward()
            opt.step()
        out[name] = [p.detach().clone() for p in net.parameters()]
        out[name + "/owned"] = [i for i, p in enumerate(net.parameters()) if p in opt.optim.state]

    # checkpoint: consolidate on rank 0, save, load into fresh objects on every rank, continue
    name = "parcor-chebyshev-tensor"
    net = _net()
    model = DDP(net)
    opt = _zero(net, name)
    half = STEPS // 2
    for k in range(half):
        opt.zero_grad()
        _loss(model, *_data(k, rank)).backward()
        opt.step()
    opt.consolidate_state_dict(to=0)
    if rank == 0:
        torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, ckpt)
    dist.barrier()
    saved = torch.load(ckpt, weights_only=True)
    torch.manual_seed(100 + rank)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    net.load_state_dict(saved["model"])
    model = DDP(net)
    opt = _zero(net, name)
    opt.load_state_dict(saved["opt"])
    for k in range(half, STEPS):
        opt.zero_grad()
        _loss(model, *_data(k, rank)).backward()
        opt.step()
    out["resumed"] = [p.detach().clone() for p in net.parameters()]

    # ZeRO's load_state_dict writes the local state itself and copies the saved group settings
    # over the local AutoSGM's: AutoSGM.load_state_dict (and its refusal) never runs
    other = _zero(_net(), "corr-tensor")
    other.load_state_dict(torch.load(ckpt, weights_only=True)["opt"])
    out["other/numerator"] = other.optim.param_groups[0]["numerator"]

    # nonfinite="skip" is decided by each rank's local optimizer, over the tensors it owns
    net = _net()
    model = DDP(net)
    opt = _zero(net, "adam", nonfinite="skip")
    opt.zero_grad()
    _loss(model, *_data(0, rank)).backward()
    opt.step()
    before = [p.detach().clone() for p in net.parameters()]
    opt.zero_grad()
    _loss(model, *_data(1, rank)).backward()
    net[0].weight.grad[0, 0] = float("nan")  # the same bad gradient on every rank, as after an all-reduce
    opt.step()
    out["skip/changed"] = [not torch.equal(p, b) for p, b in zip(net.parameters(), before)]
    out["skip/owned"] = [i for i, p in enumerate(net.parameters()) if p in opt.optim.state]
    out["skip/skipped"] = list(opt.optim.skipped_steps)
    return out


ZERO_NAMES = ["adam", "parcor-markov-tensor-window", "corr-tensor"]


@pytest.fixture(scope="module")
def zero_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero")
    return _spawn(_zero_job, tmp, ZERO_NAMES, str(tmp / "zero.pt"))


def test_zero_redundancy_optimizer_wraps_autosgm(zero_results):
    """Each rank's AutoSGM owns whole tensors (per-tensor statistics are exact); the result equals
    one process, also after a consolidated checkpoint is loaded into fresh objects."""
    results = zero_results
    names = ZERO_NAMES
    n = len(list(_net().parameters()))
    for name in names:
        ref, _ = _reference(name)
        for r in range(WORLD):
            _close(results[r][name], list(ref.parameters()))
        owned = [set(res[name + "/owned"]) for res in results]
        assert owned[0] and owned[1] and not owned[0] & owned[1] and owned[0] | owned[1] == set(range(n))
    ref, _ = _reference("parcor-chebyshev-tensor")
    for r in range(WORLD):
        _close(results[r]["resumed"], list(ref.parameters()))


def test_zero_loading_adopts_the_saved_settings(zero_results):
    """Documented limitation: ZeRO loads the state itself, so another configuration is not refused
    (as ``AutoSGM.load_state_dict`` would) but silently adopted, as plain torch.optim does."""
    for r in range(WORLD):
        assert zero_results[r]["other/numerator"] == "parcor-chebyshev"  # constructed with "corr"


def test_zero_skip_is_decided_per_rank_partition(zero_results):
    """Documented limitation: under ZeRO a group's "skip" covers only the tensors the rank owns.

    The rank owning the bad tensor skips its tensors; the other rank steps its own. (One process
    would skip the whole group; check finiteness globally before ``step()`` to get that.)
    """
    results = zero_results
    owner = next(r for r in range(WORLD) if 0 in results[r]["skip/owned"])
    changed = results[0]["skip/changed"]
    assert changed == results[1]["skip/changed"]  # the parameters are broadcast: every rank agrees
    for i, moved in enumerate(changed):
        assert moved == (i not in results[owner]["skip/owned"])
    assert results[owner]["skip/skipped"] == [1]
    assert results[1 - owner]["skip/skipped"] == []


# ------------------------------------------------------------------------------------------------
# FSDP2 (fully_shard: parameters and state are DTensors sharded on dim 0)
# ------------------------------------------------------------------------------------------------
def _fsdp_model() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    net = _net()
    for m in net:
        if isinstance(m, nn.Linear):
            fully_shard(m)
    fully_shard(net)
    return net


def _fsdp_run(rank: int, name: str, foreach: bool, poison: bool = False, dcp_dir: str | None = None,
              **extra: Any) -> dict[str, Any]:  # fmt: skip
    """Train the sharded model; ``dcp_dir``: save with torch.distributed.checkpoint half-way and
    continue in fresh objects; ``poison``: a NaN in rank 0's gradient shard at step 3."""
    net = _fsdp_model()
    opt = AutoSGM(net.parameters(), foreach=foreach, **CONFIGS[name], **extra)
    for k in range(STEPS):
        if dcp_dir is not None and k == STEPS // 2:
            net, opt = _dcp_round_trip(net, opt, dcp_dir, lambda m: AutoSGM(m.parameters(), foreach=foreach,
                                                                             **CONFIGS[name], **extra))  # fmt: skip
        opt.zero_grad()
        _loss(net, *_data(k, rank)).backward()
        if poison and k == 3 and rank == 0:
            net[0].weight.grad.to_local()[0, 0] = float("nan")  # one bad value in rank 0's shard
        opt.step()
    params = list(net.parameters())
    out = {
        "kind": type(params[0]).__name__,
        "params": [_plain(p) for p in params],
        "state": [{k: _plain(v) for k, v in opt.state[p].items()} for p in params],
        "skipped_steps": list(opt.skipped_steps),
    }
    return out


def _dcp_round_trip(net: nn.Module, opt: AutoSGM, path: str, make: Callable[[nn.Module], AutoSGM]):
    """Save model and optimizer with torch.distributed.checkpoint; load them into fresh objects."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(net, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    torch.manual_seed(1)  # other initial values: the load must restore them
    fresh = _fsdp_model()
    for p in fresh.parameters():
        p.data.uniform_()  # (every rank writes its own shard)
    fresh_opt = make(fresh)
    model_sd, optim_sd = get_state_dict(fresh, fresh_opt)  # (initializes the optimizer state)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(fresh, fresh_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return fresh, fresh_opt


def _reductions() -> list[dict[str, Any]]:
    """What DTensor makes of the reductions a per-tensor statistic needs, on every sharded tensor."""
    out = []
    for p in _fsdp_model().parameters():
        mean = p.mean()
        try:
            full_mean = _plain(mean)
        except RuntimeError as exc:  # torch 2.6 with gloo: "Cannot use ReduceOp.AVG with Gloo"
            full_mean = str(exc)
        out.append({
            "local_rows": p.to_local().shape[0],
            "mean_placements": str(mean.placements),
            "mean": full_mean,
            "l1": _plain(torch.linalg.vector_norm(p, 1)),
            "foreach_l1": _plain(torch._foreach_norm([p], 1)[0]),
        })  # fmt: skip
    return out


def _global_finite_check(rank: int) -> str:
    """The workaround for shard-local checks: a norm over all shards sees rank 0's NaN everywhere."""
    net = _fsdp_model()
    _loss(net, *_data(0, rank)).backward()
    if rank == 0:
        net[0].weight.grad.to_local()[0, 0] = float("nan")
    try:
        torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"), error_if_nonfinite=True)
    except RuntimeError:
        return "non-finite"
    return "finite"


def _fsdp_job(rank: int, scenarios: list[tuple[str, str, bool, dict[str, Any]]]) -> dict[str, Any]:
    """Run each ``(key, config name, foreach, extra)`` scenario; an exception is recorded under
    its key (both ranks fail alike: the job goes on with the next scenario)."""
    out: dict[str, Any] = {"reductions": _reductions(), "global_check": _global_finite_check(rank)}
    for key, name, foreach, extra in scenarios:
        try:
            out[key] = _fsdp_run(rank, name, foreach, **extra)
        except Exception as exc:
            out[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    return out


def _key(name: str, foreach: bool) -> str:
    return f"{name}/{'foreach' if foreach else 'single'}"


def _check_fsdp(results, name: str, foreach: bool, prefix: str = "", **extra: Any) -> None:
    key = prefix + _key(name, foreach)
    for r in range(WORLD):
        assert "error" not in results[r][key], results[r][key].get("traceback")
    ref, ref_opt = _reference(name, **extra)
    for r in range(WORLD):
        got = results[r][key]
        assert got["kind"] == "DTensor"
        _close(got["params"], list(ref.parameters()))
        for st, p in zip(got["state"], ref.parameters()):
            want = ref_opt.state[p]
            assert st.keys() == want.keys()
            for buf in want:  # per-tensor statistics (0-d) are reductions over the full tensor
                _close([st[buf].to(want[buf].dtype).reshape(want[buf].shape)], [want[buf]])


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    """One 2-process job for every FSDP2 scenario, those expected to fail last."""
    scenarios = [(_key(name, fe), name, fe, {}) for name in ELEMENT_WISE for fe in (False, True)]
    scenarios += [(_key(name, fe), name, fe, {}) for name in PER_TENSOR for fe in (True, False)]
    tmp = tmp_path_factory.mktemp("fsdp")
    scenarios += [("dcp/" + _key(name, fe), name, fe, dict(dcp_dir=str(tmp / f"dcp-{name}-{fe}")))
                  for name in ("adam", "parcor-markov-element") for fe in (False, True)]  # fmt: skip
    scenarios += [("skip/" + _key("adam", fe), "adam", fe, dict(poison=True, nonfinite="skip")) for fe in (False, True)]
    try:
        return _spawn(_fsdp_job, tmp, scenarios)
    except Exception as exc:
        if "record_event" in str(exc):  # torch 2.6's FSDP2 needs a device stream: it cannot run on the CPU
            pytest.skip(f"FSDP2 does not run on the CPU with torch {torch.__version__}")
        raise


def test_fsdp2_dtensor_reductions_cover_the_full_tensor(fsdp_results):
    """The facts a per-tensor statistic relies on: ``mean()`` of a dim-0 sharded parameter is the
    unsharded mean once reduced (``full_tensor()``), and so are the L1 norms (``vector_norm``,
    ``_foreach_norm``), also for uneven shards and an empty one. Placement of ``mean()``: even
    shards give ``Partial(avg)`` (a pending reduction: the local value is the shard's mean), uneven
    ones ``Replicate()`` (gathered first)."""
    full = list(_net().parameters())
    rows = [[red["local_rows"] for red in res["reductions"]] for res in fsdp_results]
    assert [a + b for a, b in zip(*rows)] == [p.shape[0] for p in full]
    assert any(a != b for a, b in zip(*rows)) and 0 in rows[1]  # uneven, and one empty shard
    for res in fsdp_results:
        for red, p, a, b in zip(res["reductions"], full, *rows):
            assert red["mean_placements"] == ("(Partial(avg),)" if a == b else "(Replicate(),)")
            _close([red["l1"], red["foreach_l1"]], [p.detach().abs().sum(), p.detach().abs().sum()])
            if isinstance(red["mean"], str):  # (the package sums, and never averages, a sharded tensor)
                assert "AVG" in red["mean"] and a == b, red["mean"]
            else:
                _close([red["mean"]], [p.detach().mean()])


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("name", ELEMENT_WISE)
def test_fsdp2_element_wise_equals_unsharded(fsdp_results, name, foreach):
    _check_fsdp(fsdp_results, name, foreach)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("name", ["adam", "parcor-markov-element"])
def test_fsdp2_distributed_checkpoint_resumes_exactly(fsdp_results, name, foreach):
    """torch.distributed.checkpoint (get_state_dict / dcp.save / dcp.load / set_state_dict) half-way,
    fresh model and optimizer: the result equals uninterrupted unsharded training."""
    _check_fsdp(fsdp_results, name, foreach, prefix="dcp/")


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("name", PER_TENSOR)
def test_fsdp2_per_tensor_numerator_reduces_over_the_full_tensor(fsdp_results, name, foreach):
    """Wanted: the 0-d statistics equal the unsharded ones on every rank (reductions over the
    full tensor, not the shard), and so do the parameters."""
    _check_fsdp(fsdp_results, name, foreach)


def test_fsdp2_global_finite_check_agrees_on_every_rank(fsdp_results):
    """The documented workaround: ``clip_grad_norm_(..., error_if_nonfinite=True)`` reduces over
    all shards, so every rank sees a NaN that is in rank 0's shard only."""
    assert [res["global_check"] for res in fsdp_results] == ["non-finite"] * WORLD


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_fsdp2_skip_is_taken_by_every_rank(fsdp_results, foreach):
    results = fsdp_results
    key = "skip/" + _key("adam", foreach)
    net, opt = _reference("adam", poison_step=3, nonfinite="skip")
    assert opt.skipped_steps == [1]
    for r in range(WORLD):
        assert "error" not in results[r][key], results[r][key].get("traceback")
        assert results[r][key]["skipped_steps"] == [1]
        _close(results[r][key]["params"], list(net.parameters()))
