"""SET at the mask level: exact counts, net changes, Mocanu's split by sign."""

import pytest
import torch

from dst_core import rewire


def _layer(shape, density, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    mask = torch.rand(shape, generator=generator) < density
    return weight * mask, mask


@pytest.mark.parametrize("shape", [(7, 5), (64, 20), (3, 4, 3, 3)])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.9])
def test_set_keeps_count_and_changes_are_net(shape, density):
    weight, mask = _layer(shape, density)
    result = rewire("set", weight, mask, drop_fraction=0.3,
                    generator=torch.Generator().manual_seed(1))
    assert result.mask.dtype == torch.bool and result.mask.shape == mask.shape
    assert int(result.mask.sum()) == int(mask.sum())
    assert not (result.added & result.removed).any()
    assert torch.equal(result.mask, (mask & ~result.removed) | result.added)
    assert not (result.added & mask).any() and (result.removed <= mask).all()


def _positions(flags: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(index) for index in flags.nonzero().tolist()}


def test_set_drops_closest_to_zero_per_sign():
    weight = torch.tensor([[0.5, -0.1, 0.2, -0.9], [0.05, -0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    # positives 0.5, 0.2, 0.05 → int(0.5·3)=1 drops 0.05; negatives -0.1,-0.9,-0.3 → drops -0.1.
    # (One ranking of |w| would drop 0.05, -0.1 and 0.2: 0.2 survives only split by sign.)
    dropped = {(1, 0), (0, 1)}
    survivors = {(0, 0), (0, 2), (0, 3), (1, 1)}
    inactive = {(1, 2), (1, 3)}
    # Growth picks 2 of the 4 non-kept positions at random, so a dropped one may come back;
    # over seeds, every dropped position is seen removed and nothing else ever is (each stays
    # out with probability 1/2 a seed: 32 seeds miss none but with p < 1e-9).
    removed_seen, added_seen = set(), set()
    for seed in range(32):
        result = rewire("set", weight, mask, drop_fraction=0.5,
                        generator=torch.Generator().manual_seed(seed))
        assert _positions(result.mask) >= survivors and int(result.mask.sum()) == 6
        assert _positions(result.mask) - survivors <= dropped | inactive
        removed_seen |= _positions(result.removed)
        added_seen |= _positions(result.added)
    assert removed_seen == dropped
    assert added_seen == inactive


def test_set_exact_with_ties():
    weight = torch.ones(10, 10)
    mask = torch.ones(10, 10, dtype=torch.bool)
    mask[0] = False
    # All 90 active weights tie at 1 (and are positive): int(0.25·90) = 22 drop, the lowest
    # flat indices, i.e. 10..31; growth picks 22 of row 0 (0..9) and those 22 at random.
    dropped, inactive = set(range(10, 32)), set(range(10))
    # A dropped one stays out with probability 10/32 a seed: 64 seeds miss none (p < 1e-9).
    removed_seen, added_seen = set(), set()
    for seed in range(64):
        result = rewire("set", weight, mask, drop_fraction=0.25,
                        generator=torch.Generator().manual_seed(seed))
        flat = result.mask.reshape(-1)
        assert int(flat.sum()) == 90 and bool(flat[32:].all())  # past the ties: all kept
        assert int(flat[:32].sum()) == 22
        removed_seen |= set(result.removed.reshape(-1).nonzero().reshape(-1).tolist())
        added_seen |= set(result.added.reshape(-1).nonzero().reshape(-1).tolist())
    assert removed_seen == dropped
    assert added_seen == inactive


def test_set_deterministic_and_inputs_untouched():
    weight, mask = _layer((32, 32), 0.2)
    weight_copy, mask_copy = weight.clone(), mask.clone()
    first = rewire("set", weight, mask.float(), drop_fraction=0.3,
                   generator=torch.Generator().manual_seed(5))
    second = rewire("set", weight, mask, drop_fraction=0.3,
                    generator=torch.Generator().manual_seed(5))
    assert torch.equal(first.mask, second.mask)
    assert torch.equal(weight, weight_copy) and torch.equal(mask, mask_copy)


@pytest.mark.parametrize("kwargs, field", [
    ({"method": "nope"}, "method"),
    ({"drop_fraction": 1.5}, "drop_fraction"),
    ({"drop_fraction": -0.1}, "drop_fraction"),
    ({"mask": torch.ones(3, 3, dtype=torch.bool)}, "mask"),
])
def test_bad_arguments_name_the_argument(kwargs, field):
    weight, mask = _layer((4, 4), 0.5)
    call = {"method": "set", "weight": weight, "mask": mask, "drop_fraction": 0.3, **kwargs}
    method = call.pop("method")
    with pytest.raises(ValueError, match=field):
        rewire(method, **call)
