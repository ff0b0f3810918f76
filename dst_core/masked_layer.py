"""A sparsified layer as the driver holds it (its weight, mask and ever-active set), the net
change a rewire makes to it, and the initial masks and init scales: what the driver and the
FSDP2 layer (dst_core.sharded) both build on, apart from the driver itself, so neither
imports the other's internals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from dst_core.selection import count_true
from dst_core.structure import NMStructure, rows_view


@dataclass
class MaskedLayer:
    """One sparsified weight (a weight shared by several modules appears once)."""

    name: str
    weight: nn.Parameter
    mask: torch.Tensor  # bool, weight's shape
    ever_active: torch.Tensor  # bool, weight's shape: union of every mask so far (ITOP)
    init_bound: float  # uniform bound of the layer's default init, for random regrowth
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # algorithm state, saved
    structure: NMStructure | None = None  # an N:M constraint the layer's masks keep
    output_axis: int = 0  # the axis of the weight indexing output units (1: HF Conv1D's (in, out))
    kind: str = "linear"  # linear, conv, hf_conv1d, attention_in_proj, custom (dst_core.prunable)
    grad_masked: bool = field(default=False, repr=False)  # the hook masked this step's .grad
    # The mask in the weight's dtype, rebuilt whenever `mask` is *assigned* a new tensor:
    # multiplying by a float mask is ~6× faster than by a bool one on the CPU, and the
    # per-step masking is most of the driver's per-step cost.
    _multiplier: torch.Tensor | None = field(default=None, repr=False)
    _multiplier_of: torch.Tensor | None = field(default=None, repr=False)

    @property
    def multiplier(self) -> torch.Tensor:
        if self._multiplier_of is not self.mask:
            self._multiplier = self.mask.to(self.weight.dtype)
            self._multiplier_of = self.mask
        return self._multiplier

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def numel(self) -> int:
        """Entries of the whole weight (a sharded layer's mask holds only its rows)."""
        return self.mask.numel()

    @property
    def active_count(self) -> int:
        return count_true(self.mask)

    @property
    def ever_active_count(self) -> int:
        return count_true(self.ever_active)

    @property
    def density(self) -> float:
        return self.active_count / self.numel


@dataclass
class LayerChange:
    """Net change of one layer at one rewire, as plain data for recorders and streams."""

    layer: str
    step: int
    added: torch.Tensor  # (A,) int64 sorted flat indices, on the CPU
    removed: torch.Tensor  # (R,) int64 sorted flat indices, on the CPU
    active_count: int
    numel: int
    # |w| quantiles of kept / dropped / grown (analytics.rewire_magnitudes); computed only
    # while someone listens (a recorder), None for reported flips (Deep R)
    weights: dict | None = None


def default_init_bound(weight: torch.Tensor) -> float:
    """Bound of nn.Linear / nn.ConvNd's default init: kaiming_uniform(a=√5) → 1/√fan_in."""
    fan_in = math.prod(weight.shape[1:]) if weight.dim() > 1 else weight.shape[0]
    return 1.0 / math.sqrt(max(1, fan_in))


@torch.no_grad()
def measured_init_bound(weight: torch.Tensor, mask: torch.Tensor) -> float:
    """Bound of the uniform distribution with the standard deviation of the layer's active
    weights as initialised (√3·std), so random regrowth (SET) matches the scale the model
    actually starts from, whatever its init; PyTorch's default bound when that is unknown."""
    active = weight[mask].float()
    spread = float(active.std()) if active.numel() > 1 else 0.0
    return math.sqrt(3.0) * spread if math.isfinite(spread) and spread > 0 \
        else default_init_bound(weight)


@torch.no_grad()
def scale_to_active_fan_in(weight: torch.Tensor, mask: torch.Tensor, output_axis: int = 0) -> None:
    """Sparsity-aware init (Evci et al. 2022, "Gradient Flow in Sparse Neural Networks and
    How Lottery Tickets Win"): multiply each output unit's weights by √(fan_in / active
    fan_in), so a unit's pre-activation has the variance the dense init gave it.

    Without it a layer at density d shrinks the signal by √d: at the dashboard's default
    density 0.1 every sparse method sat at chance on digits for 5 epochs (bench/defaults_sweep.py).
    """
    rows = rows_view(mask, output_axis)  # (out, fan_in)
    active_fan_in = rows.sum(1).clamp_(min=1).to(torch.float32)  # (out,)
    scale = (rows.shape[1] / active_fan_in).sqrt_()  # (out,)
    shape = [1] * weight.dim()
    shape[output_axis] = -1
    weight.mul_(scale.to(weight.dtype).view(shape))


def random_mask(shape: tuple[int, ...], density: float, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """Exactly round(density · numel) active positions (at least one), uniformly at random."""
    numel = math.prod(shape)
    active = min(numel, max(1, round(density * numel)))
    order = torch.randperm(numel, generator=generator, device=generator.device)[:active]
    mask = torch.zeros(numel, dtype=torch.bool, device=generator.device)
    mask[order] = True
    return mask.view(shape).to(device)
