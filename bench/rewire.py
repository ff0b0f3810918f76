"""Rewire cost of every method against a seed-style loop reference and one dense training step.

    .venv/bin/python bench/rewire.py [--threads 1] [--repeats 7] [--clock cpu|wall]
        [--rewire-threads N (0: torch's setting)]

For each layer size (256², 1024², 4096²) and density (0.1, 0.3), at drop fraction 0.3, it
prints the median of `--repeats` timings of `dst_core.rewire` for every method, the same
for a loop-based reference that follows the seed tutorial (per-connection Python loops,
`kthvalue` threshold, `topk`/`randperm`/`multinomial` growth), and one dense training step of
the same layer (`F.linear` forward + backward w.r.t. the weight, batch 128), all measured in
this one run and printed as ratios. The reference is skipped at 4096² (≈ 48 s a call) and
timed 3 times instead of 7 at 1024².

GPU: see bench/gpu.py (the same rewire-vs-dense-step ratio at 4096² on CUDA, float32 and
bfloat16, timed by CUDA events).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dst_core import rewire, selection

# CPU time of this process by default, not wall time: the machine is shared by several
# agents, and with one thread CPU time is what the work costs, not how long others ran. With
# more threads CPU time sums over them, so compare threads by `--clock wall` on a quiet
# machine: the dense step's matmul scales with threads, while the selection's nonzero,
# boolean gathers, kthvalue and cumsum run on one thread, so the ratio grows with threads.
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK = CLOCKS["cpu"]

METHODS = ["set", "set_magnitude", "rigl", "snfs", "grad_sample"]
SIZES = [256, 1024, 4096]
DENSITIES = [0.1, 0.3]
DROP_FRACTION = 0.3
BATCH = 128


def median_ms(function, repeats: int) -> float:
    function()  # warm-up (allocations, lazy init)
    times = []
    for _ in range(repeats):
        start = CLOCK()
        function()
        times.append(CLOCK() - start)
    return statistics.median(times) * 1e3


def seed_style_rewire(method: str, weight, mask, grad, drop_fraction: float):
    """The seed tutorial's rewire, loops and all (its defects kept: it is a timing reference)."""
    active_indices = torch.where(mask)
    magnitudes = (weight * mask)[active_indices].abs()
    prune_count = int(len(magnitudes) * drop_fraction)
    new_mask = mask.clone()
    if prune_count > 0:
        threshold = torch.kthvalue(magnitudes, prune_count).values
        prune = magnitudes <= threshold
        for i, index in enumerate(zip(active_indices[0], active_indices[1], strict=True)):
            if prune[i]:
                new_mask[index[0], index[1]] = False
    inactive = torch.where(~new_mask)
    if method in ("set", "set_magnitude"):
        grow = torch.randperm(len(inactive[0]))[:prune_count]
    elif method == "grad_sample" and len(inactive[0]) < 2**24:
        probs = F.softmax(grad[inactive].abs(), dim=0)
        grow = torch.multinomial(probs, prune_count, replacement=False)
    else:  # rigl / snfs (and grad_sample past multinomial's 2^24 categories)
        grow = torch.topk(grad[inactive].abs(), prune_count).indices
    for index in grow:
        new_mask[inactive[0][index], inactive[1][index]] = True
    return new_mask


def dense_step(size: int):
    inputs = torch.randn(BATCH, size)
    weight = torch.randn(size, size, requires_grad=True)

    def step():
        weight.grad = None
        F.linear(inputs, weight).sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="*", default=SIZES)
    parser.add_argument("--densities", type=float, nargs="*", default=DENSITIES)
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--no-reference", action="store_true", help="skip the loop reference")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--rewire-threads", type=int, default=selection.REWIRE_THREADS or 0,
                        help="threads a rewire runs on (dst_core.selection.REWIRE_THREADS); "
                             "0 keeps torch's setting")
    args = parser.parse_args()
    selection.REWIRE_THREADS = args.rewire_threads or None
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s) "
          f"(rewire on {args.rewire_threads or 'all'}), {args.clock} time, "
          f"median of {args.repeats}, "
          f"f = {DROP_FRACTION}; ratios measured in this run")
    print(f"{'size':>6} {'dens':>5} {'method':>14} {'ours ms':>9} {'dense ms':>9} "
          f"{'ours/dense':>11} {'ref ms':>10} {'ref/ours':>9}")
    for size in args.sizes:
        dense_ms = median_ms(dense_step(size), args.repeats)
        for density in args.densities:
            generator = torch.Generator().manual_seed(0)
            mask = torch.rand(size, size, generator=generator) < density
            weight = torch.randn(size, size, generator=generator) * mask
            grad = torch.randn(size, size, generator=generator)
            for method in args.methods:
                rng = torch.Generator().manual_seed(1)
                ours = median_ms(lambda m=method, r=rng, w=weight, k=mask, g=grad: rewire(
                    m, w, k, drop_fraction=DROP_FRACTION, grad=g, generator=r), args.repeats)
                if size >= 4096 or args.no_reference:
                    reference, ratio = "skipped", "-"
                else:
                    repeats = args.repeats if size <= 256 else 3
                    ref_ms = median_ms(lambda m=method, w=weight, k=mask, g=grad: seed_style_rewire(
                        m, w, k, g, DROP_FRACTION), repeats)
                    reference, ratio = f"{ref_ms:10.1f}", f"{ref_ms / ours:8.0f}×"
                print(f"{size:>5}² {density:>5} {method:>14} {ours:9.2f} {dense_ms:9.2f} "
                      f"{ours / dense_ms:10.2f}× {reference:>10} {ratio:>9}", flush=True)


if __name__ == "__main__":
    main()
