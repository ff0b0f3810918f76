"""Sparse Evolutionary Training: drop the weakest, regrow at random (Mocanu et al. 2018).

Mocanu's rule drops the fraction ζ of the positive weights closest to zero and the fraction ζ
of the negative weights closest to zero, separately, so both signs keep their share.
"""

from __future__ import annotations

import torch

from dst_core.rewire import Rewirer, register_rewirer
from dst_core.selection import select_highest, select_lowest


def random_growth(
    candidates: torch.Tensor, count: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Exactly `count` candidates chosen uniformly at random (seeded by `generator`)."""
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    return select_highest(noise, candidates, count)


class SETRewirer(Rewirer):
    """SET: per-sign magnitude drop, uniform random growth."""

    # Mocanu et al.: ζ = 0.3, rewired once per epoch, grown weights drawn at random (zero
    # init measured here drops SET below a static mask at 95% sparsity).
    defaults = {"drop_fraction": 0.3, "schedule": "constant", "interval_steps": "epoch",
                "end_fraction": 1.0, "distribution": "er"}
    grow_init = "random"

    def drop(self, weight: torch.Tensor, mask: torch.Tensor, drop_fraction: float) -> torch.Tensor:
        # Exact zeros count as positive: they are the weakest of that side.
        positive = mask & (weight >= 0)
        negative = mask & (weight < 0)
        magnitude = weight.abs()
        drop_positive = select_lowest(magnitude, positive, int(drop_fraction * int(positive.sum())))
        drop_negative = select_lowest(magnitude, negative, int(drop_fraction * int(negative.sum())))
        return drop_positive | drop_negative

    def grow(self, weight, candidates, count, grad, generator, temperature):
        return random_growth(candidates, count, generator)


register_rewirer("set", SETRewirer)
