"""Layer-wise density: how a global density budget is shared between layers.

`uniform` gives every layer the same density; `er` (Erdős–Rényi, Mocanu et al. 2018) and
`erk` (Erdős–Rényi-Kernel, Evci et al. 2020) give small layers more, because their few
connections matter more. For `er`/`erk` a layer that would exceed density 1 is made dense
and the rest re-solved, so the total number of active connections matches the target.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from numbers import Integral, Real

DISTRIBUTIONS = ("uniform", "er", "erk")


def _raw_share(shape: Sequence[int], distribution: str) -> float:
    if distribution == "erk":
        return sum(shape) / math.prod(shape)
    # er: only the fan-in and fan-out count (PyTorch weights are (out, in, *kernel)).
    if len(shape) < 2:
        return sum(shape) / math.prod(shape)
    return (shape[0] + shape[1]) / (shape[0] * shape[1])


def layer_densities(
    shapes: Sequence[Sequence[int]], density: float, distribution: str = "uniform"
) -> list[float]:
    """One density per shape such that Σ density_l · numel_l = density · Σ numel_l."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution: unknown {distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
    if isinstance(density, bool) or not isinstance(density, Real) \
            or not 0.0 < float(density) <= 1.0:
        raise ValueError(f"density: must lie in (0, 1], got {density!r}")
    density = float(density)
    checked = []
    for shape in shapes:
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
            raise ValueError(f"shapes: each shape must be a sequence of ints, got {shape!r}")
        dims = tuple(shape)
        if not dims or any(isinstance(d, bool) or not isinstance(d, Integral) or d <= 0
                           for d in dims):
            raise ValueError(f"shapes: every shape needs positive int dimensions, got {shape!r}")
        checked.append(tuple(int(d) for d in dims))
    shapes = checked
    if distribution == "uniform" or density == 1.0:
        return [float(density)] * len(shapes)

    sizes = [math.prod(shape) for shape in shapes]
    raw = [_raw_share(shape, distribution) for shape in shapes]
    dense: set[int] = set()
    target = density * sum(sizes)
    while True:
        # Budget left for the sparse layers after the dense ones take all their entries.
        budget = target - sum(sizes[i] for i in dense)
        weighted = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        if weighted <= 0:
            break
        epsilon = budget / weighted
        overflowing = {i for i in range(len(shapes)) if i not in dense and epsilon * raw[i] > 1.0}
        if not overflowing:
            break
        dense |= overflowing
    return [1.0 if i in dense else min(1.0, epsilon * raw[i]) for i in range(len(shapes))]
