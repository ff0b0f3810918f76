"""The mask-level rewiring API and the one registry of algorithms.

`rewire(method, weight, mask, ...)` is the stable entry point other code relies on
(DESIGN.md, "Interfaces"); algorithms plug in with `register_rewirer` so a user can add one
without editing ours. Every algorithm, baselines and Deep R included, is an `Algorithm` in
`REGISTRY`; the driver only calls its hooks, so no code branches on algorithm names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import torch

from dst_core.selection import count_true, magnitude, rewire_threads, select_mask


@dataclass(frozen=True)
class RewireResult:
    """Outcome of one rewire: the new mask and the *net* changes (disjoint bool tensors).

    A position dropped and regrown in the same rewire is in neither `added` nor `removed`.
    """

    mask: torch.Tensor  # bool, weight's shape
    added: torch.Tensor  # bool, weight's shape: inactive before, active after
    removed: torch.Tensor  # bool, weight's shape: active before, inactive after


class Algorithm:
    """Anything `SparseDriver` can run. The driver calls the two hooks around optimizer.step().

    `defaults` holds the method's published schedule and layer distribution; `None` fields of a
    config take them.
    """

    defaults: ClassVar[dict[str, Any]] = {}
    trains_dense: ClassVar[bool] = False  # every connection active (the dense baseline)
    mask_level: ClassVar[bool] = False  # usable through `rewire()` on a single tensor

    def before_optimizer_step(self, driver: Any, due: bool) -> None:
        """Called after backward, while `weight.grad` still holds the dense gradient."""

    def after_optimizer_step(self, driver: Any, due: bool) -> list:
        """Called after optimizer.step(); returns the LayerChanges to report (may be empty)."""
        return []


class Rewirer(Algorithm):
    """Drop-then-grow with an exact count: subclasses give the drop and the grow scores.

    The base keeps each layer's active count: it drops `int(f · k)` active positions (`drop`:
    the smallest |w|), then grows the same number among every position not kept (highest
    `grow_score`; RigL's candidate set, so a just-dropped position may come back and then is
    a net non-change). Ties go to the lower flat index.
    """

    mask_level = True
    needs_grad: ClassVar[bool] = False  # growth reads a dense gradient (or its momentum)
    redistributes: ClassVar[bool] = False  # moves connections between layers (SNFS)
    grow_init: ClassVar[str] = "zero"  # "zero" or "random" (uniform at the layer's init bound)

    # ---- what a subclass supplies -----------------------------------------------------
    def drop(self, weight: torch.Tensor, mask: torch.Tensor, drop_fraction: float) -> torch.Tensor:
        """A fresh bool tensor (mask's shape) of the active positions to drop: the `int(f·k)`
        smallest |w|. Fresh because the rewire writes its results into it."""
        count = int(drop_fraction * count_true(mask))
        scores = magnitude(weight, "scores")  # (numel,) float32
        return select_mask(scores, count, eligible=mask, largest=False).view(mask.shape)

    def grow_score(
        self,
        weight: torch.Tensor,
        kept: torch.Tensor,
        grad: torch.Tensor | None,
        generator: torch.Generator | None,
        temperature: float,
    ) -> torch.Tensor:
        """(numel,) float32 scores; the highest positions outside `kept` grow."""
        raise NotImplementedError

    def grow(
        self,
        weight: torch.Tensor,
        kept: torch.Tensor,
        count: int,
        grad: torch.Tensor | None,
        generator: torch.Generator | None,
        temperature: float,
    ) -> torch.Tensor:
        """A fresh bool tensor (weight's shape) of exactly `count` positions outside `kept` to
        grow. Fresh because the rewire writes its results into it."""
        scores = self.grow_score(weight, kept, grad, generator, temperature)  # (numel,) float32
        return select_mask(scores, count, excluded=kept).view(weight.shape)

    # ---- the shared machinery ----------------------------------------------------------
    def __call__(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        drop_fraction: float,
        grad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        grow_count: int | None = None,
    ) -> RewireResult:
        dropped = self.drop(weight, mask, drop_fraction)
        kept = torch.gt(mask, dropped)  # mask & ~dropped in one pass
        count = count_true(dropped) if grow_count is None else grow_count
        grown = self.grow(weight, kept, count, grad, generator, temperature)
        return net_result(mask, kept, dropped, grown)

    # ---- driver hooks: periodic rewiring ---------------------------------------------
    def before_optimizer_step(self, driver: Any, due: bool) -> None:
        if due and self.needs_grad:
            # weight.grad is the dense gradient: masked weights are exact zeros in the
            # parameter, not multiplied by the mask in forward. Copied only when needed.
            driver.scratch["grads"] = [_dense_grad(layer) for layer in driver.layers]

    def after_optimizer_step(self, driver: Any, due: bool) -> list:
        if not due:
            return []
        with rewire_threads(driver.layers[0].weight.device):
            return self._rewire_layers(driver)

    def _rewire_layers(self, driver: Any) -> list:
        fraction = driver.schedule.fraction_at(driver.step_count)
        grads = driver.scratch.pop("grads", [None] * len(driver.layers))
        # A dense layer can only regrow what it drops: skip the work unless counts move.
        drops = [self.drop(layer.weight.detach(), layer.mask, fraction)
                 if self.redistributes or layer.active_count < layer.mask.numel()
                 else torch.zeros_like(layer.mask)
                 for layer in driver.layers]
        counts = self.grow_counts(driver, [count_true(dropped) for dropped in drops], grads)
        changes = []
        for layer, dropped, grad, count in zip(driver.layers, drops, grads, counts, strict=True):
            kept = torch.gt(layer.mask, dropped)
            grown = self.grow(layer.weight.detach(), kept, count, grad, driver.generator,
                              driver.temperature)
            result = net_result(layer.mask, kept, dropped, grown)
            changes.append(driver.apply_change(layer, result.mask, result.added, result.removed,
                                               self.grow_init))
        return changes

    def grow_counts(self, driver: Any, drop_counts: list[int], grads: list) -> list[int]:
        """How many connections each layer regrows, given how many each dropped: by default
        exactly what it dropped."""
        return drop_counts


def net_result(mask: torch.Tensor, kept: torch.Tensor, dropped: torch.Tensor,
               grown: torch.Tensor) -> RewireResult:
    """New mask and net changes from the dropped and grown masks. Growth lies outside
    `kept`, so a position both dropped and grown was regrown: neither added nor removed.

    `kept`, `dropped` and `grown` are this rewire's own fresh tensors, so the results are
    written into them: a fresh 4096² bool tensor costs ~3 ms of page faults on the CPU, more
    than the pass that fills it.
    """
    new_mask = kept.bitwise_or_(grown)
    removed = torch.gt(dropped, grown, out=dropped)  # dropped & ~grown
    added = torch.gt(grown, mask, out=grown)  # grown & ~mask
    return RewireResult(mask=new_mask, added=added, removed=removed)


def _dense_grad(layer: Any) -> torch.Tensor:
    grad = layer.weight.grad
    return grad.detach().clone() if grad is not None else torch.zeros_like(layer.weight)


REGISTRY: dict[str, Algorithm] = {}


def register_rewirer(name: str, algorithm: Algorithm | type[Algorithm]) -> None:
    """Make `name` available to `rewire()`, the driver, the CLI and the dashboard."""
    if not name or not isinstance(name, str):
        raise ValueError("name: a rewirer needs a non-empty string name")
    instance = algorithm() if isinstance(algorithm, type) else algorithm
    if not isinstance(instance, Algorithm):
        raise ValueError("algorithm: must be a dst_core.rewire.Algorithm (e.g. a Rewirer)")
    REGISTRY[name] = instance


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm called `name`; ValueError listing the known ones otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"method: unknown method {name!r}; known: {known}") from None


get_rewirer = get_algorithm  # the foundation's name


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
    rewirer = get_algorithm(method)
    if not isinstance(rewirer, Rewirer):
        mask_level = ", ".join(sorted(n for n, a in REGISTRY.items() if isinstance(a, Rewirer)))
        raise ValueError(f"method: {method!r} is not a mask-level rewirer (it runs inside "
                         f"SparseDriver); mask-level: {mask_level}")
    if not isinstance(weight, torch.Tensor):
        raise ValueError("weight: expected a torch.Tensor")
    if not isinstance(mask, torch.Tensor):
        raise ValueError("mask: expected a torch.Tensor")
    if mask.shape != weight.shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} differs from weight {tuple(weight.shape)}")
    if mask.device != weight.device:
        raise ValueError(f"mask: on {mask.device}, weight on {weight.device}")
    if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, Real) \
            or not 0.0 <= float(drop_fraction) <= 1.0:
        raise ValueError(f"drop_fraction: must lie in [0, 1], got {drop_fraction!r}")
    if rewirer.needs_grad and grad is None:
        raise ValueError(f"grad: method {method!r} grows by gradient and needs `grad`")
    if grad is not None:
        if not isinstance(grad, torch.Tensor) or grad.shape != weight.shape:
            shape = tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__
            raise ValueError(f"grad: shape {shape} differs from weight {tuple(weight.shape)}")
        if grad.device != weight.device:
            raise ValueError(f"grad: on {grad.device}, weight on {weight.device}")
    if generator is not None and (not isinstance(generator, torch.Generator)
                                  or generator.device.type != weight.device.type):
        raise ValueError(f"generator: needs a torch.Generator on {weight.device.type}")
    if isinstance(temperature, bool) or not isinstance(temperature, Real) \
            or not 0 < float(temperature) < math.inf:
        raise ValueError(f"temperature: must be a finite number > 0, got {temperature!r}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask: must be bool or hold only 0 and 1")
        mask = mask != 0
    with torch.no_grad(), rewire_threads(weight.device):
        try:
            return rewirer(weight.detach(), mask, float(drop_fraction),
                           grad.detach() if grad is not None else None, generator,
                           float(temperature))
        except ValueError as error:
            # Selection ran short: NaN scores are never chosen, so the count cannot be met.
            # Checked only on failure, so a healthy rewire pays no extra pass for it.
            for argument, tensor in (("weight", weight), ("grad", grad)):
                if tensor is not None and tensor.is_floating_point() \
                        and not bool(torch.isfinite(tensor).all()):
                    raise ValueError(f"{argument}: holds NaN or infinite values; the exact "
                                     "count cannot be selected") from error
            raise
