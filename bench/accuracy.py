"""Held-out accuracy of every registered method (and N:M) beside dense, 3 seeds.

    .venv/bin/python bench/accuracy.py [--threads 1] [--seeds 0 1 2] [--tasks mnist digits]
        [--write docs/benchmarks.md] [--plot docs/img/accuracy.png] [--quick]
        [--methods LABEL ...] [--init pytorch|he|he_sparse] [--density D] [--epochs E] [--lr LR]

MLP [300, 100], SGD momentum 0.9, batch 64; every other RunConfig field at the method's
default, so each runs its published schedule (SNFS: per-epoch updates, p = 0.5 cosine to
0.005, uniform densities with momentum redistribution; SRigL: constant fan-in, γ_sal 0.3;
Deep R: its lr 0.2). The sparse methods use ERK except SNFS (its reference's uniform start)
and the N:M rows (uniform: ERK would give the small last layer more than n/m). MNIST-5k at
90% sparsity for 10 epochs, digits at 95% for 20. Mean ± sample std over the seeds of the
final held-out accuracy. `--write` replaces the delimited accuracy table of the page with
what this run measured (and nothing else: what the figures mean is the page's text),
`--plot` draws the table. `--quick` (1 epoch, 1 seed) only checks that everything runs.

`--methods` (row labels: `rigl`, `"rigl 2:4"`), `--init`, `--density`, `--epochs` and `--lr`
measure a variant of the table (e.g. the initialisations compared in docs/benchmarks.md);
a variant is printed, never written over the page's table.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dst_core.recording.training import train
from dst_core.store.config import RunConfig, registered_methods

START = "<!-- accuracy-table:start (bench/accuracy.py writes this section) -->"
END = "<!-- accuracy-table:end -->"
HEADING = "## Accuracy of every method (bench/accuracy.py)"  # the page's, above START
# density, epochs: sized so the whole table (66 runs) finishes in minutes on one thread
TASKS = {"mnist": (0.1, 10), "digits": (0.05, 20)}
HIDDEN = [300, 100]


@dataclass
class Row:
    """One line of the table: a method and the RunConfig fields that make it."""

    label: str
    fields: dict = field(default_factory=dict)


def rows() -> list[Row]:
    """Every registered method (so a new one is benchmarked with no edit here), then N:M."""
    table = []
    for method in registered_methods():
        fields = {"method": method}
        if method not in ("dense", "snfs"):
            fields["distribution"] = "erk"
        table.append(Row(method, fields))
    for method in ("rigl", "set_magnitude"):
        table.append(Row(f"{method} 2:4", {"method": method, "structure": "n:m", "n": 2,
                                           "m": 4, "distribution": "uniform",
                                           "first_layer_dense": False}))
    return table


class FinalEval:
    """A sink that keeps only the last `eval` event."""

    def __init__(self) -> None:
        self.last: dict = {}

    def emit(self, type: str, step: int, payload: dict) -> None:
        if type == "eval":
            self.last = payload


def run_table(tasks: list[str], seeds: list[int], quick: bool, labels: list[str] | None = None,
              overrides: dict | None = None, density: float | None = None,
              epochs: int | None = None) -> list[dict]:
    """Every row (or those in `labels`) on every task; `overrides` are RunConfig fields set
    on every run (init, lr), `density`/`epochs` replace each task's."""
    results = []
    print(f"{'task':>7} {'sparsity':>8} {'epochs':>6} {'method':>18} {'mean ± std %':>14} "
          f"{'per seed':>18} {'s/run':>6}", flush=True)
    for task in tasks:
        task_density, task_epochs = TASKS[task]
        task_density = density if density is not None else task_density
        task_epochs = 1 if quick else epochs if epochs is not None else task_epochs
        for row in rows():
            if labels and row.label not in labels:
                continue
            accuracies = []
            started = time.perf_counter()
            for seed in seeds:
                sink = FinalEval()
                config = RunConfig(task=task, model="mlp", hidden=HIDDEN, density=task_density,
                                   epochs=task_epochs, batch_size=64, momentum=0.9,
                                   optimizer="sgd", seed=seed, device="cpu",
                                   **{**row.fields, **(overrides or {})})
                train(config, sink)
                accuracies.append(100 * sink.last["test_accuracy"])
            per_run = (time.perf_counter() - started) / len(seeds)
            mean = statistics.mean(accuracies)
            spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            sparsity = 0.0 if row.label == "dense" else 1 - task_density
            results.append({"task": task, "sparsity": sparsity, "epochs": task_epochs,
                            "label": row.label, "mean": mean, "std": spread,
                            "accuracies": accuracies, "seconds": per_run})
            print(f"{task:>7} {sparsity:>8.0%} {task_epochs:>6} {row.label:>18} "
                  f"{mean:>8.2f} ± {spread:<4.2f} "
                  f"{' '.join(f'{a:.1f}' for a in accuracies):>18} {per_run:>6.1f}", flush=True)
    return results


def markdown(results: list[dict], seeds: list[int], threads: int, load: tuple[float, float],
             day: str) -> str:
    """The delimited block of the page: what this run measured and how, nothing else."""
    lines = [START,
             f"MLP {'-'.join(map(str, HIDDEN))}, SGD momentum 0.9, batch 64, ERK layer "
             "densities (SNFS and the N:M rows: uniform), every other RunConfig field at the "
             f"method's default; seeds {', '.join(map(str, seeds))}; mean "
             f"± sample std of the final held-out accuracy; s/run is wall time. Measured "
             f"{day}, torch {torch.__version__}, CPU, {threads} thread(s), load average "
             f"{load[0]:.1f} at the start and {load[1]:.1f} at the end. Regenerate with "
             "`.venv/bin/python bench/accuracy.py --write docs/benchmarks.md "
             "--plot docs/img/accuracy.png`.", "",
             "| task | sparsity | epochs | method | accuracy % | per seed | s/run |",
             "|---|---|---|---|---|---|---|"]
    for result in results:
        lines.append(f"| {result['task']} | {result['sparsity']:.0%} | {result['epochs']} | "
                     f"{result['label']} | {result['mean']:.2f} ± {result['std']:.2f} | "
                     f"{' '.join(f'{a:.1f}' for a in result['accuracies'])} | "
                     f"{result['seconds']:.1f} |")
    lines.append(END)
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the delimited section of `path`, or append it (creating the page if needed):
    other sections of the page belong to other benchmarks."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) \
        else text.rstrip("\n") + "\n\n" + HEADING + "\n\n" + section + "\n"
    path.write_text(text)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in results}, key=list(TASKS).index)
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        chosen = [r for r in results if r["task"] == task]
        axis.barh([r["label"] for r in chosen], [r["mean"] for r in chosen],
                  xerr=[r["std"] for r in chosen], color="#4a7ab8", capsize=3)
        low = min(r["mean"] - r["std"] for r in chosen)
        axis.set_xlim(max(0.0, low - 5), 100)
        axis.invert_yaxis()
        axis.set_title(f"{task}: {chosen[-1]['sparsity']:.0%} sparse, {len(chosen[0]['accuracies'])} seeds")
        axis.set_xlabel("held-out accuracy % (mean ± std)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--write", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", nargs="*", default=None, metavar="LABEL",
                        choices=[row.label for row in rows()], help="only these rows")
    parser.add_argument("--init", default=None, choices=["pytorch", "he", "he_sparse"],
                        help="RunConfig.init of every run (default: RunConfig's, pytorch)")
    parser.add_argument("--density", type=float, default=None, help="every task's density")
    parser.add_argument("--epochs", type=int, default=None, help="every task's epochs")
    parser.add_argument("--lr", type=float, default=None, help="every run's lr")
    args = parser.parse_args()
    overrides = {key: value for key, value in (("init", args.init), ("lr", args.lr))
                 if value is not None}
    variant = bool(args.methods or overrides or args.density is not None
                   or args.epochs is not None or args.quick
                   or args.tasks != list(TASKS) or args.seeds != [0, 1, 2])
    if args.write and variant:
        parser.error("--write replaces the page's table of every method at its defaults; a "
                     "variant (--methods, --init, --density, --epochs, --lr, --tasks, --seeds, "
                     "--quick) is printed only")
    torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    start_load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} thread(s), seeds {seeds}"
          + "".join(f", {key} {value}" for key, value in overrides.items())
          + (f", density {args.density}" if args.density is not None else "")
          + f", load average {start_load:.1f}", flush=True)
    results = run_table(args.tasks, seeds, args.quick, args.methods, overrides, args.density,
                        args.epochs)
    load = (start_load, os.getloadavg()[0])
    print(f"load average {load[1]:.1f} at the end", flush=True)
    if args.write:
        write_section(args.write, markdown(results, seeds, args.threads, load,
                                           time.strftime("%Y-%m-%d")))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
