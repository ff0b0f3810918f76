"""The library on inputs nobody tuned for: odd shapes, dtypes, layouts, extreme densities and
fractions, and models that are not ours. Good input → exact counts; bad → ValueError naming
the argument."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dst_core import SparseDriver, layer_densities, rewire
from dst_core.driver import measured_init_bound
from dst_core.models import build_model
from dst_core.rewire import mask_level_methods

METHODS = mask_level_methods()  # from the registry


def _check(result, mask):
    mask = mask.bool()
    assert result.mask.dtype == torch.bool and result.mask.shape == mask.shape
    assert int(result.mask.sum()) == int(mask.sum())
    assert not (result.added & result.removed).any()
    assert torch.equal(result.mask, (mask & ~result.removed) | result.added)


def _layer(shape, density=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=generator) < density
    return torch.randn(shape, generator=generator) * mask, mask, torch.randn(shape, generator=generator)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["one_element", "one_active", "all_true", "all_false"])
@pytest.mark.parametrize("drop_fraction", [0.0, 0.3, 1.0])
def test_extreme_masks_keep_exact_counts(method, case, drop_fraction):
    shape = (1,) if case == "one_element" else (50, 40)
    weight, _, grad = _layer(shape)
    mask = torch.full(shape, case in ("one_element", "all_true"), dtype=torch.bool)
    if case == "one_active":
        mask[3, 4] = True
    result = rewire(method, weight, mask, drop_fraction=drop_fraction, grad=grad)
    _check(result, mask)
    if drop_fraction == 0.0 or case in ("all_true", "all_false"):
        assert torch.equal(result.mask, mask)  # nothing to drop, or nowhere else to grow


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("variant", ["int", "float64", "bfloat16", "float16", "transposed",
                                     "channels_last", "conv1d", "requires_grad", "int_mask"])
def test_dtypes_and_layouts(method, variant):
    shape = {"channels_last": (8, 4, 3, 3), "conv1d": (8, 4, 5)}.get(variant, (60, 40))
    weight, mask, grad = _layer(shape)
    if variant == "int":
        weight, grad = (weight * 10).int(), (grad * 10).int()
    elif variant in ("float64", "bfloat16", "float16"):
        dtype = getattr(torch, variant)
        weight, grad = weight.to(dtype), grad.to(dtype)
    elif variant == "transposed":
        weight, mask, grad = weight.t(), mask.t(), grad.t()
        assert not weight.is_contiguous()
    elif variant == "channels_last":
        weight, mask, grad = (t.to(memory_format=torch.channels_last) for t in (weight, mask, grad))
    elif variant == "requires_grad":
        weight = weight.clone().requires_grad_()
    elif variant == "int_mask":
        mask = mask.int()
    before = weight.detach().clone(), mask.clone()
    result = rewire(method, weight, mask, drop_fraction=0.3, grad=grad,
                    generator=torch.Generator().manual_seed(0))
    _check(result, mask)
    # Net removals: a dropped position may be regrown (then in neither set).
    assert 0 < int(result.removed.sum()) <= int(0.3 * int(mask.bool().sum())) + 1
    assert torch.equal(weight.detach(), before[0]) and torch.equal(mask, before[1])


def test_transposed_matches_contiguous():
    weight, mask, grad = _layer((60, 40))
    strided = rewire("rigl", weight.t(), mask.t(), drop_fraction=0.3, grad=grad.t())
    dense = rewire("rigl", weight.t().contiguous(), mask.t().contiguous(), drop_fraction=0.3,
                   grad=grad.t().contiguous())
    assert torch.equal(strided.mask, dense.mask)


@pytest.mark.parametrize("fraction", [np.float32(0.3), np.float64(0.3)])
def test_numpy_fraction_accepted(fraction):
    weight, mask, grad = _layer((30, 20))
    _check(rewire("rigl", weight, mask, drop_fraction=fraction, grad=grad), mask)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"drop_fraction": math.nan}, "drop_fraction"),
    ({"drop_fraction": True}, "drop_fraction"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"mask": "half"}, "mask"),
    ({"weight": "nan"}, "weight"),
    ({"grad": "nan"}, "grad"),
])
def test_bad_values_name_the_argument(kwargs, field):
    weight, mask, grad = _layer((50, 40))
    arguments = {"weight": weight, "mask": mask, "grad": grad, "drop_fraction": 0.3}
    arguments.update(kwargs)
    if kwargs.get("mask") == "half":
        arguments["mask"] = mask.float() * 0.5
    if kwargs.get("weight") == "nan":
        arguments["weight"] = torch.full((50, 40), math.nan)
    if kwargs.get("grad") == "nan":
        arguments["grad"] = torch.full((50, 40), math.nan)
    with pytest.raises(ValueError, match=f"^{field}"):
        rewire("rigl", arguments.pop("weight"), arguments.pop("mask"), **arguments)


# ---- layer_densities ------------------------------------------------------------------

@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
def test_one_shape_gets_the_target(distribution):
    assert layer_densities([(10, 20)], 0.1, distribution) == pytest.approx([0.1])
    assert layer_densities([(10, 20), (3, 3, 2, 2)], 1, distribution) == [1.0, 1.0]


def test_huge_and_tiny_shapes_meet_the_total():
    shapes = [(100_000, 100_000), (2, 2), (3,), (16, 1, 3, 3)]
    densities = layer_densities(shapes, 0.01, "erk")
    sizes = [math.prod(s) for s in shapes]
    assert densities[1] == densities[2] == 1.0  # tiny layers would exceed 1: dense
    total = sum(d * n for d, n in zip(densities, sizes, strict=True))
    assert abs(total - 0.01 * sum(sizes)) <= len(shapes)
    assert all(type(d) is float for d in layer_densities([(5, 5)], np.float64(0.3), "erk"))


@pytest.mark.parametrize(("args", "field"), [
    (([(10, 20)], True, "erk"), "density"),
    (([(10, 20)], math.nan, "erk"), "density"),
    (([10], 0.3, "erk"), "shapes"),
    (([(10.5, 2)], 0.3, "erk"), "shapes"),
    (([(10, 0)], 0.3, "erk"), "shapes"),
    (([(10, 2)], 0.3, None), "distribution"),
])
def test_layer_densities_bad_input(args, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        layer_densities(*args)


# ---- the driver on models we did not design ----------------------------------------------

def _sgd(model, **kwargs):
    return torch.optim.SGD(model.parameters(), lr=0.05, **kwargs)


@pytest.mark.parametrize(("model", "field"), [
    (nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), "model"),
    (nn.Embedding(10, 4), "model"),
])
def test_driver_without_prunable_layers(model, field):
    with pytest.raises(ValueError, match=f"^{field}: no Linear"):
        SparseDriver(model, _sgd(model), total_steps=10)


def test_driver_bad_arguments():
    model = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="^model"):
        SparseDriver("net", _sgd(model), total_steps=10)
    with pytest.raises(ValueError, match="^optimizer"):
        SparseDriver(model, "sgd", total_steps=10)
    with pytest.raises(ValueError, match="^density"):
        SparseDriver(model, _sgd(model), density=math.nan, total_steps=10)
    with pytest.raises(ValueError, match="^include: 'nothing' matched no parameter of Linear"):
        SparseDriver(model, _sgd(model), include="nothing", total_steps=10)
    with pytest.raises(ValueError, match="^model: no Linear.*matches include/exclude"):
        SparseDriver(model, _sgd(model), exclude="weight", total_steps=10)
    lazy = nn.Sequential(nn.LazyLinear(4))
    with pytest.raises(ValueError, match="^model: 0.weight is an uninitialised lazy"):
        SparseDriver(lazy, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
                     total_steps=10)


def test_optimizer_missing_a_sparsified_weight():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="^optimizer: does not hold the weights of 0.weight"):
        SparseDriver(model, optimizer, total_steps=10)
    driver = SparseDriver(model, optimizer, total_steps=10, exclude=["0."])
    assert [layer.name for layer in driver.layers] == ["2.weight"]


def test_include_as_one_string():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    driver = SparseDriver(model, _sgd(model), include="2.weight", total_steps=10)
    assert [layer.name for layer in driver.layers] == ["2.weight"]


class Mixed(nn.Module):
    """Attention (its packed q/k/v sparsified too), an embedding and an LSTM (left dense,
    said so) and a classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):
        x = self.embed(tokens)
        x, _ = self.attention(x, x, x)
        x, _ = self.lstm(x)
        return self.head(x[:, -1])


@pytest.mark.parametrize("method", ["rigl", "set", "snfs", "deep_r", "static"])
@pytest.mark.parametrize("optimizer_name", ["sgd", "sgd_momentum", "adam", "adamw"])
def test_mixed_model_any_optimizer_exact_counts(method, optimizer_name):
    torch.manual_seed(0)
    model = Mixed()
    optimizer = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05),
                 "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                 "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
                 "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1),
                 }[optimizer_name](model.parameters())
    if method == "snfs" and optimizer_name == "sgd":  # no momentum: nothing to grow from
        with pytest.raises(ValueError, match="optimizer: snfs grows from"):
            SparseDriver(model, optimizer, method=method, density=0.2, total_steps=12)
        return
    driver = SparseDriver(model, optimizer, method=method, density=0.2, total_steps=12,
                          interval_steps=3, drop_fraction=0.3)
    assert [layer.name for layer in driver.layers] == [
        "attention.in_proj_weight", "attention.out_proj.weight", "head.weight"]
    dense = {entry.name: entry.reason for entry in driver.plan.left_dense}
    assert dense["embed.weight"].startswith("embedding")
    assert "not a known layer type" in dense["lstm.weight_ih_l0"]
    counts = [layer.active_count for layer in driver.layers]
    tokens = torch.randint(0, 50, (8, 5), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2))
    for _ in range(12):
        optimizer.zero_grad()
        F.cross_entropy(model(tokens), labels).backward()
        driver.step()
        for layer in driver.layers:
            assert (layer.weight.detach()[~layer.mask] == 0).all()
    after = [layer.active_count for layer in driver.layers]
    assert sum(after) == sum(counts) and (method == "snfs" or after == counts)


# ---- learning at default settings --------------------------------------------------------

def test_sparse_init_scales_each_unit_to_its_active_fan_in():
    torch.manual_seed(0)
    model = nn.Linear(400, 300)
    original = model.weight.detach().clone()
    driver = SparseDriver(model, _sgd(model), method="static", density=0.05, total_steps=10,
                          sparse_init=True)
    mask = driver.layers[0].mask
    active_fan_in = mask.sum(1, keepdim=True).clamp(min=1)
    expected = original * (400 / active_fan_in).sqrt() * mask
    assert torch.allclose(model.weight.detach(), expected)
    # Each unit's summed variance matches the dense init's (within sampling noise).
    assert (model.weight.detach() ** 2).sum(1).mean().item() == pytest.approx(
        (original ** 2).sum(1).mean().item(), rel=0.15)
    # SET's regrowth scale is the model's own init, measured before the rescale.
    assert driver.layers[0].init_bound == pytest.approx(measured_init_bound(original, mask))
    assert driver.layers[0].init_bound == pytest.approx(1 / math.sqrt(400), rel=0.1)


def test_sparse_init_off_keeps_weights():
    torch.manual_seed(0)
    model = nn.Linear(40, 30)
    original = model.weight.detach().clone()
    driver = SparseDriver(model, _sgd(model), density=0.2, total_steps=10, sparse_init=False)
    assert torch.equal(model.weight.detach(), original * driver.layers[0].mask)


def test_dense_layers_are_not_rescaled():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3))
    original = [p.detach().clone() for p in model.parameters()]
    SparseDriver(model, _sgd(model), method="dense", total_steps=10)
    assert all(torch.equal(a, b.detach()) for a, b in zip(original, model.parameters(), strict=True))


def test_built_in_models_are_he_initialised():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), [512], 10)
    weight = model[1].weight.detach()
    assert weight.var().item() == pytest.approx(2 / 784, rel=0.05)  # He: 2 / fan_in
    assert (model[1].bias == 0).all()


# ---- threads -----------------------------------------------------------------------------

class ThreadProbe:
    """Wraps RigL's growth and records how many threads torch had while rewiring."""

    def __init__(self):
        from dst_core.algorithms.gradient import RigLRewirer

        class Probe(RigLRewirer):
            seen: list = []

            def grow_score(self, weight, kept, grad, generator, temperature):
                Probe.seen.append(torch.get_num_threads())
                return super().grow_score(weight, kept, grad, generator, temperature)

        self.cls = Probe


@pytest.mark.parametrize("limit", [1, None])
def test_rewire_runs_on_rewire_threads_and_restores(monkeypatch, limit):
    from dst_core import register_rewirer, selection
    from dst_core.rewire import REGISTRY

    probe = ThreadProbe().cls
    monkeypatch.setitem(REGISTRY, "thread_probe", REGISTRY["rigl"])
    register_rewirer("thread_probe", probe)
    monkeypatch.setattr(selection, "REWIRE_THREADS", limit)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        weight, mask, grad = _layer((30, 20))
        rewire("thread_probe", weight, mask, drop_fraction=0.3, grad=grad)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        driver = SparseDriver(model, _sgd(model), method="thread_probe", density=0.5,
                              total_steps=4, interval_steps=1)
        F.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 0, 1])).backward()
        driver.step()
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(previous)
    expected = 1 if limit == 1 else 2
    assert probe.seen and all(count == expected for count in probe.seen)


@pytest.mark.parametrize("method", ["rigl", "set", "snfs", "deep_r"])
def test_tiny_density_keeps_one_connection_per_layer_in_float64(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2)).double()
    optimizer = _sgd(model, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=1e-6, total_steps=6,
                          interval_steps=2, drop_fraction=1.0, schedule="constant")
    assert [layer.active_count for layer in driver.layers] == [1, 1]
    x = torch.randn(16, 10, dtype=torch.float64)
    for _ in range(6):
        optimizer.zero_grad()
        F.cross_entropy(model(x), torch.arange(16) % 2).backward()
        driver.step()
    assert sum(layer.active_count for layer in driver.layers) == 2
    assert all((layer.weight.detach()[~layer.mask] == 0).all() for layer in driver.layers)
