"""The sparse-training driver: wraps any model and its optimizer and keeps them sparse.

Masked weights are kept exactly zero in the parameter itself (no `weight * mask` in the
forward pass), so `weight.grad` after backward *is* the dense gradient RigL needs. The driver
copies that gradient only on steps where a rewire is due, then masks the gradient so the
optimizer's state never grows at inactive positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from dst_core.density import layer_densities
from dst_core.rewire import get_rewirer
from dst_core.schedules import RewireSchedule

BASELINES = ("dense", "static")


@dataclass
class MaskedLayer:
    """One sparsified weight (a weight shared by several modules appears once)."""

    name: str
    weight: nn.Parameter
    mask: torch.Tensor  # bool, weight's shape
    ever_active: torch.Tensor  # bool, weight's shape: union of every mask so far (ITOP)
    init_bound: float  # uniform bound of the layer's default init, for random regrowth

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def active_count(self) -> int:
        return int(self.mask.sum())

    @property
    def density(self) -> float:
        return self.active_count / self.mask.numel()


@dataclass
class LayerChange:
    """Net change of one layer at one rewire, as plain data for recorders and streams."""

    layer: str
    step: int
    added: torch.Tensor  # (A,) int64 sorted flat indices, on the CPU
    removed: torch.Tensor  # (R,) int64 sorted flat indices, on the CPU
    active_count: int
    numel: int


def _default_init_bound(weight: torch.Tensor) -> float:
    # nn.Linear / nn.Conv2d reset_parameters: kaiming_uniform(a=√5) → bound = 1/√fan_in.
    fan_in = math.prod(weight.shape[1:]) if weight.dim() > 1 else weight.shape[0]
    return 1.0 / math.sqrt(max(1, fan_in))


def find_prunable(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    dense_first_last: bool = False,
) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every Linear/Conv2d weight, each parameter once, in module order."""
    include = list(include or [])
    exclude = list(exclude or [])
    found: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        weight = module.weight
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        found.append((f"{name}.weight" if name else "weight", weight))
    if dense_first_last and len(found) >= 2:
        found = found[1:-1]
    if include:
        found = [(n, w) for n, w in found if any(pattern in n for pattern in include)]
    if exclude:
        found = [(n, w) for n, w in found if not any(pattern in n for pattern in exclude)]
    return found


def random_mask(shape: tuple[int, ...], density: float, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """Exactly round(density · numel) active positions, uniformly at random."""
    numel = math.prod(shape)
    active = min(numel, max(1, round(density * numel)))
    order = torch.randperm(numel, generator=generator, device=generator.device)[:active]
    mask = torch.zeros(numel, dtype=torch.bool, device=generator.device)
    mask[order] = True
    return mask.view(shape).to(device)


class SparseDriver:
    """Keeps a model sparse and rewires it on schedule.

    Use it in place of `optimizer.step()`:

        driver = SparseDriver(model, optimizer, method="rigl", density=0.1, total_steps=n)
        loss.backward(); driver.step(); optimizer.zero_grad()
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        method: str = "set",
        density: float = 0.1,
        distribution: str = "uniform",
        total_steps: int,
        drop_fraction: float | None = None,
        schedule: str | None = None,
        interval_steps: int | None = None,
        end_fraction: float | None = None,
        steps_per_epoch: int | None = None,
        temperature: float = 1.0,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        dense_first_last: bool = False,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.method = method
        self.temperature = temperature
        self.step_count = 0
        self.listeners: list[Callable[[list[LayerChange]], None]] = []
        self.rewirer = None if method in BASELINES else get_rewirer(method)
        defaults = getattr(self.rewirer, "defaults", {})
        if interval_steps is None:
            per_epoch = defaults.get("interval_steps") == "epoch"
            interval_steps = (steps_per_epoch or 100) if per_epoch else defaults.get(
                "interval_steps", 100)
        self.schedule = RewireSchedule(
            drop_fraction=drop_fraction if drop_fraction is not None else defaults.get(
                "drop_fraction", 0.3),
            kind=schedule or defaults.get("schedule", "constant"),
            interval_steps=int(interval_steps),
            end_fraction=end_fraction if end_fraction is not None else defaults.get(
                "end_fraction", 1.0),
            total_steps=max(1, int(total_steps)),
        )
        prunable = find_prunable(model, include, exclude, dense_first_last)
        if method == "dense":
            density = 1.0
        densities = layer_densities([tuple(w.shape) for _, w in prunable], density, distribution)
        device = prunable[0][1].device if prunable else torch.device("cpu")
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.layers: list[MaskedLayer] = []
        for (name, weight), layer_density in zip(prunable, densities, strict=True):
            mask = random_mask(tuple(weight.shape), layer_density, self.generator, weight.device)
            layer = MaskedLayer(name, weight, mask, mask.clone(), _default_init_bound(weight))
            self.layers.append(layer)
        self.apply_masks()

    # ---- per step -------------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        for layer in self.layers:
            layer.weight.mul_(layer.mask)

    def rewire_due(self) -> bool:
        """Whether the step about to be taken ends with a rewire."""
        return self.rewirer is not None and self.schedule.is_due(self.step_count + 1)

    def step(self) -> list[LayerChange]:
        """optimizer.step() with masks kept, then a rewire if one is due; returns its changes."""
        due = self.rewire_due()
        dense_grads = None
        if due and self.rewirer.needs_grad:
            dense_grads = [
                layer.weight.grad.detach().clone() if layer.weight.grad is not None else None
                for layer in self.layers
            ]
        with torch.no_grad():
            for layer in self.layers:
                if layer.weight.grad is not None:
                    layer.weight.grad.mul_(layer.mask)
        self.optimizer.step()
        self.apply_masks()
        self.step_count += 1
        if not due:
            return []
        changes = self._rewire(dense_grads)
        for listener in self.listeners:
            listener(changes)
        return changes

    @torch.no_grad()
    def _rewire(self, dense_grads: list[torch.Tensor | None] | None) -> list[LayerChange]:
        fraction = self.schedule.fraction_at(self.step_count)
        changes = []
        for index, layer in enumerate(self.layers):
            grad = dense_grads[index] if dense_grads is not None else None
            if self.rewirer.needs_grad and grad is None:
                grad = torch.zeros_like(layer.weight)
            result = self.rewirer(layer.weight, layer.mask, fraction, grad, self.generator,
                                  self.temperature)
            self._apply_change(layer, result.mask, result.added, result.removed)
            changes.append(LayerChange(
                layer=layer.name,
                step=self.step_count,
                added=result.added.reshape(-1).nonzero().squeeze(1).cpu(),
                removed=result.removed.reshape(-1).nonzero().squeeze(1).cpu(),
                active_count=layer.active_count,
                numel=layer.mask.numel(),
            ))
        return changes

    def _apply_change(self, layer: MaskedLayer, mask: torch.Tensor, added: torch.Tensor,
                      removed: torch.Tensor) -> None:
        weight = layer.weight
        if getattr(self.rewirer, "grow_init", "zero") == "random":
            fresh = torch.empty(weight.shape, device=weight.device, dtype=weight.dtype)
            fresh.uniform_(-layer.init_bound, layer.init_bound, generator=self.generator)
            weight.copy_(torch.where(added, fresh, weight))
        else:
            weight.masked_fill_(added, 0.0)
        weight.masked_fill_(removed, 0.0)
        changed = added | removed
        for value in self.optimizer.state.get(weight, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                value.masked_fill_(changed, 0.0)
        layer.mask = mask
        layer.ever_active |= mask

    # ---- metrics ----------------------------------------------------------------------
    def densities(self) -> dict[str, float]:
        return {layer.name: layer.density for layer in self.layers}

    def global_density(self) -> float:
        total = sum(layer.mask.numel() for layer in self.layers)
        return sum(layer.active_count for layer in self.layers) / max(1, total)

    def itop_rate(self) -> float:
        """In-Time Over-Parameterization: share of all connections ever active (Liu et al. 2021)."""
        total = sum(layer.mask.numel() for layer in self.layers)
        return sum(int(layer.ever_active.sum()) for layer in self.layers) / max(1, total)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step_count": self.step_count,
            "masks": {layer.name: layer.mask.cpu() for layer in self.layers},
            "ever_active": {layer.name: layer.ever_active.cpu() for layer in self.layers},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        for layer in self.layers:
            layer.mask = state["masks"][layer.name].to(layer.weight.device).bool()
            layer.ever_active = state["ever_active"][layer.name].to(layer.weight.device).bool()
        self.generator.set_state(state["generator"])
        self.apply_masks()
