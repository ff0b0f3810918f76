"""The mask-level rewiring API and the one registry of algorithms.

`rewire(method, weight, mask, ...)` is the stable entry point other code relies on
(DESIGN.md, "Interfaces"); algorithms plug in with `register_rewirer` so a user can add one
without editing ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RewireResult:
    """Outcome of one rewire: the new mask and the *net* changes (disjoint bool tensors).

    A position dropped and regrown in the same rewire is in neither `added` nor `removed`.
    """

    mask: torch.Tensor  # bool, weight's shape
    added: torch.Tensor  # bool, weight's shape: inactive before, active after
    removed: torch.Tensor  # bool, weight's shape: active before, inactive after


class Rewirer:
    """Drop-then-grow with an exact count: subclasses say which positions drop and grow.

    The base keeps each layer's active count: it drops `drop_count` active positions, then
    grows the same number among every position not kept (RigL's candidate set, so a
    just-dropped position may come back).
    """

    needs_grad: bool = False

    def drop(self, weight: torch.Tensor, mask: torch.Tensor, drop_fraction: float) -> torch.Tensor:
        """Bool tensor of the active positions to drop."""
        raise NotImplementedError

    def grow(
        self,
        weight: torch.Tensor,
        candidates: torch.Tensor,
        count: int,
        grad: torch.Tensor | None,
        generator: torch.Generator | None,
        temperature: float,
    ) -> torch.Tensor:
        """Bool tensor of exactly `count` candidate positions to activate."""
        raise NotImplementedError

    def __call__(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        drop_fraction: float,
        grad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> RewireResult:
        dropped = self.drop(weight, mask, drop_fraction)
        kept = mask & ~dropped
        grow_count = int(dropped.sum())
        grown = self.grow(weight, ~kept, grow_count, grad, generator, temperature)
        new_mask = kept | grown
        return RewireResult(mask=new_mask, added=new_mask & ~mask, removed=mask & ~new_mask)


REGISTRY: dict[str, Rewirer] = {}


def register_rewirer(name: str, rewirer: Rewirer | type[Rewirer]) -> None:
    """Make `name` available to `rewire()`, the driver, the CLI and the dashboard."""
    if not name or not isinstance(name, str):
        raise ValueError("name: a rewirer needs a non-empty string name")
    REGISTRY[name] = rewirer() if isinstance(rewirer, type) else rewirer


def get_rewirer(name: str) -> Rewirer:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"method: unknown rewiring method {name!r}; known: {known}") from None


def rewire(
    method: str,
    weight: torch.Tensor,
    mask: torch.Tensor,
    *,
    drop_fraction: float,
    grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> RewireResult:
    """Rewire one layer's mask; never modifies its inputs. `mask` may be bool or 0/1."""
    rewirer = get_rewirer(method)
    if not isinstance(weight, torch.Tensor):
        raise ValueError("weight: expected a torch.Tensor")
    if not isinstance(mask, torch.Tensor):
        raise ValueError("mask: expected a torch.Tensor")
    if mask.shape != weight.shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} differs from weight {tuple(weight.shape)}")
    if not isinstance(drop_fraction, (int, float)) or not 0.0 <= float(drop_fraction) <= 1.0:
        raise ValueError(f"drop_fraction: must lie in [0, 1], got {drop_fraction!r}")
    if rewirer.needs_grad:
        if grad is None:
            raise ValueError(f"grad: method {method!r} grows by gradient and needs `grad`")
    if grad is not None and grad.shape != weight.shape:
        raise ValueError(f"grad: shape {tuple(grad.shape)} differs from weight {tuple(weight.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature!r}")
    bool_mask = mask.bool() if mask.dtype != torch.bool else mask
    with torch.no_grad():
        return rewirer(
            weight.detach(), bool_mask, float(drop_fraction), grad, generator, float(temperature)
        )
