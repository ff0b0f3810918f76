"""The method options are declared once (`MethodOptions`); the driver's keywords, the run
config's fields and the CLI's flags come from that declaration, and the mask-level rewire and
the driver run one drop-then-grow."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dst_core import REGISTRY, SparseDriver, rewire
from dst_core.method_options import KEYWORDS, OPTIONS, MethodOptions
from dst_core.store.config import CONFIG_OPTIONS, RunConfig


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))


def _driver(**options) -> SparseDriver:
    model = _mlp()
    return SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                        total_steps=20, **options)


def test_the_driver_takes_every_declared_keyword_and_lists_it():
    parameters = inspect.signature(SparseDriver).parameters
    for name in KEYWORDS:
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters[name].default is None, name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    # Only a method's defaults set these: neither is a keyword.
    assert "lr" not in parameters and "min_drop_fraction" not in parameters
    with pytest.raises(TypeError, match="unexpected keyword argument 'lr'"):
        _driver(lr=0.1)


def test_every_published_default_is_a_declared_option():
    for method, algorithm in REGISTRY.items():
        assert isinstance(algorithm.defaults, MethodOptions), method


def test_the_run_config_fields_are_the_declaration():
    schema = RunConfig.model_json_schema()["properties"]
    assert set(CONFIG_OPTIONS) <= set(RunConfig.model_fields)
    for name in CONFIG_OPTIONS:
        spec, field = OPTIONS[name], RunConfig.model_fields[name]
        assert field.default is None, name
        assert field.description == spec.description, name
        allowed = next(option for option in schema[name]["anyOf"] if option["type"] != "null")
        if spec.choices:
            assert tuple(allowed["enum"]) == spec.choices, name
        for key, bound in (("minimum", spec.ge if spec.config_ge is None else spec.config_ge),
                           ("exclusiveMinimum", spec.gt),
                           ("maximum", spec.le if spec.config_le is None else spec.config_le)):
            assert allowed.get(key) == bound, (name, key)


def _out_of_bounds(spec) -> list:
    values = []
    if spec.ge is not None:
        values.append(spec.ge - 1)
    if spec.gt is not None:
        values.append(spec.gt)
    if spec.le is not None:
        values.append(spec.le + 1)
    return values


@pytest.mark.parametrize("name", KEYWORDS)
def test_the_driver_names_a_bad_option(name):
    spec = OPTIONS[name]
    wrong_type = {bool: 1, int: 1.5, float: "x", str: "no such choice"}[spec.kind]
    bad = [wrong_type, *_out_of_bounds(spec)]
    if spec.kind is float:
        bad += [math.nan, math.inf, True]
    for value in bad:
        with pytest.raises(ValueError, match=f"^{name}"):
            _driver(method="set_magnitude", **{name: value})


@pytest.mark.parametrize("name", CONFIG_OPTIONS)
def test_the_run_config_names_a_bad_option(name):
    from pydantic import ValidationError

    spec = OPTIONS[name]
    bad = [{bool: 1.5, int: 1.5, float: "x", str: "no such choice"}[spec.kind]]
    bad += _out_of_bounds(spec)
    if spec.config_ge is not None:
        bad.append(spec.config_ge - 1)
    if spec.config_le is not None:
        bad.append(spec.config_le + 1)
    for value in bad:
        with pytest.raises(ValidationError) as refused:
            RunConfig(**{name: value})
        assert [error["loc"][0] for error in refused.value.errors()] == [name], value


@pytest.mark.parametrize("method", ["rigl", "set_magnitude", "grad_sample"])
def test_the_driver_and_rewire_drop_and_grow_alike(method):
    """A driver's rewire of a layer (no drop noise) is `rewire()` on the same tensors."""
    model = _mlp()
    driver = SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), method=method,
                          density=0.3, total_steps=20, interval_steps=1, drop_noise=0.0,
                          skip_update_on_rewire=True, seed=3)
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(1))
    F.cross_entropy(model(x), torch.arange(16) % 4).backward()
    layer = driver.layers[0]
    weight, mask = layer.weight.detach().clone(), layer.mask.clone()
    grad = driver.dense_grad(layer).clone() if REGISTRY[method].needs_grad else None
    generator = torch.Generator().set_state(driver.generator.get_state())
    expected = rewire(method, weight, mask, drop_fraction=driver.schedule.fraction_at(1),
                      grad=grad, generator=generator, temperature=driver.temperature)
    driver.step()
    assert torch.equal(layer.mask, expected.mask)


def test_deep_r_installs_its_masks_through_the_driver(monkeypatch):
    driver = _driver(method="deep_r", density=0.3, interval_steps=5, temperature=1e-2)
    installed = []
    original = driver.install_mask

    def spy(layer, mask, added, removed, **kwargs):
        installed.append((layer.name, int(added.sum()), int(removed.sum())))
        original(layer, mask, added, removed, **kwargs)

    monkeypatch.setattr(driver, "install_mask", spy)
    masks = [layer.mask for layer in driver.layers]
    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
    for _ in range(10):
        F.cross_entropy(driver.model(x), torch.arange(32) % 4).backward()
        driver.step()
        driver.optimizer.zero_grad()
    assert installed, "Deep R flipped nothing in 10 noisy steps"
    assert all(added == removed for _, added, removed in installed)  # the count is constant
    changed = {name for name, _, _ in installed}
    for layer, before in zip(driver.layers, masks, strict=True):
        assert (layer.mask is not before) == (layer.name in changed)
        assert bool((layer.ever_active | ~layer.mask).all())
