"""Gradient-guided growth: RigL, SNFS and grad_sample. All drop the smallest |w| (the base).

Each grows from a *dense* gradient: the driver keeps masked weights as exact zeros in the
parameter, so the gradient is ∂L/∂W at every position, inactive ones included (the seed's
`weight * mask` forward gives zero there and turns "gradient growth" into a random one); the
driver keeps it aside before masking `.grad` (`driver.dense_grad(layer)`).
"""

from __future__ import annotations

import math

import torch

from dst_core.method_options import with_defaults
from dst_core.rewire import Rewirer, register_rewirer
from dst_core.selection import count_true, magnitude, rewire_threads, select_mask, workspace


class RigLRewirer(Rewirer):
    """RigL (Evci et al. 2020): SET's drop, growth where |dense gradient| is largest."""

    # Evci et al. (rigl's sparse_optimizers.py): f = 0.3 annealed by cosine to 0 at 75% of
    # training, every 100 steps, ERK; N(0, 1e-5²) noise on the drop scores; no optimizer update
    # on a mask-update step; with uniform densities the first layer stays dense.
    defaults = with_defaults(drop_fraction=0.3, schedule="cosine", interval_steps=100,
                             end_fraction=0.75, distribution="erk", drop_noise=1e-5,
                             skip_update_on_rewire=True, first_layer_dense=True)
    needs_grad = True
    grow_init = "zero"

    def grow_score(self, weight, kept, grad, generator, temperature):
        return magnitude(grad, "scores")


class SNFSRewirer(Rewirer):
    """Sparse Networks From Scratch (Dettmers & Zettlemoyer 2019), as `sparselearning/core.py`
    (`Masking`) and `mnist_cifar/main.py` run it.

    At the end of every epoch, each layer drops its `ceil(p · k)` smallest |w| (a layer under
    20% sparsity whose momentum share exceeds 1/L drops at most its sparsity: the nearly-dense
    cap), the total dropped is shared between layers ∝ the mean |momentum| over each layer's
    active weights (at most 99% of a layer's free room), and each layer grows its share where
    |momentum| is largest. The momentum is the optimizer's own: SGD's `momentum_buffer`, Adam's
    m/(√v + 1e-8); grown weights start at 0 but keep that state, and afterwards every inactive
    entry of the optimizer state is set to the mean over the active ones (`reset_momentum`).
    p = 0.5 follows torch's CosineAnnealingLR over the whole run down to 0.005 (`CosineDecay`).

    The references' gradients are dense, so the optimizer's statistics exist at inactive
    positions; here `.grad` is masked, so after each optimizer step the driver adds the dense
    gradient's term at inactive positions to the optimizer's moments — the same numbers.
    At the mask level (`rewire("snfs", ..., grad=momentum)`) `grad` *is* the momentum.
    """

    defaults = with_defaults(drop_fraction=0.5, schedule="cosine", min_drop_fraction=0.005,
                             interval_steps="epoch", end_fraction=1.0, distribution="uniform")
    needs_grad = True
    supports_global = False  # its redistribution is the cross-layer rule
    keeps_inactive_state = True  # the optimizer's moments at inactive positions

    def grow_score(self, weight, kept, grad, generator, temperature):
        return magnitude(grad, "scores")

    def drop(self, weight, mask, drop_fraction, *, noise=0.0, generator=None):
        # sparse_learning's magnitude_death: ceil(p · k), not int(p · k).
        count = min(count_true(mask), math.ceil(drop_fraction * count_true(mask)))
        scores = self.drop_score(weight, noise, generator)
        return select_mask(scores, count, eligible=mask, largest=False).view(mask.shape)

    def setup(self, driver) -> None:
        for layer in driver.layers:
            optimizer_moments(driver.optimizer, layer.weight)  # raises when there are none

    def dense_gradient_wanted(self, driver, due) -> bool:
        return True  # every step: the optimizer's moments at inactive positions need it

    def before_optimizer_step(self, driver, due) -> None:
        driver.scratch["snfs_fresh"] = [
            driver.optimizer.state.get(layer.weight, {}).get("momentum_buffer") is None
            for layer in driver.layers]

    @torch.no_grad()
    def after_optimizer_step(self, driver, due) -> list:
        fresh = driver.scratch.pop("snfs_fresh", [False] * len(driver.layers))
        for layer, first in zip(driver.layers, fresh, strict=True):
            dense = driver.dense_grad(layer)
            if dense is not None and layer.weight.grad is not None and not driver.skipped_update:
                complete_moments(driver.optimizer, layer.weight, dense - layer.weight.grad, first)
        if not due:
            return []
        with rewire_threads(driver.layers[0].weight.device):
            return self._redistribute(driver)

    def _redistribute(self, driver) -> list:
        layers = driver.layers
        rate = driver.schedule.fraction_at(driver.step_count)
        momenta = [momentum_score(driver.optimizer, layer.weight) for layer in layers]
        means = [float(momentum[layer.mask].abs().mean()) if layer.active_count else math.nan
                 for layer, momentum in zip(layers, momenta, strict=True)]
        total = sum(mean for mean in means if math.isfinite(mean))
        shares = [mean / total if total > 0 and math.isfinite(mean) else 0.0 for mean in means]
        drops = []
        for layer, share in zip(layers, shares, strict=True):
            sparsity = 1.0 - layer.density
            layer_rate = rate
            if sparsity < 0.2 and share > 1.0 / len(layers):  # the nearly-dense cap
                layer_rate = min(sparsity, rate)
            drops.append(self.drop(layer.weight.detach(), layer.mask, layer_rate))
        drop_counts = [count_true(dropped) for dropped in drops]
        capacities = []
        for layer, dropped, count in zip(layers, drops, drop_counts, strict=True):
            room = layer.mask.numel() - layer.active_count + count
            if layer.structure is not None:
                room = min(room, layer.structure.capacity(torch.gt(layer.mask, dropped)))
            capacities.append(int(0.99 * room))  # the reference's 99% ceiling
        counts = apportion(sum(drop_counts), shares, capacities) if sum(shares) > 0 \
            else drop_counts
        changes = []
        for layer, dropped, momentum, count in zip(layers, drops, momenta, counts, strict=True):
            result = self.regrow(layer.weight.detach(), layer.mask, dropped, count, momentum,
                                 driver.generator, driver.temperature, layer.structure)
            changes.append(driver.apply_change(layer, result.mask, result.added, result.removed,
                                               self.grow_init, reset_state=False))
            reset_inactive_state(driver.optimizer, layer.weight, layer.mask)
        return changes


def optimizer_moments(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> str:
    """"sgd" or "adam": which statistic SNFS grows from; ValueError for anything else."""
    for group in optimizer.param_groups:
        if any(p is weight for p in group["params"]):
            if "betas" in group:
                return "adam"
            if group.get("momentum", 0) > 0:
                return "sgd"
            break
    raise ValueError("optimizer: snfs grows from the optimizer's own momentum (SGD with "
                     "momentum > 0, or Adam/AdamW's m/√v); this "
                     f"{type(optimizer).__name__} keeps neither")


def _group_of(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(p is weight for p in g["params"]))


@torch.no_grad()
def complete_moments(optimizer: torch.optim.Optimizer, weight: torch.Tensor,
                     inactive_grad: torch.Tensor, first_step: bool) -> None:
    """Add the dense gradient's term at inactive positions to the optimizer's moments, which
    it just updated from the masked gradient: the moments the reference's dense gradient
    gives (weight decay adds nothing there: those weights are 0)."""
    state = optimizer.state.get(weight, {})
    group = _group_of(optimizer, weight)
    if "betas" in group:
        beta1, beta2 = group["betas"]
        if "exp_avg" in state:
            state["exp_avg"].add_(inactive_grad, alpha=1 - beta1)
            state["exp_avg_sq"].addcmul_(inactive_grad, inactive_grad, value=1 - beta2)
            if state.get("max_exp_avg_sq") is not None:
                torch.maximum(state["max_exp_avg_sq"], state["exp_avg_sq"],
                              out=state["max_exp_avg_sq"])
        return
    buffer = state.get("momentum_buffer")
    if buffer is not None:  # SGD starts the buffer as the gradient itself, then damps it
        buffer.add_(inactive_grad, alpha=1.0 if first_step else 1 - group.get("dampening", 0))


def momentum_score(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> torch.Tensor:
    """sparse_learning's get_momentum_for_weight: Adam's m/(√v + 1e-8), else SGD's buffer."""
    state = optimizer.state.get(weight, {})
    if "exp_avg" in state:
        return state["exp_avg"] / (state["exp_avg_sq"].sqrt() + 1e-8)
    buffer = state.get("momentum_buffer")
    if buffer is None:  # no step taken yet: nothing learned, nothing to prefer
        return torch.zeros_like(weight)
    return buffer


@torch.no_grad()
def reset_inactive_state(optimizer: torch.optim.Optimizer, weight: torch.Tensor,
                         mask: torch.Tensor) -> None:
    """sparse_learning's reset_momentum: every inactive entry of each per-weight optimizer
    state takes the mean of the active entries."""
    for value in optimizer.state.get(weight, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == weight.shape:
            active = value[mask]
            if active.numel():
                value.masked_fill_(~mask, active.mean())


def apportion(total: int, shares: list[float], capacities: list[int]) -> list[int]:
    """Split `total` ∝ `shares` into integers (largest remainder), none above its capacity.

    A capped layer's excess is re-shared among the others, so the sum is exactly `total`
    whenever the capacities allow it.
    """
    counts = [0] * len(shares)
    open_layers = [i for i, share in enumerate(shares) if capacities[i] > 0]
    remaining = min(total, sum(capacities))
    while remaining > 0 and open_layers:
        weight_sum = sum(shares[i] for i in open_layers)
        if weight_sum <= 0:
            weights = {i: 1.0 for i in open_layers}
            weight_sum = float(len(open_layers))
        else:
            weights = {i: shares[i] for i in open_layers}
        ideal = {i: remaining * weights[i] / weight_sum for i in open_layers}
        floors = {i: min(int(ideal[i]), capacities[i] - counts[i]) for i in open_layers}
        left = remaining - sum(floors.values())
        by_remainder = sorted(open_layers, key=lambda i: (-(ideal[i] - int(ideal[i])), i))
        for i in by_remainder:
            if left <= 0:
                break
            if floors[i] < capacities[i] - counts[i]:
                floors[i] += 1
                left -= 1
        for i in open_layers:
            counts[i] += floors[i]
        remaining = min(total, sum(capacities)) - sum(counts)
        open_layers = [i for i in open_layers if counts[i] < capacities[i]]
    return counts


class GradSampleRewirer(RigLRewirer):
    """The seed tutorial's "DEEP R" done right, under its own name: growth *sampled* without
    replacement ∝ softmax(|g| / (mean |g| over candidates · T)).

    Gumbel-top-k: adding Gumbel(0, 1) noise to the logits and taking the `n` largest draws `n`
    without replacement from the softmax, for any number of candidates (`torch.multinomial`
    stops at 2^24 categories).
    """

    option_scopes = frozenset({"temperature"})  # the options only it reads

    defaults = with_defaults(drop_fraction=0.3, schedule="cosine", interval_steps=100,
                             end_fraction=0.75, distribution="erk", temperature=1.0)

    def grow_score(self, weight, kept, grad, generator, temperature):
        scores = magnitude(grad, "scores")  # (numel,) |g|
        candidate_count = kept.numel() - count_true(kept)
        candidate_sum = float(scores.sum()) - float(scores[kept.reshape(-1)].sum())
        mean = candidate_sum / max(1, candidate_count)
        uniform = workspace(scores.numel(), scores.device, "noise")
        uniform.uniform_(generator=generator)
        gumbel = uniform.clamp_(min=torch.finfo(torch.float32).tiny).log_().neg_().log_().neg_()
        if mean > 0 and math.isfinite(mean):
            gumbel.add_(scores, alpha=1.0 / (mean * temperature))
        return gumbel


register_rewirer("rigl", RigLRewirer)
register_rewirer("snfs", SNFSRewirer)
register_rewirer("grad_sample", GradSampleRewirer)
