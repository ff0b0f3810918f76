"""The driver's |w| quantiles of kept, dropped and grown connections at a rewire."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dst_core import SparseDriver
from dst_core.analytics import QUANTILE_LEVELS


def one_rewire(method: str, listen: bool):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights unchanged by the step
    driver = SparseDriver(model, optimizer, method=method, density=0.3, total_steps=10,
                          interval_steps=1, drop_fraction=0.3)
    if listen:
        driver.listeners.append(lambda changes: None)
    loss = model(torch.randn(8, 20)).square().mean()
    loss.backward()
    before = [layer.weight.detach().clone() for layer in driver.layers]
    old_masks = [layer.mask.clone() for layer in driver.layers]
    changes = driver.step()
    return driver, changes, before, old_masks


def quantiles(values: torch.Tensor) -> list[float] | None:
    values = values.abs().double().numpy()
    return np.quantile(values, QUANTILE_LEVELS).tolist() if values.size else None


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_rewire_weights_match_the_weights_themselves(method):
    driver, changes, before, old_masks = one_rewire(method, listen=True)
    assert changes
    for change, layer, weight_before, old_mask in zip(changes, driver.layers, before, old_masks,
                                                      strict=True):
        weights = change.weights
        assert weights["levels"] == list(QUANTILE_LEVELS)
        flat_after = layer.weight.detach().reshape(-1)
        dropped = weight_before.reshape(-1)[change.removed]
        grown = flat_after[change.added]
        added = torch.zeros(layer.mask.numel(), dtype=torch.bool)
        added[change.added] = True
        kept = flat_after[layer.mask.reshape(-1) & ~added]
        assert kept.numel() == int((old_mask.reshape(-1) & layer.mask.reshape(-1)).sum())
        for name, values in (("dropped", dropped), ("grown", grown), ("kept", kept)):
            assert weights[name]["count"] == values.numel()
            want = quantiles(values)
            if want is None:
                assert weights[name]["quantiles"] is None
            else:
                assert weights[name]["quantiles"] == pytest.approx(want, rel=1e-6, abs=1e-9)
        if method == "rigl" and grown.numel():
            assert weights["grown"]["quantiles"][-1] == 0.0  # RigL grows at zero
        if method == "set" and grown.numel():
            assert weights["grown"]["quantiles"][-1] > 0.0  # SET re-initialises at random


def test_no_listener_no_weight_work():
    _, changes, _, _ = one_rewire("set", listen=False)
    assert changes and all(change.weights is None for change in changes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_rewire_weights_of_a_low_or_double_precision_layer(dtype):
    """Mixed-precision models keep bfloat16/half weights, which numpy cannot all hold: the
    quantiles are taken in float32 (float64 stays float64), and equal the weights' own."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(),
                                torch.nn.Linear(30, 4)).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    driver = SparseDriver(model, optimizer, method="set", density=0.3, total_steps=10,
                          interval_steps=1, drop_fraction=0.3)
    driver.listeners.append(lambda changes: None)
    model(torch.randn(8, 20, dtype=dtype)).float().square().mean().backward()
    before = [layer.weight.detach().clone() for layer in driver.layers]
    changes = driver.step()
    assert changes
    for change, weight_before in zip(changes, before, strict=True):
        dropped = weight_before.reshape(-1)[change.removed].float()
        assert change.weights["dropped"]["count"] == dropped.numel()
        assert change.weights["dropped"]["quantiles"] == pytest.approx(quantiles(dropped),
                                                                       rel=1e-6, abs=1e-9)
