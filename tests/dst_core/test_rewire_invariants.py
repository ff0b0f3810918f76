"""Invariants of every mask-level rewirer over method × density × shape (conv included)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dst_core import rewire
from dst_core.rewire import mask_level_methods

METHODS = mask_level_methods()  # from the registry
SHAPES = [(1, 1), (7, 5), (64, 20), (3, 4, 3, 3), (16, 1, 3, 3), (300, 300)]


def _layer(shape, density, seed, dtype=torch.float32, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=generator) < density
    weight = (torch.randn(shape, generator=generator) * mask).to(dtype)
    grad = torch.randn(shape, generator=generator).to(dtype)
    return weight.to(device), mask.to(device), grad.to(device)


def _check(result, mask, drop_fraction):
    assert result.mask.dtype == torch.bool and result.mask.shape == mask.shape
    assert int(result.mask.sum()) == int(mask.sum())  # exact count
    assert not (result.added & result.removed).any()  # net changes are disjoint
    assert torch.equal(result.mask, (mask & ~result.removed) | result.added)
    assert not (result.added & mask).any() and (result.removed <= mask).all()
    assert int(result.removed.sum()) <= int(drop_fraction * int(mask.sum())) + 1


@settings(max_examples=60, deadline=None)
@given(method=st.sampled_from(METHODS), shape=st.sampled_from(SHAPES),
       density=st.floats(0.01, 1.0), drop_fraction=st.floats(0.0, 1.0),
       seed=st.integers(0, 1000))
def test_rewire_invariants(method, shape, density, drop_fraction, seed):
    weight, mask, grad = _layer(shape, density, seed)
    copies = weight.clone(), mask.clone(), grad.clone()
    result = rewire(method, weight, mask, drop_fraction=drop_fraction, grad=grad,
                    generator=torch.Generator().manual_seed(seed))
    _check(result, mask, drop_fraction)
    # never modifies its inputs
    assert all(torch.equal(a, b) for a, b in zip((weight, mask, grad), copies, strict=True))


@pytest.mark.parametrize("method", METHODS)
def test_large_layer_exact_and_deterministic(method):
    # Large enough to take the threshold path (> 32,768 entries), with many tied scores.
    weight, mask, grad = _layer((512, 384), 0.1, 7)
    weight = torch.round(weight * 4) / 4 * mask
    grad = torch.round(grad * 2) / 2
    first = rewire(method, weight, mask, drop_fraction=0.3, grad=grad,
                   generator=torch.Generator().manual_seed(1))
    second = rewire(method, weight, mask.float(), drop_fraction=0.3, grad=grad,
                    generator=torch.Generator().manual_seed(1))
    _check(first, mask, 0.3)
    assert torch.equal(first.mask, second.mask)


@pytest.mark.parametrize("method", ["rigl", "snfs"])
def test_large_layer_matches_a_full_stable_sort(method):
    weight, mask, grad = _layer((600, 400), 0.2, 3)
    weight = torch.round(weight * 8) / 8 * mask  # ties
    grad = torch.round(grad * 4) / 4
    result = rewire(method, weight, mask, drop_fraction=0.3, grad=grad)
    flat_mask, flat_weight, flat_grad = mask.reshape(-1), weight.reshape(-1), grad.reshape(-1)
    active = flat_mask.nonzero().squeeze(1)
    # SNFS drops ceil(p·k) as sparse_learning's magnitude_death; the others int(f·k).
    drop_count = math.ceil(0.3 * active.numel()) if method == "snfs" else int(0.3 * active.numel())
    order = torch.sort(flat_weight[active].abs(), stable=True).indices[:drop_count]
    kept = flat_mask.clone()
    kept[active[order]] = False
    candidates = (~kept).nonzero().squeeze(1)
    grow = torch.sort(flat_grad[candidates].abs(), descending=True, stable=True).indices[:drop_count]
    expected = kept.clone()
    expected[candidates[grow]] = True
    assert torch.equal(result.mask.reshape(-1), expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(40, 30), (8, 4, 3, 3), (400, 300)])
def test_bfloat16_on_cpu(method, shape):
    weight, mask, grad = _layer(shape, 0.2, 1, dtype=torch.bfloat16)
    result = rewire(method, weight, mask, drop_fraction=0.3, grad=grad,
                    generator=torch.Generator().manual_seed(0))
    _check(result, mask, 0.3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(40, 30), (8, 4, 3, 3), (1024, 1024)])
def test_cuda(method, dtype, shape):
    weight, mask, grad = _layer(shape, 0.1, 2, dtype=dtype, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    result = rewire(method, weight, mask, drop_fraction=0.3, grad=grad, generator=generator)
    assert result.mask.device.type == "cuda"
    _check(result, mask, 0.3)
    if method in ("rigl", "snfs"):  # deterministic methods agree with the CPU
        cpu = rewire(method, weight.cpu(), mask.cpu(), drop_fraction=0.3, grad=grad.cpu())
        assert torch.equal(cpu.mask, result.mask.cpu())


@pytest.mark.parametrize("kwargs, field", [
    ({"method": "nope"}, "method"),
    ({"method": "deep_r"}, "method"),
    ({"method": "static"}, "method"),
    ({"drop_fraction": 1.5}, "drop_fraction"),
    ({"drop_fraction": -0.1}, "drop_fraction"),
    ({"mask": torch.ones(3, 3, dtype=torch.bool)}, "mask"),
    ({"method": "rigl", "grad": None}, "grad"),
    ({"method": "rigl", "grad": torch.ones(2, 2)}, "grad"),
    ({"method": "grad_sample", "temperature": 0.0}, "temperature"),
    ({"weight": [[1.0]]}, "weight"),
    ({"generator": 5}, "generator"),
])
def test_bad_arguments_name_the_argument(kwargs, field):
    weight, mask, _ = _layer((4, 4), 0.5, 0)
    call = {"method": "set", "weight": weight, "mask": mask, "drop_fraction": 0.3,
            "grad": torch.ones(4, 4), **kwargs}
    method = call.pop("method")
    with pytest.raises(ValueError, match=field):
        rewire(method, **call)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="rigl"):
        rewire("nope", torch.zeros(2, 2), torch.ones(2, 2), drop_fraction=0.1)


def test_register_rewirer_plugs_in_a_user_algorithm():
    from dst_core import REGISTRY, Rewirer, register_rewirer

    class GrowFirst(Rewirer):
        """Grows at the lowest flat indices (a toy)."""

        def grow_score(self, weight, kept, grad, generator, temperature):
            return -torch.arange(weight.numel(), dtype=torch.float32)

    register_rewirer("grow_first", GrowFirst)
    try:
        weight = torch.tensor([[0.0, 0.0, 0.5, 0.1]])
        result = rewire("grow_first", weight, weight != 0, drop_fraction=0.5)
        assert torch.equal(result.mask, torch.tensor([[True, False, True, False]]))
    finally:
        REGISTRY.pop("grow_first")


@pytest.mark.parametrize("method", METHODS)
def test_non_contiguous_inputs(method):
    weight, mask, grad = _layer((30, 40), 0.2, 4)
    result = rewire(method, weight.t(), mask.t(), drop_fraction=0.3, grad=grad.t(),
                    generator=torch.Generator().manual_seed(0))
    _check(result, mask.t(), 0.3)
