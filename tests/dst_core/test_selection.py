"""Threshold selection is exact: it agrees with a full stable sort, ties to the lower index."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dst_core.selection import (
    count_true,
    flat_nonzero,
    random_choice,
    release_workspace,
    select_mask,
    workspace,
)


def select_index(values, count, **options):
    return flat_nonzero(select_mask(values, count, **options).reshape(-1))


def _reference(values, count, eligible, largest):
    flat = values.reshape(-1).float()
    allowed = eligible.reshape(-1) & (flat > -math.inf if largest else flat < math.inf)
    index = allowed.nonzero().squeeze(1)
    order = torch.sort(flat[index], descending=largest, stable=True).indices[:count]
    return torch.sort(index[order]).values


@settings(max_examples=40, deadline=None)
@given(size=st.sampled_from([10, 5000, 40000, 100_000, 262_144]),
       levels=st.sampled_from([2, 50, 10**6]), share=st.floats(0.0, 1.0),
       eligible_share=st.floats(0.05, 1.0), largest=st.booleans(), seed=st.integers(0, 99),
       as_excluded=st.booleans())
def test_select_mask_matches_a_stable_sort(size, levels, share, eligible_share, largest, seed,
                                           as_excluded):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(0, levels, (size,), generator=generator).float()
    eligible = torch.rand(size, generator=generator) < eligible_share
    count = int(share * int(eligible.sum()))
    # The same allowed set, given either as `eligible` or as its complement `excluded`.
    options = {"excluded": ~eligible} if as_excluded else {"eligible": eligible}
    chosen = select_index(values, count, largest=largest, **options)
    assert torch.equal(chosen, _reference(values, count, eligible, largest))


def test_infinite_losers_are_never_chosen():
    values = torch.full((50_000,), -math.inf)
    values[::7] = 1.0
    chosen = select_index(values, int((values > -math.inf).sum()))
    assert (values[chosen] == 1.0).all()
    with pytest.raises(ValueError, match="count"):
        select_index(values, int((values > -math.inf).sum()) + 1)


@pytest.mark.parametrize("share", [0.0001, 0.1, 0.6, 1.0])
def test_flat_nonzero(share):
    flags = torch.rand(80_000) < share
    assert torch.equal(flat_nonzero(flags), flags.nonzero().squeeze(1))
    assert torch.equal(flat_nonzero(flags[8:]), flags[8:].nonzero().squeeze(1))


@pytest.mark.parametrize("size, excluded_share, count", [(100, 0.3, 20), (200_000, 0.1, 6000),
                                                         (200_000, 0.9, 15_000),
                                                         (2_000_000, 0.9995, 400)])
def test_random_choice_exact_outside_excluded_and_reproducible(size, excluded_share, count):
    excluded = torch.rand(size, generator=torch.Generator().manual_seed(0)) < excluded_share
    candidates = size - int(excluded.sum())
    first = random_choice(excluded, count, candidates, torch.Generator().manual_seed(5))
    second = random_choice(excluded, count, candidates, torch.Generator().manual_seed(5))
    assert int(first.sum()) == count and not (first & excluded).any()
    assert torch.equal(first, second)


def test_random_choice_is_uniform():
    size, count = 100_000, 2000
    excluded = torch.zeros(size, dtype=torch.bool)
    excluded[:50_000] = True
    generator = torch.Generator().manual_seed(0)
    hits = torch.zeros(size)
    for _ in range(50):
        hits += random_choice(excluded, count, 50_000, generator).float()
    # 50 draws × 2000 over 50,000 candidates: 2 hits each on average; halves agree to ~1%.
    upper, lower = hits[50_000:75_000].sum(), hits[75_000:].sum()
    assert hits[:50_000].sum() == 0
    assert abs(float(upper - lower)) / float(upper + lower) < 0.03


@pytest.mark.parametrize("size, count, rounds", [
    (60_000, 6000, 300),  # small need: batches overshoot and give a random surplus back
    (300_000, 50_000, 40),  # large need: a first batch short of it, then the rest
])
def test_random_choice_hits_every_candidate_equally_often(size, count, rounds):
    """Per-position frequencies over many draws match uniform sampling without replacement."""
    excluded = torch.zeros(size, dtype=torch.bool)
    excluded[::3] = True  # two thirds are candidates, interleaved with excluded positions
    candidates = size - int(excluded.sum())
    generator = torch.Generator().manual_seed(1)
    hits = torch.zeros(size)
    for _ in range(rounds):
        chosen = random_choice(excluded, count, candidates, generator)
        assert int(chosen.sum()) == count
        hits += chosen.float()
    allowed = hits[~excluded]
    p = count / candidates
    assert hits[excluded].sum() == 0
    # Each candidate is chosen Binomial(rounds, p) times.
    assert abs(float(allowed.var()) / (rounds * p * (1 - p)) - 1) < 0.05
    # No region is favoured: 40 blocks of candidates each get 1/40 of the hits.
    blocks = allowed[:allowed.numel() // 40 * 40].view(40, -1).sum(1) / allowed.sum()
    assert float((blocks - 1 / 40).abs().max()) < 0.0006


@pytest.mark.parametrize("size", [0, 1, 127, 65_536, 65_536 + 77, 300_001])
@pytest.mark.parametrize("share", [0.0, 0.03, 0.5, 1.0])
def test_count_true_agrees_with_count_nonzero(size, share):
    flags = torch.rand(size, generator=torch.Generator().manual_seed(size)) < share
    assert count_true(flags) == int(torch.count_nonzero(flags))
    if size > 8:
        assert count_true(flags[3:]) == int(torch.count_nonzero(flags[3:]))  # unaligned view
        assert count_true(flags[::2]) == int(torch.count_nonzero(flags[::2]))  # strided
        grid = flags[: size - size % 8].view(8, -1)
        assert count_true(grid.t()) == int(torch.count_nonzero(grid))  # non-contiguous 2-D


def test_workspace_buffers_are_per_thread_and_per_dtype():
    import threading

    mine = workspace(1000, torch.device("cpu"), "test")
    assert workspace(500, torch.device("cpu"), "test").data_ptr() == mine.data_ptr()  # reused
    assert workspace(1000, torch.device("cpu"), "test", torch.bool).data_ptr() != mine.data_ptr()
    other = []
    thread = threading.Thread(target=lambda: other.append(
        workspace(1000, torch.device("cpu"), "test").data_ptr()))
    thread.start()
    thread.join()
    assert other[0] != mine.data_ptr()
    import weakref

    held = weakref.ref(workspace(1000, torch.device("cpu"), "test")._base)
    del mine
    release_workspace()
    assert held() is None  # nothing keeps the buffer alive any more
