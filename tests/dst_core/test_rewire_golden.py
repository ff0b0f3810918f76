"""Hand-computed golden masks: exactly which positions each algorithm drops and grows."""

import pytest
import torch

from dst_core import REGISTRY, rewire

B = torch.bool


def _t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


# weight 2×4 with six active entries (the last two of row 1 inactive).
WEIGHT = _t([[0.5, -0.1, 0.2, -0.9], [0.05, -0.3, 0.0, 0.0]])
MASK = _t([[1, 1, 1, 1], [1, 1, 0, 0]], B)


def test_set_drops_closest_to_zero_per_sign():
    # positives 0.5, 0.2, 0.05 → int(0.5·3) = 1 drops 0.05; negatives -0.1, -0.9, -0.3 → drops -0.1.
    dropped = REGISTRY["set"].drop(WEIGHT, MASK, 0.5)
    assert torch.equal(dropped, _t([[0, 1, 0, 0], [1, 0, 0, 0]], B))


def test_set_magnitude_drops_smallest_magnitudes_overall():
    # int(0.5·6) = 3 smallest |w|: 0.05, 0.1, 0.2.
    dropped = REGISTRY["set_magnitude"].drop(WEIGHT, MASK, 0.5)
    assert torch.equal(dropped, _t([[0, 1, 1, 0], [1, 0, 0, 0]], B))


@pytest.mark.parametrize("method", ["set", "set_magnitude"])
def test_random_growth_fills_exactly_the_dropped_count_among_non_kept(method):
    generator = torch.Generator().manual_seed(3)
    result = rewire(method, WEIGHT, MASK, drop_fraction=0.5, generator=generator)
    kept = MASK & ~REGISTRY[method].drop(WEIGHT, MASK, 0.5)
    assert int(result.mask.sum()) == 6
    assert (kept <= result.mask).all()  # nothing kept is lost


@pytest.mark.parametrize("method", ["rigl", "snfs"])
def test_gradient_growth_golden(method):
    weight = _t([[0.9, -0.05, 0.0], [0.4, 0.0, 0.0]])
    mask = _t([[1, 1, 0], [1, 0, 0]], B)
    grad = _t([[0.0, 5.0, 1.0], [0.0, 3.0, -7.0]])
    result = rewire(method, weight, mask, drop_fraction=0.34, grad=grad)
    if method == "rigl":
        # k = 3, int(0.34·3) = 1 drop: -0.05 at (0, 1). Candidates: (0,1), (0,2), (1,1),
        # (1,2); the largest |g| among them is |-7| at (1, 2).
        assert torch.equal(result.mask, _t([[1, 0, 0], [1, 0, 1]], B))
        assert torch.equal(result.added, _t([[0, 0, 0], [0, 0, 1]], B))
        assert torch.equal(result.removed, _t([[0, 1, 0], [0, 0, 0]], B))
    else:
        # SNFS drops ceil(0.34·3) = 2 (sparse_learning's magnitude_death): -0.05 and 0.4.
        # The two largest |g| outside the kept 0.9: |-7| at (1, 2), then 5 at (0, 1) (regrown).
        assert torch.equal(result.mask, _t([[1, 1, 0], [0, 0, 1]], B))
        assert torch.equal(result.added, _t([[0, 0, 0], [0, 0, 1]], B))
        assert torch.equal(result.removed, _t([[0, 0, 0], [1, 0, 0]], B))


def test_regrown_position_is_neither_added_nor_removed():
    weight = _t([[0.9, -0.05, 0.0], [0.4, 0.0, 0.0]])
    mask = _t([[1, 1, 0], [1, 0, 0]], B)
    grad = _t([[0.0, 10.0, 1.0], [0.0, 3.0, -7.0]])  # the dropped (0, 1) has the largest |g|
    result = rewire("rigl", weight, mask, drop_fraction=0.34, grad=grad)
    assert torch.equal(result.mask, mask)
    assert not result.added.any() and not result.removed.any()


def test_ties_break_by_lowest_flat_index():
    weight = _t([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    mask = _t([[1, 1, 0], [0, 0, 0]], B)
    grad = _t([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    # Equal |w|: (0, 0) drops before (0, 1). Equal |g| at (0, 2) and (1, 0): (0, 2) grows.
    result = rewire("rigl", weight, mask, drop_fraction=0.5, grad=grad)
    assert torch.equal(result.mask, _t([[0, 1, 1], [0, 0, 0]], B))
    assert torch.equal(result.removed, _t([[1, 0, 0], [0, 0, 0]], B))


def test_grad_sample_at_low_temperature_is_rigl():
    weight = _t([[0.9, -0.05, 0.0], [0.4, 0.0, 0.0]])
    mask = _t([[1, 1, 0], [1, 0, 0]], B)
    grad = _t([[0.0, 5.0, 1.0], [0.0, 3.0, -7.0]])
    result = rewire("grad_sample", weight, mask, drop_fraction=0.34, grad=grad,
                    temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.mask, _t([[1, 0, 0], [1, 0, 1]], B))


def test_grad_sample_frequencies_follow_the_softmax():
    # One active weight, dropped (f = 1); candidates = all 4 positions with |g| = 0, 1, 2, 3.
    # mean |g| over candidates = 1.5, T = 1 → p ∝ exp(|g| / 1.5).
    weight = _t([[0.3, 0.0, 0.0, 0.0]])
    mask = _t([[1, 0, 0, 0]], B)
    grad = _t([[0.0, 1.0, -2.0, 3.0]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    draws = 3000
    for _ in range(draws):
        counts += rewire("grad_sample", weight, mask, drop_fraction=1.0, grad=grad,
                         generator=generator).mask[0].float()
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 3.0]) / 1.5, 0)
    assert torch.allclose(counts / draws, expected, atol=0.03)


def test_drop_fraction_zero_changes_nothing():
    generator = torch.Generator().manual_seed(0)
    result = rewire("set", WEIGHT, MASK, drop_fraction=0.0, generator=generator)
    assert torch.equal(result.mask, MASK) and not result.added.any()
