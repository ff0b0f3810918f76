"""Dynamic sparse training on an FSDP2-sharded transformer, recorded as one run.

    torchrun --nproc_per_node 2 examples/fsdp_train.py --data-dir ./sparsescope-data
    torchrun --nproc_per_node 4 examples/fsdp_train.py --method set --url http://127.0.0.1:8000

A stack of pre-norm transformer blocks reads each digits image as a sequence of its 8 rows
(8 pixels a token) and classifies it. Every block is `fully_shard`ed, then the root: each
rank holds a slice of the rows of every weight, and `SparseDriver` keeps each mask with its
weight's rows. Rewires select exactly per whole layer across the shards, so the run equals
the same job under DDP (`examples/ddp_train.py`). `Recorder` records from rank 0 only: one
run whose layers have their whole shapes and whose settings carry the sharding layout.
Methods that do not run sharded (snfs, deep_r, grad_sample) refuse at construction.
gloo on CPU, NCCL when every rank has a GPU (`--backend`). See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from dst_core import SparseDriver  # noqa: E402
from dst_core.recording import Recorder  # noqa: E402
from dst_core.tasks import load_task  # noqa: E402


class Block(nn.Module):
    """Pre-norm transformer block (nanoGPT's layout: packed q/k/v, 4× MLP)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attention = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(self.norm_attention(x)).split(width, dim=2)  # (B, T, C) each
        q, k, v = (part.view(batch, tokens, self.heads, -1).transpose(1, 2)
                   for part in (q, k, v))  # (B, nh, T, hs)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.down(F.gelu(self.up(self.norm_mlp(x))))


class RowTransformer(nn.Module):
    """Image rows as tokens → blocks → mean-pooled class logits."""

    def __init__(self, token_size: int, tokens: int, classes: int, width: int, depth: int,
                 heads: int) -> None:
        super().__init__()
        self.embed = nn.Linear(token_size, width)
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, token_size)
        x = self.embed(x) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="rigl",
                        help="dense, static, set, set_magnitude, rigl or srigl")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--interval-steps", type=int, default=20)
    parser.add_argument("--verify-every", type=int, default=1,
                        help="check the shards make the believed masks every N rewires")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--name", default="fsdp example")
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
        sys.exit("fsdp_train.py: start it with torchrun, e.g. "
                 "`torchrun --nproc_per_node 2 examples/fsdp_train.py`")
    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl":
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        device = torch.device("cpu")
    dist.init_process_group(backend)
    return device


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = setup(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    task = load_task("digits")
    # rows as tokens: (N, 64) → (N, 8, 8)
    x_train, x_test = (x.reshape(len(x), 8, 8) for x in (task.x_train, task.x_test))
    torch.manual_seed(args.seed)  # one model, which fully_shard splits across the ranks
    model = RowTransformer(8, 8, task.num_classes, args.width, args.depth, args.heads).to(device)
    mesh = init_device_mesh(device.type, (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # embed, head and norms: the root's group
    sampler = DistributedSampler(TensorDataset(x_train, task.y_train), seed=args.seed)
    loader = DataLoader(sampler.dataset, batch_size=args.batch_size, sampler=sampler,
                        drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    driver = SparseDriver(model, optimizer, method=args.method, density=args.density,
                          total_steps=args.epochs * len(loader),
                          interval_steps=args.interval_steps, seed=args.seed,
                          verify_every=args.verify_every)
    config = {key: value for key, value in vars(args).items() if key != "token"}
    recorder = Recorder(args.data_dir, name=args.name, config=config) if args.url is None \
        else Recorder(url=args.url, token=args.token, name=args.name, config=config)
    with recorder:
        recorder.attach(driver, model_label=f"row transformer {args.depth}×{args.width}",
                        task="digits")
        if recorder.active:
            print(f"recording run {recorder.run_id} from rank 0 of {world}", flush=True)
            print(driver.summary(brief=True), flush=True)
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            model.train()
            for inputs, labels in loader:
                inputs, labels = inputs.to(device), labels.to(device)
                loss = F.cross_entropy(model(inputs), labels)
                optimizer.zero_grad()
                loss.backward()
                driver.step()
                recorder.log(driver.step_count, loss=loss.item())
            accuracy = evaluate(model, x_test, task.y_test, device)
            recorder.eval(driver.step_count, test_accuracy=accuracy)
            if rank == 0:
                print(f"epoch {epoch + 1}/{args.epochs}: test accuracy {accuracy:.4f}, "
                      f"density {driver.global_density():.4f}", flush=True)
    dist.destroy_process_group()


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             device: torch.device) -> float:
    """Held-out accuracy. Every rank runs the forward pass (FSDP gathers each block's
    weights in it) on the same test set, so each computes the same value."""
    model.eval()
    predictions = model(inputs.to(device)).argmax(dim=1)
    return float((predictions == labels.to(device)).float().mean())


if __name__ == "__main__":
    main()
