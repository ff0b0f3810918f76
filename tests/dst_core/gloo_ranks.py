"""Gloo ranks on the CPU for the DDP and FSDP2 tests: one process per rank, a file rendezvous."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def init_rank(rank: int, world: int, folder: str) -> None:
    """Join the job's process group (in each rank's process)."""
    torch.set_num_threads(1)  # 2 cores shared by every rank and other jobs
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=world)


def spawn_ranks(target, world: int, tmp_path: Path, *args) -> None:
    """`target(rank, world, folder, *args)` in `world` processes; a rank's exception is raised
    here with its traceback.

    From a fork server: a plain fork of the test process (which has threads of its own after
    other tests) can deadlock a rank, and a spawned rank re-imports torch each time; the fork
    server imports torch and the target's module once and forks every rank from that clean
    process."""
    multiprocessing.set_forkserver_preload(["torch", target.__module__])
    mp.start_processes(target, args=(world, str(tmp_path), *args), nprocs=world, join=True,
                       start_method="forkserver")
