"""Gradient-guided growth: RigL, SNFS and grad_sample. All drop the smallest |w| (the base).

Each grows from a *dense* gradient: the driver keeps masked weights as exact zeros in the
parameter, so `weight.grad` is ∂L/∂W at every position, inactive ones included (the seed's
`weight * mask` forward gives zero there and turns "gradient growth" into a random one).
"""

from __future__ import annotations

import math

import torch

from dst_core.rewire import Rewirer, register_rewirer
from dst_core.selection import count_true, magnitude, workspace

SNFS_MOMENTUM = 0.9  # β of SNFS's exponentially smoothed dense gradient (Dettmers' SGD momentum)


class RigLRewirer(Rewirer):
    """RigL (Evci et al. 2020): SET's drop, growth where |dense gradient| is largest."""

    # Evci et al.: f = 0.3 annealed by cosine to 0 at 75% of training, every 100 steps, ERK.
    defaults = {"drop_fraction": 0.3, "schedule": "cosine", "interval_steps": 100,
                "end_fraction": 0.75, "distribution": "erk"}
    needs_grad = True
    grow_init = "zero"

    def grow_score(self, weight, kept, grad, generator, temperature):
        return magnitude(grad, "scores")


class SNFSRewirer(RigLRewirer):
    """Sparse Networks From Scratch (Dettmers & Zettlemoyer 2019): grow by |momentum| of the
    dense gradient, and move regrowth between layers by their mean momentum.

    At the mask level `grad` *is* the momentum. Inside the driver the momentum is updated on
    every step (`m ← β·m + g`, dense g) and the total regrowth is shared between layers in
    proportion to the mean |m| over each layer's active weights, with exact total.
    """

    # Dettmers & Zettlemoyer: prune rate p = 0.5 with cosine decay, masks updated every 100
    # steps until the end; uniform initial densities that redistribution then reshapes.
    defaults = {"drop_fraction": 0.5, "schedule": "cosine", "interval_steps": 100,
                "end_fraction": 1.0, "distribution": "uniform"}
    redistributes = True

    def before_optimizer_step(self, driver, due):
        momenta = []
        for layer in driver.layers:
            momentum = layer.buffers.get("momentum")
            if momentum is None:
                momentum = layer.buffers["momentum"] = torch.zeros_like(layer.weight)
            if layer.weight.grad is not None:
                momentum.mul_(SNFS_MOMENTUM).add_(layer.weight.grad)
            momenta.append(momentum)
        if due:
            driver.scratch["grads"] = momenta

    def grow_counts(self, driver, drop_counts, grads):
        total = sum(drop_counts)
        shares = [float(momentum[layer.mask].abs().mean()) if layer.active_count else 0.0
                  for layer, momentum in zip(driver.layers, grads, strict=True)]
        capacities = [layer.mask.numel() - layer.active_count + dropped
                      for layer, dropped in zip(driver.layers, drop_counts, strict=True)]
        if not all(math.isfinite(share) for share in shares) or sum(shares) <= 0:
            return drop_counts
        return apportion(total, shares, capacities)


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

    defaults = {"drop_fraction": 0.3, "schedule": "cosine", "interval_steps": 100,
                "end_fraction": 0.75, "distribution": "erk", "temperature": 1.0}

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
