"""GPU section of the rewire and training-overhead benches: the same measures on a CUDA device.

    .venv/bin/python bench/gpu.py [--device cuda] [--repeats 20] [--steps 300] [--rounds 2]
        [--image 64] [--batch 64] [--width 64] [--quick]
    .venv/bin/python bench/gpu.py --device cpu --quick     # smoke run, seconds, no GPU needed

bench/rewire.py and bench/train_overhead.py measure the CPU; the engine also runs on CUDA
(the `cuda`-marked tests check it is right there), and this bench says what it costs there.

1. Rewire: for every mask-level method (`dst_core.rewire.mask_level_methods()`, the methods
   `dst_core.rewire(...)` accepts: set, set_magnitude, rigl, snfs, grad_sample), a 4096²
   layer at density 0.1 and 0.3, f = 0.3, in float32 and bfloat16: the median of `--repeats`
   timings of one `rewire` against one dense training step of the same layer in the same
   dtype (`F.linear` forward + backward w.r.t. the weight at batch 128, as bench/rewire.py
   defines "dense"), after warm-up.
2. Training overhead: the ResNet-50-shaped model of bench/dashboard_scale.py (`--width` 64 =
   25.5 M weights, 1000 classes, `--batch` 64 at `--image` 64×64 by default), SGD momentum,
   dense against RigL (density 0.2 ERK, a rewire every `--interval` = 100 steps), in float32
   and under bf16 autocast: steps/s with the rewires amortised, the median step that does not
   rewire, and the median step that does. Dense and RigL runs are interleaved `--rounds`
   times; every ratio compares figures of this one run.

Timing on CUDA is by CUDA events recorded around the work and read after
`torch.cuda.synchronize()`, so the figures are the device's time, not the host's queueing;
on the CPU the same code path reads `time.perf_counter` (wall time: run it on a quiet
machine, or take it as a smoke run only).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dashboard_scale import ResNet  # noqa: E402
from dst_core import SparseDriver, rewire  # noqa: E402
from dst_core.rewire import mask_level_methods  # noqa: E402

REWIRE_HEADER = "== Rewire cost (one rewire vs one dense training step of the layer) =="
TRAIN_HEADER = "== Training overhead (ResNet-50-shaped model, RigL vs dense) =="
NO_CUDA = ("bench/gpu.py: no CUDA device (torch.cuda.is_available() is False); for a CPU "
           "smoke run: .venv/bin/python bench/gpu.py --device cpu --quick")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DROP_FRACTION = 0.3
BATCH = 128  # the dense step's batch, as bench/rewire.py
DENSITY = 0.2  # the training section's RigL density (ERK), as bench/dashboard_scale.py
CLASSES = 1000


class Timer:
    """Marks on the device's own timeline: CUDA events where the device is CUDA (kernels run
    asynchronously, so a host clock would time the queueing), `perf_counter` elsewhere. Marks
    are read only after `synchronize()`, so recording one never stalls the device."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self) -> torch.cuda.Event | float:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def elapsed_ms(self, start: torch.cuda.Event | float, end: torch.cuda.Event | float) -> float:
        """Milliseconds between two marks; call `synchronize()` first."""
        if self.cuda:
            return start.elapsed_time(end)  # type: ignore[union-attr]
        return (end - start) * 1e3  # type: ignore[operator]


def median_ms(timer: Timer, function: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median of `repeats` timings of `function`, each between its own two marks, after
    `warmup` untimed calls (lazy init, allocator, cuBLAS handles, the rewire's workspace)."""
    for _ in range(warmup):
        function()
    timer.synchronize()
    marks = []
    for _ in range(repeats):
        start = timer.mark()
        function()
        marks.append((start, timer.mark()))
    timer.synchronize()
    return statistics.median(timer.elapsed_ms(start, end) for start, end in marks)


def dense_step(size: int, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """One training step of a dense size×size layer: what a rewire is set against."""
    inputs = torch.randn(BATCH, size, device=device, dtype=dtype)
    weight = torch.randn(size, size, device=device, dtype=dtype, requires_grad=True)

    def step() -> None:
        weight.grad = None
        F.linear(inputs, weight).sum().backward()

    return step


def rewire_section(timer: Timer, device: torch.device, sizes: list[int], densities: list[float],
                   dtypes: list[str], methods: list[str], repeats: int) -> None:
    print(REWIRE_HEADER)
    print(f"median of {repeats} after warm-up, f = {DROP_FRACTION}, dense = F.linear forward + "
          f"backward w.r.t. the weight at batch {BATCH}")
    print(f"{'size':>6} {'dtype':>9} {'dens':>5} {'method':>14} {'ours ms':>9} {'dense ms':>9} "
          f"{'ours/dense':>11}")
    for size in sizes:
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            dense_ms = median_ms(timer, dense_step(size, dtype, device), repeats)
            for density in densities:
                generator = torch.Generator(device=device).manual_seed(0)
                mask = torch.rand(size, size, generator=generator, device=device) < density
                weight = (torch.randn(size, size, generator=generator, device=device)
                          * mask).to(dtype)
                grad = torch.randn(size, size, generator=generator, device=device).to(dtype)
                for method in methods:
                    rng = torch.Generator(device=device).manual_seed(1)
                    ours = median_ms(timer, lambda m=method, r=rng, w=weight, k=mask, g=grad: rewire(
                        m, w, k, drop_fraction=DROP_FRACTION, grad=g, generator=r), repeats)
                    print(f"{size:>5}² {dtype_name:>9} {density:>5} {method:>14} {ours:9.2f} "
                          f"{dense_ms:9.2f} {ours / dense_ms:10.2f}×", flush=True)


@dataclass
class TrainOptions:
    """What the training section runs: the model's size, the data's, and how long."""

    width: int
    image: int
    batch: int
    steps: int  # timed steps, after `interval` warm-up steps (which include one rewire)
    interval: int
    rounds: int


@dataclass
class TrainResult:
    steps_per_s: float
    plain_ms: float  # median step that does not rewire
    rewire_ms: float | None  # median step that rewires (None: dense, or none in the window)


def train_run(mode: str, autocast: bool, options: TrainOptions, timer: Timer,
              device: torch.device, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> TrainResult:
    """Train `mode` ("dense" or "rigl") for warm-up + `options.steps` steps, a mark between
    every two steps; a step is classed as rewiring by `driver.rewire_due()` before it."""
    torch.manual_seed(0)
    model = ResNet(options.width, CLASSES).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step: Callable[[], object] = optimizer.step
    driver = None
    if mode == "rigl":
        total = options.interval + options.steps
        # total_steps ten times the run keeps the cosine drop fraction near 0.3 and every
        # interval's rewire before RigL's end at 75% of training.
        driver = SparseDriver(model, optimizer, method="rigl", density=DENSITY,
                              distribution="erk", total_steps=10 * total,
                              interval_steps=options.interval)
        step = driver.step
    precision = (torch.autocast(device.type, dtype=torch.bfloat16) if autocast
                 else contextlib.nullcontext())
    marks: list[torch.cuda.Event | float] = []
    rewiring: list[bool] = []
    for index in range(options.interval + options.steps):
        if index == options.interval:  # warm-up done (a rewire included, for RigL)
            timer.synchronize()
            marks.append(timer.mark())
        if index >= options.interval:
            rewiring.append(driver is not None and driver.rewire_due())
        x, y = batches[index % len(batches)]
        with precision:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step()
        if index >= options.interval:
            marks.append(timer.mark())
    timer.synchronize()
    times = [timer.elapsed_ms(start, end) for start, end in zip(marks, marks[1:], strict=False)]
    plain = [ms for ms, due in zip(times, rewiring, strict=True) if not due]
    rewires = [ms for ms, due in zip(times, rewiring, strict=True) if due]
    return TrainResult(steps_per_s=len(times) / (sum(times) / 1e3),
                       plain_ms=statistics.median(plain) if plain else float("nan"),
                       rewire_ms=statistics.median(rewires) if rewires else None)


def train_section(timer: Timer, device: torch.device, options: TrainOptions,
                  precisions: list[str]) -> None:
    print(TRAIN_HEADER)
    model = ResNet(options.width, CLASSES)
    weights = sum(module.weight.numel() for module in model.modules()
                  if isinstance(module, torch.nn.Conv2d | torch.nn.Linear))
    del model
    print(f"width {options.width} ({weights / 1e6:.1f} M conv/fc weights), {CLASSES} classes, "
          f"batch {options.batch} at {options.image}×{options.image}, SGD momentum; rigl: density "
          f"{DENSITY} ERK, a rewire every {options.interval} steps; {options.steps} timed steps "
          f"after {options.interval} warm-up, {options.rounds} interleaved round(s) (median)")
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(options.batch, 3, options.image, options.image,
                            generator=generator).to(device),
                torch.randint(0, CLASSES, (options.batch,), generator=generator).to(device))
               for _ in range(4)]
    print(f"{'precision':>13} {'mode':>6} {'steps/s':>9} {'vs dense':>9} {'step ms':>9} "
          f"{'rewire-step ms':>15} {'vs dense step':>14}")
    for precision in precisions:
        autocast = precision == "bf16-autocast"
        results: dict[str, list[TrainResult]] = {"dense": [], "rigl": []}
        for _ in range(options.rounds):
            for mode in results:
                results[mode].append(train_run(mode, autocast, options, timer, device, batches))
        dense_rate = statistics.median(r.steps_per_s for r in results["dense"])
        dense_step_ms = statistics.median(r.plain_ms for r in results["dense"])
        for mode, runs in results.items():
            rate = statistics.median(r.steps_per_s for r in runs)
            plain = statistics.median(r.plain_ms for r in runs)
            rewire_times = [r.rewire_ms for r in runs if r.rewire_ms is not None]
            if rewire_times:
                rewire_ms = statistics.median(rewire_times)
                rewire_text, ratio = f"{rewire_ms:15.1f}", f"{rewire_ms / dense_step_ms:13.2f}×"
            else:
                rewire_text, ratio = f"{'-':>15}", f"{'-':>14}"
            print(f"{precision:>13} {mode:>6} {rate:9.2f} {rate / dense_rate:8.2f}× {plain:9.2f} "
                  f"{rewire_text} {ratio}", flush=True)


def describe(device: torch.device) -> None:
    """One line naming what the figures are of (torch, device, clock): a table pasted into
    the docs without it could not be told from the CPU benches' tables."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        clock = "CUDA events"
    else:
        name, clock = f"cpu, {torch.get_num_threads()} thread(s)", "perf_counter (wall)"
    print(f"torch {torch.__version__}, {name}, {clock}; ratios measured in this run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few steps: a smoke run in seconds (with --device cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="rewire timings per median (20)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="layer sizes (4096)")
    parser.add_argument("--densities", type=float, nargs="*", default=[0.1, 0.3])
    parser.add_argument("--methods", nargs="*", default=None,
                        help="rewire methods (every mask-level one)")
    parser.add_argument("--width", type=int, default=None, help="ResNet width (64: ResNet-50)")
    parser.add_argument("--image", type=int, default=None, help="input side (64; 32 or 224)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (64)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (300)")
    parser.add_argument("--interval", type=int, default=None, help="RigL interval_steps (100)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (2)")
    parser.add_argument("--skip-rewire", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    quick = args.quick

    def pick(value: int | None, full: int, tiny: int) -> int:
        return value if value is not None else (tiny if quick else full)

    repeats = pick(args.repeats, 20, 3)
    sizes = args.sizes or ([256] if quick else [4096])
    methods = args.methods or mask_level_methods()
    options = TrainOptions(width=pick(args.width, 64, 4), image=pick(args.image, 64, 16),
                           batch=pick(args.batch, 64, 2), steps=pick(args.steps, 300, 4),
                           interval=pick(args.interval, 100, 2), rounds=pick(args.rounds, 2, 1))
    timer = Timer(device)
    describe(device)
    if not args.skip_rewire:
        rewire_section(timer, device, sizes, args.densities, list(DTYPES), methods, repeats)
    if not args.skip_train:
        train_section(timer, device, options, ["float32", "bf16-autocast"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
