"""Topology analytics against brute-force recomputation from the sequence of masks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from dst_core import analytics
from dst_core.analytics import LayerHistory, chain_connectivity, degrees, magnitude_quantiles


# ---- brute force: straight from the definitions, loops and sets, no shared code ----------------
def brute_degrees(mask: np.ndarray) -> dict:
    rows, cols = mask.shape
    fan_in = [sum(bool(mask[i, j]) for j in range(cols)) for i in range(rows)]
    fan_out = [sum(bool(mask[i, j]) for i in range(rows)) for j in range(cols)]

    def pairs(values):
        return [[degree, units] for degree, units in sorted(Counter(values).items())]

    def stats(values):
        mean = sum(values) / len(values)
        return mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5, max(values)

    return {"fan_in": pairs(fan_in), "fan_out": pairs(fan_out), "fan_in_stats": stats(fan_in),
            "fan_out_stats": stats(fan_out), "dead_out": fan_in.count(0),
            "dead_in": fan_out.count(0)}


def brute_history(masks: list[np.ndarray], r: int) -> dict:
    """Everything `LayerHistory.at(r)` answers, from sets of active flat indices."""
    sets = [set(np.flatnonzero(m.reshape(-1)).tolist()) for m in masks]
    grown = {c: sets[c] - sets[c - 1] for c in range(1, len(sets))}
    removed = {c: sets[c - 1] - sets[c] for c in range(1, len(sets))}
    now = sets[r]
    ages = []
    for j in now:
        last = max([c for c in range(1, r + 1) if j in grown[c]], default=0)
        ages.append(r - last)
    survival = [[r - c, len(grown[c] & now) / len(grown[c])] for c in range(r - 1, 0, -1)
                if grown[c]]
    repruned = [[c, len(grown[c] & removed[c + 1]) / len(grown[c])] for c in range(1, r)
                if grown[c]]
    return {"age": [[a, n] for a, n in sorted(Counter(ages).items())], "survival": survival,
            "repruned_next": repruned,
            "distance_initial": len(now - sets[0]) / len(now) if now else 0.0,
            "distance_previous": len(now - sets[r - 1]) / len(now) if now and r else 0.0,
            "active": len(now)}


def check_degrees(mask: np.ndarray) -> None:
    got, want = degrees(mask), brute_degrees(mask)
    assert got["fan_in"] == want["fan_in"] and got["fan_out"] == want["fan_out"]
    assert got["dead_in"] == want["dead_in"] and got["dead_out"] == want["dead_out"]
    for key in ("fan_in_stats", "fan_out_stats"):
        mean, std, top = want[key]
        assert got[key]["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
        assert got[key]["std"] == pytest.approx(std, rel=1e-9, abs=1e-12)
        assert got[key]["max"] == top


def check_history(masks: list[np.ndarray], compact_every: int = 0) -> LayerHistory:
    """Build a history of `masks` (merging pending rewires into the CSR every
    `compact_every` rewires; 0: never) and check every rewire against brute force."""
    shape = masks[0].shape
    history = LayerHistory(masks[0], shape)
    for rewire, (previous, mask) in enumerate(zip(masks, masks[1:], strict=False), start=1):
        flat_prev, flat = previous.reshape(-1), mask.reshape(-1)
        history.advance(np.flatnonzero(flat & ~flat_prev), np.flatnonzero(flat_prev & ~flat))
        if compact_every and rewire % compact_every == 0:
            history.compact()
    for r in range(len(masks)):
        got = history.at(r, masks[r])
        want = brute_history(masks, r)
        assert got["age"] == want["age"], r
        assert got["survival"] == want["survival"], r  # exact: same integer ratio
        assert got["repruned_next"] == want["repruned_next"], r
        assert got["distance_initial"] == want["distance_initial"]
        assert got["distance_previous"] == want["distance_previous"]
        assert got["active"] == want["active"]
        series = history.series[r]
        check = brute_degrees(masks[r])
        assert series["dead_in"] == check["dead_in"] and series["dead_out"] == check["dead_out"]
        assert series["distance_initial"] == want["distance_initial"]
        assert series["distance_previous"] == want["distance_previous"]
        counts = series["fan_in_counts"]
        assert [[d, int(n)] for d, n in enumerate(counts) if n] == check["fan_in"]
    return history


def rewired_masks(shape, density, rewires, fraction, seed, regrow_bias=0.0) -> list[np.ndarray]:
    """Masks of a run of fixed-count rewires; `regrow_bias` prefers recently dropped positions
    (so connections drop and regrow, the case where cohort membership is subtle)."""
    rng = np.random.default_rng(seed)
    numel = int(np.prod(shape))
    mask = np.zeros(numel, dtype=bool)
    mask[rng.choice(numel, max(1, int(density * numel)), replace=False)] = True
    masks = [mask.reshape(shape).copy()]
    dropped_before = np.zeros(numel, dtype=bool)
    for _ in range(rewires):
        active, inactive = np.flatnonzero(mask), np.flatnonzero(~mask)
        count = min(int(fraction * active.size), inactive.size)
        drop = rng.choice(active, count, replace=False)
        weights = 1.0 + regrow_bias * dropped_before[inactive]
        grow = rng.choice(inactive, count, replace=False, p=weights / weights.sum())
        dropped_before[drop] = True
        mask[drop] = False
        mask[grow] = True
        masks.append(mask.reshape(shape).copy())
    return masks


@pytest.mark.parametrize("shape", [(7, 5), (1, 12), (12, 1), (16, 27)])  # (16, 27): 16×3×3×3 conv
@pytest.mark.parametrize("density", [0.05, 0.3, 0.9])
def test_degrees_match_brute_force(shape, density):
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    check_degrees(rng.random(shape) < density)


def test_degrees_of_empty_and_full_layers():
    empty = degrees(np.zeros((3, 4), bool))
    assert empty["fan_in"] == [[0, 3]] and empty["fan_out"] == [[0, 4]]
    assert empty["dead_in"] == 4 and empty["dead_out"] == 3
    full = degrees(np.ones((3, 4), bool))
    assert full["fan_in"] == [[4, 3]] and full["dead_in"] == 0
    assert full["fan_in_stats"] == {"mean": 4.0, "std": 0.0, "max": 4}


def test_degrees_reject_a_vector():
    with pytest.raises(ValueError, match="mask"):
        degrees(np.ones(5, bool))


@pytest.mark.parametrize("shape,density,fraction,bias", [
    ((6, 8), 0.3, 0.3, 0.0), ((6, 8), 0.3, 0.5, 20.0), ((16, 27), 0.2, 0.3, 5.0),
    ((1, 40), 0.5, 0.4, 10.0), ((30, 2), 0.1, 1.0, 0.0)])
@pytest.mark.parametrize("compact_every", [0, 1, 5])
def test_history_matches_brute_force_on_rewired_runs(shape, density, fraction, bias,
                                                     compact_every):
    masks = rewired_masks(shape, density, 12, fraction, seed=3, regrow_bias=bias)
    check_history(masks, compact_every)


def test_history_answers_the_same_before_and_after_merging_pending_rewires():
    masks = rewired_masks((16, 27), 0.2, 10, 0.4, seed=8, regrow_bias=20.0)
    history = check_history(masks)
    before = [history.at(r, masks[r]) for r in range(len(masks))]
    history.compact()
    assert [history.at(r, masks[r]) for r in range(len(masks))] == before
    more = rewired_masks((16, 27), 0.2, 4, 0.4, seed=9)  # continue from another mask
    history.advance_to(more[0])
    assert history.at(11, more[0])["survival"] == brute_history(masks + [more[0]], 11)["survival"]


def test_history_matches_brute_force_on_arbitrary_masks():
    """Masks of any counts (a keyframe may follow anything): growth and removal unequal,
    empty rewires, a layer that empties and refills."""
    rng = np.random.default_rng(11)
    masks = [rng.random((5, 9)) < p for p in (0.4, 0.4, 0.1, 0.0, 0.7, 0.7, 1.0, 0.3)]
    masks.insert(2, masks[1].copy())  # a rewire without any change in this layer
    check_history(masks)
    check_history(masks, compact_every=2)


def test_advance_to_a_full_mask_equals_advance_by_changes():
    masks = rewired_masks((8, 8), 0.25, 6, 0.3, seed=5, regrow_bias=10.0)
    by_changes = check_history(masks)
    by_masks = LayerHistory(masks[0], (8, 8))
    for mask in masks[1:]:
        by_masks.advance_to(mask)
    for r in range(len(masks)):
        assert by_masks.at(r, masks[r]) == by_changes.at(r, masks[r])


def test_age_and_survival_by_hand():
    """Rewire 1 grows {2,3} and drops {0,1}; rewire 2 drops 2, regrows 0; rewire 3 regrows 2."""
    masks = [np.array([[1, 1, 0, 0, 0]], bool), np.array([[0, 0, 1, 1, 0]], bool),
             np.array([[1, 0, 0, 1, 0]], bool), np.array([[1, 0, 1, 1, 0]], bool)]
    history = check_history(masks)
    at3 = history.at(3, masks[3])
    assert at3["age"] == [[0, 1], [1, 1], [2, 1]]  # 2 grown now, 0 at rewire 2, 3 at rewire 1
    assert at3["survival"] == [[1, 1.0], [2, 1.0]]  # cohort 1 = {2, 3}: both active again
    assert at3["repruned_next"] == [[1, 0.5], [2, 0.0]]  # 2 of {2,3} dropped at rewire 2
    assert at3["distance_initial"] == pytest.approx(2 / 3)
    assert at3["distance_previous"] == pytest.approx(1 / 3)
    assert history.at(0, masks[0])["age"] == [[0, 2]]


def test_history_rejects_inconsistent_changes():
    history = LayerHistory(np.array([[1, 0, 0]], bool), (1, 3))
    with pytest.raises(ValueError, match="removed"):
        history.advance(np.array([1]), np.array([2]))
    with pytest.raises(ValueError, match="added"):
        history.advance(np.array([0]), np.array([]))
    with pytest.raises(ValueError, match="added"):
        history.advance(np.array([3]), np.array([]))
    with pytest.raises(ValueError, match="listed twice"):
        history.advance(np.array([1, 1]), np.array([]))
    assert history.rewires == 0  # nothing half-applied
    with pytest.raises(ValueError, match="rewire"):
        history.at(1, np.zeros(3, bool))


def brute_chain(masks):
    """Reachability by explicit graph search over units."""
    sizes = [masks[0].shape[1]] + [m.shape[0] for m in masks]
    forward = [set(range(sizes[0]))]
    for mask in masks:
        forward.append({i for i in range(mask.shape[0])
                        if any(mask[i, j] for j in forward[-1])})
    backward = [set(range(sizes[-1]))]
    for mask in reversed(masks):
        backward.append({j for j in range(mask.shape[1])
                         if any(mask[i, j] for i in backward[-1])})
    backward.reverse()
    effective = sum(int(mask[i, j]) for index, mask in enumerate(masks)
                    for i in backward[index + 1] for j in forward[index])
    cut_in = [sizes[index + 1] - len(forward[index + 1]) for index in range(len(masks))]
    cut_out = [sizes[index + 1] - len(backward[index + 1]) for index in range(len(masks))]
    return effective, cut_in, cut_out, sizes[0] - len(backward[0])


@pytest.mark.parametrize("seed", range(4))
def test_chain_connectivity_matches_graph_search(seed):
    rng = np.random.default_rng(seed)
    sizes = [9, 7, 6, 3]
    masks = [rng.random((sizes[i + 1], sizes[i])) < 0.25 for i in range(3)]
    got = chain_connectivity(masks)
    effective, cut_in, cut_out, unused = brute_chain(masks)
    assert got["effective_params"] == effective
    assert [layer["cut_from_input"] for layer in got["layers"]] == cut_in
    assert [layer["cut_from_output"] for layer in got["layers"]] == cut_out
    assert got["inputs_unused"] == unused
    assert got["active_params"] == sum(int(m.sum()) for m in masks)


def test_chain_rejects_mismatched_layers():
    with pytest.raises(ValueError, match="masks"):
        chain_connectivity([np.ones((3, 4), bool), np.ones((2, 5), bool)])


def test_magnitude_quantiles_exact_and_sampled():
    values = torch.tensor([-4.0, 1.0, -2.0, 3.0, 0.0])
    got = magnitude_quantiles(values)
    assert got["count"] == 5
    assert got["quantiles"] == pytest.approx(
        np.quantile([4, 1, 2, 3, 0], analytics.QUANTILE_LEVELS).tolist())
    assert magnitude_quantiles(torch.empty(0)) == {"count": 0, "quantiles": None}
    large = torch.linspace(-1, 1, 3 * analytics.QUANTILE_SAMPLE + 7)
    sampled = magnitude_quantiles(large)
    exact = np.quantile(large.abs().numpy(), analytics.QUANTILE_LEVELS)
    assert sampled["count"] == large.numel()
    assert sampled["quantiles"] == pytest.approx(exact.tolist(), abs=1e-3)


def test_erdos_renyi_expectation_sums_to_units():
    expected = analytics.erdos_renyi_degrees(units=100, trials=50, active=500, total=5000)
    assert sum(units for _, units in expected) == pytest.approx(100, rel=1e-3)
    mean = sum(d * units for d, units in expected) / 100
    assert mean == pytest.approx(5.0, rel=1e-3)
    assert analytics.erdos_renyi_degrees(units=3, trials=4, active=12, total=12) == [[4, 3.0]]


@pytest.mark.parametrize("block,chunk", [(1, 1), (7, 5), (64, 3)])
def test_merging_block_by_block_equals_brute_force(monkeypatch, block, chunk):
    """compact() writes the pending cohorts block by block of connections and moves the old
    CSR chunk by chunk: blocks and chunks far smaller than the layer (and not dividing it)
    must give the same answers as one block, merged once or after every few rewires."""
    monkeypatch.setattr(LayerHistory, "COMPACT_BLOCK", block)
    monkeypatch.setattr(LayerHistory, "CHUNK_UNITS", chunk)
    masks = rewired_masks((16, 27), 0.2, 14, 0.4, seed=12, regrow_bias=20.0)
    for compact_every in (1, 3, 14):
        check_history(masks, compact_every)


def test_unsorted_changes_are_taken_like_sorted_ones():
    masks = rewired_masks((9, 11), 0.3, 8, 0.4, seed=13, regrow_bias=10.0)
    rng = np.random.default_rng(14)
    shuffled = LayerHistory(masks[0], (9, 11))
    for previous, mask in zip(masks, masks[1:], strict=False):
        flat_prev, flat = previous.reshape(-1), mask.reshape(-1)
        shuffled.advance(rng.permutation(np.flatnonzero(flat & ~flat_prev)),
                         rng.permutation(np.flatnonzero(flat_prev & ~flat)))
    shuffled.compact()
    by_masks = check_history(masks, compact_every=2)
    for r in range(len(masks)):
        assert shuffled.at(r, masks[r]) == by_masks.at(r, masks[r])
