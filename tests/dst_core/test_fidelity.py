"""The engine as the references run it: masked gradients, SNFS's schedule and momentum,
RigL's options, SRigL's constant fan-in, N:M, global selection, resolved settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dst_core import SparseDriver
from dst_core.store.config import RunConfig
from dst_core.structure import NMStructure


def _mlp(seed=0, sizes=(20, 64, 32, 4)):
    torch.manual_seed(seed)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _batch(seed=0, n=64, features=20, classes=4):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    return x, torch.randint(0, classes, (n,), generator=generator)


def _backward(model, seed=0):
    x, y = _batch(seed, features=model[0].in_features)
    F.cross_entropy(model(x), y).backward()


def _dense_grads(model, seed=0):
    """The dense gradient of every parameter, from a copy the driver does not hook."""
    twin = _mlp(sizes=tuple([model[0].in_features] + [m.out_features for m in model
                                                        if isinstance(m, nn.Linear)]))
    twin.load_state_dict(model.state_dict())
    _backward(twin, seed)
    return [p.grad.clone() for p in twin.parameters()]


# ---- masked gradients -------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rigl", "set", "snfs"])
def test_clip_grad_norm_after_backward_is_the_masked_norm(method):
    model = _mlp(sizes=(784, 300, 100, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # interval 1: every step is a rewire step, when RigL keeps the dense gradient aside
    driver = SparseDriver(model, optimizer, method=method, density=0.1, total_steps=10,
                          interval_steps=1)
    dense = _dense_grads(model)
    masks = {id(layer.weight): layer.mask for layer in driver.layers}
    expected = math.sqrt(sum(float(((g * masks[id(p)]) if id(p) in masks else g).pow(2).sum())
                             for p, g in zip(model.parameters(), dense, strict=True)))
    weights = [(p, g) for p, g in zip(model.parameters(), dense, strict=True) if id(p) in masks]
    masked_weights = math.sqrt(sum(float((g * masks[id(p)]).pow(2).sum()) for p, g in weights))
    dense_weights = math.sqrt(sum(float(g.pow(2).sum()) for _, g in weights))
    _backward(model)
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9))
    assert norm == pytest.approx(expected, rel=1e-5)
    # over the sparsified weights the dense norm is far larger (the issue measured 2.8×)
    assert dense_weights > 2 * masked_weights
    for layer in driver.layers:
        assert (layer.weight.grad[~layer.mask] == 0).all()
    assert driver.step() != []  # and the rewire still happens


def test_rigl_grows_by_the_dense_gradient_kept_aside():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=100,
                          interval_steps=1, drop_fraction=0.3, schedule="constant",
                          drop_noise=0.0)
    dense = dict(zip([id(p) for p in model.parameters()], _dense_grads(model), strict=True))
    before = [layer.mask.clone() for layer in driver.layers]
    _backward(model)
    changes = driver.step()
    for layer, old, change in zip(driver.layers, before, changes, strict=True):
        grad = dense[id(layer.weight)].abs().reshape(-1)
        added = change.added
        candidates = (~layer.mask.reshape(-1)) | torch.zeros_like(old.reshape(-1))
        if added.numel():
            # every grown position beats every position left inactive, by |dense gradient|
            assert float(grad[added].min()) >= float(grad[candidates].max())


def test_gradient_accumulation_keeps_the_dense_sum():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=10,
                          interval_steps=1)
    first, second = _dense_grads(model, 0), _dense_grads(model, 1)
    _backward(model, 0)
    _backward(model, 1)
    for layer in driver.layers:
        index = [id(p) for p in model.parameters()].index(id(layer.weight))
        total = first[index] + second[index]
        assert torch.allclose(driver.dense_grad(layer), total, atol=1e-6)
        assert torch.allclose(layer.weight.grad, total * layer.mask, atol=1e-6)


# ---- settings ----------------------------------------------------------------------------

def test_settings_report_the_resolved_options_and_layers():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.1, total_steps=500,
                          interval_steps=25)
    settings = driver.settings()
    assert (settings["method"], settings["density"], settings["distribution"],
            settings["drop_fraction"], settings["schedule"], settings["interval_steps"],
            settings["end_fraction"], settings["total_steps"]) == \
        ("rigl", 0.1, "erk", 0.3, "cosine", 25, 0.75, 500)
    assert settings["skip_update_on_rewire"] is True and settings["drop_noise"] == 1e-5
    assert settings["masked_gradients"] is True and "lr" not in settings
    assert [layer["name"] for layer in settings["layers"]] == ["0.weight", "2.weight", "4.weight"]
    assert settings["layers"][0]["shape"] == [64, 20]
    assert all(0 < layer["density"] <= 1 for layer in settings["layers"])


def test_config_and_driver_resolve_through_one_function():
    config = RunConfig(method="snfs", task="digits")
    resolved = config.resolved_settings(steps_per_epoch=23)
    assert (resolved.interval_steps, resolved.drop_fraction, resolved.min_drop_fraction,
            resolved.distribution, resolved.lr) == (23, 0.5, 0.005, "uniform", 0.05)
    assert RunConfig(method="deep_r").resolved_settings().lr == 0.2


# ---- SNFS --------------------------------------------------------------------------------

def _snfs(optimizer_factory=None, steps_per_epoch=10, total_steps=50, **options):
    model = _mlp()
    optimizer = (optimizer_factory or (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)))(
        model.parameters())
    driver = SparseDriver(model, optimizer, method="snfs", density=0.2, total_steps=total_steps,
                          steps_per_epoch=steps_per_epoch, **options)
    return model, optimizer, driver


def test_snfs_rewires_at_the_end_of_each_epoch():
    model, optimizer, driver = _snfs()
    rewired = []
    for step in range(1, 51):
        optimizer.zero_grad()
        _backward(model, step)
        if driver.step():
            rewired.append(step)
    assert rewired == [10, 20, 30, 40]  # not at 50: the run ends there


def test_snfs_momentum_is_the_reference_dense_one():
    """Masking .grad must not change the optimizer's momentum SNFS grows from: it equals
    sparse_learning's, where gradients are dense and only weights are masked."""
    model, optimizer, driver = _snfs(steps_per_epoch=100, total_steps=200)
    reference = _mlp()
    reference.load_state_dict(model.state_dict())
    masks = [layer.mask.clone() for layer in driver.layers]
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    for step in range(5):
        for net, opt in ((model, optimizer), (reference, reference_optimizer)):
            opt.zero_grad()
            _backward(net, step)
        driver.step()
        reference_optimizer.step()
        with torch.no_grad():
            for module, mask in zip([m for m in reference if isinstance(m, nn.Linear)], masks,
                                    strict=True):
                module.weight.mul_(mask)
    for layer, reference_layer in zip(driver.layers, [m for m in reference
                                                      if isinstance(m, nn.Linear)], strict=True):
        ours = optimizer.state[layer.weight]["momentum_buffer"]
        theirs = reference_optimizer.state[reference_layer.weight]["momentum_buffer"]
        assert torch.allclose(ours, theirs, atol=1e-6)
        assert ours[~layer.mask].abs().sum() > 0  # the inactive part is there
        assert torch.allclose(layer.weight.detach(), reference_layer.weight.detach(), atol=1e-6)


def test_snfs_grown_weights_keep_their_momentum_and_the_rest_take_the_mean():
    model, optimizer, driver = _snfs(steps_per_epoch=5, total_steps=50)
    for step in range(4):
        optimizer.zero_grad()
        _backward(model, step)
        driver.step()
    optimizer.zero_grad()
    _backward(model, 4)
    # what the buffer will hold after this step's update, before the rewire
    saved = {}
    original = driver.algorithm._redistribute

    def spy(d):
        for layer in d.layers:
            saved[layer.name] = optimizer.state[layer.weight]["momentum_buffer"].clone()
        return original(d)

    driver.algorithm._redistribute = spy
    try:
        changes = driver.step()
    finally:
        del driver.algorithm._redistribute
    assert changes
    for layer, change in zip(driver.layers, changes, strict=True):
        buffer = optimizer.state[layer.weight]["momentum_buffer"].reshape(-1)
        if change.added.numel():
            assert torch.equal(buffer[change.added], saved[layer.name].reshape(-1)[change.added])
            assert (layer.weight.detach().reshape(-1)[change.added] == 0).all()
        inactive = ~layer.mask.reshape(-1)
        mean = buffer[layer.mask.reshape(-1)].mean()
        assert torch.allclose(buffer[inactive], mean.expand(int(inactive.sum())))


def test_snfs_grows_from_adams_m_over_root_v():
    model, optimizer, driver = _snfs(lambda p: torch.optim.Adam(p, lr=1e-3))
    total = sum(layer.active_count for layer in driver.layers)
    for step in range(1, 21):
        optimizer.zero_grad()
        _backward(model, step)
        driver.step()
    assert sum(layer.active_count for layer in driver.layers) == total


def test_snfs_needs_an_optimizer_with_momentum():
    with pytest.raises(ValueError, match="optimizer: snfs grows from the optimizer's own"):
        _snfs(lambda p: torch.optim.SGD(p, lr=0.05))


def test_snfs_caps_the_prune_rate_of_a_nearly_dense_layer():
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 40, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="snfs", density=0.5, total_steps=100,
                          interval_steps=1, schedule="constant", drop_fraction=0.5)
    driver.layers[0].mask = torch.ones(10, 10, dtype=torch.bool)
    driver.layers[0].mask[0, :5] = False  # 5% sparse: nearly dense
    driver.apply_masks()
    model[0].weight.grad = torch.full_like(model[0].weight, 5.0)  # the larger momentum share
    model[1].weight.grad = torch.full_like(model[1].weight, 0.01)
    before = driver.layers[0].active_count
    changes = driver.step()
    # p = 0.5 would drop 48 of 95; the cap drops at most the layer's sparsity: ceil(0.05·95)
    assert changes[0].removed.numel() <= math.ceil(0.05 * before)


# ---- RigL's options ------------------------------------------------------------------------

def test_rigl_skips_the_optimizer_update_on_a_rewire_step():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=100,
                          interval_steps=2)
    bias = model[0].bias.detach().clone()
    _backward(model)
    driver.step()  # step 1: an ordinary update
    assert not torch.equal(model[0].bias.detach(), bias)
    bias = model[0].bias.detach().clone()
    optimizer.zero_grad()
    _backward(model, 1)
    assert driver.step()  # step 2 rewires ...
    assert torch.equal(model[0].bias.detach(), bias)  # ... instead of updating
    other = _mlp()
    off = SparseDriver(other, torch.optim.SGD(other.parameters(), lr=0.5), method="rigl",
                       density=0.2, total_steps=10, skip_update_on_rewire=False)
    assert off.settings()["skip_update_on_rewire"] is False


def test_first_layer_dense_with_uniform_densities_and_dense_first_last():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    rigl = SparseDriver(model, optimizer, method="rigl", density=0.1, total_steps=10,
                        distribution="uniform")
    assert [layer.density for layer in rigl.layers] == pytest.approx([1.0, 0.1, 0.1], abs=0.01)
    rigl.remove_hooks()
    set_driver = SparseDriver(model, optimizer, method="set", density=0.1, total_steps=10,
                              distribution="uniform")
    assert set_driver.layers[0].density == pytest.approx(0.1, abs=1e-3)
    set_driver.remove_hooks()
    ends = SparseDriver(model, optimizer, method="set", density=0.1, total_steps=10,
                        dense_first_last=True)
    assert [layer.name for layer in ends.layers] == ["2.weight"]


def test_begin_step_delays_the_first_rewire():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="set", density=0.2, total_steps=100,
                          interval_steps=5, begin_step=20)
    rewired = []
    for step in range(1, 41):
        optimizer.zero_grad()
        _backward(model, step)
        if driver.step():
            rewired.append(step)
    assert rewired == [25, 30, 35, 40]


def test_drop_noise_is_seeded():
    masks = []
    for _ in range(2):
        model = _mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=50,
                              interval_steps=2, drop_noise=1e-2, seed=3)
        for step in range(6):
            optimizer.zero_grad()
            _backward(model, step)
            driver.step()
        masks.append([layer.mask.clone() for layer in driver.layers])
    assert all(torch.equal(a, b) for a, b in zip(*masks, strict=True))


@pytest.mark.parametrize("method", ["rigl", "set_magnitude", "grad_sample"])
def test_global_selection_keeps_the_total_and_moves_layer_counts(method):
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=0.2, total_steps=100,
                          interval_steps=2, global_selection=True, drop_fraction=0.5,
                          schedule="constant")
    counts = [layer.active_count for layer in driver.layers]
    for step in range(10):
        optimizer.zero_grad()
        _backward(model, step)
        driver.step()
        for layer in driver.layers:
            assert (layer.weight.detach()[~layer.mask] == 0).all()
    after = [layer.active_count for layer in driver.layers]
    assert sum(after) == sum(counts) and after != counts


def test_global_selection_is_refused_where_it_means_nothing():
    model = _mlp()
    with pytest.raises(ValueError, match="global_selection"):
        SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), method="set",
                     density=0.2, total_steps=10, global_selection=True)


# ---- SRigL -------------------------------------------------------------------------------

def _fan_ins(layer):
    return layer.mask.reshape(layer.mask.shape[0], -1).sum(1)


def test_srigl_keeps_a_constant_fan_in_from_initialisation():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="srigl", density=0.2, total_steps=200,
                          interval_steps=3, ablation_threshold=0.0)
    for layer in driver.layers:
        assert len(set(_fan_ins(layer).tolist())) == 1
    counts = [layer.active_count for layer in driver.layers]
    changed = 0
    for step in range(30):
        optimizer.zero_grad()
        _backward(model, step)
        changes = driver.step()
        changed += sum(change.added.numel() for change in changes)
        for layer in driver.layers:
            assert len(set(_fan_ins(layer).tolist())) == 1  # ±0, every unit
            assert (layer.weight.detach()[~layer.mask] == 0).all()
    assert changed > 0
    assert [layer.active_count for layer in driver.layers] == counts


def test_srigl_ablates_units_with_few_salient_weights():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="srigl", density=0.2, total_steps=200,
                          interval_steps=1, ablation_threshold=0.3)
    layer = driver.layers[1]  # 64 inputs → 32 units, fan-in 13
    with torch.no_grad():
        layer.weight[:4] *= 1e-6  # four units whose weights all lose the magnitude ranking
    budget = layer.active_count
    optimizer.zero_grad()
    _backward(model)
    layer.weight.grad[:4] = 0.0  # ... and whose gradients are not salient either
    driver.step()
    fan_in = _fan_ins(layer)
    assert (fan_in[:4] == 0).all()  # ablated
    alive = fan_in[fan_in > 0]
    assert len(set(alive.tolist())) == 1 and int(alive[0]) == min(64, budget // alive.numel())
    assert layer.active_count <= budget


# ---- N:M ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rigl", "set_magnitude", "set", "snfs", "grad_sample",
                                    "static"])
def test_nm_groups_never_exceed_n(method):
    model = _mlp(sizes=(22, 64, 32, 4))  # 22 inputs: the last group of each row is short
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=0.3, total_steps=100,
                          interval_steps=2, structure="n:m", distribution="uniform",
                          first_layer_dense=False)
    structure = NMStructure(2, 4)
    counts = [layer.active_count for layer in driver.layers]
    for step in range(12):
        optimizer.zero_grad()
        _backward(model, step)
        driver.step()
        for layer in driver.layers:
            assert structure.satisfied(layer.mask), (method, step, layer.name)
    after = [layer.active_count for layer in driver.layers]
    assert sum(after) == sum(counts) and (method == "snfs" or after == counts)
    assert driver.settings()["structure"] == "n:m" and driver.settings()["n"] == 2


def test_nm_growth_is_the_best_the_constraint_allows():
    structure = NMStructure(1, 2)
    kept = torch.tensor([[True, False, False, False]])
    scores = torch.tensor([9.0, 8.0, 7.0, 1.0])
    # group (0, 1) is full; in group (2, 3) only the better one is eligible
    assert structure.eligible(scores, kept).tolist() == [[False, False, True, False]]


def test_nm_refuses_a_density_it_cannot_hold():
    with pytest.raises(ValueError, match="density"):
        RunConfig(structure="n:m", density=0.6)
    with pytest.raises(ValueError, match="n"):
        RunConfig(structure="n:m", n=5, m=4, density=0.1)
    model = _mlp()
    with pytest.raises(ValueError, match="structure"):
        SparseDriver(model, torch.optim.SGD(model.parameters(), lr=0.1), method="srigl",
                     density=0.2, total_steps=10, structure="n:m")
