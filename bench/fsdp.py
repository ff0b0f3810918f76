"""Cost of one rewire under FSDP2 (sharded masks, exact selection across shards) vs DDP.

    .venv/bin/python bench/fsdp.py [--worlds 2 4] [--size 2048] [--layers 2] [--repeats 5]

Spawns `world` gloo ranks on the CPU (one thread each) holding an MLP of `--layers` square
`size`² layers at density 0.1, f = 0.3, and times one rewire of every layer (median of
`--repeats`, wall clock, the slowest rank's), for `set` and `rigl`:

- DDP: the all-reduce of the dense gradient RigL reads, the rewire of the whole layers on
  every rank, the mask-hash check;
- FSDP2 (`fully_shard` per layer): the rewire of each rank's rows with the distributed
  selection (sample all-gather, count all-reduce, band all-gather, changes gathered to rank
  0), the shard-hash check. The dense gradient is already reduce-scattered by FSDP.

Also printed: the peak bytes of mask a rank holds (whole layers under DDP, its rows under
FSDP) and one dense training step of the same model under DDP, for scale. On a machine with
fewer cores than ranks the ranks share cores: compare the two columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from dst_core import SparseDriver  # noqa: E402

METHODS = ["set", "rigl"]
DENSITY = 0.1
BATCH = 64


def _model(size: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(size, size, bias=False) for _ in range(layers)])


def _slowest(seconds: float) -> float:
    wire = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(wire, op=dist.ReduceOp.MAX)
    return float(wire)


def _time_rewire(driver: SparseDriver, repeats: int, grads) -> list[float]:
    timings = []
    for _ in range(repeats):
        driver._dense_grads = grads()  # what backward kept aside on a rewire step
        dist.barrier()
        start = time.perf_counter()
        driver.distributed.before_step()
        driver.distributed.reduce_dense_grads(driver._dense_grads)
        stepper = driver.sharding if driver.sharding is not None else driver.algorithm
        stepper.after_optimizer_step(driver, True)
        driver.distributed.after_rewire()
        timings.append(_slowest(time.perf_counter() - start))
    driver._dense_grads = {}
    return timings


def _rank(rank: int, world: int, folder: str, size: int, layers: int, repeats: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=world)
    rows = {}
    for method in METHODS:
        ddp = DistributedDataParallel(_model(size, layers))
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        driver = SparseDriver(ddp.module, optimizer, method=method, density=DENSITY,
                              distribution="uniform", total_steps=1000, drop_fraction=0.3,
                              interval_steps=1, first_layer_dense=False)
        inputs = torch.randn(BATCH, size)
        dist.barrier()
        start = time.perf_counter()
        ddp(inputs).square().mean().backward()
        dense_step = _slowest(time.perf_counter() - start)
        optimizer.zero_grad()
        ddp_grads = lambda d=driver: {layer.name: torch.randn(layer.shape)  # noqa: E731
                                      for layer in d.layers}
        ddp_time = statistics.median(_time_rewire(driver, repeats, ddp_grads))
        ddp_mask_bytes = sum(layer.mask.numel() for layer in driver.layers)

        model = _model(size, layers)
        mesh = init_device_mesh("cpu", (world,))
        for module in model:
            fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        driver = SparseDriver(model, optimizer, method=method, density=DENSITY,
                              distribution="uniform", total_steps=1000, drop_fraction=0.3,
                              interval_steps=1, first_layer_dense=False)

        def fsdp_grads(d=driver):
            return {layer.name: DTensor.from_local(
                torch.randn(layer.mask.shape), layer.weight.device_mesh,
                layer.weight.placements, shape=layer.weight.shape,
                stride=layer.weight.stride()) for layer in d.layers}

        fsdp_time = statistics.median(_time_rewire(driver, repeats, fsdp_grads))
        fsdp_mask_bytes = sum(layer.mask.numel() for layer in driver.layers)
        rows[method] = (ddp_time, fsdp_time, dense_step, ddp_mask_bytes, fsdp_mask_bytes)
    if rank == 0:
        torch.save(rows, Path(folder) / "rows.pt")
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"{args.layers} × {args.size}² layers, density {DENSITY}, f = 0.3; one rewire of "
          "every layer, median wall seconds (slowest rank); mask MB held per rank")
    print(f"{'ranks':>5} {'method':>7} {'DDP s':>8} {'FSDP s':>8} {'FSDP/DDP':>9} "
          f"{'dense fwd+bwd s':>16} {'mask MB DDP':>12} {'mask MB FSDP':>13}")
    multiprocessing.set_start_method("forkserver", force=True)
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as folder:
            mp.start_processes(_rank, args=(world, folder, args.size, args.layers,
                                            args.repeats),
                               nprocs=world, join=True, start_method="forkserver")
            rows = torch.load(Path(folder) / "rows.pt")
        for method, (ddp, fsdp, dense, ddp_bytes, fsdp_bytes) in rows.items():
            print(f"{world:>5} {method:>7} {ddp:>8.3f} {fsdp:>8.3f} {fsdp / ddp:>9.2f} "
                  f"{dense:>16.3f} {ddp_bytes / 1e6:>12.1f} {fsdp_bytes / 1e6:>13.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
