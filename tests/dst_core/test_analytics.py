"""Topology analytics and the cohort index against brute-force recomputation from the
sequence of masks."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from dst_core import analytics
from dst_core.analytics import chain_connectivity, degrees
from dst_core.store import cohorts
from dst_core.store.cohorts import IndexFormatError, LayerIndexer, LayerTimeline, Segment


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
    """Everything `LayerTimeline.at(r)` answers, from sets of active flat indices."""
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


def stored(segment: Segment) -> Segment:
    """The segment as a reader gets it back from the store: header and blob, blob read lazily."""
    header, blob = segment.to_row()
    return Segment.from_row(header, segment.last_seq, lambda: blob)


def index_masks(masks: list[np.ndarray], keyframe_every: int = 0,
                changes=None) -> tuple[list[Segment], LayerIndexer]:
    """Feed a run's masks to a LayerIndexer (net changes, or the whole mask every
    `keyframe_every` rewires), cutting stored segments when due."""
    shape = masks[0].shape
    indexer = LayerIndexer(masks[0], shape, step=0, seq=1)
    segments = []
    for rewire, (previous, mask) in enumerate(zip(masks, masks[1:], strict=False), start=1):
        flat_prev, flat = previous.reshape(-1), mask.reshape(-1)
        if keyframe_every and rewire % keyframe_every == 0:
            indexer.take_mask(10 * rewire, rewire + 1, flat)
        else:
            added, removed = np.flatnonzero(flat & ~flat_prev), np.flatnonzero(flat_prev & ~flat)
            if changes is not None:
                added, removed = changes(added), changes(removed)
            indexer.take_changes(10 * rewire, rewire + 1, added, removed)
        if indexer.due:
            segments.append(stored(indexer.cut()))
    return segments, indexer


def check_timeline(timeline: LayerTimeline, masks: list[np.ndarray]) -> None:
    """Every rewire of `timeline` against brute force."""
    assert timeline.rewires == len(masks) - 1
    for r in range(len(masks)):
        got = timeline.at(r, masks[r])
        want = brute_history(masks, r)
        for key in ("age", "survival", "repruned_next", "distance_initial",
                    "distance_previous", "active"):
            assert got[key] == want[key], (key, r)  # exact: the same integer ratios
        summary = timeline.summary(r)
        check = brute_degrees(masks[r])
        assert summary["dead_in"] == check["dead_in"] and summary["dead_out"] == check["dead_out"]
        assert summary["distance_initial"] == want["distance_initial"]
        assert summary["distance_previous"] == want["distance_previous"]
        counts = summary["fan_in_counts"]
        assert [[d, int(n)] for d, n in enumerate(counts) if n] == check["fan_in"]
        for key in ("fan_in_stats", "fan_out_stats"):
            mean, std, top = check[key]
            assert summary[key]["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
            assert summary[key]["std"] == pytest.approx(std, rel=1e-9, abs=1e-12)
            assert summary[key]["max"] == top


def check_history(masks: list[np.ndarray], keyframe_every: int = 0) -> LayerTimeline:
    """Index `masks` and check every rewire three ways: as written (stored segments + the
    writer's open rewires), as a reader resuming at the last checkpoint and replaying the
    rest, and with everything cut into stored segments (a run that ended)."""
    segments, indexer = index_masks(masks, keyframe_every)
    check_timeline(LayerTimeline(segments, indexer), masks)
    if segments:
        resumed = LayerIndexer.resume(segments[0], segments[-1])
        for rewire in range(segments[-1].last + 1, len(masks)):
            resumed.take_mask(10 * rewire, rewire + 1, masks[rewire].reshape(-1))
        check_timeline(LayerTimeline(segments, resumed), masks)
    last = indexer.cut()
    ended = LayerTimeline(segments + ([stored(last)] if last else []), None)
    check_timeline(ended, masks)
    return ended


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
@pytest.mark.parametrize("segment_rewires", [1, 4, 32])
def test_history_matches_brute_force_on_rewired_runs(monkeypatch, shape, density, fraction,
                                                     bias, segment_rewires):
    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", segment_rewires)
    masks = rewired_masks(shape, density, 12, fraction, seed=3, regrow_bias=bias)
    check_history(masks)
    check_history(masks, keyframe_every=3)


@pytest.mark.parametrize("block", [1, 7, 16])
def test_blocks_far_smaller_than_the_layer_answer_the_same(monkeypatch, block):
    """Cohorts are stored per block of BLOCK connections: blocks that do not divide the layer
    (the last one short) and a block per connection must give the same answers."""
    monkeypatch.setattr(cohorts, "BLOCK", block)
    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 5)
    check_history(rewired_masks((16, 27), 0.2, 14, 0.4, seed=12, regrow_bias=20.0))


def test_history_matches_brute_force_on_arbitrary_masks(monkeypatch):
    """Masks of any counts (a keyframe may follow anything): growth and removal unequal,
    empty rewires, a layer that empties and refills."""
    rng = np.random.default_rng(11)
    masks = [rng.random((5, 9)) < p for p in (0.4, 0.4, 0.1, 0.0, 0.7, 0.7, 1.0, 0.3)]
    masks.insert(2, masks[1].copy())  # a rewire without any change in this layer
    for segment_rewires in (1, 3, 32):
        monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", segment_rewires)
        check_history(masks)
        check_history(masks, keyframe_every=2)


def test_a_whole_mask_equals_its_net_changes(monkeypatch):
    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 3)
    masks = rewired_masks((8, 8), 0.25, 6, 0.3, seed=5, regrow_bias=10.0)
    by_changes = check_history(masks)
    by_masks = check_history(masks, keyframe_every=1)
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


def test_inconsistent_changes_are_refused_and_change_nothing():
    indexer = LayerIndexer(np.array([[1, 0, 0]], bool), (1, 3), step=0, seq=1)
    with pytest.raises(ValueError, match="removed"):
        indexer.take_changes(1, 2, np.array([1]), np.array([2]))
    with pytest.raises(ValueError, match="added"):
        indexer.take_changes(1, 2, np.array([0]), np.array([]))
    with pytest.raises(ValueError, match="added"):
        indexer.take_changes(1, 2, np.array([3]), np.array([]))
    with pytest.raises(ValueError, match="listed twice"):
        indexer.take_changes(1, 2, np.array([1, 1]), np.array([]))
    with pytest.raises(ValueError, match="step"):
        indexer.take_changes(-1, 2, np.array([1]), np.array([]))
    assert indexer.rewire == 0 and indexer.born.tolist() == [0, -1, -1]  # nothing half-applied
    with pytest.raises(ValueError, match="rewire"):
        LayerTimeline([], indexer).at(1, np.zeros(3, bool))


def test_a_mask_the_index_does_not_know_is_refused():
    masks = rewired_masks((4, 4), 0.5, 3, 0.5, seed=2)
    segments, indexer = index_masks(masks)
    other = ~masks[2]
    with pytest.raises(IndexFormatError):
        LayerTimeline(segments, indexer).at(2, other)


def test_stored_segments_that_do_not_add_up_are_refused(monkeypatch):
    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 2)
    masks = rewired_masks((6, 5), 0.4, 5, 0.4, seed=4)
    segments, _ = index_masks(masks)
    header, blob = segments[1].to_row()
    for bad_header in ("not json", header.replace(f'"format":{cohorts.FORMAT}', '"format":9'),
                       header.replace('"grown":[', '"grown":[1,')):
        with pytest.raises(IndexFormatError):
            Segment.from_row(bad_header, 1, lambda: blob)
    short = Segment.from_row(header, 1, lambda: blob[:12])
    with pytest.raises(IndexFormatError):
        short.checkpoint()
    changed = json.loads(header)
    changed["active"][-1] += 1  # the header's count and its checkpoint disagree
    lying = Segment.from_row(json.dumps(changed), 1, lambda: blob)
    with pytest.raises(IndexFormatError):
        lying.checkpoint()
    changed = json.loads(header)
    changed["grown"][-1] += 1  # the header's cohort size and the stored members disagree
    with pytest.raises(IndexFormatError):
        Segment.from_row(json.dumps(changed), 1, lambda: blob).cohorts()


def test_checkpoints_are_stored_deflated_and_format_1_segments_still_read(monkeypatch):
    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 3)
    masks = rewired_masks((60, 80), 0.1, 7, 0.3, seed=5)
    segments, _ = index_masks(masks)
    first = segments[0]
    first.checkpoint()  # loads its blob
    header, blob = first.to_row()
    parts = json.loads(header)["parts"]
    assert {name for name, part in parts.items() if len(part) == 4} == \
        {"mask", "born", "initial", "gaps"}
    raw_bytes = sum(first._part(name).nbytes for name in parts)
    assert len(blob) < raw_bytes  # a 10 %-dense mask and its born deflate
    # The same segment as formats 1 and 2 wrote it (the cohorts' offsets raw, as `lows`;
    # format 1: every part raw) reads the same.
    arrays = {name: first._part(name) for name in parts if name != "gaps"}
    arrays["lows"] = first.cohorts().lows
    for version, deflated in ((1, {}), (2, {k: v for k, v in cohorts.DEFLATED.items()
                                            if k != "gaps"})):
        monkeypatch.setattr(cohorts, "DEFLATED", deflated)
        old_blob, old_parts = cohorts._pack_parts(arrays)
        old_header = json.dumps({**json.loads(header), "format": version,
                                 "parts": {name: list(part) for name, part in old_parts.items()}})
        old = Segment.from_row(old_header, 0, lambda blob=old_blob: blob)
        for got, want in zip(old.checkpoint(), first.checkpoint(), strict=True):
            assert np.array_equal(got, want)
        assert np.array_equal(old.initial(), masks[0].reshape(-1))
        assert np.array_equal(old.cohorts().lows, first.cohorts().lows)
        assert np.array_equal(old.cohorts().alive(masks[-1].reshape(-1)),
                              first.cohorts().alive(masks[-1].reshape(-1)))
    monkeypatch.undo()
    # A deflated part that does not inflate to its size is refused, not misread.
    offset, _, _, stored = parts["born"]
    damaged = blob[:offset] + bytes(stored) + blob[offset + stored:]
    with pytest.raises(IndexFormatError, match="segment part born"):
        Segment.from_row(header, 0, lambda: damaged).checkpoint()
    with pytest.raises(IndexFormatError):  # format 1 never had deflated parts
        Segment.from_row(header.replace(f'"format":{cohorts.FORMAT}', '"format":1'), 0, lambda: blob)


def test_cohort_offsets_are_stored_as_gaps_that_must_add_up(monkeypatch):
    """Format 3 stores each cohort's offsets within a block as gaps (deflated): a grown layer's
    index costs about a byte per grown connection, not two; gaps that leave the block or
    counts that do not match them are refused."""
    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 3)
    masks = rewired_masks((300, 400), 0.1, 6, 0.3, seed=8)
    segments, _ = index_masks(masks)
    segment = segments[0]
    header, blob = segment.to_row()
    offset, items, dtype, stored = json.loads(header)["parts"]["gaps"]
    members = items // 2
    assert members == sum(segment.rewires.grown[1:]) and stored < members  # < 1 byte each
    lows = segment.cohorts().lows
    counts = segment._part("counts").reshape(segment.last, -1)
    assert np.array_equal(cohorts._offsets_of(segment._part("gaps"), counts), lows)
    planes = segment._part("gaps").copy()
    planes[members:] = 255  # every gap ≥ 65280: the offsets leave their block
    with pytest.raises(IndexFormatError, match="beyond its block"):
        cohorts._offsets_of(planes, counts)
    with pytest.raises(IndexFormatError, match="odd number"):
        cohorts._offsets_of(planes[:-1], counts)
    with pytest.raises(IndexFormatError, match="do not match"):
        cohorts._offsets_of(planes[:-2], counts)


def test_born_survives_more_rewires_than_int16_holds(monkeypatch):
    """The writer keeps born as int16 (2 bytes per weight) until a run passes 32,766 rewires."""
    indexer = LayerIndexer(np.array([[1, 0]], bool), (1, 2), step=0, seq=1)
    indexer.rewire = np.iinfo(np.int16).max - 1
    indexer.take_changes(1, 2, np.array([1]), np.array([0]))
    assert indexer.born.dtype == np.int32 and indexer.born[1] == np.iinfo(np.int16).max


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


def test_rewire_magnitudes_exact_and_sampled():
    """Exact up to QUANTILE_SAMPLE values; above that, over an evenly strided sample whose
    rank error is about 1/QUANTILE_SAMPLE; empty groups have no quantiles."""
    weight = torch.tensor([-4.0, 1.0, -2.0, 3.0, 0.0, 5.0])
    mask = torch.tensor([True, True, True, True, True, False])
    added = torch.tensor([False, False, False, False, True, False])
    got = analytics.rewire_magnitudes(weight, mask, added, torch.tensor([-7.0, 6.0]),
                                      torch.tensor([0.0]), kept_count=4)
    assert got["kept"] == {"count": 4, "quantiles": pytest.approx(
        np.quantile([4, 1, 2, 3], analytics.QUANTILE_LEVELS).tolist())}
    assert got["dropped"]["quantiles"] == pytest.approx(
        np.quantile([7, 6], analytics.QUANTILE_LEVELS).tolist())
    assert got["grown"] == {"count": 1, "quantiles": [0.0] * len(analytics.QUANTILE_LEVELS)}
    empty = analytics.rewire_magnitudes(weight, mask, added, torch.empty(0), torch.empty(0), 4)
    assert empty["dropped"] == {"count": 0, "quantiles": None}
    large = torch.linspace(-1, 1, 3 * analytics.QUANTILE_SAMPLE + 7)
    everywhere = torch.ones(large.numel(), dtype=torch.bool)
    sampled = analytics.rewire_magnitudes(large, everywhere, ~everywhere, large, large,
                                          kept_count=large.numel())
    exact = np.quantile(large.abs().numpy(), analytics.QUANTILE_LEVELS).tolist()
    for name in ("kept", "dropped", "grown"):
        assert sampled[name]["count"] == large.numel()
        assert sampled[name]["quantiles"] == pytest.approx(exact, abs=2e-3)


def test_erdos_renyi_expectation_sums_to_units():
    expected = analytics.erdos_renyi_degrees(units=100, trials=50, active=500, total=5000)
    assert sum(units for _, units in expected) == pytest.approx(100, rel=1e-3)
    mean = sum(d * units for d, units in expected) / 100
    assert mean == pytest.approx(5.0, rel=1e-3)
    assert analytics.erdos_renyi_degrees(units=3, trials=4, active=12, total=12) == [[4, 3.0]]


def test_unsorted_changes_are_taken_like_sorted_ones(monkeypatch):
    monkeypatch.setattr(cohorts, "SEGMENT_REWIRES", 3)
    masks = rewired_masks((9, 11), 0.3, 8, 0.4, seed=13, regrow_bias=10.0)
    rng = np.random.default_rng(14)
    segments, indexer = index_masks(masks, changes=rng.permutation)
    check_timeline(LayerTimeline(segments, indexer), masks)
