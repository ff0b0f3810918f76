"""The engine against small ports of the reference implementations, written for these tests
(numpy, in the references' own index arithmetic), fed the same tensors:

- google-research/rigl `sparse_optimizers.py` `_get_update_op` (RigL's mask update, noise 0)
  and `sparse_utils.get_sparsities` (the ERK solver);
- dcmocanu/sparse-evolutionary-artificial-neural-networks `weightsEvolution` (SET's drop);
- TimDettmers/sparse_learning `core.py`: `magnitude_death`, `momentum_growth`,
  `gather_statistics` + `calc_growth_redistribution`;
- guillaumeBellec/deep_rewiring: the θ update and `rewiring` step.

Masks are identical wherever the rule is deterministic. Stated differences: ERK differs by
the reference's per-layer floor of n_zeros (at most one weight per layer); SET's thresholds
drop `int(ζ·(P−1)) + 2`-style counts where we drop exactly `int(ζ·P)` per sign, so the masks
are compared at the reference's counts; sparse_learning's regrowth counts (ceil/floor plus a
smoothed residual) are matched within ±1 per layer, our total staying exact; random growth
and revival are compared by count and candidate set, not by the RNG's draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dst_core import REGISTRY, SparseDriver, layer_densities, rewire


def _distinct(shape, seed, scale=1.0):
    """Random values with no ties and no zeros (the references break ties differently)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randperm(math.prod(shape), generator=generator).float() + 1.0
    signs = torch.randint(0, 2, (math.prod(shape),), generator=generator).float() * 2 - 1
    return (values * signs * scale / math.prod(shape)).reshape(shape)


def _mask(shape, density, seed):
    generator = torch.Generator().manual_seed(seed)
    flat = torch.zeros(math.prod(shape), dtype=torch.bool)
    flat[torch.randperm(flat.numel(), generator=generator)[:round(density * flat.numel())]] = True
    return flat.view(shape)


# ---- rigl -----------------------------------------------------------------------------------

def rigl_update_op(score_drop, score_grow, mask, drop_fraction):
    """rigl's _get_update_op (TF top_k: ties to the lower index, i.e. a stable sort)."""
    score_drop, score_grow, mask = (a.reshape(-1).astype(np.float64) for a in
                                    (score_drop, score_grow, mask))
    n_total = score_drop.size
    n_ones = int(mask.sum())
    n_prune = int(n_ones * drop_fraction)
    n_keep = n_ones - n_prune
    order = np.argsort(-score_drop, kind="stable")
    mask1 = np.zeros(n_total)
    mask1[order[:n_keep]] = 1
    lifted = np.where(mask1 == 1, score_grow.min() - 1, score_grow)
    order = np.argsort(-lifted, kind="stable")
    mask2 = np.zeros(n_total)
    mask2[order[:n_prune]] = 1
    assert (mask1 * mask2).sum() == 0
    return (mask1 + mask2).astype(bool)


@pytest.mark.parametrize("shape,density,fraction", [((30, 20), 0.2, 0.3), ((16, 3, 3, 3), 0.1, 0.5),
                                                    ((300, 100), 0.05, 0.3)])
def test_rigl_mask_update_is_the_references(shape, density, fraction):
    weight, grad = _distinct(shape, 1), _distinct(shape, 2)
    mask = _mask(shape, density, 3)
    weight = weight * mask
    result = rewire("rigl", weight, mask, drop_fraction=fraction, grad=grad)
    expected = rigl_update_op(np.abs((mask * weight).numpy()), np.abs(grad.numpy()),
                              mask.numpy(), fraction)
    assert np.array_equal(result.mask.reshape(-1).numpy(), expected)


def test_rigl_in_the_driver_with_noise_zero_is_the_references():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    driver = SparseDriver(model, optimizer, method="rigl", density=0.3, total_steps=100,
                          interval_steps=1, drop_noise=0.0, schedule="constant",
                          drop_fraction=0.3)
    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(2))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    inputs = [(layer.weight.detach().clone(), layer.mask.clone(),
               driver.dense_grad(layer).clone()) for layer in driver.layers]
    driver.step()  # skip_update_on_rewire: the weights the rewire sees are these
    for layer, (weight, mask, grad) in zip(driver.layers, inputs, strict=True):
        expected = rigl_update_op(np.abs(weight.numpy()), np.abs(grad.numpy()), mask.numpy(),
                                  0.3)
        assert np.array_equal(layer.mask.reshape(-1).numpy(), expected)


def rigl_erk(shapes, density):
    """rigl's get_sparsities for 'erdos_renyi_kernel' (erk_power_scale 1)."""
    sparsity = 1 - density
    dense = set()
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for index, shape in enumerate(shapes):
            n_param = int(np.prod(shape))
            n_zeros = int(np.floor(n_param * sparsity))
            if index in dense:
                rhs -= n_zeros
            else:
                rhs += n_param - n_zeros
                raw[index] = np.sum(shape) / np.prod(shape)
                divisor += raw[index] * n_param
        eps = rhs / divisor
        max_prob = max(raw.values())
        if max_prob * eps > 1:
            dense |= {index for index, prob in raw.items() if prob == max_prob}
        else:
            break
    return [1.0 if index in dense else eps * raw[index] for index in range(len(shapes))]


@pytest.mark.parametrize("shapes,density", [
    ([(300, 784), (100, 300), (10, 100)], 0.1),
    ([(16, 1, 3, 3), (32, 16, 3, 3), (64, 1568), (10, 64)], 0.05),
    ([(8, 3, 3, 3), (512, 512), (10, 512)], 0.3),
])
def test_erk_is_rigls_solver_up_to_its_floor_rounding(shapes, density):
    ours = layer_densities(shapes, density, "erk")
    theirs = rigl_erk(shapes, density)
    for shape, a, b in zip(shapes, ours, theirs, strict=True):
        # the reference floors each layer's n_zeros: at most one weight per layer apart
        assert abs(a - b) * np.prod(shape) <= len(shapes)
    assert [a == 1.0 for a in ours] == [b == 1.0 for b in theirs]


# ---- SET (Mocanu) --------------------------------------------------------------------------

def mocanu_core(weight, mask, zeta):
    """weightsEvolution's drop on the sparse matrix's stored (active) values."""
    values = np.sort(weight[mask])
    first_zero = int(np.abs(values).argmin())
    last_zero = values.shape[0] - int(np.abs(values)[::-1].argmin())
    largest_negative = values[int((1 - zeta) * first_zero)]
    smallest_positive = values[int(min(values.shape[0] - 1,
                                       last_zero + zeta * (values.shape[0] - last_zero)))]
    return mask & ((weight > smallest_positive) | (weight < largest_negative))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_set_drop_is_mocanus_band_around_zero(seed):
    shape, zeta = (100, 50), 0.3
    weight, mask = _distinct(shape, seed), _mask(shape, 0.2, seed + 10)
    weight = weight * mask
    core = mocanu_core(weight.numpy(), mask.numpy(), zeta)
    positive, negative = mask & (weight >= 0), mask & (weight < 0)
    reference_positive = int((positive.numpy() & ~core).sum())
    reference_negative = int((negative.numpy() & ~core).sum())
    dropped = REGISTRY["set"].drop_per_sign(weight, positive, negative, reference_positive,
                                            reference_negative)
    assert np.array_equal((mask & ~dropped).numpy(), core)  # identical at its counts
    # its index arithmetic differs from exactly int(ζ·P), int(ζ·N) by a few weights
    ours = REGISTRY["set"].drop(weight, mask, zeta)
    assert abs(int((ours & positive).sum()) - reference_positive) <= 2
    assert abs(int((ours & negative).sum()) - reference_negative) <= 1
    # growth: as many as dropped, only where the core is inactive (uniform draws)
    result = rewire("set", weight, mask, drop_fraction=zeta,
                    generator=torch.Generator().manual_seed(seed))
    assert int(result.mask.sum()) == int(mask.sum())
    assert (result.added & mask).sum() == 0


# ---- sparse_learning (SNFS) ----------------------------------------------------------------

def sl_magnitude_death(weight, mask, death_rate):
    num_nonzeros = int(mask.sum())
    num_zeros = mask.size - num_nonzeros
    num_remove = math.ceil(death_rate * num_nonzeros)
    x = np.sort(np.abs(weight).reshape(-1))
    threshold = x[math.ceil(num_zeros + num_remove) - 1]
    return np.abs(weight) > threshold


def sl_momentum_growth(new_mask, total_regrowth, momentum):
    grad = np.abs(momentum * (new_mask == 0)).reshape(-1)
    order = np.argsort(-grad, kind="stable")
    grown = new_mask.reshape(-1).copy()
    grown[order[:total_regrowth]] = True
    return grown.reshape(new_mask.shape)


def sl_redistribution(masks, momenta, death_rate):
    """gather_statistics + calc_growth_redistribution (adjusted_growth 0)."""
    variance = {i: float(np.abs(m[mask]).mean())
                for i, (mask, m) in enumerate(zip(masks, momenta, strict=True))}
    total_variance = sum(variance.values())
    nonzeros = {i: int(mask.sum()) for i, mask in enumerate(masks)}
    zeros = {i: mask.size - nonzeros[i] for i, mask in enumerate(masks)}
    rates, total_removed = {}, 0
    for i, mask in enumerate(masks):
        variance[i] /= total_variance
        sparsity = zeros[i] / mask.size
        rate = death_rate
        if sparsity < 0.2 and (1.0 / len(masks)) / variance[i] < 1.0:
            rate = min(sparsity, death_rate)
        rates[i] = rate
        total_removed += math.ceil(rate * nonzeros[i])
    regrowth, residual, mean_residual, rounds = {}, 9999, 0, 0
    while residual > 0 and rounds < 1000:
        residual = 0
        for i in range(len(masks)):
            max_regrowth = zeros[i] + math.ceil(rates[i] * nonzeros[i])
            value = regrowth.get(i, math.ceil(variance[i] * total_removed)) + mean_residual
            if value > 0.99 * max_regrowth:
                regrowth[i] = 0.99 * max_regrowth
                residual += value - regrowth[i]
            else:
                regrowth[i] = value
        mean_residual = residual / len(regrowth)
        rounds += 1
    return rates, {i: math.floor(value) for i, value in regrowth.items()}


def test_snfs_death_and_growth_are_sparse_learnings():
    shape = (60, 40)
    weight, momentum = _distinct(shape, 4), _distinct(shape, 5)
    mask = _mask(shape, 0.1, 6)
    weight = weight * mask
    kept = ~REGISTRY["snfs"].drop(weight, mask, 0.5) & mask
    assert np.array_equal(kept.numpy(), sl_magnitude_death(weight.numpy(), mask.numpy(), 0.5))
    count = int((mask & ~kept).sum())
    grown = REGISTRY["snfs"].grow(weight, kept, count, momentum, None, 1.0)
    expected = sl_momentum_growth(kept.numpy(), count, momentum.numpy())
    assert np.array_equal((kept | grown).numpy(), expected)


def test_snfs_redistribution_is_sparse_learnings_within_one_per_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 60, bias=False), nn.ReLU(), nn.Linear(60, 8, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method="snfs", density=0.15, total_steps=100,
                          interval_steps=3, schedule="constant", drop_fraction=0.5)
    x = torch.randn(64, 30, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 8, (64,), generator=torch.Generator().manual_seed(2))
    captured = {}
    original = driver.algorithm._redistribute

    def spy(d):
        captured["masks"] = [layer.mask.numpy().copy() for layer in d.layers]
        captured["weights"] = [layer.weight.detach().numpy().copy() for layer in d.layers]
        captured["momenta"] = [optimizer.state[layer.weight]["momentum_buffer"].numpy().copy()
                               for layer in d.layers]
        return original(d)

    driver.algorithm._redistribute = spy
    try:
        changes = []
        while not changes:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            changes = driver.step()
    finally:
        del driver.algorithm._redistribute
    rates, regrowth = sl_redistribution(captured["masks"], captured["momenta"], 0.5)
    for index, (layer, mask, weight, momentum) in enumerate(zip(
            driver.layers, captured["masks"], captured["weights"], captured["momenta"],
            strict=True)):
        kept = sl_magnitude_death(weight, mask, rates[index]) & mask
        grown_count = int((layer.mask.numpy() & ~kept).sum())
        assert abs(grown_count - regrowth[index]) <= 1  # ceil/floor/residual vs exact
        # given that count, the grown positions are the reference's
        expected = sl_momentum_growth(kept, grown_count, momentum)
        assert np.array_equal(layer.mask.numpy(), expected)
    assert sum(int(m.sum()) for m in captured["masks"]) == \
        sum(layer.active_count for layer in driver.layers)


# ---- Deep R (Bellec) -------------------------------------------------------------------------

def test_deep_r_step_is_bellecs():
    torch.manual_seed(0)
    model = nn.Linear(40, 30, bias=False)
    lr, temperature, l1 = 0.5, 1e-3, 1e-3
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    driver = SparseDriver(model, optimizer, method="deep_r", density=0.2, total_steps=50,
                          temperature=temperature, l1=l1)
    layer = driver.layers[0]
    sign = layer.buffers["sign"].clone()
    mask = layer.mask.clone()
    theta = (layer.weight.detach() * sign).numpy()
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(3))
    model(x).pow(2).sum().backward()
    grad = model.weight.grad.detach().numpy().copy()
    noise_generator = torch.Generator().manual_seed(0)
    noise_generator.set_state(driver.generator.get_state())
    noise = torch.randn(theta.shape, generator=noise_generator).numpy()
    driver.step()
    # Bellec et al.: θ ← θ − η·s·∂E/∂w − η·α + √(2ηT)·ν on active θ; θ < 0 goes dormant;
    # `rewiring`: as many dormant (the newly dormant included) revived at θ = ε.
    updated = theta - lr * sign.numpy() * grad - lr * l1 + math.sqrt(2 * lr * temperature) * noise
    survived = mask.numpy() & (updated >= 0)
    new_mask = layer.mask.numpy()
    assert np.array_equal(new_mask & survived, survived)
    revived = new_mask & ~survived
    assert revived.sum() == mask.numpy().sum() - survived.sum()
    assert np.allclose(layer.weight.detach().numpy()[revived], 1e-12 * sign.numpy()[revived])
    assert np.allclose(layer.weight.detach().numpy()[survived],
                       (updated * sign.numpy())[survived], atol=1e-6)
