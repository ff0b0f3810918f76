"""Deep R (Bellec, Kappel, Maass & Legenstein 2018, "Deep Rewiring"): sampling sparse
connectivity with a fixed sign per connection and a non-negative parameter θ.

Every step, for each active connection (w = s·θ, s fixed at random, θ ≥ 0):

    θ ← θ − η·s·∂L/∂w − η·α + √(2ηT)·ν,    ν ~ N(0, 1)

with η the optimizer's learning rate, α the L1 strength (`l1`) and T the temperature. A
connection whose θ drops below zero goes dormant (w = 0); exactly as many dormant
connections are revived, uniformly at random among all dormant ones, with θ = 1e-12 and their
original sign, so the active count never changes. Deep R replaces the optimizer's update of
the weights it manages (their `.grad` is taken away before `optimizer.step()`); biases and
other parameters still follow the optimizer. Flips happen every step; they are reported to
listeners aggregated once per `interval_steps` as net changes, and ITOP counts every one.
"""

from __future__ import annotations

import math

import torch

from dst_core.method_options import with_defaults
from dst_core.rewire import Algorithm, register_rewirer
from dst_core.selection import random_choice

REVIVED_THETA = 1e-12  # Bellec et al.: a revived connection starts just above zero


class DeepR(Algorithm):
    """Per-step sibling of the rewirers: its own θ update, constant active count."""

    option_scopes = frozenset({"temperature", "deep_r"})  # the options only it reads

    # Reported every 100 steps; α = 1e-5 and T = 1e-6 (noise std √(2·lr·T) ≈ 6e-4 at lr 0.2:
    # it explores without swamping the gradient). θ moves by plain SGD, so Deep R needs a
    # larger step than the momentum methods: measured at the dashboard's other defaults
    # (bench/defaults_sweep.py-style, 20 epochs), lr 0.05 left digits near chance, lr 0.5
    # oscillated on the digits CNN (39%), lr 0.2 with ERK densities gave digits MLP 92.5%,
    # CNN 82.2%, MNIST-5k MLP 89.0% (uniform densities starve LeNet's 144-weight first conv).
    defaults = with_defaults(interval_steps=100, end_fraction=1.0, schedule="constant",
                             drop_fraction=0.0, distribution="erk", temperature=1e-6,
                             l1=1e-5, lr=0.2)

    def setup(self, driver) -> None:
        for layer in driver.layers:
            if "sign" in layer.buffers:
                continue
            random_sign = torch.randint(0, 2, layer.weight.shape, generator=driver.generator,
                                        device=layer.weight.device).to(layer.weight.dtype) * 2 - 1
            current = torch.sign(layer.weight.detach())
            layer.buffers["sign"] = torch.where(current != 0, current, random_sign)
            layer.buffers["reported_mask"] = layer.mask.clone()

    def before_optimizer_step(self, driver, due) -> None:
        grads = []
        for layer in driver.layers:
            grads.append(layer.weight.grad)
            layer.weight.grad = None  # the optimizer must not also move these weights
        driver.scratch["deep_r_grads"] = grads

    @torch.no_grad()
    def after_optimizer_step(self, driver, due) -> list:
        grads = driver.scratch.pop("deep_r_grads")
        changes = []
        for layer, grad in zip(driver.layers, grads, strict=True):
            self._update_layer(driver, layer, grad)
            if due:
                reported = layer.buffers["reported_mask"]
                changes.append(driver.record_change(layer, layer.mask & ~reported,
                                                    reported & ~layer.mask))
                layer.buffers["reported_mask"] = layer.mask.clone()
        return changes

    def _update_layer(self, driver, layer, grad: torch.Tensor | None) -> None:
        weight, mask, sign = layer.weight, layer.mask, layer.buffers["sign"]
        lr = driver.learning_rate(weight)
        theta = (weight * sign).float()  # (weight's shape) θ of active, 0 elsewhere
        if grad is not None:
            theta.addcmul_(sign.float(), grad.float(), value=-lr)
        theta.sub_(lr * driver.l1)
        noise_std = math.sqrt(2.0 * lr * driver.temperature)
        if noise_std > 0:
            noise = torch.randn(theta.shape, generator=driver.generator, device=theta.device)
            theta.add_(noise, alpha=noise_std)
        died = mask & (theta < 0)
        died_count = int(torch.count_nonzero(died))
        new_mask = mask & ~died
        if died_count:
            dormant_count = mask.numel() - int(torch.count_nonzero(new_mask))
            revived = random_choice(new_mask, died_count, dormant_count, driver.generator)
            new_mask |= revived
            theta.masked_fill_(revived, REVIVED_THETA)
        theta.masked_fill_(~new_mask, 0.0)
        weight.copy_(theta.to(weight.dtype) * sign)
        if died_count:  # else the mask is unchanged (and already in the ITOP union)
            # The driver's own bookkeeping of a new mask, as a rewire's: ITOP union,
            # optimizer state of the flipped entries (Deep R's weights take no optimizer
            # step, so there is none unless the optimizer held some before).
            driver.install_mask(layer, new_mask, added=new_mask & ~mask,
                                removed=mask & ~new_mask)


register_rewirer("deep_r", DeepR)
