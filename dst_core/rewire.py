"""The mask-level rewiring API and the one registry of methods.

`rewire(method, weight, mask, ...)` is the stable entry point other code relies on
(the driver and user code); methods plug in with `register_rewirer` so a user can add one
without editing ours. Every method, baselines and Deep R included, is registered in
`REGISTRY` as an `Algorithm` (the drop-then-grow ones as a `Rewirer`); the driver only calls
its hooks, so no code branches on method names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import torch

from dst_core.method_options import MethodOptions, with_defaults
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

    `defaults` holds the method's published schedule, layer distribution and options
    (`dst_core.method_options.MethodOptions`); `None` options of a config or driver take them.
    """

    defaults: ClassVar[MethodOptions] = MethodOptions()
    trains_dense: ClassVar[bool] = False  # every connection active (the dense baseline)
    mask_level: ClassVar[bool] = False  # usable through `rewire()` on a single tensor
    supports_global: ClassVar[bool] = False  # global_selection means something for it
    supports_structure: ClassVar[bool] = False  # can keep an N:M constraint
    # Leaves non-zero optimizer state at inactive positions (SNFS's dense moments): the
    # driver must then re-zero inactive weights after every optimizer step.
    keeps_inactive_state: ClassVar[bool] = False
    # Option scopes (method_options.OPTION_SCOPES) only this method and its subclasses read,
    # beyond what its hooks say: Deep R's temperature and l1, SRigL's ablation threshold.
    option_scopes: ClassVar[frozenset[str]] = frozenset()

    def dense_gradient_wanted(self, driver: Any, due: bool) -> bool:
        """Whether the driver keeps this step's dense gradient aside (before masking
        `.grad`): only the steps whose rewire reads it, so other steps pay nothing."""
        return False

    def before_optimizer_step(self, driver: Any, due: bool) -> None:
        """Called after backward; `.grad` is masked, `driver.dense_grad(layer)` holds the
        dense gradient where `dense_gradient_wanted` asked for it."""

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
    supports_global = True
    supports_structure = True
    needs_grad: ClassVar[bool] = False  # growth reads a dense gradient (or its momentum)
    grow_init: ClassVar[str] = "zero"  # "zero" or "random" (uniform at the layer's init bound)
    random_growth: ClassVar[bool] = False  # grows uniformly at random (no grow_score)

    # ---- what a subclass supplies -----------------------------------------------------
    def drop_score(self, weight: torch.Tensor, noise: float = 0.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """(numel,) float32 drop scores, lowest dropped: |w|, plus N(0, noise²) when
        `noise` > 0 (rigl's "slight bit of randomness", std 1e-5, breaks ties at random)."""
        scores = magnitude(weight, "scores")  # (numel,) float32
        if noise > 0:
            scores = scores + noise * torch.randn(scores.shape, generator=generator,
                                                  device=scores.device)
        return scores

    def drop(self, weight: torch.Tensor, mask: torch.Tensor, drop_fraction: float, *,
             noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh bool tensor (mask's shape) of the active positions to drop: the `int(f·k)`
        lowest drop scores. Fresh because the rewire writes its results into it."""
        count = int(drop_fraction * count_true(mask))
        scores = self.drop_score(weight, noise, generator)
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
        structure: Any = None,
    ) -> torch.Tensor:
        """A fresh bool tensor (weight's shape) of exactly `count` positions outside `kept` to
        grow, within `structure` (an N:M constraint) when given. Fresh because the rewire
        writes its results into it."""
        if self.random_growth:
            scores = torch.rand(weight.numel(), generator=generator, device=weight.device)
        else:
            scores = self.grow_score(weight, kept, grad, generator, temperature)  # (numel,)
        eligible = structure.eligible(scores, kept).reshape(-1) if structure is not None else None
        return select_mask(scores, count, excluded=kept, eligible=eligible).view(weight.shape)

    # ---- the shared machinery ----------------------------------------------------------
    def drop_and_grow(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        drop_fraction: float,
        grad: torch.Tensor | None,
        generator: torch.Generator | None,
        temperature: float,
        *,
        noise: float = 0.0,
        structure: Any = None,
        grow_count: int | None = None,
    ) -> RewireResult:
        """One layer's rewire, the one implementation `rewire()` and the driver both run: drop
        (with drop-score `noise`), then grow as many (or `grow_count`) within `structure`."""
        dropped = self.drop(weight, mask, drop_fraction, noise=noise, generator=generator)
        count = count_true(dropped) if grow_count is None else grow_count
        return self.regrow(weight, mask, dropped, count, grad, generator, temperature, structure)

    def regrow(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        dropped: torch.Tensor,
        count: int,
        grad: torch.Tensor | None,
        generator: torch.Generator | None,
        temperature: float,
        structure: Any = None,
    ) -> RewireResult:
        """Grow `count` positions outside what `mask` keeps after `dropped` (a fresh tensor the
        result is written into), and the net result."""
        kept = torch.gt(mask, dropped)  # mask & ~dropped in one pass
        grown = self.grow(weight, kept, count, grad, generator, temperature, structure)
        return net_result(mask, kept, dropped, grown)

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
        # The mask-level rewire takes no drop noise and no structure: `rewire()` has neither.
        return self.drop_and_grow(weight, mask, drop_fraction, grad, generator, temperature,
                                  grow_count=grow_count)

    # ---- driver hooks: periodic rewiring ---------------------------------------------
    def dense_gradient_wanted(self, driver: Any, due: bool) -> bool:
        return due and self.needs_grad

    def after_optimizer_step(self, driver: Any, due: bool) -> list:
        if not due:
            return []
        with rewire_threads(driver.layers[0].weight.device):
            if driver.options.global_selection:
                return self._rewire_global(driver)
            return self._rewire_layers(driver)

    def _grads(self, driver: Any) -> list:
        return [driver.dense_grad(layer) if self.needs_grad else None for layer in driver.layers]

    def _rewire_layers(self, driver: Any) -> list:
        """Each layer drops and regrows its own `int(f · k)`: counts per layer stay exact."""
        options = driver.options
        fraction = driver.schedule.fraction_at(driver.step_count)
        changes = []
        for layer, grad in zip(driver.layers, self._grads(driver), strict=True):
            if layer.active_count >= layer.mask.numel():
                continue  # a dense layer can only regrow what it drops
            result = self.drop_and_grow(layer.weight.detach(), layer.mask, fraction, grad,
                                        driver.generator, driver.temperature,
                                        noise=options.drop_noise, structure=layer.structure)
            changes.append(driver.apply_change(layer, result.mask, result.added, result.removed,
                                               self.grow_init))
        return changes

    def _rewire_global(self, driver: Any) -> list:
        """One ranking across layers (rigl's global magnitude / gradient selection): the
        `int(f · K)` lowest drop scores of all K active weights go, as many highest grow
        scores come back; per-layer counts move, the total is exact."""
        options, layers = driver.options, driver.layers
        fraction = driver.schedule.fraction_at(driver.step_count)
        sizes = [layer.mask.numel() for layer in layers]
        device = layers[0].weight.device
        masks = torch.cat([layer.mask.reshape(-1) for layer in layers])  # (N,)
        scores = torch.empty(sum(sizes), device=device)  # (N,) filled layer by layer
        for layer, part in zip(layers, scores.split(sizes), strict=True):
            # Copied at once: drop_score may return the shared workspace buffer.
            part.copy_(self.drop_score(layer.weight.detach(), options.drop_noise,
                                       driver.generator))
        count = int(fraction * count_true(masks))
        dropped = select_mask(scores, count, eligible=masks, largest=False)  # (N,)
        kept = torch.gt(masks, dropped)
        eligible = torch.ones_like(masks) if any(layer.structure for layer in layers) else None
        for layer, grad, part, kept_part, offset in zip(
                layers, self._grads(driver), scores.split(sizes), kept.split(sizes),
                _offsets(sizes), strict=True):
            weight = layer.weight.detach()
            kept_layer = kept_part.view(layer.mask.shape)
            if self.random_growth:
                part.uniform_(generator=driver.generator)
            else:
                part.copy_(self.grow_score(weight, kept_layer, grad, driver.generator,
                                           driver.temperature))
            if eligible is not None and layer.structure is not None:
                eligible[offset:offset + part.numel()] = \
                    layer.structure.eligible(part, kept_layer).reshape(-1)
        grown = select_mask(scores, count, excluded=kept, eligible=eligible)  # (N,)
        changes = []
        for layer, old, kept_part, dropped_part, grown_part in zip(
                layers, masks.split(sizes), kept.split(sizes), dropped.split(sizes),
                grown.split(sizes), strict=True):
            shape = layer.mask.shape
            result = net_result(old.view(shape), kept_part.view(shape).clone(),
                                dropped_part.view(shape).clone(), grown_part.view(shape).clone())
            changes.append(driver.apply_change(layer, result.mask, result.added, result.removed,
                                               self.grow_init))
        return changes


def _offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:index]) for index in range(len(sizes))]


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


def option_applies(scope: str, algorithm: type) -> bool:
    """Whether options of `scope` (method_options.OPTION_SCOPES) mean something for the
    method of class `algorithm`: by what the class does, so a user's method that subclasses
    a built-in gets its parent's options (the form shows them, the schema's x-methods)."""
    rewirer = issubclass(algorithm, Rewirer)
    tests = {
        "every": True,
        "sparse": not algorithm.trains_dense,
        "mask_changing": algorithm.after_optimizer_step is not Algorithm.after_optimizer_step,
        "drop_and_grow": rewirer,
        # Rewirers ranking drops by the base |w| score (SET ranks each sign apart, SNFS and
        # SRigL drop by their own rules).
        "noisy_drop": rewirer and algorithm.drop is Rewirer.drop
        and algorithm.after_optimizer_step is Rewirer.after_optimizer_step,
        "global_selection": algorithm.supports_global,
        "structured": algorithm.supports_structure,
    }
    if scope in tests:
        return bool(tests[scope])
    return scope in algorithm.option_scopes


REGISTRY: dict[str, Algorithm] = {}


def register_rewirer(name: str, algorithm: Algorithm | type[Algorithm]) -> None:
    """Make `name` available to `rewire()`, the driver, the CLI and the dashboard."""
    if not name or not isinstance(name, str):
        raise ValueError("name: a method needs a non-empty string name")
    instance = algorithm() if isinstance(algorithm, type) else algorithm
    if not isinstance(instance, Algorithm):
        raise ValueError("algorithm: must be a dst_core.rewire.Algorithm (e.g. a Rewirer)")
    if isinstance(instance.defaults, dict):  # defaults written as a plain dict: typed here
        instance.defaults = with_defaults(**instance.defaults)
    REGISTRY[name] = instance


def get_algorithm(name: str) -> Algorithm:
    """The `Algorithm` registered as method `name`; ValueError listing the known ones otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"method: unknown method {name!r}; known: {known}") from None


def mask_level_methods() -> list[str]:
    """Registered methods usable through `rewire()` on one tensor (tests iterate these)."""
    return sorted(name for name, algorithm in REGISTRY.items()
                  if isinstance(algorithm, Rewirer) and algorithm.mask_level)


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
    if not isinstance(rewirer, Rewirer) or not rewirer.mask_level:
        mask_level = ", ".join(mask_level_methods())
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
