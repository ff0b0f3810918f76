"""SRigL (Lasby, Golubeva, Evans & Ioannou, ICLR 2024, "Dynamic Sparse Training with
Structured Sparsity"): RigL with constant fan-in and neuron ablation.

Every output unit of a layer keeps the same number `k` of active inputs, from initialisation
on (the layer is then a dense "condensed" matrix of k inputs per unit plus an index, which is
what makes it fast). A rewire, per layer, as the authors' `rigl_constant_fan.py`:

1. drop the `int(f · K)` smallest |w| of the layer (K active), as RigL;
2. neuron ablation: a unit is *salient-poor* when fewer than `γ_sal · k` of its weights are
   salient — kept by step 1 or among the `int(f · K)` that RigL's unconstrained growth would
   pick by |dense gradient|; those units are ablated (all inputs off); at least one unit stays;
3. the freed budget goes to the units that remain: `k' = min(fan_in, K₀ // units)` with `K₀`
   the layer's initial count, so the layer never exceeds it;
4. each remaining unit keeps its k' largest kept |w| and regrows up to k' where its |dense
   gradient| is largest. Grown weights start at 0 with zeroed optimizer state.

Ablation is re-decided at every rewire, so a unit whose gradient becomes salient again
returns. γ_sal = 0.3 as published; `ablation_threshold=0` disables ablation.
"""

from __future__ import annotations

import math

import torch

from dst_core.algorithms.gradient import RigLRewirer
from dst_core.method_options import with_defaults
from dst_core.rewire import RewireResult, net_result, register_rewirer
from dst_core.selection import count_true, magnitude, rewire_threads, select_mask
from dst_core.structure import constant_fan_in_mask, rows_view, top_per_row


class SRigLRewirer(RigLRewirer):
    """Constant fan-in RigL with neuron ablation (see the module docstring)."""

    option_scopes = frozenset({"srigl"})  # the options only it reads

    # rigl-torch (the authors' base) adds no drop-score noise; γ_sal = 0.3 as published.
    defaults = with_defaults(RigLRewirer.defaults, ablation_threshold=0.3, drop_noise=0.0)
    supports_global = False  # fan-in is a per-layer rule
    supports_structure = False  # constant fan-in is its structure
    mask_level = False  # its masks are constant fan-in from initialisation: driver only

    def initial_mask(self, shape: tuple[int, ...], density: float,
                     generator: torch.Generator, output_axis: int = 0) -> torch.Tensor:
        fan_in = math.prod(shape) // shape[output_axis] if len(shape) > 1 else shape[0]
        active_fan_in = min(fan_in, max(1, round(density * fan_in)))
        return constant_fan_in_mask(shape, active_fan_in, generator, output_axis)

    def after_optimizer_step(self, driver, due) -> list:
        if not due:
            return []
        fraction = driver.schedule.fraction_at(driver.step_count)
        changes = []
        with rewire_threads(driver.layers[0].weight.device):
            for layer in driver.layers:
                grad = driver.dense_grad(layer)
                budget = layer.buffers.get("fan_in_budget")
                if budget is None:
                    budget = layer.buffers["fan_in_budget"] = torch.tensor(layer.active_count)
                result = self.rewire_layer(layer.weight.detach(), layer.mask, fraction, grad,
                                           int(budget), driver.options.ablation_threshold,
                                           layer.output_axis)
                changes.append(driver.apply_change(layer, result.mask, result.added,
                                                   result.removed, self.grow_init))
        return changes

    @torch.no_grad()
    def rewire_layer(self, weight: torch.Tensor, mask: torch.Tensor, drop_fraction: float,
                     grad: torch.Tensor | None, budget: int, ablation_threshold: float,
                     output_axis: int = 0):
        if output_axis:  # outputs on another axis (HF Conv1D): rewire the (out, in) transpose
            result = self.rewire_layer(weight.movedim(output_axis, 0), mask.movedim(output_axis, 0),
                                       drop_fraction, None if grad is None else
                                       grad.movedim(output_axis, 0), budget, ablation_threshold)
            mask_back, added_back, removed_back = (
                value.movedim(0, output_axis).contiguous()
                for value in (result.mask, result.added, result.removed))
            return RewireResult(mask=mask_back, added=added_back, removed=removed_back)
        rows = rows_view(mask)  # (out, fan_in) bool
        out_units, fan_in = rows.shape
        active = count_true(mask)
        unit_fan_in = rows.sum(1)  # (out,)
        fan_in_now = int(unit_fan_in.max()) if active else 0
        drop_count = int(drop_fraction * active)
        weight_scores = magnitude(weight, "scores").clone()  # (numel,) |w|
        dropped = select_mask(weight_scores, drop_count, eligible=mask.reshape(-1),
                              largest=False).view(rows.shape)
        kept = torch.gt(rows, dropped)  # (out, fan_in)
        grad_scores = (grad.abs().float() if grad is not None
                       else torch.zeros_like(weight, dtype=torch.float32)).reshape(rows.shape)
        # Saliency: what unconstrained RigL would keep or grow.
        would_grow = select_mask(grad_scores.reshape(-1), drop_count,
                                 excluded=kept.reshape(-1)).view(rows.shape)
        salient = (kept | would_grow).sum(1)  # (out,)
        alive = salient >= ablation_threshold * fan_in_now if ablation_threshold > 0 \
            else torch.ones(out_units, dtype=torch.bool, device=mask.device)
        if not bool(alive.any()):
            alive[int(torch.argmax(salient))] = True
        alive_count = count_true(alive)
        target = min(fan_in, budget // alive_count)  # k': the budget shared by the survivors
        keep_counts = torch.minimum(kept.sum(1), torch.tensor(target, device=mask.device))
        keep_counts = keep_counts * alive  # ablated units keep nothing
        kept = top_per_row(weight_scores.view(rows.shape), keep_counts, kept)
        grow_counts = (target - keep_counts) * alive
        grown = top_per_row(grad_scores, grow_counts, ~kept)
        dropped_all = torch.gt(rows, kept)  # every previously active weight not kept
        return net_result(mask, kept.view(mask.shape), dropped_all.view(mask.shape),
                          grown.view(mask.shape))


register_rewirer("srigl", SRigLRewirer)
