"""FSDP2: masks sharded with their weights, selection exact per whole layer.

Each test spawns 2 or 4 gloo ranks on the CPU (as tests/dst_core/test_distributed.py does),
`fully_shard`s a small MLP per Linear and compares the whole-layer masks (gathered at the end
only, for the check) with the DDP run of the same job and, for static and RigL, with one
process trained on the concatenation of every rank's batch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dst_core import REGISTRY, SparseDriver
from dst_core.distributed import MaskDivergenceError, mask_hash
from dst_core.selection import random_choice, select_mask
from tests.dst_core.gloo_ranks import init_rank, spawn_ranks

TOTAL_STEPS = 12
INTERVAL_STEPS = 3
BATCH = 8
SHARDED_METHODS = ["dense", "static", "set", "set_magnitude", "rigl", "srigl"]


def _model() -> nn.Module:
    torch.manual_seed(0)  # one model: FSDP shards it, DDP replicates it
    # 33 rows do not split evenly over 2 or 4 ranks: uneven shards are covered
    return nn.Sequential(nn.Linear(20, 33), nn.ReLU(), nn.Linear(33, 24), nn.ReLU(),
                         nn.Linear(24, 5))


def _fsdp(model: nn.Module, world: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for module in model:
        if isinstance(module, nn.Linear):
            fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * rank + step)  # every rank its own data
    inputs = torch.randn(BATCH, 20, generator=generator)
    return inputs, torch.randint(0, 5, (BATCH,), generator=generator)


def _whole_batch(world: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_batch(rank, step) for rank in range(world)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _driver(method: str, model: nn.Module, optimizer, seed: int, **options) -> SparseDriver:
    return SparseDriver(model, optimizer, method=method, density=0.3, total_steps=TOTAL_STEPS,
                        interval_steps=INTERVAL_STEPS, drop_fraction=0.3, seed=seed, **options)


def _train(model: nn.Module, driver: SparseDriver, batch, steps: int = TOTAL_STEPS) -> list:
    """`steps` steps; the changes of every step."""
    history = []
    for _ in range(steps):
        inputs, labels = batch(driver.step_count)
        nn.functional.cross_entropy(model(inputs), labels).backward()
        history.append(driver.step())
        driver.optimizer.zero_grad()
    return history


def _whole_masks(driver: SparseDriver) -> dict[str, torch.Tensor]:
    """Every layer's whole mask on every rank (gathered for the check only)."""
    masks = {}
    for layer in driver.layers:
        if driver.sharding is None:
            masks[layer.name] = layer.mask.clone()
            continue
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, layer.mask)
        masks[layer.name] = torch.cat(parts).view(layer.shape)
    return masks


def _whole_weights(driver: SparseDriver) -> dict[str, torch.Tensor]:
    return {layer.name: (layer.weight.full_tensor() if driver.sharding is not None
                         else layer.weight).detach().clone() for layer in driver.layers}


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, float((a | b).sum()))


def _fsdp_and_ddp(rank: int, world: int, folder: str, methods: list[str]) -> None:
    init_rank(rank, world, folder)
    results = {}
    for method in methods:
        ddp = DistributedDataParallel(_model())
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        driver = _driver(method, ddp.module, optimizer, seed=rank)
        _train(ddp, driver, lambda step: _batch(rank, step))
        ddp_masks, ddp_weights = _whole_masks(driver), _whole_weights(driver)

        model = _fsdp(_model(), world)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        driver = _driver(method, model, optimizer, seed=rank)
        assert driver.sharding is not None and driver.distributed is driver.sharding
        initial = {layer.name: layer.active_count for layer in driver.layers}
        history = _train(model, driver, lambda step: _batch(rank, step))
        rewired = sum(bool(changes) for changes in history)
        if method not in ("dense", "static"):
            assert rewired >= 2, f"{method}: {rewired} rewires"
        fsdp_masks = _whole_masks(driver)
        for name, weight in _whole_weights(driver).items():
            # optimizer state restarted and grown weights drawn as under DDP: same training
            torch.testing.assert_close(weight, ddp_weights[name], rtol=1e-4, atol=1e-5,
                                       msg=lambda text, label=f"{method} {name}": f"{label}: {text}")
        for layer in driver.layers:
            whole = fsdp_masks[layer.name]
            assert layer.mask.shape == layer.weight.to_local().shape  # a shard, not the layer
            assert whole.shape == layer.weight.shape
            assert int(whole.sum()) == layer.active_count, f"{method}: {layer.name} count"
            if method != "srigl":  # SRigL's ablation may leave part of a budget unused
                assert layer.active_count == initial[layer.name], f"{method}: {layer.name}"
            grad = layer.weight.grad
            assert grad is None or not grad.to_local()[~layer.mask].any()
            assert not layer.weight.detach().to_local()[~layer.mask].any()
            for key, value in optimizer.state[layer.weight].items():  # restarted when dropped
                if isinstance(value, torch.Tensor) and value.shape == layer.weight.shape:
                    assert not value.to_local()[~layer.mask].any(), f"{method}: {key}"
        for changes in history:  # rank 0 holds the whole layers' changes
            for change in changes:
                if rank == 0 and method != "srigl":
                    assert change.added.numel() == change.removed.numel()
        results[method] = {"fsdp": fsdp_masks, "ddp": ddp_masks,
                           "itop": driver.itop_rate(), "density": driver.global_density()}
    if rank == 0:
        torch.save(results, Path(folder) / "masks.pt")
    dist.destroy_process_group()


def _one_process(method: str, world: int) -> dict[str, torch.Tensor]:
    """The same job in this process, on every rank's batch at once."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    driver = _driver(method, model, optimizer, seed=0)
    _train(model, driver, lambda step: _whole_batch(world, step))
    return {layer.name: layer.mask.clone() for layer in driver.layers}


@pytest.mark.parametrize("world", [2, 4])
def test_fsdp_masks_equal_ddp_and_one_process(world: int, tmp_path: Path) -> None:
    spawn_ranks(_fsdp_and_ddp, world, tmp_path, SHARDED_METHODS)
    results = torch.load(tmp_path / "masks.pt")
    for method in SHARDED_METHODS:
        fsdp, ddp = results[method]["fsdp"], results[method]["ddp"]
        for name, mask in fsdp.items():
            if method in ("dense", "static", "set", "set_magnitude"):
                assert torch.equal(mask, ddp[name]), f"{method}: {name} differs from DDP"
            else:
                assert jaccard(mask, ddp[name]) >= 0.98, f"{method}: {name} vs DDP"
    for name, mask in results["srigl"]["fsdp"].items():  # constant fan-in across shards
        fan_in = mask.sum(1)
        assert (fan_in[fan_in > 0] == fan_in.max()).all(), f"srigl: {name} fan-in {fan_in}"
    for method in ("static", "rigl"):
        single = _one_process(method, world)
        for name, mask in results[method]["fsdp"].items():
            similarity = jaccard(mask, single[name])
            assert similarity >= (1.0 if method == "static" else 0.98), \
                f"{method}: {name} vs one process: Jaccard {similarity}"


def _rows_of(rank: int, world: int, rows: int) -> tuple[int, int]:
    """fully_shard's dim-0 split: ceil(rows / world) per rank, the last ones shorter."""
    per_rank = -(-rows // world)
    start = min(rows, rank * per_rank)
    return start, min(rows, start + per_rank)


def _selection_matches(rank: int, world: int, folder: str) -> None:
    from dst_core.sharded import Sharding, ShardLayout, random_choice_sharded, select_sharded

    init_rank(rank, world, folder)
    sharding = Sharding.over()
    rows, columns = 301, 300  # 90,300 entries: past SORT_BELOW, the sampled-threshold path
    start, stop = _rows_of(rank, world, rows)
    flat_start, flat_stop = start * columns, stop * columns
    row_counts = [_rows_of(r, world, rows) for r in range(world)]
    layout = ShardLayout(shape=(rows, columns), local_shape=(stop - start, columns),
                         row_offset=start, flat_offset=flat_start, rank=rank, world_size=world,
                         flat_counts=tuple((b - a) * columns for a, b in row_counts))
    generator = torch.Generator().manual_seed(7)
    # few distinct values: thousands of ties, broken by global index
    scores = torch.randint(0, 50, (rows * columns,), generator=generator).float()
    eligible = torch.rand(rows * columns, generator=generator) < 0.4
    for count, largest, use_eligible in [(1, True, False), (2000, False, True),
                                         (9000, True, True), (35000, True, False),
                                         (30000, False, True)]:
        whole = select_mask(scores, count, eligible=eligible if use_eligible else None,
                            largest=largest)
        part = select_sharded(sharding, scores[flat_start:flat_stop], count,
                              eligible=eligible[flat_start:flat_stop] if use_eligible else None,
                              largest=largest)
        assert torch.equal(part, whole[flat_start:flat_stop]), (count, largest, use_eligible)
    for excluded_share, count in [(0.1, 3000), (0.1, 60000), (0.95, 2000), (0.5, 40)]:
        excluded = torch.rand(rows * columns, generator=generator) < excluded_share
        candidates = int((~excluded).sum())
        whole = random_choice(excluded, count, candidates, torch.Generator().manual_seed(3))
        part = random_choice_sharded(sharding, excluded[flat_start:flat_stop], count,
                                     candidates, torch.Generator().manual_seed(3), layout)
        assert torch.equal(part, whole[flat_start:flat_stop]), (excluded_share, count)
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_selection_equals_whole_layer_selection(world: int, tmp_path: Path) -> None:
    spawn_ranks(_selection_matches, world, tmp_path)


def _record(rank: int, world: int, folder: str, method: str) -> None:
    """The same script on every rank: one run, recorded by rank 0, with whole layers."""
    from dst_core.recording import Recorder

    init_rank(rank, world, folder)
    model = _fsdp(_model(), world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    driver = _driver(method, model, optimizer, seed=rank)
    with Recorder(Path(folder) / "data", name="fsdp job", keyframe_every=2) as recorder:
        recorder.attach(driver)
        _train(model, driver, lambda step: _batch(rank, step))
        recorder.log(driver.step_count, loss=1.0)
    masks = _whole_masks(driver)
    if rank == 0:
        torch.save({"masks": masks, "step": driver.step_count, "itop": driver.itop_rate()},
                   Path(folder) / "final.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_rank_zero_records_one_run_with_whole_layers(method: str, tmp_path: Path) -> None:
    from dst_core.store import RunStore
    from dst_core.store.reader import RunReader

    spawn_ranks(_record, 2, tmp_path, method)
    final = torch.load(tmp_path / "final.pt")
    store = RunStore(tmp_path / "data")
    runs = store.list_runs()
    assert [run["name"] for run in runs] == ["fsdp job"]
    run = runs[0]
    assert run["status"] == "completed" and run["info"]["distributed"]["world_size"] == 2
    reader = RunReader(store)
    layers = reader.layers(run["id"])
    assert [layer["weight_shape"] for layer in layers] == [[33, 20], [24, 33], [5, 24]]
    events = store.read_events(run["id"], 0, 100_000)
    meta = next(event for event in events if event["type"] == "meta")
    sharding = meta["settings"]["sharding"]
    assert sharding["kind"] == "fsdp2" and sharding["mesh"] == [2]
    assert sharding["rows"]["0.weight"] == [17, 16]
    rewires = [event for event in events if event["type"] == "rewire"]
    assert len(rewires) >= 2  # deltas and keyframes (keyframe_every=2) both stored
    assert rewires[-1]["itop_rate"] == pytest.approx(final["itop"])
    for index, layer in enumerate(layers):
        stored, _ = reader.mask_at(run["id"], index, final["step"])
        assert torch.equal(torch.from_numpy(stored.copy()), final["masks"][layer["name"]])


def _refusals(rank: int, world: int, folder: str) -> None:
    init_rank(rank, world, folder)
    for method in sorted(set(REGISTRY) - set(SHARDED_METHODS)):
        model = _fsdp(_model(), world)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        with pytest.raises(ValueError, match=rf"method: '{method}' does not run on FSDP2"):
            _driver(method, model, optimizer, seed=0)
    model = _fsdp(_model(), world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="global_selection"):
        _driver("rigl", model, optimizer, seed=0, global_selection=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    hybrid = init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard"))
    model = fully_shard(_model(), mesh=hybrid)  # HSDP: a 2-D mesh
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="2-D device mesh.*HSDP"):
        _driver("rigl", model, optimizer, seed=0)
    dist.destroy_process_group()


def test_methods_not_sharded_refuse_at_construction(tmp_path: Path) -> None:
    spawn_ranks(_refusals, 2, tmp_path)


def _structured(rank: int, world: int, folder: str, method: str) -> None:
    """N:M groups run along a row; dim-0 sharding keeps every row whole on one rank."""
    init_rank(rank, world, folder)
    model = _fsdp(_model(), world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    driver = _driver(method, model, optimizer, seed=rank, structure="n:m", n=2, m=4,
                     distribution="uniform")
    history = _train(model, driver, lambda step: _batch(rank, step))
    if method != "static":
        assert sum(bool(changes) for changes in history) >= 2
    for layer in driver.layers:
        if layer.structure is None:  # rigl's uniform: the first layer stays dense
            assert layer.density == 1.0
            continue
        assert layer.structure.satisfied(layer.mask), f"{layer.name}: N:M broken on a shard"
    whole = _whole_masks(driver)
    if rank == 0:
        torch.save(whole, Path(folder) / "nm.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["static", "rigl"])
def test_n_m_structure_holds_on_every_shard(method: str, tmp_path: Path) -> None:
    from dst_core.structure import NMStructure

    spawn_ranks(_structured, 2, tmp_path, method)
    for name, mask in torch.load(tmp_path / "nm.pt").items():
        assert bool(mask.all()) or NMStructure(2, 4).satisfied(mask), name


def _perturbed_shard(rank: int, world: int, folder: str) -> None:
    init_rank(rank, world, folder)
    model = _fsdp(_model(), world)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    driver = _driver("rigl", model, optimizer, seed=rank)
    driver.distributed.verify()  # a healthy job passes
    if rank == world - 1:  # one connection moved in the last rank's rows only
        layer = driver.layers[1]
        mask = layer.mask.clone().reshape(-1)
        on, off = int(mask.nonzero()[0]), int((~mask).nonzero()[0])
        mask[on], mask[off] = False, True
        layer.mask = mask.view(layer.mask.shape)
    with pytest.raises(MaskDivergenceError) as raised:
        driver.distributed.verify()
    message = str(raised.value)
    assert "'2.weight'" in message and f"[{world - 1}]" in message, message
    dist.destroy_process_group()


def test_a_perturbed_shard_is_detected_naming_layer_and_rank(tmp_path: Path) -> None:
    spawn_ranks(_perturbed_shard, 2, tmp_path)


def test_shard_hashes_add_up_to_the_whole_layer_hash() -> None:
    from dst_core.sharded import _shard_hash

    mask = torch.rand(37, 11, generator=torch.Generator().manual_seed(1)) < 0.3
    flat = mask.reshape(-1)
    parts = [_shard_hash(flat[:150], 0), _shard_hash(flat[150:300], 150),
             _shard_hash(flat[300:], 300)]
    assert torch.equal(sum(parts), mask_hash(mask))


def _resume(rank: int, world: int, folder: str, method: str) -> None:
    """Each rank saves and loads its own rows' driver state; the job then goes on as if
    never interrupted."""
    init_rank(rank, world, folder)
    half = TOTAL_STEPS // 2

    def fresh(seed: int):
        model = _fsdp(_model(), world)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, optimizer, _driver(method, model, optimizer, seed=seed)

    model, optimizer, driver = fresh(rank)
    batch = lambda step: _batch(rank, step)  # noqa: E731
    _train(model, driver, batch, half)
    saved = {"model": {key: value.to_local().clone() for key, value in
                       model.state_dict().items()},
             "optimizer": copy.deepcopy(optimizer.state_dict()), "driver": driver.state_dict()}
    remaining = _train(model, driver, batch, TOTAL_STEPS - half)
    uninterrupted = _whole_masks(driver)

    model, optimizer, driver = fresh(100 + rank)
    for key, value in model.state_dict().items():
        with torch.no_grad():
            value.to_local().copy_(saved["model"][key])
    optimizer.load_state_dict(saved["optimizer"])
    driver.load_state_dict(saved["driver"])
    resumed = _train(model, driver, batch, TOTAL_STEPS - half)
    assert sum(map(bool, resumed)) == sum(map(bool, remaining))
    for name, mask in _whole_masks(driver).items():
        assert torch.equal(mask, uninterrupted[name]), f"{method}: {name} after resume"
    for layer in driver.layers:
        if rank == 0:
            assert torch.equal(layer.record, uninterrupted[layer.name])
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_each_rank_resumes_its_own_rows(method: str, tmp_path: Path) -> None:
    spawn_ranks(_resume, 2, tmp_path, method)


@pytest.mark.slow
def test_the_fsdp_example_records_one_run_with_its_layout(tmp_path: Path) -> None:
    """The docs' torchrun command, small: one run from rank 0, whole shapes, the layout."""
    import os
    import subprocess
    import sys

    from dst_core.store import RunStore
    from dst_core.store.reader import RunReader

    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "examples/fsdp_train.py", "--width", "16", "--depth", "1", "--heads", "2",
               "--epochs", "1", "--interval-steps", "5", "--method", "set",
               "--data-dir", str(tmp_path / "data"), "--name", "fsdp job"]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("epoch 1/1") == 1  # rank 0 reports
    store = RunStore(tmp_path / "data")
    runs = store.list_runs()
    assert [run["name"] for run in runs] == ["fsdp job"] and runs[0]["status"] == "completed"
    layers = RunReader(store).layers(runs[0]["id"])
    shapes = {layer["name"]: layer["weight_shape"] for layer in layers}
    assert shapes["blocks.0.qkv.weight"] == [48, 16] and shapes["blocks.0.up.weight"] == [64, 16]
    meta = next(event for event in store.read_events(runs[0]["id"], 0, 10_000)
                if event["type"] == "meta")
    assert meta["settings"]["sharding"]["rows"]["blocks.0.qkv.weight"] == [24, 24]
