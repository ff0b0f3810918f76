"""Topology analytics of a sparse layer: degrees, dead units, the Erdős–Rényi reference, weight
magnitudes at a rewire, and reachability through a chain of Linear layers (connection ages,
cohort survival and mask distance over a run: dst_core.store.cohorts).

Everything is computed exactly from the mask, in vectorised numpy: no loop runs over
connections. A layer is seen as the dashboard shows it, output × input, a conv
kernel flattened into the input axis (`events.matrix_shape`): fan-in is per output unit
(channel), fan-out per input unit (input channel × kernel position).

These questions come from the DST papers: degree distributions moving away from Erdős–Rényi
(Mocanu et al. 2018, SET), dead units and the effective compressed size (Evci et al. 2020,
RigL).

Nothing here imports the run store, pydantic or web code (the engine stays pure).
"""

from __future__ import annotations

import math

import numpy as np
import torch

QUANTILE_LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
# Above this many values a quantile is taken over an evenly strided sample of them: the
# rank error is ~1/sample, and a rewire must not pay for sorting millions of magnitudes.
QUANTILE_SAMPLE = 1 << 10


# ---- degrees --------------------------------------------------------------------------------
def count_pairs(values: np.ndarray) -> list[list[int]]:
    """[[value, how many], ...] for every value present, ascending (values are ints >= 0)."""
    counts = np.bincount(np.asarray(values, dtype=np.int64).reshape(-1))
    present = np.flatnonzero(counts)
    return np.stack([present, counts[present]], axis=1).tolist()


def degree_stats(degrees: np.ndarray) -> dict:
    """Mean, population std and max of a degree vector (0 for an empty one)."""
    if degrees.size == 0:
        return {"mean": 0.0, "std": 0.0, "max": 0}
    # Integer sums are exact (degrees are counts), so the variance n·Σd² − (Σd)² is too; and
    # two reductions cost a writer a third of the float pass at every rewire.
    values = degrees.astype(np.int64, copy=False)
    count, total, squares = values.size, int(values.sum()), int(np.dot(values, values))
    return {"mean": total / count, "std": math.sqrt(count * squares - total * total) / count,
            "max": int(values.max())}


def degrees(mask: np.ndarray) -> dict:
    """Exact degree distributions and dead units of a (rows, cols) mask.

    `fan_in` counts each output unit's active inputs (row sums), `fan_out` each input unit's
    active outputs (column sums); `dead_out` are output units with fan-in 0, `dead_in` input
    units with fan-out 0."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a (rows, cols) matrix, got shape {mask.shape}")
    fan_in = np.count_nonzero(mask, axis=1)  # (rows,)
    fan_out = np.count_nonzero(mask, axis=0)  # (cols,)
    return {"fan_in": count_pairs(fan_in), "fan_in_stats": degree_stats(fan_in),
            "fan_out": count_pairs(fan_out), "fan_out_stats": degree_stats(fan_out),
            "dead_out": int(np.count_nonzero(fan_in == 0)),
            "dead_in": int(np.count_nonzero(fan_out == 0))}


def erdos_renyi_degrees(units: int, trials: int, active: int, total: int) -> list[list[float]]:
    """Expected [degree, units] under a uniformly random mask with the same active count:
    each of `units` units has Binomial(trials, active / total) connections (the reference
    curve SET's scale-free claim is judged against). Degrees expected on fewer than 1e-3
    units are left out."""
    if units <= 0 or trials <= 0 or total <= 0:
        return []
    density = min(1.0, max(0.0, active / total))
    degree = torch.arange(trials + 1, dtype=torch.float64)  # (trials + 1,)
    if density in (0.0, 1.0):
        expected = torch.zeros(trials + 1, dtype=torch.float64)
        expected[0 if density == 0.0 else trials] = units
    else:
        log_choose = (torch.lgamma(torch.tensor(trials + 1.0, dtype=torch.float64))
                      - torch.lgamma(degree + 1) - torch.lgamma(trials - degree + 1))
        expected = units * torch.exp(log_choose + degree * np.log(density)
                                     + (trials - degree) * np.log1p(-density))
    keep = expected >= 1e-3
    return [[int(d), float(e)] for d, e in zip(degree[keep].tolist(), expected[keep].tolist(),
                                               strict=True)]


# ---- weights at a rewire ----------------------------------------------------------------------
def sample_stride(count: int) -> int:
    """The stride of the evenly strided sample of at most QUANTILE_SAMPLE values."""
    return max(1, -(-count // QUANTILE_SAMPLE))


_LEVELS = np.asarray(QUANTILE_LEVELS)


def _quantiles(sample: np.ndarray, count: int) -> dict:
    """Linear interpolation between order statistics (numpy's and torch.quantile's default)
    of |sample|, from one sort: at most QUANTILE_SAMPLE values, so numpy on the CPU beats
    a dozen small torch kernels per call. The sort is in the sample's own dtype; only the
    two order statistics around each level are interpolated in float64."""
    if sample.size == 0:
        return {"count": count, "quantiles": None}
    ordered = np.sort(np.abs(sample))  # (n,)
    positions = _LEVELS * (ordered.size - 1)  # (levels,)
    lows = positions.astype(np.int64)
    below = ordered[lows].astype(np.float64)
    above = ordered[np.minimum(lows + 1, ordered.size - 1)].astype(np.float64)
    return {"count": count, "quantiles": (below + (above - below) * (positions - lows)).tolist()}


def rewire_magnitudes(weight: torch.Tensor, mask: torch.Tensor, added: torch.Tensor,
                      dropped_values: torch.Tensor, grown_values: torch.Tensor,
                      kept_count: int, dropped_count: int | None = None) -> dict:
    """Quantiles of |w| of the kept, dropped and grown connections of one rewire.

    `dropped_values` are the dropped weights before they were zeroed (or an evenly strided
    sample of them, `sample_stride` apart; then `dropped_count` is how many were dropped),
    `grown_values` the grown ones as installed; kept weights (active before and after) are
    read from a strided view of the layer, so this costs about QUANTILE_SAMPLE reads, not a
    pass over the layer. A recorder asks for this at every rewire of every layer: it is a
    handful of small kernels (each a few microseconds of dispatch) and one crossing to the
    CPU for the three samples together (one sync on a GPU)."""
    flat_weight = weight.detach().reshape(-1)
    stride = max(1, kept_count // QUANTILE_SAMPLE) | 1  # odd: less aliasing with rows
    # Kept = active now and not grown now: for bools, mask > added.
    kept = torch.gt(mask.reshape(-1)[::stride], added.reshape(-1)[::stride])  # (P,) bool
    dropped_values = dropped_values.detach().reshape(-1)
    grown_values = grown_values.detach().reshape(-1)
    samples = [flat_weight[::stride][kept], dropped_values,
               grown_values[::sample_stride(grown_values.numel())]]
    samples[0] = samples[0][::sample_stride(samples[0].numel())]
    samples[1] = samples[1][::sample_stride(samples[1].numel())]
    # float32 unless the layer is float64: numpy cannot hold bfloat16.
    dtype = torch.float64 if flat_weight.dtype == torch.float64 else torch.float32
    joined = torch.cat([values.to(dtype) for values in samples]).cpu().numpy()
    kept_end = samples[0].numel()
    dropped_end = kept_end + samples[1].numel()
    return {"levels": list(QUANTILE_LEVELS),
            "kept": _quantiles(joined[:kept_end], int(kept_count)),
            "dropped": _quantiles(joined[kept_end:dropped_end],
                                  int(dropped_values.numel() if dropped_count is None
                                      else dropped_count)),
            "grown": _quantiles(joined[dropped_end:], int(grown_values.numel()))}


# ---- chains of Linear layers --------------------------------------------------------------------
def chain_connectivity(masks: list[np.ndarray]) -> dict:
    """Units cut off through an MLP-shaped chain of (out, in) masks, input first, and the
    effective (compressed) parameter count: connections on at least one input→output path
    (RigL's "effective compressed size", Evci et al. 2020).

    Per layer: `cut_from_input` = its output units no input reaches, `cut_from_output` = its
    output units that reach no output of the chain; `effective` = its connections whose input
    unit is reached from the input and whose output unit reaches the output."""
    masks = [np.asarray(mask, dtype=bool) for mask in masks]
    for position in range(1, len(masks)):
        if masks[position].shape[1] != masks[position - 1].shape[0]:
            raise ValueError(f"masks: layer {position} takes {masks[position].shape[1]} inputs, "
                             f"layer {position - 1} gives {masks[position - 1].shape[0]}")
    # Every unit reached (the usual case at any useful density) selects nothing away: the
    # whole mask is used as it is instead of a copy of its selected rows or columns.
    def rows(mask, keep):
        return mask if keep.all() else mask[keep]

    def cols(mask, keep):
        return mask if keep.all() else mask[:, keep]

    reached = [np.ones(masks[0].shape[1], dtype=bool)]  # (in_0,) every input is an input
    for mask in masks:
        reached.append(cols(mask, reached[-1]).any(axis=1))  # (out_l,)
    reaches = [np.ones(masks[-1].shape[0], dtype=bool)]  # (out_last,) every output is one
    for mask in reversed(masks):
        reaches.append(rows(mask, reaches[-1]).any(axis=0))  # (in_l,)
    reaches.reverse()  # reaches[l]: units entering layer l that reach the output
    layers = []
    for position, mask in enumerate(masks):
        active = int(np.count_nonzero(mask))
        used = rows(mask, reaches[position + 1])
        effective = (active if used is mask and reached[position].all()
                     else int(np.count_nonzero(cols(used, reached[position]))))
        layers.append({"active": active, "effective": effective,
                       "cut_from_input": int(np.count_nonzero(~reached[position + 1])),
                       "cut_from_output": int(np.count_nonzero(~reaches[position + 1]))})
    return {"layers": layers,
            "inputs_unused": int(np.count_nonzero(~reaches[0])),
            "active_params": sum(layer["active"] for layer in layers),
            "effective_params": sum(layer["effective"] for layer in layers)}
