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


def test_set_drops_closest_to_zero_per_sign():
    weight = torch.tensor([[0.5, -0.1, 0.2, -0.9], [0.05, -0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    # positives 0.5, 0.2, 0.05 → int(0.5·3)=1 drops 0.05; negatives -0.1,-0.9,-0.3 → drops -0.1.
    # Growth picks from everything not kept, so check the drop through `removed` ∪ regrown.
    result = rewire("set", weight, mask, drop_fraction=0.5,
                    generator=torch.Generator().manual_seed(0))
    kept = mask & result.mask
    assert not kept[1, 0] or result.mask[1, 0]  # 0.05 dropped unless regrown
    survivors = {(0, 0), (0, 2), (0, 3), (1, 1)}
    for position in survivors:
        assert bool(result.mask[position]), position
    assert int(result.mask.sum()) == 6


def test_set_exact_with_ties():
    weight = torch.ones(10, 10)
    mask = torch.ones(10, 10, dtype=torch.bool)
    mask[0] = False
    result = rewire("set", weight, mask, drop_fraction=0.25,
                    generator=torch.Generator().manual_seed(0))
    assert int(result.mask.sum()) == 90
    # Ties break by index: the first int(0.25·90)=22 positions drop.
    assert int(result.removed.sum()) + int((mask & result.mask).sum()) == 90


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
