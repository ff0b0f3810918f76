"""SparseDriver on our models and on models we did not design for."""


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dst_core import REGISTRY, SparseDriver
from dst_core.prunable import find_prunable


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


def _data(seed=0, n=256, features=20):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return x, y


def _train(model, optimizer, driver, steps, x, y, batch=32, on_step=None):
    for step in range(steps):
        start = (step * batch) % len(x)
        loss = F.cross_entropy(model(x[start:start + batch]), y[start:start + batch])
        optimizer.zero_grad()
        loss.backward()
        driver.step()
        if on_step is not None:
            on_step(driver)


def _assert_masked_zero(driver):
    for layer in driver.layers:
        assert (layer.weight.detach()[~layer.mask] == 0).all(), layer.name


# Every registered sparse method (from the registry: a new one is tested with no edit here).
METHODS = sorted(name for name, algorithm in REGISTRY.items() if not algorithm.trains_dense)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_masks_stay_exactly_zero_and_counts_exact(method, optimizer_name):
    model = _mlp()
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
                 if optimizer_name == "sgd" else torch.optim.AdamW(model.parameters(), lr=1e-2))
    driver = SparseDriver(model, optimizer, method=method, density=0.2, total_steps=60,
                          interval_steps=5, distribution="erk")
    counts = [layer.active_count for layer in driver.layers]
    x, y = _data()
    _train(model, optimizer, driver, 60, x, y, on_step=_assert_masked_zero)
    if method == "snfs":  # SNFS moves connections between layers, keeping the total
        assert sum(layer.active_count for layer in driver.layers) == sum(counts)
    elif method == "srigl":  # constant fan-in: ablation may leave a remainder of the budget
        for layer, count in zip(driver.layers, counts, strict=True):
            fan_in = layer.mask.reshape(layer.mask.shape[0], -1).sum(1)
            assert len(set(fan_in[fan_in > 0].tolist())) == 1 and layer.active_count <= count
    else:
        assert [layer.active_count for layer in driver.layers] == counts


def test_dense_baseline_keeps_everything():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    driver = SparseDriver(model, optimizer, method="dense", density=0.1, total_steps=10)
    assert driver.global_density() == 1.0 and driver.itop_rate() == 1.0


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam", "adamw"])
def test_optimizer_state_zeroed_at_grown_and_dropped(optimizer_name):
    model = _mlp()
    optimizer = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
    }[optimizer_name](model.parameters())
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=100,
                          interval_steps=10, drop_fraction=0.3, schedule="constant")
    x, y = _data()
    changes = []
    driver.listeners.append(changes.append)
    _train(model, optimizer, driver, 10, x, y)
    assert len(changes) == 1
    keys = {"sgd": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"],
            "adamw": ["exp_avg", "exp_avg_sq"]}[optimizer_name]
    total_changed = 0
    for layer, change in zip(driver.layers, changes[0], strict=True):
        state = optimizer.state[layer.weight]
        changed = torch.cat([change.added, change.removed])
        total_changed += changed.numel()
        for key in keys:
            flat = state[key].reshape(-1)
            assert (flat[changed] == 0).all(), (layer.name, key)
            # ... and the state of kept weights was left alone
            kept = layer.mask.reshape(-1).clone()
            kept[change.added] = False
            assert (flat[kept] != 0).any(), (layer.name, key)
    assert total_changed > 0


def test_rigl_grows_where_the_dense_gradient_is_largest():
    torch.manual_seed(0)
    layer = nn.Linear(4, 2, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    driver = SparseDriver(layer, optimizer, method="rigl", density=0.5, total_steps=10,
                          interval_steps=1, drop_fraction=0.5, schedule="constant",
                          distribution="uniform")
    masked = driver.layers[0]
    masked.mask = torch.tensor([[True, True, False, False], [True, True, False, False]])
    masked.ever_active = masked.mask.clone()
    driver.apply_masks()
    x = torch.tensor([[0.1, 0.1, 0.0, 10.0]])  # only column 3 sees a large input
    loss = (layer(x) - torch.tensor([[5.0, -5.0]])).pow(2).sum()
    # The seed's `weight * mask` forward gives exactly zero gradient at inactive positions:
    mask_float = masked.mask.float()
    seed_grad = torch.autograd.grad(
        (F.linear(x, layer.weight * mask_float) - torch.tensor([[5.0, -5.0]])).pow(2).sum(),
        layer.weight)[0]
    assert (seed_grad[:, 3] == 0).all()
    loss.backward()
    changes = driver.step()
    added = changes[0].added.tolist()
    assert sorted(added) == [3, 7]  # column 3 of both rows: the largest dense |∂L/∂W|
    assert (layer.weight.detach()[:, 3] == 0).all()  # RigL grows at zero


def test_set_grows_random_weights_at_init_scale_rigl_at_zero():
    for method, expect_zero in (("set", False), ("rigl", True)):
        model = _mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        driver = SparseDriver(model, optimizer, method=method, density=0.2, total_steps=10,
                              interval_steps=1, drop_fraction=0.3)
        x, y = _data()
        changes = []
        driver.listeners.append(changes.append)
        _train(model, optimizer, driver, 1, x, y)
        for layer, change in zip(driver.layers, changes[0], strict=True):
            grown = layer.weight.detach().reshape(-1)[change.added]
            bound = layer.init_bound
            if expect_zero:
                assert (grown == 0).all()
            else:
                assert (grown != 0).all() and (grown.abs() <= bound).all()


def test_same_seed_same_masks_and_different_seed_differs():
    def run(seed):
        model = _mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        driver = SparseDriver(model, optimizer, method="set", density=0.2, total_steps=50,
                              interval_steps=5, seed=seed)
        x, y = _data()
        _train(model, optimizer, driver, 50, x, y)
        return [layer.mask for layer in driver.layers]

    first, second, other = run(1), run(1), run(2)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("method", ["set", "rigl", "snfs", "deep_r"])
def test_checkpoint_resume_gives_the_same_masks(method):
    x, y = _data()

    def fresh():
        model = _mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        driver = SparseDriver(model, optimizer, method=method, density=0.2, total_steps=40,
                              interval_steps=5, seed=3)
        return model, optimizer, driver

    model, optimizer, driver = fresh()
    _train(model, optimizer, driver, 40, x, y)
    straight = [layer.mask.clone() for layer in driver.layers]

    model, optimizer, driver = fresh()
    _train(model, optimizer, driver, 20, x, y)
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "driver": driver.state_dict()}
    model, optimizer, driver = fresh()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    driver.load_state_dict(saved["driver"])
    for step in range(20, 40):  # the same batches the straight run saw
        start = (step * 32) % len(x)
        loss = F.cross_entropy(model(x[start:start + 32]), y[start:start + 32])
        optimizer.zero_grad()
        loss.backward()
        driver.step()
    resumed = [layer.mask for layer in driver.layers]
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))


def test_deep_r_count_constant_and_signs_fixed_over_200_steps():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    driver = SparseDriver(model, optimizer, method="deep_r", density=0.1, total_steps=200,
                          interval_steps=20, temperature=1e-4, l1=1e-3)
    counts = [layer.active_count for layer in driver.layers]
    signs = [layer.buffers["sign"].clone() for layer in driver.layers]
    union = [layer.mask.clone() for layer in driver.layers]
    reports = []
    driver.listeners.append(reports.append)
    x, y = _data()

    def check(d):
        for index, layer in enumerate(d.layers):
            assert layer.active_count == counts[index]
            weight = layer.weight.detach()
            # θ ≥ 0: every active weight has its connection's fixed sign (or is 0)
            assert (weight * signs[index] >= 0).all()
            assert (weight[~layer.mask] == 0).all()
            union[index] |= layer.mask

    _train(model, optimizer, driver, 200, x, y, on_step=check)
    assert len(reports) == 200 // 20 - 1  # aggregated once per interval (not after the last step)
    assert any(change.added.numel() for report in reports for change in report)
    for index, layer in enumerate(driver.layers):  # ITOP counts every per-step flip
        assert torch.equal(layer.ever_active, union[index])


def test_snfs_moves_regrowth_towards_the_layer_with_more_momentum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 50, bias=False), nn.Linear(50, 10, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="snfs", density=0.2, total_steps=100,
                          interval_steps=1, drop_fraction=0.5, schedule="constant")
    before = [layer.active_count for layer in driver.layers]
    model[0].weight.grad = torch.full_like(model[0].weight, 10.0)  # large dense gradient
    model[1].weight.grad = torch.full_like(model[1].weight, 0.1)
    driver.step()
    after = [layer.active_count for layer in driver.layers]
    assert sum(after) == sum(before)
    assert after[0] > before[0] and after[1] < before[1]


def test_dense_gradient_copied_only_when_a_rewire_is_due():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=100,
                          interval_steps=10)
    copies = []
    original = driver.algorithm.before_optimizer_step

    def spy(d, due):
        original(d, due)
        copies.append(bool(d._dense_grads))
        # Kept aside, never left in .grad: the gradient the optimizer sees is masked.
        for layer in d.layers:
            assert (layer.weight.grad[~layer.mask] == 0).all()

    driver.algorithm.before_optimizer_step = spy
    try:
        _train(model, optimizer, driver, 20, *_data())
    finally:
        del driver.algorithm.before_optimizer_step
    assert [i + 1 for i, copied in enumerate(copies) if copied] == [10, 20]


def test_published_defaults():
    def driver(**kwargs):
        model = _mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return SparseDriver(model, optimizer, density=0.1, total_steps=1000, **kwargs)

    rigl = driver(method="rigl")
    assert (rigl.schedule.interval_steps, rigl.schedule.kind, rigl.schedule.drop_fraction,
            rigl.schedule.end_fraction, rigl.distribution) == (100, "cosine", 0.3, 0.75, "erk")
    set_driver = driver(method="set", steps_per_epoch=37)
    assert (set_driver.schedule.interval_steps, set_driver.schedule.kind,
            set_driver.schedule.drop_fraction) == (37, "constant", 0.3)
    snfs = driver(method="snfs", steps_per_epoch=40)
    # sparse_learning: p = 0.5, CosineAnnealingLR to 0.005 over the run, at each epoch's end.
    assert (snfs.schedule.kind, snfs.schedule.drop_fraction, snfs.schedule.min_drop_fraction,
            snfs.schedule.interval_steps, snfs.schedule.end_fraction) == ("cosine", 0.5, 0.005,
                                                                          40, 1.0)
    assert abs(snfs.schedule.fraction_at(1000) - 0.005) < 1e-12
    overridden = driver(method="rigl", interval_steps=7, schedule="constant", end_fraction=1.0)
    assert (overridden.schedule.interval_steps, overridden.schedule.kind) == (7, "constant")


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.ModuleDict({
            "depthwise": nn.Conv2d(8, 8, 3, padding=1, groups=8),
            "pointwise": nn.Conv2d(8, 16, 1),
        })
        self.head = nn.Linear(16, 16)
        self.tied = nn.Linear(16, 16)
        self.tied.weight = self.head.weight  # one weight, two modules
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.block["pointwise"](self.block["depthwise"](x)))
        x = x.mean((2, 3))
        return self.out(F.relu(self.tied(F.relu(self.head(x)))))


@pytest.mark.parametrize("method", ["set", "rigl", "snfs", "deep_r", "grad_sample"])
def test_models_we_did_not_design_for(method):
    torch.manual_seed(0)
    model = Nested()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=0.3, total_steps=12,
                          interval_steps=3, distribution="erk")
    names = [layer.name for layer in driver.layers]
    assert names == ["stem.0.weight", "block.depthwise.weight", "block.pointwise.weight",
                     "head.weight", "out.weight"]  # the tied weight once
    depthwise = driver.layers[1]
    assert depthwise.shape == (8, 1, 3, 3)
    x = torch.randn(8, 3, 6, 6)
    y = torch.randint(0, 3, (8,))
    counts = sum(layer.active_count for layer in driver.layers)
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        driver.step()
        _assert_masked_zero(driver)
    assert sum(layer.active_count for layer in driver.layers) == counts
    assert torch.equal(model.tied.weight, model.head.weight)
    assert model.stem[1].running_mean.abs().sum() > 0  # BatchNorm trained normally


def test_include_exclude_and_dense_first_last():
    model = Nested()
    all_names = [name for name, _ in find_prunable(model)]
    assert [n for n, _ in find_prunable(model, dense_first_last=True)] == all_names[1:-1]
    assert [n for n, _ in find_prunable(model, include=["block"])] == [
        "block.depthwise.weight", "block.pointwise.weight"]
    assert [n for n, _ in find_prunable(model, exclude=["depthwise", "out"])] == [
        "stem.0.weight", "block.pointwise.weight", "head.weight"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=10,
                          exclude=["stem"], dense_first_last=True)
    assert "stem.0.weight" not in driver.densities() and "out.weight" not in driver.densities()


@pytest.mark.parametrize("kwargs, field", [
    ({"method": "nope"}, "method"),
    ({"distribution": "weird"}, "distribution"),
    ({"density": 0.0}, "density"),
    ({"schedule": "linear"}, "schedule"),
    ({"total_steps": 0}, "total_steps"),
    ({"drop_fraction": 2.0}, "drop_fraction"),
    ({"temperature": -1.0}, "temperature"),
])
def test_driver_bad_arguments_name_the_argument(kwargs, field):
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    call = {"method": "rigl", "density": 0.1, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=field):
        SparseDriver(model, optimizer, **call)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["set", "rigl", "snfs", "deep_r"])
def test_driver_on_cuda(method, dtype):
    model = _mlp().to("cuda", dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=0.2, total_steps=30,
                          interval_steps=5)
    counts = sum(layer.active_count for layer in driver.layers)
    x, y = _data()
    _train(model, optimizer, driver, 30, x.to("cuda", dtype), y.cuda(), on_step=_assert_masked_zero)
    assert sum(layer.active_count for layer in driver.layers) == counts


def test_bfloat16_model_on_cpu():
    model = _mlp().to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.2, total_steps=30,
                          interval_steps=5)
    counts = [layer.active_count for layer in driver.layers]
    x, y = _data()
    _train(model, optimizer, driver, 30, x.to(torch.bfloat16), y, on_step=_assert_masked_zero)
    assert [layer.active_count for layer in driver.layers] == counts


@pytest.mark.parametrize("method", ["set", "rigl", "snfs", "grad_sample"])
def test_layer_changes_are_the_net_mask_difference_and_itop_the_union(method):
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=0.2, total_steps=100,
                          interval_steps=5, drop_fraction=0.3, schedule="constant")
    before = [layer.mask.clone() for layer in driver.layers]
    union = [layer.mask.clone() for layer in driver.layers]
    x, y = _data()
    rewires = 0
    for step in range(40):
        start = (step * 32) % len(x)
        loss = F.cross_entropy(model(x[start:start + 32]), y[start:start + 32])
        optimizer.zero_grad()
        loss.backward()
        changes = driver.step()
        if not changes:
            continue
        rewires += 1
        for index, (layer, change) in enumerate(zip(driver.layers, changes, strict=True)):
            added = (layer.mask & ~before[index]).reshape(-1).nonzero().squeeze(1)
            removed = (before[index] & ~layer.mask).reshape(-1).nonzero().squeeze(1)
            assert torch.equal(change.added, added) and torch.equal(change.removed, removed)
            assert change.active_count == layer.active_count and change.step == step + 1
            before[index] = layer.mask.clone()
            union[index] |= layer.mask
    assert rewires == 8
    total = sum(mask.numel() for mask in union)
    assert driver.itop_rate() == pytest.approx(sum(int(u.sum()) for u in union) / total)
    assert driver.itop_rate() > driver.global_density()


def test_load_state_dict_rejects_another_method_or_layers():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = SparseDriver(model, optimizer, method="rigl", total_steps=10).state_dict()
    with pytest.raises(ValueError, match="state"):
        SparseDriver(model, optimizer, method="set", total_steps=10).load_state_dict(state)
    with pytest.raises(ValueError, match="state"):
        SparseDriver(model, optimizer, method="rigl", total_steps=10,
                     exclude=["4"]).load_state_dict(state)
