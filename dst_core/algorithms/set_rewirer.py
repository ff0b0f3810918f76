"""Sparse Evolutionary Training: drop the weakest, regrow at random (Mocanu et al. 2018).

Mocanu's rule drops the fraction ζ of the positive weights closest to zero and the fraction ζ
of the negative weights closest to zero, separately, so both signs keep their share.
`set_magnitude` is the variant rigl and jaxpruner call SET: drop the smallest |w| overall.
"""

from __future__ import annotations

import torch

from dst_core.method_options import with_defaults
from dst_core.rewire import Rewirer, register_rewirer
from dst_core.selection import count_true, random_choice, select_mask


class SETMagnitudeRewirer(Rewirer):
    """SET as rigl/jaxpruner implement it: drop the smallest |w|, grow uniformly at random."""

    # Mocanu et al.: ζ = 0.3, rewired once per epoch, Erdős–Rényi layer densities; grown
    # weights drawn at random (zero init measured here drops SET below a static mask at 95%).
    defaults = with_defaults(drop_fraction=0.3, schedule="constant", interval_steps="epoch",
                             end_fraction=1.0, distribution="er")
    grow_init = "random"
    random_growth = True

    def grow(self, weight, kept, count, grad, generator, temperature, structure=None):
        if structure is not None:  # random scores within the N:M groups
            return super().grow(weight, kept, count, grad, generator, temperature, structure)
        # Uniform without replacement among the non-kept positions (no per-entry scores).
        return random_choice(kept, count, kept.numel() - count_true(kept), generator)


class SETRewirer(SETMagnitudeRewirer):
    """SET (Mocanu et al. 2018): per-sign magnitude drop, uniform random growth.

    Its drop ranks each sign separately, so it has no single cross-layer ranking
    (`global_selection`: use `set_magnitude`) and no drop-score noise."""

    supports_global = False

    def drop(self, weight: torch.Tensor, mask: torch.Tensor, drop_fraction: float, *,
             noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        # Exact zeros count as positive: they are the weakest of that side.
        positive = mask & (weight >= 0)
        negative = torch.gt(mask, positive)  # mask & ~positive in one pass
        return self.drop_per_sign(weight, positive, negative,
                                  int(drop_fraction * count_true(positive)),
                                  int(drop_fraction * count_true(negative)))

    @staticmethod
    def drop_per_sign(weight: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                      count_positive: int, count_negative: int) -> torch.Tensor:
        """The `count_positive` lowest positive and `count_negative` highest negative weights
        (ties to the lower index): the band around zero Mocanu's thresholds cut."""
        dropped = select_mask(weight, count_positive, eligible=positive, largest=False)
        dropped |= select_mask(weight, count_negative, eligible=negative, largest=True)
        return dropped


register_rewirer("set", SETRewirer)
register_rewirer("set_magnitude", SETMagnitudeRewirer)
