"""Dynamic sparse training with DistributedDataParallel, recorded as one run.

    torchrun --nproc_per_node 2 examples/ddp_train.py --data-dir ./sparsescope-data
    torchrun --nproc_per_node 2 examples/ddp_train.py --url http://127.0.0.1:8000

The same script runs on every rank and contains nothing rank-specific around the library:
`SparseDriver` sees the process group and keeps every rank's masks identical (rank 0's
initial masks, all-reduced dense gradients, identically seeded draws, a mask-hash check every
`--verify-every` rewires), and `Recorder` records from rank 0 only, so the dashboard shows
one run for the job with its layout (world size, backend, ranks) in the run's info. Each rank
trains on its own shard of the task's training set (a DistributedSampler); gloo on CPU,
NCCL when every rank has a GPU (`--backend`). See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from dst_core import SparseDriver  # noqa: E402
from dst_core.models import build_model  # noqa: E402
from dst_core.recording import Recorder  # noqa: E402
from dst_core.tasks import TASKS, load_task  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, default="digits")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--hidden", default="128,128", help="hidden sizes, comma-separated")
    parser.add_argument("--method", default="rigl", help="any registered method (set, rigl, …)")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--interval-steps", type=int, default=20)
    parser.add_argument("--verify-every", type=int, default=1,
                        help="check the ranks' masks agree every N rewires (0: never)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--name", default="ddp example")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data-dir", default="./sparsescope-data",
                       help="record into this data folder (the server's --data-dir)")
    where.add_argument("--url", help="record into a running server instead")
    parser.add_argument("--token", default=os.environ.get("SPARSESCOPE_TOKEN"))
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs: must be at least 1")
    return args


def setup(backend: str) -> torch.device:
    """Join the process group torchrun describes in the environment."""
    if "RANK" not in os.environ:
        sys.exit("ddp_train.py: start it with torchrun, e.g. "
                 "`torchrun --nproc_per_node 2 examples/ddp_train.py`")
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ["LOCAL_WORLD_SIZE"])
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl":
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
        device = torch.device("cpu")
    dist.init_process_group(backend)
    return device


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = setup(args.backend)
    rank = dist.get_rank()
    task = load_task(args.task)
    torch.manual_seed(args.seed + rank)  # per-rank seeds, as scripts do: the driver aligns them
    hidden = [int(size) for size in args.hidden.split(",") if size.strip()]
    model = build_model(args.model, task.input_shape, hidden, task.num_classes).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(TensorDataset(task.x_train, task.y_train), seed=args.seed)
    loader = DataLoader(sampler.dataset, batch_size=args.batch_size, sampler=sampler)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=args.method, density=args.density,
                          total_steps=args.epochs * len(loader),
                          interval_steps=args.interval_steps, seed=args.seed + rank,
                          verify_every=args.verify_every)
    config = {key: value for key, value in vars(args).items() if key != "token"}
    recorder = Recorder(args.data_dir, name=args.name, config=config) if args.url is None \
        else Recorder(url=args.url, token=args.token, name=args.name, config=config)
    with recorder:
        recorder.attach(driver, model_label=f"{args.model} {hidden}", task=args.task)
        if recorder.active:
            print(f"recording run {recorder.run_id} from rank 0 of {dist.get_world_size()}",
                  flush=True)
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            ddp.train()
            for inputs, labels in loader:
                inputs, labels = inputs.to(device), labels.to(device)
                loss = F.cross_entropy(ddp(inputs), labels)
                optimizer.zero_grad()
                loss.backward()
                driver.step()
                recorder.log(driver.step_count, loss=loss.item())
            accuracy = evaluate(model, task, device)
            recorder.eval(driver.step_count, test_accuracy=accuracy)
            if rank == 0:
                print(f"epoch {epoch + 1}/{args.epochs}: test accuracy {accuracy:.4f}, "
                      f"density {driver.global_density():.4f}", flush=True)
    dist.destroy_process_group()


@torch.no_grad()
def evaluate(model: torch.nn.Module, task, device: torch.device) -> float:
    """Held-out accuracy; every rank holds the same weights, so each computes the same value."""
    model.eval()
    predictions = model(task.x_test.to(device)).argmax(dim=1)
    return float((predictions == task.y_test.to(device)).float().mean())


if __name__ == "__main__":
    main()
