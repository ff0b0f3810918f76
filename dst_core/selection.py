"""Exact, deterministic selection of the n best positions of a score tensor.

Rewiring must keep the number of active connections exact, so "drop the n smallest" has to
pick exactly n positions even when scores tie; ties go to the lower flat index so that two
runs with the same seed make the same choice on any device.
"""

from __future__ import annotations

import torch


def select_lowest(scores: torch.Tensor, eligible: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask (scores' shape) of exactly `count` eligible positions with the lowest scores."""
    return _select(scores, eligible, count, largest=False)


def select_highest(scores: torch.Tensor, eligible: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask (scores' shape) of exactly `count` eligible positions with the highest scores."""
    return _select(scores, eligible, count, largest=True)


def _select(scores: torch.Tensor, eligible: torch.Tensor, count: int, largest: bool) -> torch.Tensor:
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if count <= 0:
        return chosen.view(scores.shape)
    flat_eligible = eligible.reshape(-1)
    candidates = flat_eligible.nonzero().squeeze(1)  # (C,) ascending flat indices
    if count > candidates.numel():
        raise ValueError(f"count: cannot select {count} of {candidates.numel()} eligible positions")
    values = scores.reshape(-1)[candidates].float()
    if largest:
        values = -values
    # A stable sort keeps candidates (already in index order) in index order among equal
    # scores: that is the deterministic tie-break.
    order = torch.sort(values, stable=True).indices[:count]
    chosen[candidates[order]] = True
    return chosen.view(scores.shape)
