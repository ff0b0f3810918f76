"""What a dashboard user sees at default settings: every method × task/model, a few epochs.

    .venv/bin/python bench/defaults_sweep.py [--epochs 5] [--seed 0] [--threads 1]

Every RunConfig field at its default except task, model, method and epochs (so density 0.1,
hidden [64, 64], batch 64, SGD momentum 0.9, each method's own lr / schedule / distribution).
Prints held-out accuracy after the last epoch; chance is 50% (synthetic) or 10%.
"""

from __future__ import annotations

import argparse
import time

import torch
from accuracy import FinalEval  # bench/ is on sys.path when a script here runs

from dst_core import REGISTRY
from dst_core.recording.training import train
from dst_core.store.config import RunConfig

SETUPS = [("synthetic", "mlp"), ("digits", "mlp"), ("digits", "cnn"), ("mnist", "mlp")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=sorted(REGISTRY))
    parser.add_argument("--setups", nargs="*", default=[f"{t}-{m}" for t, m in SETUPS])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setups = [tuple(s.split("-")) for s in args.setups]
    print(f"torch {torch.__version__}, {args.threads} thread(s), seed {args.seed}, "
          f"{args.epochs} epochs, test accuracy %")
    print(f"{'method':>13} " + " ".join(f"{t + '/' + m:>14}" for t, m in setups) + "   s")
    for method in args.methods:
        started = time.perf_counter()
        cells = []
        for task, model in setups:
            sink = FinalEval()
            train(RunConfig(task=task, model=model, method=method, epochs=args.epochs,
                            seed=args.seed, device="cpu"), sink)
            cells.append(100 * sink.last["test_accuracy"])
        print(f"{method:>13} " + " ".join(f"{c:>14.1f}" for c in cells)
              + f" {time.perf_counter() - started:>4.0f}", flush=True)


if __name__ == "__main__":
    main()
