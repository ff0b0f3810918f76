"""Topology analytics of a sparse layer: degrees, dead units, connection ages, cohort survival,
mask distance, weight magnitudes at a rewire, and reachability through a chain of Linear layers.

Everything is computed exactly from the mask and the rewires' *net* changes (added / removed
flat indices, as the driver reports and the store keeps them), in vectorised numpy: no loop
runs over connections. A layer is seen as the dashboard shows it, output × input, a conv
kernel flattened into the input axis (`events.matrix_shape`): fan-in is per output unit
(channel), fan-out per input unit (input channel × kernel position).

Rewires are numbered from 1 in each run; the initial mask is rewire 0. A connection's *age*
is the number of rewires since it last became active (one active since the start has the
age of the rewire's number, one grown at this rewire has age 0). The *cohort* of rewire c is
its net-grown connections A_c; its survival at rewire r is |A_c ∩ M_r| / |A_c|, i.e. the share
active now, whether or not it was dropped and regrown in between (the issue's definition).
These questions come from the DST papers: degree distributions moving away from
Erdős–Rényi (Mocanu et al. 2018, SET), dead units and the effective compressed size (Evci et
al. 2020, RigL), mask distance and settling (Liu et al. 2021, ITOP).

Nothing here imports the run store, pydantic or web code (the engine stays pure).
"""

from __future__ import annotations

import numpy as np
import torch

QUANTILE_LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
# Above this many values a quantile is taken over an evenly strided sample of them: the
# rank error is ~1/sample, and a rewire must not pay for sorting millions of magnitudes.
QUANTILE_SAMPLE = 1 << 12


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
    as_float = degrees.astype(np.float64)
    return {"mean": float(as_float.mean()), "std": float(as_float.std()),
            "max": int(degrees.max())}


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
def magnitude_quantiles(values: torch.Tensor, count: int | None = None) -> dict:
    """{count, quantiles} of |values| at QUANTILE_LEVELS; quantiles None when empty.

    Exact up to QUANTILE_SAMPLE values, above that over an evenly strided sample (the
    values are in index order, so the stride spreads it over the whole layer). `count`
    is the size of the population when `values` is already a sample of it."""
    flat = values.detach().reshape(-1)
    if count is None:
        count = int(flat.numel())
    if flat.numel() == 0:
        return {"count": int(count), "quantiles": None}
    if flat.numel() > QUANTILE_SAMPLE:
        flat = flat[:: -(-flat.numel() // QUANTILE_SAMPLE)]
    levels = torch.tensor(QUANTILE_LEVELS, dtype=torch.float64, device=flat.device)
    quantiles = torch.quantile(flat.abs().to(torch.float64), levels)
    return {"count": int(count), "quantiles": [float(q) for q in quantiles.cpu()]}


def rewire_magnitudes(weight: torch.Tensor, mask: torch.Tensor, added: torch.Tensor,
                      dropped_values: torch.Tensor, grown_values: torch.Tensor,
                      kept_count: int) -> dict:
    """Quantiles of |w| of the kept, dropped and grown connections of one rewire.

    `dropped_values` are the dropped weights before they were zeroed, `grown_values` the
    grown ones as installed; kept weights (active before and after) are read from a strided
    sample of positions, so this costs about QUANTILE_SAMPLE reads, not a pass over the layer."""
    flat_weight = weight.detach().reshape(-1)
    stride = max(1, kept_count // QUANTILE_SAMPLE) | 1  # odd: less aliasing with rows
    positions = torch.arange(0, flat_weight.numel(), stride, device=flat_weight.device)
    kept = mask.reshape(-1)[positions] & ~added.reshape(-1)[positions]  # (P,) bool
    return {"levels": list(QUANTILE_LEVELS),
            "kept": magnitude_quantiles(flat_weight[positions][kept], count=kept_count),
            "dropped": magnitude_quantiles(dropped_values),
            "grown": magnitude_quantiles(grown_values)}


# ---- history of one layer ----------------------------------------------------------------------
class LayerHistory:
    """Every rewire of one layer, kept compactly enough to answer any rewire's ages and cohort
    survival without replaying the run again.

    Each net growth is an event (connection j joined cohort c). The events are kept grouped
    by connection (CSR: `_offsets`, and `_members` holding each connection's cohorts in
    ascending order), so a query gathers the active connections' own events (on average
    density × events) instead of the whole run's; rewires newer than the last compaction stay
    in `_pending` (cohort, connections) and are merged once they are a sizeable share. One
    checkpointed state per rewire would cost the whole mask per rewire instead. Cohort sizes,
    removals, degrees and the per-rewire summaries are updated from the net changes alone.
    """

    COMPACT_EVENTS = 1 << 18  # pending events that trigger a merge (also at 1/4 of the CSR)
    CHUNK_UNITS = 1 << 16  # connections per chunk when moving the CSR: bounded temporaries
    COMPACT_BLOCK = 1 << 16  # connections per block when merging: its counters stay in cache

    def __init__(self, initial_mask: np.ndarray, shape: tuple[int, int]):
        self.shape = (int(shape[0]), int(shape[1]))
        numel = self.shape[0] * self.shape[1]
        initial = np.asarray(initial_mask, dtype=bool).reshape(-1)
        if initial.size != numel:
            raise ValueError(f"initial_mask: {initial.size} entries for a {shape} layer")
        self.initial = initial.copy()  # (numel,) M_0
        self.mask = initial.copy()  # (numel,) mask after the newest rewire
        self.born = np.zeros(numel, dtype=np.int32)  # (numel,) rewire it last became active
        self._offsets = np.zeros(numel + 1, dtype=np.int64)  # (numel + 1,) CSR by connection
        self._members = np.empty(0, dtype=np.int16)  # (E,) cohorts, ascending per connection
        self._pending: list[tuple[int, np.ndarray]] = []  # (cohort, its connections), in order
        self._pending_events = 0
        self.grown = [0]  # |A_c| per rewire c (rewire 0: the initial mask, no growth)
        self.removed = [0]  # |R_c| per rewire c
        self.active = [int(initial.sum())]  # |M_c|
        self.repruned = [0]  # |A_c ∩ R_{c+1}|, known once rewire c+1 is seen
        grid = initial.reshape(self.shape)
        self.fan_in = np.count_nonzero(grid, axis=1).astype(np.int64)  # (rows,) at the newest
        self.fan_out = np.count_nonzero(grid, axis=0).astype(np.int64)  # (cols,) rewire
        self.new_since_start = 0  # |M_newest \ M_0|
        self.series: list[dict] = [self._summary(0)]  # per rewire: what charts over time need

    @property
    def rewires(self) -> int:
        """The newest rewire's number (0 before any)."""
        return len(self.grown) - 1

    @property
    def nbytes(self) -> int:
        return int(self.initial.nbytes + self.mask.nbytes + self.born.nbytes
                   + self._offsets.nbytes + self._members.nbytes
                   + sum(conns.nbytes for _, conns in self._pending)
                   + sum(entry["fan_in_counts"].nbytes for entry in self.series))

    def advance(self, added: np.ndarray, removed: np.ndarray) -> None:
        """Take the next rewire's net changes (flat indices; each list distinct).

        A few gathers and scatters over the changed indices and bincounts over the units:
        this runs once per stored frame when a history is built, so it never touches the
        whole layer."""
        added = np.asarray(added).reshape(-1).astype(np.int64, copy=False)
        removed = np.asarray(removed).reshape(-1).astype(np.int64, copy=False)
        numel = self.mask.size
        for name, indices in (("added", added), ("removed", removed)):
            if indices.size and (indices.min() < 0 or indices.max() >= numel):
                raise ValueError(f"{name}: index outside a layer of {numel} connections")
        if removed.size and not self.mask[removed].all():
            raise ValueError("removed: a connection that was not active")
        if added.size and self.mask[added].any():
            raise ValueError("added: a connection that was already active")
        added, removed = _sorted_distinct(added, "added"), _sorted_distinct(removed, "removed")
        rewire = self.rewires + 1
        # Grown at the previous rewire and active since: born there (A_{r-1} ∩ R_r).
        self.repruned[-1] = int(np.count_nonzero(self.born[removed] == rewire - 1)) \
            if rewire > 1 else 0
        self.mask[removed] = False
        self.mask[added] = True
        self.born[added] = rewire
        if added.size:
            self._pending.append((rewire, added))  # sorted: compact() splits it into blocks
            self._pending_events += int(added.size)
        self.grown.append(int(added.size))
        self.removed.append(int(removed.size))
        self.active.append(self.active[-1] + int(added.size) - int(removed.size))
        self.repruned.append(0)
        # Degrees and the distance to the start follow the net changes: O(changes), not O(mask).
        rows, cols = self.shape
        added_row, added_col = np.divmod(added, cols)
        removed_row, removed_col = np.divmod(removed, cols)
        self.fan_in += (np.bincount(added_row, minlength=rows)
                        - np.bincount(removed_row, minlength=rows))
        self.fan_out += (np.bincount(added_col, minlength=cols)
                         - np.bincount(removed_col, minlength=cols))
        self.new_since_start += (int(np.count_nonzero(~self.initial[added]))
                                 - int(np.count_nonzero(~self.initial[removed])))
        self.series.append(self._summary(rewire))

    def advance_to(self, mask: np.ndarray) -> None:
        """Take the next rewire as a full mask (a keyframe): net changes are the difference
        (one pass over the layer for what changed, then gathers over the changes only)."""
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.size != self.mask.size:
            raise ValueError(f"mask: {mask.size} entries for a layer of {self.mask.size}")
        changed = np.flatnonzero(mask != self.mask)  # (changes,) ascending
        now_active = mask[changed]
        self.advance(changed[now_active], changed[~now_active])

    def _summary(self, rewire: int) -> dict:
        active = self.active[rewire]
        return {"fan_in_counts": np.bincount(self.fan_in).astype(np.int32),  # units per degree
                "fan_in_stats": degree_stats(self.fan_in),
                "fan_out_stats": degree_stats(self.fan_out),
                "dead_out": int(np.count_nonzero(self.fan_in == 0)),
                "dead_in": int(np.count_nonzero(self.fan_out == 0)),
                "distance_initial": self.new_since_start / active if active else 0.0,
                "distance_previous": self.grown[rewire] / active if active and rewire else 0.0}

    def compact(self) -> None:
        """Merge the pending rewires into the per-connection CSR (each connection's cohorts
        stay ascending: old ones first, then the pending in rewire order).

        A counting sort: each pending cohort's (sorted) connections are written to their next
        free slot. It goes block by block of COMPACT_BLOCK connections, every cohort's slice
        of that block in turn, so the slot counters and the part of `members` being written
        stay in cache: one pass over the whole layer per cohort cost ~3× as much in cache
        misses (a 1,000-rewire, 1 M-connection layer holds ~30 M growth events)."""
        if not self._pending:
            return
        numel = self.mask.size
        old_offsets, old_members = self._offsets, self._members
        old_lengths = np.diff(old_offsets)  # (numel,)
        pending_conns = np.concatenate([conns for _, conns in self._pending])  # (P,)
        new_lengths = old_lengths + np.bincount(pending_conns, minlength=numel)
        del pending_conns
        offsets = np.zeros(numel + 1, dtype=np.int64)
        np.cumsum(new_lengths, out=offsets[1:])
        dtype = np.int16 if self.rewires < np.iinfo(np.int16).max else np.int32
        members = np.empty(int(offsets[-1]), dtype=dtype)
        for low in range(0, numel, self.CHUNK_UNITS):  # old events move by their unit's shift
            high = min(numel, low + self.CHUNK_UNITS)
            start, stop = int(old_offsets[low]), int(old_offsets[high])
            if stop > start:
                shift = np.repeat(offsets[low:high] - old_offsets[low:high],
                                  old_lengths[low:high])  # (stop - start,)
                members[np.arange(start, stop) + shift] = old_members[start:stop]
        free = offsets[:-1] + old_lengths  # (numel,) next slot of each connection
        bounds = list(range(0, numel, self.COMPACT_BLOCK)) + [numel]
        cuts = [np.searchsorted(conns, bounds).tolist() for _, conns in self._pending]
        for block, low in enumerate(bounds[:-1]):
            counters = free[low:bounds[block + 1]]  # a view: the block's next free slots
            for (cohort, conns), cut in zip(self._pending, cuts, strict=True):
                if cut[block] == cut[block + 1]:
                    continue
                part = conns[cut[block]:cut[block + 1]] - low  # distinct within a cohort
                slots = counters[part]
                members[slots] = cohort
                counters[part] = slots + 1
        self._offsets, self._members = offsets, members
        self._pending, self._pending_events = [], 0

    def compact_if_due(self) -> None:
        """Merge once the pending rewires are a sizeable share: a query walks the pending
        ones cohort by cohort (over all their connections), the CSR only the active ones'."""
        if self._pending_events > max(self.COMPACT_EVENTS, self._members.size // 4):
            self.compact()

    def at(self, rewire: int, mask: np.ndarray) -> dict:
        """Ages, cohort survival, re-pruning and distances at `rewire`, whose mask is `mask`
        (the caller seeks it from the store; the history keeps only the newest one)."""
        if not 0 <= rewire <= self.rewires:
            raise ValueError(f"rewire: {rewire} outside 0..{self.rewires}")
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.size != self.mask.size:
            raise ValueError(f"mask: {mask.size} entries for a layer of {self.mask.size}")
        self.compact_if_due()
        active_index = np.flatnonzero(mask)  # (k,) ascending
        born, cohort_alive = self._memberships(active_index, mask, rewire)
        grown = np.asarray(self.grown[:rewire], dtype=np.int64)
        earlier = np.flatnonzero(grown > 0)  # rewires 1..r-1 with net growth
        newest_first = earlier[::-1]
        shares = cohort_alive[newest_first] / grown[newest_first]
        survival = [[age, share] for age, share in zip((rewire - newest_first).tolist(),
                                                        shares.tolist(), strict=True)]
        repruned = self.repruned_series(rewire)
        active_count = int(active_index.size)
        new_since_start = int(np.count_nonzero(~self.initial[active_index]))
        return {
            "rewire": rewire, "active": active_count,
            "age": count_pairs(rewire - born),
            "survival": survival,
            "repruned_next": repruned,
            "distance_initial": new_since_start / active_count if active_count else 0.0,
            "distance_previous": (self.grown[rewire] / active_count
                                  if active_count and rewire else 0.0),
        }

    def repruned_series(self, rewire: int) -> list[list]:
        """[c, |A_c ∩ R_{c+1}| / |A_c|] for rewires 1..rewire-1 with net growth."""
        grown = np.asarray(self.grown[1:rewire], dtype=np.int64)
        cohorts = np.flatnonzero(grown > 0)
        shares = np.asarray(self.repruned[1:rewire], dtype=np.int64)[cohorts] / grown[cohorts]
        return [[c, share] for c, share in zip((cohorts + 1).tolist(), shares.tolist(),
                                                strict=True)]

    def _memberships(self, active_index: np.ndarray, mask: np.ndarray,
                     rewire: int) -> tuple[np.ndarray, np.ndarray]:
        """(born, cohort_alive): per active connection the rewire <= `rewire` it last became
        active at (0: since the start), and per cohort c < `rewire` how many of its
        connections are active (|A_c ∩ M_r|)."""
        newest = rewire == self.rewires and np.array_equal(mask, self.mask)
        born = self.born[active_index].astype(np.int64) if newest else None  # kept current
        starts = self._offsets[active_index]  # (k,)
        lengths = self._offsets[active_index + 1] - starts  # (k,)
        firsts = np.cumsum(lengths) - lengths  # (k,) where each one's events begin below
        total = int(lengths.sum())
        positions = np.repeat(starts - firsts, lengths) + np.arange(total)  # (total,)
        cohorts = self._members[positions]  # (total,) ascending within each connection
        del positions
        cohort_alive = np.bincount(cohorts, minlength=self.rewires + 1)[:rewire]
        if not newest:
            # Each connection's newest cohort <= rewire: a segment maximum over its cohorts
            # with the later ones zeroed (one pass, no cumulative count of the whole gather).
            born = np.zeros(active_index.size, dtype=np.int64)
            has = lengths > 0
            if total:
                upto = np.where(cohorts <= rewire, cohorts, 0)
                born[has] = np.maximum.reduceat(upto, firsts[has])
        cohort_alive = cohort_alive.astype(np.int64)
        for cohort, conns in self._pending:  # newer than the CSR, in rewire order
            if cohort > rewire:
                break
            hit = conns[mask[conns]]  # its connections active at `rewire`
            if cohort < rewire:
                cohort_alive[cohort] += hit.size
            if not newest and hit.size:
                born[np.searchsorted(active_index, hit)] = cohort
        return born, cohort_alive


def _sorted_distinct(indices: np.ndarray, name: str) -> np.ndarray:
    """`indices` ascending (stored deltas and keyframe differences already are: checked in
    one pass), ValueError naming `name` if one is listed twice."""
    if indices.size < 2:
        return indices
    steps = np.diff(indices)
    if not (steps > 0).all():
        indices = np.sort(indices)
        if not (np.diff(indices) > 0).all():
            raise ValueError(f"{name}: a connection listed twice")
    return indices


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
    reached = [np.ones(masks[0].shape[1], dtype=bool)]  # (in_0,) every input is an input
    for mask in masks:
        reached.append(mask[:, reached[-1]].any(axis=1))  # (out_l,)
    reaches = [np.ones(masks[-1].shape[0], dtype=bool)]  # (out_last,) every output is one
    for mask in reversed(masks):
        reaches.append(mask[reaches[-1], :].any(axis=0))  # (in_l,)
    reaches.reverse()  # reaches[l]: units entering layer l that reach the output
    layers = []
    for position, mask in enumerate(masks):
        effective = int(np.count_nonzero(mask[np.ix_(reaches[position + 1],
                                                     reached[position])]))
        layers.append({"active": int(np.count_nonzero(mask)), "effective": effective,
                       "cut_from_input": int(np.count_nonzero(~reached[position + 1])),
                       "cut_from_output": int(np.count_nonzero(~reaches[position + 1]))})
    return {"layers": layers,
            "inputs_unused": int(np.count_nonzero(~reaches[0])),
            "active_params": sum(layer["active"] for layer in layers),
            "effective_params": sum(layer["effective"] for layer in layers)}
