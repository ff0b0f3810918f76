"""Exact, deterministic selection of the `count` best positions of a score tensor — by threshold.

Rewiring must keep the number of active connections exact, so "drop the n smallest" has to
pick exactly n positions even when scores tie; ties go to the lower flat index so that two
runs with the same seed make the same choice on any device.

A full sort or `topk` over a 4096 × 4096 layer costs more than a dense training step of that
layer (a sort many times more), so selection works by threshold instead:

1. estimate bounds either side of the k-th score from a fixed-seed random sample (65,536
   scores, one gather), a few binomial standard deviations from its expected rank;
2. two comparison passes over all scores: the candidates (beyond the lower bound) and the
   certain ones (beyond the upper bound), kept as bool masks, never listed;
3. only the thin band between the bounds is listed (scanned as 8-byte words, since few are
   set): there the exact k-th value (`kthvalue`, linear time), everything above it and the
   lowest-index ones among its ties join the certain ones.

If the bounds missed (the k-th score lies outside them), a wider margin is tried, then all scores
are resolved the same way: the answer is always exact; only its cost depends on the estimate.
The sample uses its own fixed-seed generator, so selection never consumes the caller's RNG.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SAMPLE_SIZE = 1 << 16  # scores sampled to estimate the threshold (≈ 0.4% of a 4096² layer)
SORT_BELOW = 1 << 15  # below this many scores a plain stable sort is cheaper than estimating
BAND_SIGMAS = (4.0, 16.0)  # margins tried before resolving every score exactly
_SAMPLE_SEED = 0x5EED  # fixed: the estimate (and so the cost) must not depend on user seeds
# CPU threads a rewire runs on (None: torch's setting). A rewire is a dozen memory-bound
# passes plus nonzero, boolean gathers, kthvalue and cumsum that PyTorch runs on one thread;
# each parallel pass ends at a barrier, and when the cores are shared a barrier waits for a
# descheduled sibling thread: on shared cores 2 threads were an order of magnitude slower
# than 1, on quiet ones faster (docs/benchmarks.md, "Threads"). Machines are usually not
# shared: torch's setting by default; set 1 where the cores are oversubscribed.
REWIRE_THREADS: int | None = None


@contextmanager
def rewire_threads(device: torch.device) -> Iterator[None]:
    """Run the enclosed CPU rewiring on at most `REWIRE_THREADS` threads, then restore."""
    previous = torch.get_num_threads()
    if REWIRE_THREADS is None or device.type != "cpu" or previous <= REWIRE_THREADS:
        yield
        return
    torch.set_num_threads(REWIRE_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def index_to_mask(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool tensor of `like`'s shape, True at the flat positions `index`."""
    chosen = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    chosen[index] = True
    return chosen.view(like.shape)


def select_mask(
    scores: torch.Tensor,
    count: int,
    *,
    eligible: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
    largest: bool = True,
) -> torch.Tensor:
    """Bool mask (scores' shape) of exactly `count` entries with the highest (or, with
    `largest=False`, lowest) scores among those `eligible` and not `excluded` (bool tensors of
    scores' shape, both optional); ties go to the lower index.

    An infinite score on the losing side (-inf for highest, +inf for lowest) and NaN are never
    chosen. Raises ValueError when fewer than `count` entries can be chosen.

    The answer stays a mask: the entries certainly chosen (beyond the upper bound) are found
    by one comparison and never listed; only the thin band between the bounds is listed,
    ranked and scattered back. Listing the ~k chosen positions instead (`nonzero` and a
    gather of k scores) cost more than every comparison pass together at 4096².
    """
    flat = scores.reshape(-1)
    flat_eligible = eligible.reshape(-1) if eligible is not None else None
    flat_excluded = excluded.reshape(-1) if excluded is not None else None
    size = flat.numel()
    if count > size:
        raise ValueError(f"count: cannot select {count} of {size} positions")
    if count <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=flat.device)

    def allowed(flags: torch.Tensor) -> torch.Tensor:
        if flat_eligible is not None:
            flags &= flat_eligible
        if flat_excluded is not None:
            flags = torch.gt(flags, flat_excluded, out=flags)  # flags & ~excluded in one pass
        return flags

    if size > SORT_BELOW:
        generator = torch.Generator(device=flat.device)
        generator.manual_seed(_SAMPLE_SEED)
        sample_index = torch.randint(size, (SAMPLE_SIZE,), generator=generator, device=flat.device)
        if flat_eligible is not None:
            sample_index = sample_index[flat_eligible[sample_index]]
        if flat_excluded is not None:
            sample_index = sample_index[~flat_excluded[sample_index]]
        sample = _oriented(flat[sample_index], largest)  # (S,) allowed scores, higher wins
        # The allowed count is estimated from the sample: only the bounds' quality uses it.
        allowed_estimate = max(1.0, size * sample.numel() / SAMPLE_SIZE)
        share = min(1.0, count / allowed_estimate)
        rank = share * sample.numel()  # expected sample rank (from the top) of the k-th score
        for sigmas in BAND_SIGMAS:
            low, high = band_bounds(sample, rank, share, sigmas)
            if not math.isfinite(low):
                break
            # Two passes over every score: the candidates (on the winning side of the lower
            # bound) and, among them, the certain ones (beyond the upper bound).
            flags = workspace(size, flat.device, "candidates", torch.bool)
            candidates = allowed(torch.ge(flat, low, out=flags) if largest
                                 else torch.le(flat, -low, out=flags))
            certain = flat > high if largest else flat < -high
            certain &= candidates
            certain_count = count_true(certain)
            if certain_count > count:
                continue
            band = flat_nonzero(torch.gt(candidates, certain, out=flags))  # (B,) ascending
            if certain_count + band.numel() < count:
                continue
            values = _oriented(flat.index_select(0, band), largest)  # (B,)
            certain[band[_top_in_order(values, count - certain_count)]] = True
            return certain.view(scores.shape)
    # Exact fallback: every selectable score resolved the same way.
    candidates = flat_nonzero(allowed(flat > -math.inf if largest else flat < math.inf))
    if candidates.numel() < count:
        raise ValueError(f"count: cannot select {count} of {candidates.numel()} eligible positions")
    chosen = candidates[_top_in_order(_oriented(flat[candidates], largest), count)]
    return index_to_mask(chosen, scores)


def _oriented(values: torch.Tensor, largest: bool) -> torch.Tensor:
    values = values.float()
    return values if largest else -values


def draw_count(needed: int, available: int, size: int) -> int:
    """How many uniform draws over `size` positions the next batch of a random choice takes
    to hit `needed` of the `available` allowed ones. A batch that overshoots lists its hits
    to give the surplus back, so a large need is first met to ~97% and only the small rest
    is overshot. Expected distinct allowed hits of n draws: available · (1 − e^(−n / size))
    = target. Shared by the whole-layer choice and the sharded one (dst_core.sharded)."""
    target = needed * 0.97 if needed > SORT_BELOW else min(available - 0.5, needed * 1.05 + 64)
    return max(64, math.ceil(-size * math.log1p(-target / available)))


def band_bounds(sample: torch.Tensor, rank: float, share: float,
                sigmas: float) -> tuple[float, float]:
    """(low, high): bounds either side of the k-th score, the sample's scores a few binomial
    standard deviations (plus a few ranks, so tiny shares get a margin) around its expected
    rank `rank` from the top. One definition for the whole-layer selection and the sharded
    one (dst_core.sharded), which must choose alike."""
    spread = sigmas * math.sqrt(rank * (1.0 - share)) + sigmas
    return (_sample_rank(sample, math.ceil(rank + spread)),
            _sample_rank(sample, math.floor(rank - spread)))


def _sample_rank(sample: torch.Tensor, rank_from_top: int) -> float:
    """The sample's score at `rank_from_top` (0 = highest); ±inf outside the sample."""
    if rank_from_top < 0:
        return math.inf
    if rank_from_top >= sample.numel():
        return -math.inf
    # kthvalue is O(S); the k-th highest is the (S − rank)-th smallest.
    return float(torch.kthvalue(sample, sample.numel() - rank_from_top).values)


def _top_in_order(values: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the `count` highest of `values` (already in index order), ties to the
    earliest, in O(len) instead of a sort: find the count-th highest value exactly, take
    everything above it and the first of its ties."""
    if count <= 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    kth = torch.kthvalue(values, values.numel() - count + 1).values  # count-th highest
    chosen = values > kth
    ties = values == kth
    ties &= torch.cumsum(ties, 0) <= count - count_true(chosen)
    return chosen | ties


def flat_nonzero(flags: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the True entries of a 1-D bool tensor.

    On the CPU, `nonzero` over 16.7 M bools costs ~13 ms; when few are set it is far cheaper
    to scan them as 8-byte words and expand only the words that hold a True.
    """
    size = flags.numel()
    if flags.device.type != "cpu" or size < (1 << 16) or size % 8 or not flags.is_contiguous() \
            or flags.storage_offset() % 8:
        return flags.nonzero().squeeze(1)
    words = flags.view(torch.int64)  # (size / 8,)
    hit_words = words.nonzero().squeeze(1)  # (H,) words holding a True
    bits = words[hit_words].view(torch.bool)  # (8H,) their bytes, in order
    inner = bits.nonzero().squeeze(1)  # (P,) ascending
    return (hit_words[inner >> 3] << 3) | (inner & 7)


RANDOM_SCORES_ABOVE = 0.5  # choosing more than this share of the candidates: random scores
FEW_CANDIDATES_BELOW = 16  # fewer than 1/16 of the positions are candidates: list them


def random_choice(excluded: torch.Tensor, count: int, candidate_count: int,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Bool mask (excluded's shape) of exactly `count` positions outside `excluded`
    (`candidate_count` of them), chosen uniformly at random without replacement,
    reproducibly through `generator`.

    Drawing one random score per position costs ≈ 65 ms at 16.7 M entries on this CPU, so
    positions are drawn directly, as i.i.d. uniform indices. The distinct allowed positions
    that one batch of draws hits are, given how many they are, a uniformly random subset of
    the allowed ones (no position is favoured); a batch that hits more than needed gives back
    a uniformly random surplus, one that hits fewer is followed by another batch among the
    positions still allowed. The result is exactly uniform, and nothing sorts the draws
    (deduplicating them in draw order with `unique` cost more than the rest of a SET rewire).
    When most candidates must be chosen, drawing would mostly hit taken positions, so it
    falls back to random scores; when candidates are few, they are listed and scored.
    """
    flat_excluded = excluded.reshape(-1)
    size = flat_excluded.numel()
    device = flat_excluded.device
    if count > candidate_count:
        raise ValueError(f"count: cannot choose {count} of {candidate_count} candidates")
    if count <= 0:
        return torch.zeros(excluded.shape, dtype=torch.bool, device=device)
    if candidate_count * FEW_CANDIDATES_BELOW < size:
        # Few candidates in a large layer (Deep R reviving in a nearly dense one): draws would
        # mostly hit excluded positions, so list the candidates and pick among them.
        candidates = flat_nonzero(~flat_excluded)  # (candidate_count,)
        scores = torch.rand(candidates.numel(), generator=generator, device=device)
        return index_to_mask(candidates[select_mask(scores, count)], excluded)
    if count > RANDOM_SCORES_ABOVE * candidate_count or size <= SORT_BELOW:
        scores = workspace(size, device, "noise")
        scores.uniform_(generator=generator)
        return select_mask(scores, count, excluded=flat_excluded).view(excluded.shape)
    chosen = torch.zeros(size, dtype=torch.bool, device=device)
    batch = workspace(size, device, "random_batch", torch.bool)
    needed, available = count, candidate_count
    while needed > 0:
        draws = torch.randint(size, (draw_count(needed, available, size),),
                              generator=generator, device=device)
        batch.zero_()
        batch[draws] = True
        torch.gt(batch, flat_excluded, out=batch)  # batch & ~excluded
        if needed < count:
            torch.gt(batch, chosen, out=batch)
        hit_count = count_true(batch)
        if hit_count > needed:
            positions = flat_nonzero(batch)  # (hit_count,)
            scores = torch.rand(hit_count, generator=generator, device=device)
            batch[positions[select_mask(scores, hit_count - needed)]] = False
            hit_count = needed
        chosen |= batch
        needed -= hit_count
        available -= hit_count
    return chosen.view(excluded.shape)


_WORKSPACE = threading.local()  # per thread: {(slot, dtype): the largest buffer seen}


def workspace(size: int, device: torch.device, slot: str,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A reusable buffer of `size` entries for values written, read and dropped within one
    rewire (scores, comparison flags); slots: "scores" (a drop's or a growth's |w| or |g|),
    "noise" (random scores), "candidates" and "random_batch" (flags).

    On the CPU a fresh 67 MB tensor (a 4096² layer's scores) costs ~15 ms of page faults, a
    16.7 MB bool one ~3 ms, more than the pass that fills it; keeping the largest buffer seen
    per slot avoids that (CUDA's caching allocator already does). Buffers are per thread, so
    rewires in two threads never share one.
    """
    if device.type != "cpu":
        return torch.empty(size, dtype=dtype, device=device)
    buffers = _WORKSPACE.__dict__.setdefault("buffers", {})
    buffer = buffers.get((slot, dtype))
    if buffer is None or buffer.numel() < size:
        buffer = buffers[(slot, dtype)] = torch.empty(size, dtype=dtype)
    return buffer[:size]


def release_workspace() -> None:
    """Free this thread's reusable buffers (about 170 MB after rewiring a 4096² layer on the
    CPU: two float score buffers and two bool flag buffers, sized to the largest layer)."""
    _WORKSPACE.__dict__.pop("buffers", None)


def count_true(flags: torch.Tensor) -> int:
    """Number of True entries of a bool tensor.

    `count_nonzero` reads 16.7 M bools in ~1.3 ms on this CPU; summing them as int64 words,
    16 words per row so no byte lane can carry (each ≤ 16), and then the bytes of those sums
    takes ~0.35 ms.
    """
    flat = flags.reshape(-1)
    size = flat.numel()
    if flat.device.type != "cpu" or size < (1 << 16) or not flat.is_contiguous() \
            or flat.storage_offset() % 8:
        return int(torch.count_nonzero(flat))
    body = size - size % 128
    lanes = flat[:body].view(torch.int64).view(-1, 16).sum(1)  # (body / 128,) byte-lane sums
    total = int(lanes.view(torch.uint8).sum(dtype=torch.int64))
    return total + int(torch.count_nonzero(flat[body:]))


def magnitude(tensor: torch.Tensor, slot: str) -> torch.Tensor:
    """(numel,) float32 |tensor|, written into the reusable buffer `slot` when possible."""
    flat = tensor.reshape(-1)
    if flat.dtype != torch.float32:
        return flat.abs().float()
    return torch.abs(flat, out=workspace(flat.numel(), flat.device, slot))
