"""A user's method, as a user writes one: a `Rewirer` that overrides only `grow_score`,
registered after `dst_core` was imported. It grows the lowest flat indices first."""

import torch

import dst_core


class LowestIndexGrowth(dst_core.Rewirer):
    """Magnitude drop (the base), growth at the lowest free flat indices."""

    def grow_score(self, weight, kept, grad, generator, temperature):
        return -torch.arange(weight.numel(), dtype=torch.float32, device=weight.device)


dst_core.register_rewirer("tiny", LowestIndexGrowth)
