"""The sparse-training driver: wraps any model and its optimizer and keeps them sparse.

Masked weights are kept exactly zero in the parameter itself (no `weight * mask` in the
forward pass), so the gradient backward computes *is* the dense gradient RigL needs.
Gradients are masked in place by a post-accumulate hook right after backward, so whatever
runs between `backward()` and `step()` (clipping, LARS/LAMB trust ratios, logging) sees the
gradients the reference implementations pass to their optimizers; the dense gradient a
rewire reads is copied aside by the same hook, only on the steps that need it. After
`optimizer.step()` the weights are multiplied by their mask (one pass per layer), which keeps
inactive weights exactly zero under any optimizer; it is skipped for SGD/Adam/AdamW, whose
update of a zero weight with zero gradient and zero state is exactly zero
(`mask_weights_each_step`). The method's `Algorithm` (`dst_core.rewire.REGISTRY`) decides the rest
through two hooks.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dst_core import distributed, sharded
from dst_core.analytics import rewire_magnitudes, sample_stride
from dst_core.density import layer_densities
from dst_core.masked_layer import (
    LayerChange,
    MaskedLayer,
    measured_init_bound,
    random_mask,
    scale_to_active_fan_in,
)
from dst_core.method_options import (
    KEYWORDS,
    OPTIONS,
    ResolvedSettings,
    check_settings,
    check_type,
    resolve_settings,
)
from dst_core.prunable import LeftDense, Patterns, PrunablePlan, plan_prunable
from dst_core.rewire import get_algorithm
from dst_core.schedules import RewireSchedule
from dst_core.selection import count_true, flat_nonzero
from dst_core.structure import NMStructure

# Optimizers whose update is exactly 0 where the gradient and the state are 0 (weight decay
# of a zero weight included): with masked gradients and a rewire that zeroes the state of
# changed entries, they never move an inactive weight, so the per-step re-masking pass is
# skipped for them (measured: 0.89× → see bench/train_overhead.py). Others keep it.
SELF_MASKING_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


LOG = logging.getLogger("sparsescope.driver")


def _plain_patterns(patterns: Patterns) -> list[str] | dict[str, int | None]:
    """include= / exclude= as plain data for the run's settings (compiled expressions as
    their text; a mapping keeps its output axes)."""
    if patterns is None:
        return []
    if isinstance(patterns, dict):
        return {getattr(key, "pattern", key): axis for key, axis in patterns.items()}
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    return [getattr(pattern, "pattern", pattern) for pattern in patterns]


def _dense_reasons(left: list[LeftDense], limit: int = 6) -> str:
    """'; left dense: a (why), b (why), …' for an error or a log line."""
    if not left:
        return ""
    shown = ", ".join(f"{entry.name} ({entry.reason})" for entry in left[:limit])
    more = f", and {len(left) - limit} more" if len(left) > limit else ""
    return f"; left dense: {shown}{more}"


class SparseDriver:
    """Keeps a model sparse and rewires it on schedule; call `.step()` instead of
    `optimizer.step()`:

        driver = SparseDriver(model, optimizer, method="rigl", density=0.1, total_steps=n)
        loss.backward(); driver.step(); optimizer.zero_grad()

    The method's options (`drop_fraction`, `schedule`, `interval_steps`, ... : every keyword
    of `dst_core.method_options.MethodOptions`, declared there once) are keywords too; left
    at None they take the method's published defaults (`REGISTRY[method].defaults`, resolved
    by `dst_core.method_options.resolve_settings`; `settings()` reports the result).
    After `backward()` every sparsified weight's `.grad` is already masked (a post-accumulate
    hook), so clipping, logging and the optimizer see what the reference implementations
    see; on the steps whose rewire reads the dense gradient (RigL's) the hook keeps a copy
    aside first (`dense_grad(layer)`), never in `.grad`.
    `sparse_init=True` rescales each sparse layer's initial weights to its active fan-in
    (`scale_to_active_fan_in`); the default False keeps the model's weights exactly as given.
    Under an initialised `torch.distributed` process group (DDP) every rank's masks and
    weights stay identical by construction (`dst_core.distributed`: rank 0's initial state,
    all-reduced dense gradients, per-step seeds); every `verify_every` rewires an
    all-gathered mask hash checks it (0: never) and raises `MaskDivergenceError`.
    On FSDP2-sharded (`fully_shard`, DTensor) weights each mask holds its weight's rows only
    and rewires select exactly per whole layer across the shards (`dst_core.sharded`).
    Raises ValueError naming the argument on bad input, including a model with no Linear/Conv
    weight and an optimizer that does not hold every sparsified weight.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        method: str = "set",
        density: float = 0.1,
        total_steps: int,
        steps_per_epoch: int | None = None,
        include: Patterns = None,
        exclude: Patterns = None,
        dense_first_last: bool = False,
        sparse_init: bool = False,
        seed: int = 0,
        verify_every: int = 1,
        **method_options: Any,  # KEYWORDS; the generated signature below lists them
    ) -> None:
        for name in method_options:
            if name not in KEYWORDS:
                raise TypeError(f"SparseDriver.__init__() got an unexpected keyword argument "
                                f"{name!r}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer: expected a torch.optim.Optimizer, got "
                             f"{type(optimizer).__name__}")
        for argument, value, kind in (
                ("density", density, float), ("steps_per_epoch", steps_per_epoch, int),
                ("seed", seed, int), ("verify_every", verify_every, int),
                ("dense_first_last", dense_first_last, bool), ("sparse_init", sparse_init, bool),
                *((name, value, OPTIONS[name].kind) for name, value in method_options.items())):
            check_type(argument, value, kind)
        self.model = model
        self.optimizer = optimizer
        self.method = method
        self.algorithm = get_algorithm(method)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps: must be an int >= 1, got {total_steps!r}")
        if verify_every < 0:
            raise ValueError(f"verify_every: must be >= 0 (0: never), got {verify_every!r}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch: must be >= 1, got {steps_per_epoch!r}")
        options = resolve_settings(method, self.algorithm.defaults, method_options,
                                   total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        self._check_options(options)
        self.options = options
        self.temperature = float(options.temperature)
        self.l1 = float(options.l1)
        self.step_count = 0
        self.skipped_update = False  # whether the last step left the optimizer out (rigl)
        self.listeners: list[Callable[[list[LayerChange]], None]] = []
        self.scratch: dict[str, Any] = {}  # hand-over between an algorithm's two hooks
        self.schedule = RewireSchedule(
            drop_fraction=float(options.drop_fraction), kind=options.schedule,
            interval_steps=int(options.interval_steps),
            end_fraction=float(options.end_fraction), total_steps=int(total_steps),
            begin_step=int(options.begin_step),
            min_drop_fraction=float(options.min_drop_fraction))
        self.distribution = options.distribution
        self.dense_first_last = dense_first_last
        self.plan: PrunablePlan = plan_prunable(model, include, exclude, dense_first_last)
        self.include = _plain_patterns(include)
        self.exclude = _plain_patterns(exclude)
        self.sparse_init = sparse_init
        self.seed = seed
        entries = self.plan.layers
        prunable = [(entry.name, entry.weight) for entry in entries]
        if not prunable:
            raise ValueError(
                "model: no Linear, Conv1d/2d/3d, HF Conv1D or attention weight to sparsify"
                + (" matches include/exclude" if include or exclude or dense_first_last else "")
                + _dense_reasons(self.plan.left_dense))
        for name, weight in prunable:
            if isinstance(weight, nn.parameter.UninitializedParameter):
                raise ValueError(f"model: {name} is an uninitialised lazy parameter; run one "
                                 "forward pass before wrapping the model")
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for name, weight in prunable if id(weight) not in optimized]
        if missing:
            raise ValueError(f"optimizer: does not hold the weights of {', '.join(missing)}; "
                             "pass them to the optimizer or leave them out with exclude=[...]")
        if self.algorithm.trains_dense:
            density = 1.0
        densities = layer_densities([tuple(w.shape) for _, w in prunable], density,
                                    self.distribution)
        if options.first_layer_dense and self.distribution == "uniform" and len(densities) > 1:
            densities[0] = 1.0  # rigl's uniform: the input layer stays dense
        self.target_density = float(density)
        structured = options.structure == "n:m"
        device = prunable[0][1].device if prunable else torch.device("cpu")
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.layers: list[MaskedLayer] = []
        # FSDP2 (DTensor weights): masks live with their shards, built and rewired by
        # dst_core.sharded (None for ordinary weights, DDP included).
        self.sharding = sharded.Sharding(self, prunable) \
            if any(sharded.is_sharded(weight) for _, weight in prunable) else None
        if self.sharding is not None:
            self.layers = self.sharding.build_layers(self, entries, densities)
        initial_mask = getattr(self.algorithm, "initial_mask", None)
        for entry, layer_density in (zip(entries, densities, strict=True)
                                     if self.sharding is None else ()):
            name, weight, output_axis = entry.name, entry.weight, entry.output_axis
            shape = tuple(weight.shape)
            layer_structure = (NMStructure(options.n, options.m, output_axis)
                               if structured and layer_density < 1.0 else None)
            if initial_mask is not None and layer_density < 1.0:
                mask = initial_mask(shape, layer_density, self.generator,
                                    output_axis=output_axis).to(weight.device)
            elif layer_structure is not None:
                count = min(math.prod(shape), max(1, round(layer_density * math.prod(shape))))
                mask = layer_structure.random_mask(shape, count, self.generator).to(weight.device)
            else:
                mask = random_mask(shape, layer_density, self.generator, weight.device)
            # Measured before the sparse rescale: a grown connection joins units that already
            # have their inputs, so it starts at the model's own init scale (SET on digits at
            # 95% sparsity, 3 seeds: 95.6% this way, 94.1% at the rescaled scale).
            init_bound = measured_init_bound(weight.detach(), mask)
            if sparse_init and layer_density < 1.0:
                scale_to_active_fan_in(weight.data, mask, output_axis)
            self.layers.append(MaskedLayer(name, weight, mask, mask.clone(), init_bound,
                                           structure=layer_structure, output_axis=output_axis,
                                           kind=entry.kind))
        self.apply_masks()
        setup = getattr(self.algorithm, "setup", None)
        if setup is not None:
            setup(self)
        self._dense_grads: dict[str, torch.Tensor] = {}
        # A dense baseline's masks are all ones: nothing to mask, no pass to pay.
        self._hooks = [] if self.algorithm.trains_dense else [
            layer.weight.register_post_accumulate_grad_hook(self._grad_hook(layer))
            for layer in self.layers]
        self.mask_weights_each_step = not (
            self.algorithm.trains_dense
            or (type(optimizer) in SELF_MASKING_OPTIMIZERS
                and not self.algorithm.keeps_inactive_state))
        # Under torch.distributed: rank 0's masks and weights everywhere, reduced dense
        # gradients, per-step seeds, the mask-hash check (None in a single process).
        self.distributed = distributed.attach(self, verify_every) if self.sharding is None \
            else self.sharding.attach(verify_every)
        LOG.info("%s", self.summary(brief=True))

    def _check_options(self, options: ResolvedSettings) -> None:
        algorithm, method = self.algorithm, self.method
        check_settings(options)  # choices and bounds, as declared
        if options.structure == "n:m":
            NMStructure(options.n, options.m)  # raises naming n or m
            if not algorithm.supports_structure:
                raise ValueError(f"structure: method {method!r} cannot keep an N:M "
                                 "constraint; N:M works with the magnitude and gradient "
                                 "rewirers and static")
        if options.global_selection and not algorithm.supports_global:
            raise ValueError(f"global_selection: method {method!r} has no single cross-layer "
                             "ranking (use set_magnitude, rigl or grad_sample)")

    def settings(self) -> dict[str, Any]:
        """The driver's resolved settings, as plain data: every option (the method's default
        where none was given) and each sparsified layer's name, shape and density. A recorder
        stores this with the run, so a run says what it actually did."""
        options = self.options.as_dict()
        options.pop("lr")  # the optimizer's, not the driver's
        options.update(
            density=self.target_density,
            first_layer_dense=bool(options["first_layer_dense"]
                                   and self.distribution == "uniform"),
            dense_first_last=self.dense_first_last, include=self.include,
            exclude=self.exclude, sparse_init=self.sparse_init, seed=self.seed,
            masked_gradients=True,
            layers=[{"name": layer.name, "shape": list(layer.shape), "density": layer.density}
                    for layer in self.layers])
        if options["structure"] == "unstructured":
            options.pop("n")
            options.pop("m")
        if self.sharding is not None:  # FSDP2: how the layers were split across ranks
            options["sharding"] = self.sharding.describe()
        return options

    def summary(self, brief: bool = False) -> str:
        """What the driver sparsified (name, shape, layout, density) and every ≥ 2-D weight it
        left dense with the reason: a model whose weights hide behind an unfamiliar layer type
        or a tied embedding is visible at construction, not after a run."""
        weights = sum(layer.weight.numel() for layer in self.layers)
        active = sum(layer.active_count for layer in self.layers)
        head = (f"SparseDriver({self.method}, density {self.target_density:g}, "
                f"{self.distribution}): {len(self.layers)} layers sparsified, {active:,} of "
                f"{weights:,} weights active; {len(self.plan.left_dense)} ≥ 2-D weights and "
                f"{self.plan.one_dimensional} 1-D parameters (biases, norms) left dense")
        if brief:
            return head + _dense_reasons(self.plan.left_dense) + " (driver.summary() lists all)"
        lines = [head, "sparsified:"]
        for layer in self.layers:
            layout = " (in, out)" if layer.output_axis == 1 and layer.weight.dim() == 2 else (
                f" (outputs on axis {layer.output_axis})" if layer.output_axis else "")
            lines.append(f"  {layer.name} {list(layer.shape)} {layer.kind}{layout} "
                         f"density {layer.density:.4g}")
        if self.plan.left_dense:
            lines.append("left dense:")
            lines += [f"  {entry.name} {list(entry.shape)}: {entry.reason}"
                      for entry in self.plan.left_dense]
        return "\n".join(lines)

    # ---- gradients --------------------------------------------------------------------
    def _grad_hook(self, layer: MaskedLayer) -> Callable[[torch.Tensor], None]:
        def mask_gradient(parameter: torch.Tensor) -> None:
            self._mask_grad(layer)
        return mask_gradient

    @torch.no_grad()
    def _mask_grad(self, layer: MaskedLayer) -> None:
        """Mask `.grad` in place, keeping the dense gradient aside first when the algorithm
        reads it this step. Under gradient accumulation `.grad` already holds the masked sum
        of earlier backward passes, so the dense sum is this `.grad` plus the inactive part
        kept from before."""
        grad = layer.weight.grad
        if grad is None or grad.is_sparse:
            return
        if self.algorithm.dense_gradient_wanted(self, self.rewire_due()):
            previous = self._dense_grads.get(layer.name)
            if previous is None:
                self._dense_grads[layer.name] = grad.detach().clone()
            else:
                previous.mul_(1 - layer.multiplier).add_(grad)
        grad.mul_(layer.multiplier)
        layer.grad_masked = True

    def dense_grad(self, layer: MaskedLayer) -> torch.Tensor | None:
        """This step's dense gradient of `layer` (kept aside by the gradient hook on steps the
        algorithm asked for it), or None when backward never reached the layer."""
        return self._dense_grads.get(layer.name)

    def remove_hooks(self) -> None:
        """Detach the gradient hooks (the model then trains with dense gradients again)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # ---- per step -------------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every inactive weight in place (one pass per layer)."""
        for layer in self.layers:
            layer.weight.mul_(layer.multiplier)

    def rewire_due(self) -> bool:
        """Whether the step about to be taken ends with a rewire (or, for Deep R, a report)."""
        return self.schedule.is_due(self.step_count + 1)

    def step(self) -> list[LayerChange]:
        """optimizer.step() with masks kept, then the algorithm's rewire if one is due.

        With `skip_update_on_rewire` (rigl's reference) a step that rewires leaves the
        optimizer out: the mask update replaces that step's weight update."""
        due = self.rewire_due()
        if self._hooks:
            for layer in self.layers:  # .grad set without backward (autograd.grad, by hand)
                if not layer.grad_masked:
                    self._mask_grad(layer)
                layer.grad_masked = False
        if self.distributed is not None:
            self.distributed.before_step()
            self.distributed.reduce_dense_grads(self._dense_grads)
        self.algorithm.before_optimizer_step(self, due)
        self.skipped_update = due and self.options.skip_update_on_rewire
        if not self.skipped_update:
            self.optimizer.step()
        if self.mask_weights_each_step:
            self.apply_masks()
        self.step_count += 1
        try:
            changes = (self.algorithm if self.sharding is None
                       else self.sharding).after_optimizer_step(self, due)
        finally:
            self._dense_grads = {}
        if due and self.distributed is not None:
            self.distributed.after_rewire()
        if changes:
            for listener in self.listeners:
                listener(changes)
        return changes

    # ---- helpers the algorithms use ----------------------------------------------------
    def learning_rate(self, parameter: torch.Tensor) -> float:
        for group in self.optimizer.param_groups:
            if any(p is parameter for p in group["params"]):
                return float(group["lr"])
        raise ValueError(f"optimizer: parameter of shape {tuple(parameter.shape)} is not in it")

    @torch.no_grad()
    def apply_change(self, layer: MaskedLayer, mask: torch.Tensor, added: torch.Tensor,
                     removed: torch.Tensor, grow_init: str = "zero",
                     reset_state: bool = True) -> LayerChange:
        """Install a rewire: init grown weights, zero dropped ones and (unless `reset_state`
        is False: SNFS keeps what chose them) both's optimizer state.

        Works on the changed indices only: drawing a random value for every weight and
        selecting the grown ones cost more than the rest of a SET rewire."""
        weight = layer.weight
        added_index = flat_nonzero(added.reshape(-1))  # (A,) ascending, weight's device
        removed_index = flat_nonzero(removed.reshape(-1))  # (R,)
        flat_weight = weight.view(-1) if weight.is_contiguous() else None
        if grow_init == "random":
            fresh = torch.empty(added_index.numel(), device=weight.device, dtype=weight.dtype)
            fresh.uniform_(-layer.init_bound, layer.init_bound, generator=self.generator)
        else:
            fresh = torch.zeros(added_index.numel(), device=weight.device, dtype=weight.dtype)
        active_after = count_true(mask)  # counted once: the magnitudes and the change use it
        magnitudes = None
        if self.listeners:  # before the dropped weights are zeroed
            # Only the strided sample the quantiles use is read (analytics.sample_stride).
            sampled = removed_index[::sample_stride(removed_index.numel())]
            dropped_values = (flat_weight if flat_weight is not None
                              else weight.reshape(-1))[sampled]
            magnitudes = rewire_magnitudes(weight, mask, added, dropped_values, fresh,
                                           active_after - added_index.numel(),
                                           dropped_count=removed_index.numel())
        if flat_weight is not None:
            flat_weight.index_fill_(0, removed_index, 0.0)
            flat_weight.index_copy_(0, added_index, fresh)
        else:  # a strided parameter (rare): the same through whole-tensor masks
            placed = torch.zeros(weight.shape, device=weight.device, dtype=weight.dtype)
            placed.view(-1).index_copy_(0, added_index, fresh)
            weight.copy_(torch.where(added, placed, weight.masked_fill(removed, 0.0)))
        self.install_mask(layer, mask, added, removed, reset_state=reset_state,
                          changed_index=torch.cat([added_index, removed_index]))
        change = self._change(layer, added_index, removed_index, active_after)
        change.weights = magnitudes
        return change

    @torch.no_grad()
    def install_mask(self, layer: MaskedLayer, mask: torch.Tensor, added: torch.Tensor,
                     removed: torch.Tensor, *, reset_state: bool = True,
                     changed_index: torch.Tensor | None = None) -> None:
        """Make `mask` the layer's mask, with the bookkeeping every change of a mask shares:
        the ITOP union grows and (unless `reset_state` is False) the optimizer's per-weight
        state restarts at `added` and `removed` entries. The weights are the caller's
        (`apply_change` inits and zeroes them; Deep R moves them by its own rule).

        `changed_index`: the flat indices of `added` and `removed`, when the caller has them."""
        weight = layer.weight
        # SGD momentum_buffer, Adam/AdamW exp_avg, exp_avg_sq (and max_exp_avg_sq): every
        # per-weight state restarts at grown and dropped entries (jaxpruner restart_inner_state).
        states = [value for value in self.optimizer.state.get(weight, {}).values()
                  if isinstance(value, torch.Tensor) and value.shape == weight.shape] \
            if reset_state else []
        for value in states:
            if value.is_contiguous():
                if changed_index is None:
                    changed_index = flat_nonzero((added | removed).reshape(-1))
                value.view(-1).index_fill_(0, changed_index, 0.0)
            else:
                value.masked_fill_(added | removed, 0.0)
        layer.mask = mask
        layer.ever_active |= mask

    def record_change(self, layer: MaskedLayer, added: torch.Tensor,
                      removed: torch.Tensor) -> LayerChange:
        """Report changes already installed (Deep R's flips), from bool masks."""
        return self._change(layer, flat_nonzero(added.reshape(-1)),
                            flat_nonzero(removed.reshape(-1)))

    def _change(self, layer: MaskedLayer, added_index: torch.Tensor,
                removed_index: torch.Tensor, active_count: int | None = None) -> LayerChange:
        return LayerChange(layer=layer.name, step=self.step_count, added=added_index.cpu(),
                           removed=removed_index.cpu(),
                           active_count=layer.active_count if active_count is None
                           else active_count,
                           numel=layer.mask.numel())

    # ---- metrics ----------------------------------------------------------------------
    def densities(self) -> dict[str, float]:
        return {layer.name: layer.density for layer in self.layers}

    def global_density(self) -> float:
        total = sum(layer.numel for layer in self.layers)
        return sum(layer.active_count for layer in self.layers) / max(1, total)

    def itop_rate(self) -> float:
        """In-Time Over-Parameterization: share of all connections ever active (Liu et al. 2021)."""
        total = sum(layer.numel for layer in self.layers)
        return sum(layer.ever_active_count for layer in self.layers) / max(1, total)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Masks, ITOP union, algorithm buffers, step count and RNG: a resume is exact."""
        return {
            "method": self.method,
            "step_count": self.step_count,
            "masks": {layer.name: layer.mask.cpu().clone() for layer in self.layers},
            "ever_active": {layer.name: layer.ever_active.cpu().clone() for layer in self.layers},
            "buffers": {layer.name: {key: value.cpu().clone() for key, value in layer.buffers.items()}
                        for layer in self.layers},
            "generator": self.generator.get_state(),
            "seed": self.seed,  # under DDP every step's draws derive from it
            "init_bounds": {layer.name: layer.init_bound for layer in self.layers},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("method", self.method) != self.method:
            raise ValueError(f"state: saved by a {state['method']!r} driver, this one runs "
                             f"{self.method!r}")
        names = {layer.name for layer in self.layers}
        if set(state.get("masks", {})) != names:
            raise ValueError(f"state: masks for {sorted(state.get('masks', {}))}, "
                             f"driver has {sorted(names)}")
        self.step_count = int(state["step_count"])
        self.seed = int(state.get("seed", self.seed))
        for layer in self.layers:
            device = layer.weight.device
            layer.mask = state["masks"][layer.name].to(device).bool()
            layer.ever_active = state["ever_active"][layer.name].to(device).bool()
            layer.init_bound = float(state.get("init_bounds", {}).get(layer.name, layer.init_bound))
            layer.buffers = {key: value.to(device)
                             for key, value in state.get("buffers", {}).get(layer.name, {}).items()}
        self.generator.set_state(state["generator"])
        self.scratch.clear()
        self.apply_masks()
        if self.distributed is not None:  # a rank that loaded another file follows rank 0
            self.distributed.broadcast_state()


def _signature_with_options() -> inspect.Signature:
    """`SparseDriver`'s signature with every method option spelled out as a keyword (for
    `help()`, `inspect` and editors), generated from `MethodOptions`."""
    own = inspect.signature(SparseDriver.__init__)
    parameters = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
    at = [p.name for p in parameters].index("steps_per_epoch") + 1
    options = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=f"{OPTIONS[name].kind.__name__} | None")
               for name in KEYWORDS]
    return own.replace(parameters=parameters[:at] + options + parameters[at:])


SparseDriver.__init__.__signature__ = _signature_with_options()
