"""Structured sparsity constraints: N:M groups and constant fan-in.

N:M (2:4 is what NVIDIA's sparse tensor cores run) keeps at most `n` active weights in every
group of `m` consecutive inputs of a row (a weight is viewed as output × flattened input, as
`torch.sparse.to_sparse_semi_structured` groups a Linear weight). Growth under the
constraint is a partition matroid: taking, in each group, the best `n − kept` candidates and
then the best `count` among those is optimal, so the selection stays one global threshold
over an eligibility mask. Constant fan-in (SRigL) gives every output unit the same number of
active inputs.
"""

from __future__ import annotations

import math

import torch

from dst_core.selection import select_mask

STRUCTURES = ("unstructured", "n:m")  # the `structure` option's values


def rows_view(tensor: torch.Tensor, output_axis: int = 0) -> torch.Tensor:
    """(out, fan_in) of a weight-shaped tensor (conv kernels flattened into the input): a view
    when outputs come first, as torch stores them; the transpose for a weight stored with its
    outputs on another axis (Hugging Face's `Conv1D`: (in, out))."""
    if tensor.dim() < 2:
        return tensor.reshape(1, -1)
    if output_axis:
        tensor = tensor.movedim(output_axis, 0)
    return tensor.reshape(tensor.shape[0], -1)


def from_rows(rows: torch.Tensor, shape: tuple[int, ...], output_axis: int = 0) -> torch.Tensor:
    """A fresh (out, fan_in) tensor back in the weight's layout (rows_view's inverse)."""
    if len(shape) < 2 or not output_axis:
        return rows.reshape(shape)
    moved = (shape[output_axis],) + tuple(size for axis, size in enumerate(shape)
                                          if axis != output_axis)
    return rows.reshape(moved).movedim(0, output_axis).contiguous()


class NMStructure:
    """At most `n` active in every group of `m` consecutive inputs of a row (of an output
    unit, whichever axis the weight stores its outputs on)."""

    def __init__(self, n: int, m: int, output_axis: int = 0) -> None:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m: must be an int >= 1, got {m!r}")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= m:
            raise ValueError(f"n: must be an int in [1, m={m}], got {n!r}")
        self.n, self.m = n, m
        self.output_axis = output_axis

    def __repr__(self) -> str:
        return f"NMStructure({self.n}:{self.m})"

    def _groups(self, tensor: torch.Tensor, fill) -> torch.Tensor:
        """(out, groups, m): rows split into groups of m, the last one padded with `fill`."""
        rows = rows_view(tensor, self.output_axis)
        pad = (-rows.shape[1]) % self.m
        if pad:
            rows = torch.nn.functional.pad(rows, (0, pad), value=fill)
        return rows.reshape(rows.shape[0], -1, self.m)

    def _group_room(self, mask: torch.Tensor) -> torch.Tensor:
        """(out, groups) how many more may be active in each group (never below 0)."""
        sizes = self._groups(torch.ones_like(mask, dtype=torch.bool), False).sum(-1)
        limit = sizes.clamp(max=self.n)  # a short last group holds at most its size
        return (limit - self._groups(mask, False).sum(-1)).clamp_(min=0)

    def capacity(self, mask: torch.Tensor) -> int:
        """How many more positions may become active without breaking the constraint."""
        return int(self._group_room(mask).sum())

    def max_active(self, shape: tuple[int, ...]) -> int:
        outputs = shape[self.output_axis] if len(shape) > 1 else 1
        full, rest = divmod(math.prod(shape) // outputs, self.m)
        return outputs * (full * self.n + min(self.n, rest))

    def satisfied(self, mask: torch.Tensor) -> bool:
        return bool((self._groups(mask, False).sum(-1) <= self.n).all())

    def eligible(self, scores: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Bool (kept's shape): in each group, the `room` best non-kept positions by score
        (ties to the lower index), so any selection among them keeps the constraint."""
        flat = scores.reshape(kept.shape).float()
        lifted = torch.where(kept | torch.isnan(flat), -math.inf, flat)  # kept never chosen
        grouped = self._groups(lifted, -math.inf)  # (out, groups, m)
        order = torch.sort(grouped, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(self.m, device=order.device).expand_as(order))
        room = self._group_room(kept).unsqueeze(-1)  # (out, groups, 1)
        chosen = (rank < room) & (grouped > -math.inf)  # (out, groups, m)
        rows = rows_view(kept, self.output_axis)
        return from_rows(chosen.reshape(rows.shape[0], -1)[:, :rows.shape[1]], tuple(kept.shape),
                         self.output_axis)

    def random_mask(self, shape: tuple[int, ...], count: int,
                    generator: torch.Generator) -> torch.Tensor:
        """Exactly `count` active positions, uniformly scored, within the constraint."""
        if count > self.max_active(shape):
            raise ValueError(f"density: {count} active weights do not fit {self.n}:{self.m} in "
                             f"a {tuple(shape)} layer (at most {self.max_active(shape)}); use a "
                             f"density <= n/m = {self.n / self.m:g}")
        scores = torch.rand(math.prod(shape), generator=generator, device=generator.device)
        kept = torch.zeros(shape, dtype=torch.bool, device=generator.device)
        eligible = self.eligible(scores, kept)
        return select_mask(scores, count, eligible=eligible.reshape(-1)).view(shape)


def constant_fan_in_mask(shape: tuple[int, ...], fan_in_active: int,
                         generator: torch.Generator, output_axis: int = 0) -> torch.Tensor:
    """Every output unit gets exactly `fan_in_active` random inputs (SRigL's initialisation)."""
    rows = shape[output_axis] if len(shape) > 1 else 1
    fan_in = math.prod(shape) // rows
    scores = torch.rand(rows, fan_in, generator=generator, device=generator.device)
    chosen = torch.topk(scores, fan_in_active, dim=1).indices  # (rows, k)
    mask = torch.zeros(rows, fan_in, dtype=torch.bool, device=generator.device)
    mask.scatter_(1, chosen, True)
    return from_rows(mask, tuple(shape), output_axis)


def top_per_row(scores: torch.Tensor, counts: torch.Tensor,
                eligible: torch.Tensor) -> torch.Tensor:
    """(rows, fan_in) bool: in each row r the `counts[r]` highest eligible scores (ties to
    the lower index). One stable sort per row: SRigL's per-unit regrowth in one call."""
    lifted = torch.where(eligible, scores.float(), -math.inf)
    lifted = torch.nan_to_num(lifted, nan=-math.inf)
    order = torch.sort(lifted, dim=1, descending=True, stable=True).indices  # (rows, fan_in)
    ranks = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    chosen_sorted = ranks < counts.unsqueeze(1)
    chosen = torch.zeros_like(eligible)
    chosen.scatter_(1, order, chosen_sorted)
    return chosen & eligible
