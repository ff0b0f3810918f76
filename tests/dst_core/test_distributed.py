"""DDP: identical masks and weights on every rank, by construction, for every method.

Each test spawns 2 or 4 gloo ranks on the CPU (torch.multiprocessing), feeds every rank its
own data, wraps the model in DistributedDataParallel and gives each driver `seed=rank` (as
scripts seed per rank): the masks must still agree after every step. A failure inside a rank
is raised in the test process (gloo_ranks.spawn_ranks) with the rank's traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dst_core import REGISTRY, SparseDriver
from dst_core.distributed import MaskDivergenceError, mask_hash
from dst_core.recording import Recorder
from dst_core.store import RunStore
from tests.dst_core.gloo_ranks import init_rank, spawn_ranks

TOTAL_STEPS = 16
INTERVAL_STEPS = 4
BATCH = 16


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # a different init per rank: the driver must make them agree
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                         nn.Linear(24, 5))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * rank + step)  # every rank its own data
    inputs = torch.randn(BATCH, 20, generator=generator)
    return inputs, torch.randint(0, 5, (BATCH,), generator=generator)


def _driver(method: str, ddp: nn.Module, optimizer, seed: int, **options) -> SparseDriver:
    return SparseDriver(ddp.module, optimizer, method=method, density=0.3,
                        total_steps=TOTAL_STEPS, interval_steps=INTERVAL_STEPS,
                        drop_fraction=0.3, seed=seed, **options)


def _train_step(ddp: nn.Module, driver: SparseDriver, rank: int) -> list:
    inputs, labels = _batch(rank, driver.step_count)
    loss = nn.functional.cross_entropy(ddp(inputs), labels)
    loss.backward()
    changes = driver.step()
    driver.optimizer.zero_grad()
    return changes


def _same_everywhere(tensors: dict[str, torch.Tensor]) -> None:
    """Every rank's tensors equal rank 0's, bit for bit: one all_gather of their bytes (a
    collective per tensor made this the slowest test), the first that differs named."""
    names = list(tensors)
    flat = [tensors[name].detach().reshape(-1).contiguous() for name in names]
    wires = [part.to(torch.uint8) if part.dtype == torch.bool else part.view(torch.uint8) for part in flat]
    wire = torch.cat(wires)
    # The byte counts first: a rank holding another set or shape of tensors is named here,
    # not left to a gloo size error in the gather below.
    sizes = [torch.empty(len(wires), dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([part.numel() for part in wires], dtype=torch.int64))
    for other, counts in enumerate(sizes):
        assert torch.equal(counts, sizes[0]), f"rank {other} holds other tensors than rank 0: {names}"
    gathered = [torch.empty_like(wire) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, wire)
    for other, values in enumerate(gathered):
        if torch.equal(values, gathered[0]):
            continue
        start = 0
        for name, part in zip(names, wires, strict=True):
            end = start + part.numel()
            if not torch.equal(values[start:end], gathered[0][start:end]):
                raise AssertionError(f"{name} differs on rank {other} from rank 0")
            start = end


def _check_replicas(driver: SparseDriver, label: str) -> None:
    tensors = {}
    for layer in driver.layers:
        tensors[f"{label}: mask of {layer.name}"] = layer.mask
        tensors[f"{label}: weight of {layer.name}"] = layer.weight
        for key, buffer in layer.buffers.items():
            tensors[f"{label}: {key} of {layer.name}"] = buffer
        for key, value in driver.optimizer.state.get(layer.weight, {}).items():
            if isinstance(value, torch.Tensor) and value.shape == layer.weight.shape:
                tensors[f"{label}: optimizer {key} of {layer.name}"] = value
    _same_everywhere(tensors)


def _every_method(rank: int, world: int, folder: str, methods: list[str]) -> None:
    init_rank(rank, world, folder)
    for method in methods:
        ddp = DistributedDataParallel(_model(seed=rank))
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        driver = _driver(method, ddp, optimizer, seed=rank)
        _check_replicas(driver, f"{method} at construction")
        rewires = 0
        for _ in range(TOTAL_STEPS):
            changes = _train_step(ddp, driver, rank)
            rewires += bool(changes)
            _check_replicas(driver, f"{method} after step {driver.step_count}")
        if method not in ("dense", "static"):
            assert rewires >= 2, f"{method}: only {rewires} rewires changed a mask"
        for layer in driver.layers:  # DDP's reduction must keep .grad masked after backward
            assert layer.weight.grad is None or not layer.weight.grad[~layer.mask].any()
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_every_method_keeps_masks_and_weights_identical(world: int, tmp_path: Path) -> None:
    spawn_ranks(_every_method, world, tmp_path, sorted(REGISTRY))


def _dense_grad_is_reduced(rank: int, world: int, folder: str, method: str) -> None:
    init_rank(rank, world, folder)
    ddp = DistributedDataParallel(_model(seed=rank))
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    driver = _driver(method, ddp, optimizer, seed=rank)
    read: dict[str, torch.Tensor] = {}
    original = driver.dense_grad

    def spy(layer):
        grad = original(layer)
        if grad is not None:
            read[layer.name] = grad.clone()
        return grad

    driver.dense_grad = spy
    while not read:
        # The reference: this rank's own dense gradient, averaged over the ranks by hand.
        reference = _model(seed=0)
        reference.load_state_dict(ddp.module.state_dict())
        inputs, labels = _batch(rank, driver.step_count)
        nn.functional.cross_entropy(reference(inputs), labels).backward()
        expected = {name: parameter.grad.clone()
                    for name, parameter in reference.named_parameters()}
        local = {name: grad.clone() for name, grad in expected.items()}
        for grad in expected.values():
            dist.all_reduce(grad)
            grad.div_(world)
        _train_step(ddp, driver, rank)
    for name, grad in read.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7)
        assert not torch.allclose(grad, local[name]), f"{name}: the local, unreduced gradient"
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["rigl", "snfs"])
def test_rewires_read_the_all_reduced_dense_gradient(method: str, tmp_path: Path) -> None:
    spawn_ranks(_dense_grad_is_reduced, 2, tmp_path, method)


def _perturbed_rank(rank: int, world: int, folder: str) -> None:
    init_rank(rank, world, folder)
    ddp = DistributedDataParallel(_model(seed=rank))
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    driver = _driver("rigl", ddp, optimizer, seed=rank, verify_every=1)
    if rank == world - 1:  # one connection moved on the last rank only
        layer = driver.layers[1]
        mask = layer.mask.clone().reshape(-1)
        on, off = int(mask.nonzero()[0]), int((~mask).nonzero()[0])
        mask[on], mask[off] = False, True
        layer.mask = mask.view(layer.mask.shape)
    with pytest.raises(MaskDivergenceError) as raised:
        for _ in range(INTERVAL_STEPS):
            _train_step(ddp, driver, rank)
    message = str(raised.value)
    assert "'2.weight'" in message and f"[{world - 1}]" in message, message
    assert driver.step_count == INTERVAL_STEPS  # found at the first rewire's check
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_a_perturbed_rank_is_detected_naming_layer_and_rank(world: int, tmp_path: Path) -> None:
    spawn_ranks(_perturbed_rank, world, tmp_path)


def _resume(rank: int, world: int, folder: str, method: str) -> None:
    init_rank(rank, world, folder)
    half = TOTAL_STEPS // 2

    def fresh(seed: int):
        ddp = DistributedDataParallel(_model(seed=seed))
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        return ddp, optimizer, _driver(method, ddp, optimizer, seed=seed)

    ddp, optimizer, driver = fresh(rank)
    for _ in range(half):
        _train_step(ddp, driver, rank)
    if rank == 0:  # later collectives order the save before any rank's load
        torch.save({"model": ddp.module.state_dict(), "optimizer": optimizer.state_dict(),
                    "driver": driver.state_dict()}, Path(folder) / "checkpoint-0.pt")
    for _ in range(TOTAL_STEPS - half):
        _train_step(ddp, driver, rank)
    uninterrupted = {layer.name: (layer.mask.clone(), layer.weight.detach().clone())
                     for layer in driver.layers}

    ddp, optimizer, driver = fresh(100 + rank)  # another seed per rank before resuming
    state = torch.load(Path(folder) / "checkpoint-0.pt")  # saved once, by rank 0
    ddp.module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    driver.load_state_dict(state["driver"])
    _check_replicas(driver, f"{method} resumed")
    for _ in range(TOTAL_STEPS - half):
        _train_step(ddp, driver, rank)
        _check_replicas(driver, f"{method} resumed, step {driver.step_count}")
    for layer in driver.layers:
        mask, weight = uninterrupted[layer.name]
        assert torch.equal(layer.mask, mask), f"{method}: {layer.name} mask after resume"
        torch.testing.assert_close(layer.weight.detach(), weight)
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["set", "rigl", "deep_r"])
def test_checkpoint_resume_is_identical_on_every_rank(method: str, tmp_path: Path) -> None:
    spawn_ranks(_resume, 2, tmp_path, method)


def _record(rank: int, world: int, folder: str) -> None:
    """The same script on every rank, no `if rank == 0`: one run for the job."""
    init_rank(rank, world, folder)
    ddp = DistributedDataParallel(_model(seed=rank))
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    driver = _driver("set", ddp, optimizer, seed=rank)
    with Recorder(Path(folder) / "data", name="ddp job") as recorder:
        assert recorder.active == (rank == 0) and (recorder.run_id is None) == (rank != 0)
        recorder.attach(driver)
        for _ in range(TOTAL_STEPS):
            _train_step(ddp, driver, rank)
            recorder.log(driver.step_count, loss=1.0)
        recorder.eval(driver.step_count, test_accuracy=0.5)
    with Recorder(Path(folder) / "data", name=f"rank {rank}", all_ranks=True) as recorder:
        assert recorder.active
        recorder.log(0, loss=float(rank))
    dist.destroy_process_group()


def test_a_job_records_one_run_from_rank_zero(tmp_path: Path) -> None:
    spawn_ranks(_record, 2, tmp_path)
    store = RunStore(tmp_path / "data")
    runs = {run["name"]: run for run in store.list_runs()}
    assert sorted(runs) == ["ddp job", "rank 0", "rank 1"]
    job = runs["ddp job"]
    assert job["status"] == "completed"
    layout = job["info"]["distributed"]
    assert layout["world_size"] == 2 and layout["backend"] == "gloo"
    assert layout["ranks"] == [0, 1] and layout["rank"] == 0
    assert [event["step"] for event in store.read_events(job["id"], 0, 10_000)
            if event["type"] == "metrics"] == list(range(1, TOTAL_STEPS + 1))  # once each
    assert {runs[f"rank {r}"]["info"]["distributed"]["rank"] for r in (0, 1)} == {0, 1}


def test_mask_hash_tells_masks_apart() -> None:
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask.view(-1)[torch.randperm(4096, generator=torch.Generator().manual_seed(0))[:400]] = True
    moved = mask.clone().view(-1)
    first_on, first_off = int(moved.nonzero()[0]), int((~moved).nonzero()[0])
    moved[first_on], moved[first_off] = False, True  # same count, one connection moved
    assert torch.equal(mask_hash(mask), mask_hash(mask.clone()))
    assert not torch.equal(mask_hash(mask), mask_hash(moved.view(64, 64)))
    assert not torch.equal(mask_hash(mask), mask_hash(mask.transpose(0, 1).contiguous()))


def test_a_single_process_has_no_distributed_link() -> None:
    model = nn.Linear(8, 4)
    driver = SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=4)
    assert driver.distributed is None and "RANK" not in os.environ


def test_verify_every_must_not_be_negative() -> None:
    model = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="verify_every"):
        SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=4,
                     verify_every=-1)
