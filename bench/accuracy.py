"""Held-out accuracy of dense, static, SET and RigL as the papers compare them.

    .venv/bin/python bench/accuracy.py [--threads 1] [--seeds 0 1 2] [--init pytorch|he|he_sparse]
    [--tasks mnist digits]

MLP [300, 100], ERK, SGD lr 0.05 momentum 0.9, batch 64, every other RunConfig field at its
default (so each method's published schedule), mean over the seeds of the final held-out
accuracy. MNIST-5k at 90% sparsity for 20 epochs (dense, static, SET, RigL) and digits at
95% sparsity for 30 epochs (static, SET, RigL). Targets (issue 4): MNIST RigL within 1.5
points of dense and ≥ static, SET ≥ static − 0.5; digits RigL and SET ≥ static + 2.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dst_core import RunConfig
from dst_core.training import INITS, train

SWEEPS = [
    ("mnist", 0.1, 20, ["dense", "static", "set", "rigl"]),
    ("digits", 0.05, 30, ["static", "set", "rigl"]),
]


class FinalEval:
    """A sink that keeps only the last `eval` event."""

    def __init__(self) -> None:
        self.last: dict = {}

    def emit(self, type: str, step: int, payload: dict) -> None:
        if type == "eval":
            self.last = payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--init", choices=INITS, default="pytorch")
    parser.add_argument("--tasks", nargs="*", default=[task for task, *_ in SWEEPS])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), seeds {args.seeds}, "
          f"init {args.init}")
    print(f"{'task':>7} {'sparsity':>8} {'epochs':>6} {'method':>7} {'mean acc %':>10} "
          f"{'per seed':>24} {'s/run':>6}")
    for task, density, epochs, methods in SWEEPS:
        if task not in args.tasks:
            continue
        for method in methods:
            accuracies = []
            started = time.perf_counter()
            for seed in args.seeds:
                sink = FinalEval()
                config = RunConfig(task=task, model="mlp", hidden=[300, 100], method=method,
                                   density=density, distribution="erk", epochs=epochs,
                                   batch_size=64, lr=0.05, momentum=0.9, optimizer="sgd",
                                   seed=seed, device="cpu")
                train(config, sink, init=args.init)
                accuracies.append(100 * sink.last["test_accuracy"])
            per_run = (time.perf_counter() - started) / len(args.seeds)
            per_seed = " ".join(f"{a:.1f}" for a in accuracies)
            print(f"{task:>7} {1 - density:>8.0%} {epochs:>6} {method:>7} "
                  f"{statistics.mean(accuracies):>10.2f} {per_seed:>24} {per_run:>6.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
