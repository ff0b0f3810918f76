"""Training throughput of RigL (rewire every 100 steps) against dense training.

    .venv/bin/python bench/train_overhead.py [--threads 1] [--steps 400] [--rounds 3]

MLP 784-1024-1024-10, batch 128, density 0.1 with ERK, SGD lr 0.05 momentum 0.9, random
inputs (throughput does not depend on the data). Dense and sparse runs are interleaved and
each figure is the median of `--rounds` of process CPU time (the machine is shared). Also
measured: a static mask kept by the driver (masked weights zeroed in place after each step)
against the alternative of multiplying `weight * mask` in every forward pass.

GPU: see bench/gpu.py (a ResNet-50-shaped model's RigL vs dense steps/s on CUDA, float32 and
bf16 autocast, and the cost of a step that rewires).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from dst_core import SparseDriver

# CPU time of this process, not wall time: the machine is shared by several agents, and
# with one thread (the default) CPU time is what the work costs, not how long others ran.
CLOCK = time.process_time

WIDTHS = [784, 1024, 1024, 10]
BATCH = 128
DENSITY = 0.1


def build() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(WIDTHS[:-1], WIDTHS[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class MaskInForward(nn.Module):
    """The seed's way: the weight is multiplied by its mask in every forward pass."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def steps_per_second(mode: str, steps: int, batches) -> float:
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = optimizer.step
    if mode in ("rigl", "static"):
        driver = SparseDriver(model, optimizer, method=mode, density=DENSITY, distribution="erk",
                              total_steps=10 * steps, interval_steps=100)
        step = driver.step
    elif mode == "mask_in_forward":
        driver = SparseDriver(model, optimizer, method="static", density=DENSITY,
                              distribution="erk", total_steps=steps)
        for layer, linear in zip(driver.layers, model[::2], strict=True):
            parametrize.register_parametrization(linear, "weight", MaskInForward(layer.mask))
    for index in range(steps + 10):
        if index == 10:  # warm-up done
            start = CLOCK()
        x, y = batches[index % len(batches)]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step()
    return steps / (CLOCK() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(BATCH, WIDTHS[0], generator=generator),
                torch.randint(0, 10, (BATCH,), generator=generator)) for _ in range(20)]
    modes = ["dense", "rigl", "static", "mask_in_forward"]
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            results[mode].append(steps_per_second(mode, args.steps, batches))
    dense = statistics.median(results["dense"])
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps × "
          f"{args.rounds} interleaved rounds (median); MLP {'-'.join(map(str, WIDTHS))}, "
          f"batch {BATCH}, density {DENSITY} ERK, SGD momentum")
    print(f"{'mode':>16} {'steps/s':>9} {'vs dense':>9}")
    for mode in modes:
        value = statistics.median(results[mode])
        print(f"{mode:>16} {value:9.1f} {value / dense:8.2f}×")


if __name__ == "__main__":
    main()
