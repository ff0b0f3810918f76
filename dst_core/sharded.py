"""FSDP2: masks live with their weights' shards; selection stays exact per whole layer.

Under `torch.distributed.fsdp.fully_shard` a weight is a `DTensor` whose rows (dim 0) are
split across the ranks of a 1-D mesh: no rank holds a whole layer. `SparseDriver` notices a
sharded weight and builds its layers here (`ShardedLayer`): each rank keeps the mask, the
ITOP union and the optimizer-state resets of its own rows only; masking `.grad` and the
weights multiplies by a `DTensor` of the mask with the weight's placement (a local op).

A rewire selects per layer exactly as one process does (`Rewirer.drop_and_grow`): drop the
`int(f · k)` smallest |w| of the *whole* layer, grow as many of the largest scores, ties to
the lower global flat index. `select_sharded` finds the whole layer's threshold from an
all-gathered sample, counts the certain entries in one all-reduce, and all-gathers only the
values of the thin band around the threshold, which every rank resolves identically: rows on
dim 0 are contiguous and in rank order, so rank order *is* global index order. Random
draws come from the step-seeded generator as under DDP: a draw of the whole layer's size
(RigL's drop noise, random scores) is made in full on every rank and sliced (transient, one
layer at a time); SET's random growth draws global indices (a few per grown connection) and
keeps those in its rows. So an FSDP run equals the DDP run of the same job: masks identical
where the scores are (static; SET), RigL up to float summation order in its gradients.

Recording: every rewire gathers each layer's changed indices to rank 0 (one layer at a
time), where a whole-layer bool copy of every mask lives on the host for the recorder's
keyframes (`recording_view`); the accelerator never holds a whole layer.

Limits (ValueError at construction): a 1-D mesh with `Shard(0)` placements only (no HSDP,
no 2-D meshes, no `Shard(1)`); methods whose rewire is per-layer drop-then-grow with a local
score (dense, static, set, set_magnitude, rigl) and SRigL, whose units are rows, whole on one
rank (`sharded_methods()`); no `global_selection`. See docs/distributed.md.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from dst_core.distributed import (
    MaskDivergenceError,
    VerifiedEvery,
    communication_device,
    mask_hash,
    step_seed,
)
from dst_core.masked_layer import (
    LayerChange,
    MaskedLayer,
    default_init_bound,
    random_mask,
    scale_to_active_fan_in,
)
from dst_core.selection import (
    BAND_SIGMAS,
    SAMPLE_SIZE,
    SORT_BELOW,
    _oriented,
    _top_in_order,
    band_bounds,
    count_true,
    draw_count,
    flat_nonzero,
    magnitude,
    rewire_threads,
    select_mask,
)

_SAMPLE_SEED = 0x5EED  # fixed, per rank offset: the estimate never consumes a user generator


def is_sharded(tensor: Any) -> bool:
    """Whether `tensor` is a DTensor (a weight `fully_shard` split across ranks). No DTensor
    exists before its module is imported, so a model without one never pays that import."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view of its storage), the tensor itself otherwise."""
    return tensor.detach().to_local() if is_sharded(tensor) else tensor.detach()


@dataclass(frozen=True)
class ShardLayout:
    """Where this rank's rows of one weight sit in the whole layer (dim-0 sharding)."""

    shape: tuple[int, ...]  # the whole weight's
    local_shape: tuple[int, ...]
    row_offset: int  # first global row held here
    flat_offset: int  # first global flat index held here
    rank: int  # in the mesh's group
    world_size: int
    flat_counts: tuple[int, ...]  # every rank's local numel, in rank order

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def local_numel(self) -> int:
        return math.prod(self.local_shape)

    def as_dict(self) -> dict:
        return {"placement": "Shard(0)", "rows": [self.row_offset, self.local_shape[0]]}


@functools.cache
def sharded_layer_class() -> type:
    """`ShardedLayer`: a `MaskedLayer` whose `mask` and `ever_active` are this rank's rows
    (`shard` says which); counts, densities and the shape are the whole layer's."""

    @dataclass
    class ShardedLayer(MaskedLayer):
        shard: ShardLayout | None = None
        global_active: int = 0  # the whole layer's active count, kept exact by every rewire
        global_ever_active: int = 0  # the whole layer's ITOP union count, as of the last rewire
        record: torch.Tensor | None = None  # rank 0: whole bool mask on the host, for recording
        _sharded_multiplier: Any = field(default=None, repr=False)
        _sharded_of: Any = field(default=None, repr=False)

        @property
        def multiplier(self):
            # A DTensor of the mask with the weight's placement: `weight.mul_(multiplier)` and
            # `grad.mul_(multiplier)` stay local ops on each shard.
            if self._sharded_of is not self.mask:
                from torch.distributed.tensor import DTensor

                weight = self.weight
                self._sharded_multiplier = DTensor.from_local(
                    self.mask.to(weight.dtype), weight.device_mesh, weight.placements,
                    shape=weight.shape, stride=weight.stride(), run_check=False)
                self._sharded_of = self.mask
            return self._sharded_multiplier

        @property
        def shape(self) -> tuple[int, ...]:
            return self.shard.shape

        @property
        def numel(self) -> int:
            return self.shard.numel

        @property
        def active_count(self) -> int:
            return self.global_active

        @property
        def ever_active_count(self) -> int:
            return self.global_ever_active

        @property
        def density(self) -> float:
            return self.global_active / self.shard.numel

    return ShardedLayer


def _describe_unsupported(algorithm: Any) -> str | None:
    """Why `algorithm` cannot run sharded, or None when it can (decided by what it overrides,
    never by its name: a method of one's own with a local score and the base hooks works)."""
    from dst_core.algorithms.gradient import RigLRewirer
    from dst_core.algorithms.set_rewirer import SETMagnitudeRewirer, SETRewirer
    from dst_core.algorithms.srigl import SRigLRewirer
    from dst_core.rewire import Algorithm, Rewirer

    kind = type(algorithm)
    if algorithm.trains_dense:
        return None
    if isinstance(algorithm, SRigLRewirer):
        if kind.after_optimizer_step is SRigLRewirer.after_optimizer_step \
                and kind.rewire_layer is SRigLRewirer.rewire_layer \
                and kind.initial_mask is SRigLRewirer.initial_mask:
            return None  # rows (units) are whole on one rank: see Sharding.rewire_srigl
        return "it overrides SRigL's rewire"
    if not isinstance(algorithm, Rewirer):
        if kind.after_optimizer_step is Algorithm.after_optimizer_step \
                and kind.before_optimizer_step is Algorithm.before_optimizer_step \
                and getattr(algorithm, "setup", None) is None \
                and getattr(algorithm, "initial_mask", None) is None:
            return None  # a fixed mask (static)
        return ("it updates masks by its own per-step rule over whole layers (Deep R's "
                "noise and revival), which is not sharded")
    if kind.after_optimizer_step is not Rewirer.after_optimizer_step \
            or kind.before_optimizer_step is not Algorithm.before_optimizer_step \
            or getattr(algorithm, "initial_mask", None) is not None:
        return ("its rewire is not the per-layer drop-then-grow (SNFS shares counts between "
                "layers from optimizer moments), which is not sharded")
    if kind.drop not in (Rewirer.drop, SETRewirer.drop) \
            or kind.drop_score is not Rewirer.drop_score:
        return "its drop rule is its own (only |w| and SET's per-sign drop are sharded)"
    if algorithm.random_growth:
        if kind.grow is not SETMagnitudeRewirer.grow:
            return "its random growth is its own"
        return None
    if kind.grow is not Rewirer.grow or kind.grow_score is not RigLRewirer.grow_score:
        return ("its growth score is not elementwise in the dense gradient (grad_sample's "
                "Gumbel noise and candidate mean need the whole layer)")
    return None


def sharded_methods() -> list[str]:
    """The registered methods that run on FSDP2-sharded weights (generated from REGISTRY)."""
    from dst_core.rewire import REGISTRY

    return sorted(name for name, algorithm in REGISTRY.items()
                  if _describe_unsupported(algorithm) is None)


def _check_weight(name: str, weight: Any) -> None:
    from torch.distributed.tensor import Shard

    mesh = weight.device_mesh
    if mesh.ndim != 1:
        raise ValueError(f"model: {name} is sharded over a {mesh.ndim}-D device mesh; "
                         "sparse training under FSDP2 supports a 1-D mesh (plain "
                         "fully_shard), not HSDP or 2-D (FSDP + TP) meshes")
    if tuple(weight.placements) != (Shard(0),):
        raise ValueError(f"model: {name} has placements {tuple(weight.placements)}; sparse "
                         "training under FSDP2 supports Shard(0) (fully_shard's default)")


class Sharding(VerifiedEvery):
    """A driver's FSDP2 state: the mesh's group, the layers' layouts, the sharded rewire."""

    def __init__(self, driver: Any, prunable: list[tuple[str, Any]]) -> None:
        sharded = [name for name, weight in prunable if is_sharded(weight)]
        if len(sharded) != len(prunable):
            plain = [name for name, weight in prunable if not is_sharded(weight)]
            raise ValueError(f"model: {', '.join(sharded[:3])} are FSDP2-sharded but "
                             f"{', '.join(plain[:3])} are not; fully_shard every module "
                             "holding a sparsified weight (or the root), or exclude= them")
        for name, weight in prunable:
            _check_weight(name, weight)
        reason = _describe_unsupported(driver.algorithm)
        if reason is not None:
            raise ValueError(f"method: {driver.method!r} does not run on FSDP2-sharded "
                             f"weights: {reason}; sharded: {', '.join(sharded_methods())} "
                             "(or train it under DDP)")
        if driver.options.global_selection:
            raise ValueError("global_selection: not supported on FSDP2-sharded weights "
                             "(per-layer selection is exact across shards; a cross-layer "
                             "ranking is not implemented)")
        if driver.options.structure == "n:m" and any(
                entry.output_axis != 0 for entry in driver.plan.layers):
            raise ValueError("structure: N:M groups run along a weight's input axis; a "
                             "weight with outputs on axis 1 (HF Conv1D) has them across "
                             "shards under dim-0 sharding")
        if getattr(driver.algorithm, "initial_mask", None) is not None and any(
                entry.output_axis != 0 for entry in driver.plan.layers):
            raise ValueError(f"method: {driver.method!r} keeps a constant fan-in per output "
                             "unit; a weight with outputs on axis 1 (HF Conv1D) spreads a "
                             "unit's inputs across shards under dim-0 sharding (exclude= it)")
        self._connect(prunable[0][1].device_mesh.get_group())
        self.driver = driver
        # rank 0's seed everywhere before any mask is drawn: the masks are then the ones
        # rank 0 would draw, as the DDP run's (which broadcasts rank 0's).
        self.base_seed = int(self._broadcast(torch.tensor([int(driver.seed)])).item())
        driver.generator.manual_seed(self.base_seed)

    def _connect(self, group: Any) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.root = dist.get_global_rank(group, 0)
        self.device = communication_device()
        self.verify_every = 1
        self.rewires = 0

    @classmethod
    def over(cls, group: Any = None) -> Sharding:
        """The collectives alone, over `group` (default: the whole job), for using
        `select_sharded` and `random_choice_sharded` outside a driver."""
        sharding = cls.__new__(cls)
        sharding._connect(group if group is not None else dist.group.WORLD)
        return sharding

    # ---- collectives ----------------------------------------------------------------------
    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        wire = tensor.to(self.device, copy=True).contiguous()
        dist.broadcast(wire, src=self.root, group=self.group)
        return wire.to(tensor.device)

    def all_sum(self, values: list[int]) -> list[int]:
        """Element-wise sums over the ranks of a few integers, in one all-reduce."""
        wire = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(wire, group=self.group)
        return wire.tolist()

    def all_gather_counts(self, values: list[int]) -> torch.Tensor:
        """(world, len(values)) int64 on the CPU: every rank's integers."""
        wire = torch.tensor(values, dtype=torch.int64, device=self.device)
        gathered = [torch.empty_like(wire) for _ in range(self.world_size)]
        dist.all_gather(gathered, wire, group=self.group)
        return torch.stack(gathered).cpu()

    def all_gather_varying(self, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Every rank's 1-D `tensor` (of the lengths `sizes`), concatenated in rank order."""
        longest = max(sizes)
        if longest == 0:
            return tensor.new_empty(0)
        wire = torch.zeros(longest, dtype=tensor.dtype, device=self.device)
        wire[:tensor.numel()] = tensor.to(self.device)
        gathered = [torch.empty_like(wire) for _ in range(self.world_size)]
        dist.all_gather(gathered, wire, group=self.group)
        return torch.cat([part[:size] for part, size in zip(gathered, sizes, strict=True)]) \
            .to(tensor.device)

    def gather_to_root(self, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor | None:
        """Rank 0: every rank's 1-D `tensor` concatenated in rank order; None elsewhere."""
        longest = max(sizes)
        if longest == 0:
            return tensor.new_empty(0) if self.rank == 0 else None
        wire = torch.zeros(longest, dtype=tensor.dtype, device=self.device)
        wire[:tensor.numel()] = tensor.to(self.device)
        gathered = [torch.empty_like(wire) for _ in range(self.world_size)] \
            if self.rank == 0 else None
        dist.gather(wire, gathered, dst=self.root, group=self.group)
        if self.rank != 0:
            return None
        return torch.cat([part[:size] for part, size in zip(gathered, sizes, strict=True)]).cpu()

    # ---- construction ------------------------------------------------------------------
    def layout(self, weight: Any) -> ShardLayout:
        shard = weight.detach().to_local()
        rows = self.all_gather_counts([shard.shape[0]])[:, 0].tolist()
        row_offset = sum(rows[:self.rank])
        row_numel = math.prod(weight.shape[1:])
        return ShardLayout(shape=tuple(weight.shape), local_shape=tuple(shard.shape),
                           row_offset=row_offset, flat_offset=row_offset * row_numel,
                           rank=self.rank, world_size=self.world_size,
                           flat_counts=tuple(count * row_numel for count in rows))

    @torch.no_grad()
    def build_layers(self, driver: Any, entries: list, densities: list[float]) -> list:
        """The driver's layers, each mask drawn whole from rank 0's seed exactly as one
        process draws it (one layer at a time, transient) and cut to this rank's rows."""
        from dst_core.structure import NMStructure

        layer_class = sharded_layer_class()
        options = driver.options
        layers = []
        for entry, layer_density in zip(entries, densities, strict=True):
            weight, output_axis = entry.weight, entry.output_axis
            layout = self.layout(weight)
            shape = layout.shape
            structure = (NMStructure(options.n, options.m, output_axis)
                         if options.structure == "n:m" and layer_density < 1.0 else None)
            initial_mask = getattr(driver.algorithm, "initial_mask", None)
            if initial_mask is not None and layer_density < 1.0:
                whole = initial_mask(shape, layer_density, driver.generator,
                                     output_axis=output_axis)
            elif structure is not None:
                count = min(math.prod(shape), max(1, round(layer_density * math.prod(shape))))
                whole = structure.random_mask(shape, count, driver.generator)
            else:
                whole = random_mask(shape, layer_density, driver.generator, weight.device)
            flat = whole.reshape(-1)
            mask = flat[layout.flat_offset:layout.flat_offset + layout.local_numel] \
                .view(layout.local_shape).to(weight.device).clone()
            record = whole.cpu() if self.rank == 0 else None
            del whole, flat
            shard = local(weight)
            init_bound = self._init_bound(shard, mask, shape)
            if driver.sparse_init and layer_density < 1.0:
                self._scale_to_active_fan_in(shard, mask, output_axis, shape,
                                             scale_to_active_fan_in)
            active = count_true(mask)
            global_active = self.all_sum([active])[0]
            layers.append(layer_class(entry.name, weight, mask, mask.clone(), init_bound,
                                      structure=structure, output_axis=output_axis,
                                      kind=entry.kind, shard=layout,
                                      global_active=global_active,
                                      global_ever_active=global_active, record=record))
        return layers

    def _init_bound(self, shard: torch.Tensor, mask: torch.Tensor, shape) -> float:
        """`measured_init_bound` of the whole layer, from per-shard sums (√3 · std)."""
        active = shard[mask].double()
        wire = torch.tensor([float(active.sum()), float((active * active).sum()),
                             float(active.numel())], dtype=torch.float64, device=self.device)
        dist.all_reduce(wire, group=self.group)
        total, squares, count = wire.tolist()
        variance = (squares - total * total / count) / (count - 1) if count > 1 else 0.0
        spread = math.sqrt(max(0.0, variance))
        return math.sqrt(3.0) * spread if math.isfinite(spread) and spread > 0 \
            else default_init_bound(torch.empty(shape, device="meta"))

    def _scale_to_active_fan_in(self, shard, mask, output_axis, shape, scale) -> None:
        if output_axis == 0:  # whole rows here: each unit's fan-in is local
            scale(shard, mask, 0)
            return
        # outputs on another axis: a unit's inputs span every shard
        from dst_core.structure import rows_view

        rows = rows_view(mask, output_axis)  # (out, local fan_in)
        active_fan_in = rows.sum(1).to(torch.float64).to(self.device)  # (out,)
        dist.all_reduce(active_fan_in, group=self.group)
        fan_in = math.prod(shape) // shape[output_axis]
        factor = (fan_in / active_fan_in.clamp_(min=1)).sqrt_().to(shard.device, shard.dtype)
        view = [1] * shard.dim()
        view[output_axis] = -1
        shard.mul_(factor.view(view))

    # ---- the DistributedSync interface the driver calls ------------------------------------
    def attach(self, verify_every: int) -> Sharding:
        self.verify_every = verify_every
        return self

    def before_step(self) -> None:
        """Seed this step's draws identically on every rank (as DistributedSync does)."""
        driver = self.driver
        driver.generator.manual_seed(step_seed(self.base_seed, driver.step_count))

    def reduce_dense_grads(self, dense_grads: dict) -> None:
        """Nothing to do: FSDP's reduce-scatter already averaged the gradient each shard
        holds (the dense gradient kept aside is that of the whole batch)."""

    def broadcast_state(self) -> None:
        """After `load_state_dict` (each rank loads its own rows' state): rank 0's seed (the
        loaded one) drives every later draw; recount the layers, rebuild rank 0's copy."""
        driver = self.driver
        self.base_seed = int(self._broadcast(torch.tensor([int(driver.seed)])).item())
        counts = self.all_sum([count_true(layer.mask) for layer in driver.layers]
                              + [count_true(layer.ever_active) for layer in driver.layers])
        size = len(driver.layers)
        for layer, active, ever in zip(driver.layers, counts[:size], counts[size:], strict=True):
            layer.global_active, layer.global_ever_active = active, ever
            layer.record = self.gather_whole(layer)  # rank 0's recording copy, None elsewhere
        driver.apply_masks()

    def gather_whole(self, layer: Any) -> torch.Tensor | None:
        """Rank 0: the whole bool mask of `layer` (its rows gathered), None elsewhere."""
        index = flat_nonzero(layer.mask.reshape(-1)) + layer.shard.flat_offset
        sizes = self.all_gather_counts([index.numel()])[:, 0].tolist()
        gathered = self.gather_to_root(index, sizes)
        if gathered is None:
            return None
        whole = torch.zeros(layer.shard.numel, dtype=torch.bool)
        whole[gathered] = True
        return whole.view(layer.shard.shape)

    @torch.no_grad()
    def verify(self) -> None:
        """Check the shards make the masks every rank believes in, with no mask gathered:
        each rank's hash of its rows (global flat indices; the hash is a sum, so the shards'
        add up to the whole layer's `mask_hash`) and its view of the layer's active count
        are all-gathered; rank 0 adds the hash of each rank's rows in its recording copy.
        `MaskDivergenceError` (on every rank) names the first layer and the ranks at fault."""
        driver = self.driver
        rows = []
        for layer in driver.layers:
            own = _shard_hash(layer.mask, layer.shard.flat_offset)
            expected = torch.zeros(self.world_size, 2, dtype=torch.int64)
            if layer.record is not None:
                flat = layer.record.reshape(-1)
                start = 0
                for rank, size in enumerate(layer.shard.flat_counts):
                    expected[rank] = _shard_hash(flat[start:start + size], start).cpu()
                    start += size
            rows.append(torch.cat([own.cpu(), torch.tensor([layer.global_active]),
                                   torch.tensor([int(layer.record is not None)]),
                                   expected.reshape(-1)]))
        table = torch.stack(rows).to(self.device)  # (L, 4 + 2·world)
        gathered = [torch.empty_like(table) for _ in range(self.world_size)]
        dist.all_gather(gathered, table, group=self.group)
        table = torch.stack(gathered).cpu()  # (world, L, 4 + 2·world)
        for index, layer in enumerate(driver.layers):
            per_rank = table[:, index]
            wrong = set()
            counts = per_rank[:, 1]
            believed = per_rank[:, 2]
            wrong |= set(torch.nonzero(believed != believed[0]).reshape(-1).tolist())
            if int(counts.sum()) != int(believed[0]):
                wrong.add(-1)
            if int(per_rank[0, 3]):  # rank 0's recording copy: every rank's rows
                expected = per_rank[0, 4:].view(self.world_size, 2)
                wrong |= set(torch.nonzero((per_rank[:, :2] != expected).any(1))
                             .reshape(-1).tolist())
            if wrong:
                named = sorted(rank for rank in wrong if rank >= 0)
                raise MaskDivergenceError(
                    f"sharded masks disagree at step {driver.step_count}: layer "
                    f"{layer.name!r}, rank(s) {named or 'unknown'}: the shards hold "
                    f"{int(counts.sum())} active of the {int(believed[0])} every rank "
                    "believes, or differ from the masks the rewires installed")

    # ---- the rewire ---------------------------------------------------------------------
    def after_optimizer_step(self, driver: Any, due: bool) -> list:
        """The sharded counterpart of `Rewirer.after_optimizer_step` (static and dense:
        nothing)."""
        from dst_core.algorithms.srigl import SRigLRewirer
        from dst_core.rewire import Rewirer

        algorithm = driver.algorithm
        if not due or not isinstance(algorithm, Rewirer):
            return []
        rewire = self.rewire_srigl if isinstance(algorithm, SRigLRewirer) else self.rewire_layer
        fraction = driver.schedule.fraction_at(driver.step_count)
        changes = []
        with rewire_threads(local(driver.layers[0].weight).device):
            for layer in driver.layers:
                if layer.global_active >= layer.numel and rewire == self.rewire_layer:
                    continue  # a dense layer can only regrow what it drops (SRigL: as its own)
                changes.append(rewire(driver, algorithm, layer, fraction))
        counts = self.all_sum([count_true(layer.ever_active) for layer in driver.layers])
        for layer, count in zip(driver.layers, counts, strict=True):
            layer.global_ever_active = count
        return changes

    @torch.no_grad()
    def rewire_layer(self, driver: Any, algorithm: Any, layer: Any, fraction: float):
        """One layer's drop-then-grow, exactly `Rewirer.drop_and_grow` of the whole layer."""
        from dst_core.algorithms.set_rewirer import SETRewirer
        from dst_core.rewire import net_result

        generator = driver.generator
        shard = layer.shard
        weight = local(layer.weight)  # (local rows, ...)
        mask = layer.mask
        if type(algorithm).drop is SETRewirer.drop:
            positive = mask & (weight >= 0)
            negative = torch.gt(mask, positive)
            positives, negatives = self.all_sum([count_true(positive), count_true(negative)])
            dropped = self.select(weight.reshape(-1), int(fraction * positives),
                                  eligible=positive.reshape(-1), largest=False)
            dropped |= self.select(weight.reshape(-1), int(fraction * negatives),
                                   eligible=negative.reshape(-1), largest=True)
            drop_count = int(fraction * positives) + int(fraction * negatives)
        else:
            drop_count = int(fraction * layer.global_active)
            scores = magnitude(weight, "scores")  # (local numel,) float32
            noise = float(driver.options.drop_noise)
            if noise > 0:  # the whole layer's draw, as one process makes it, then our rows
                whole = torch.randn(shard.numel, generator=generator, device=scores.device)
                scores = scores + noise * whole[shard.flat_offset:
                                                shard.flat_offset + shard.local_numel]
                del whole
            dropped = self.select(scores, drop_count, eligible=mask.reshape(-1), largest=False)
        dropped = dropped.view(mask.shape)
        kept = torch.gt(mask, dropped)
        if algorithm.random_growth and layer.structure is None:
            candidates = shard.numel - (layer.global_active - drop_count)
            grown = self.random_choice(kept.reshape(-1), drop_count, candidates, generator,
                                       shard)
        else:
            if algorithm.random_growth:
                scores = self._whole_draw(shard, generator, weight.device)
            else:
                grad = driver.dense_grad(layer)
                grad = local(grad) if grad is not None else torch.zeros_like(weight)
                scores = algorithm.grow_score(weight, kept, grad, generator,
                                              driver.temperature).reshape(-1)
            eligible = layer.structure.eligible(scores, kept).reshape(-1) \
                if layer.structure is not None else None
            grown = self.select(scores, drop_count, excluded=kept.reshape(-1),
                                eligible=eligible)
        result = net_result(mask, kept, dropped, grown.view(mask.shape))
        return self.apply_change(driver, layer, result, algorithm.grow_init)

    @torch.no_grad()
    def rewire_srigl(self, driver: Any, algorithm: Any, layer: Any, fraction: float):
        """SRigL's rewire (`SRigLRewirer.rewire_layer`) of the whole layer. Its units are
        rows, whole on one rank under dim-0 sharding, so the per-unit steps (saliency,
        keeping the k' largest |w|, regrowing to k') are local; the layer-wide ones (the
        drop, unconstrained RigL's growth for saliency, the largest fan-in, how many units
        survive, the one unit revived when none does) are exact across shards."""
        from dst_core.rewire import net_result
        from dst_core.structure import top_per_row

        mask = layer.mask
        weight = local(layer.weight)
        budget = layer.buffers.get("fan_in_budget")
        if budget is None:
            budget = layer.buffers["fan_in_budget"] = torch.tensor(layer.global_active)
        rows = mask.view(mask.shape[0], math.prod(layer.shard.shape[1:]))  # (local out, fan_in)
        fan_in = rows.shape[1]
        unit_fan_in = rows.sum(1)  # (local out,)
        fan_in_now = self._all_max(int(unit_fan_in.max()) if unit_fan_in.numel() else 0)
        drop_count = int(fraction * layer.global_active)
        weight_scores = magnitude(weight, "scores").clone()  # (local numel,) |w|
        dropped = self.select(weight_scores, drop_count, eligible=mask.reshape(-1),
                              largest=False).view(rows.shape)
        kept = torch.gt(rows, dropped)
        grad = driver.dense_grad(layer)
        grad_scores = (local(grad).abs().float() if grad is not None
                       else torch.zeros_like(weight, dtype=torch.float32)).reshape(rows.shape)
        would_grow = self.select(grad_scores.reshape(-1), drop_count,
                                 excluded=kept.reshape(-1)).view(rows.shape)
        salient = (kept | would_grow).sum(1)  # (local out,)
        threshold = driver.options.ablation_threshold
        alive = salient >= threshold * fan_in_now if threshold > 0 \
            else torch.ones(rows.shape[0], dtype=torch.bool, device=mask.device)
        alive_count = self.all_sum([count_true(alive)])[0]
        if alive_count == 0:  # revive the first unit of the largest saliency, as argmax does
            best = int(salient.max()) if salient.numel() else -1
            table = self.all_gather_counts([best])[:, 0]
            owner = int(torch.argmax(table))
            if owner == self.rank:
                alive[int(torch.argmax(salient))] = True
            alive_count = 1
        target = min(fan_in, int(budget) // alive_count)
        keep_counts = torch.minimum(kept.sum(1), torch.tensor(target, device=mask.device))
        keep_counts = keep_counts * alive
        kept = top_per_row(weight_scores.view(rows.shape), keep_counts, kept)
        grow_counts = (target - keep_counts) * alive
        grown = top_per_row(grad_scores, grow_counts, ~kept)
        dropped_all = torch.gt(rows, kept)
        result = net_result(mask, kept.view(mask.shape), dropped_all.view(mask.shape),
                            grown.view(mask.shape))
        return self.apply_change(driver, layer, result, algorithm.grow_init)

    def _all_max(self, value: int) -> int:
        wire = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(wire, op=dist.ReduceOp.MAX, group=self.group)
        return int(wire.item())

    def _whole_draw(self, shard: ShardLayout, generator, device) -> torch.Tensor:
        """This rank's slice of uniform scores drawn for the whole layer (transient)."""
        whole = torch.rand(shard.numel, generator=generator, device=device)
        return whole[shard.flat_offset:shard.flat_offset + shard.local_numel].clone()

    @torch.no_grad()
    def apply_change(self, driver: Any, layer: Any, result: Any, grow_init: str):
        """Install a rewire on this rank's rows (`SparseDriver.apply_change` of the whole
        layer: grown weights drawn in global index order from the shared generator, dropped
        ones zeroed, optimizer state restarted) and gather the change to rank 0."""
        shard = layer.shard
        weight = local(layer.weight)
        added_index = flat_nonzero(result.added.reshape(-1))  # (A,) local, ascending
        removed_index = flat_nonzero(result.removed.reshape(-1))  # (R,)
        table = self.all_gather_counts([added_index.numel(), removed_index.numel()])
        added_sizes, removed_sizes = table[:, 0].tolist(), table[:, 1].tolist()
        added_total, removed_total = sum(added_sizes), sum(removed_sizes)
        if grow_init == "random":
            fresh = torch.empty(added_total, device=weight.device, dtype=weight.dtype)
            fresh.uniform_(-layer.init_bound, layer.init_bound, generator=driver.generator)
            start = sum(added_sizes[:self.rank])
            fresh = fresh[start:start + added_index.numel()]
        else:
            fresh = torch.zeros(added_index.numel(), device=weight.device, dtype=weight.dtype)
        flat_weight = weight.view(-1)
        flat_weight.index_fill_(0, removed_index, 0.0)
        flat_weight.index_copy_(0, added_index, fresh)
        changed = torch.cat([added_index, removed_index])
        for value in driver.optimizer.state.get(layer.weight, {}).values():
            if isinstance(value, torch.Tensor) and tuple(value.shape) == shard.shape:
                local(value).view(-1).index_fill_(0, changed, 0.0)
        layer.mask = result.mask
        layer.ever_active |= result.mask
        layer.global_active += added_total - removed_total
        added_global = self.gather_to_root(added_index + shard.flat_offset, added_sizes)
        removed_global = self.gather_to_root(removed_index + shard.flat_offset, removed_sizes)
        if layer.record is not None:
            record = layer.record.view(-1)
            record[removed_global] = False
            record[added_global] = True
        if added_global is None:  # not rank 0: this rank's rows' part
            added_global = (added_index + shard.flat_offset).cpu()
            removed_global = (removed_index + shard.flat_offset).cpu()
        return LayerChange(layer=layer.name, step=driver.step_count, added=added_global,
                           removed=removed_global, active_count=layer.global_active,
                           numel=shard.numel)

    # ---- exact selection across shards ---------------------------------------------------
    def select(self, scores: torch.Tensor, count: int, *, eligible: torch.Tensor | None = None,
               excluded: torch.Tensor | None = None, largest: bool = True) -> torch.Tensor:
        return select_sharded(self, scores, count, eligible=eligible, excluded=excluded,
                              largest=largest)

    def random_choice(self, excluded: torch.Tensor, count: int, candidate_count: int,
                      generator, shard: ShardLayout) -> torch.Tensor:
        return random_choice_sharded(self, excluded, count, candidate_count, generator, shard)

    def describe(self) -> dict:
        """The sharding layout, for the run's provenance (settings)."""
        return {"kind": "fsdp2", "mesh": [self.world_size], "placement": "Shard(0)",
                "rows": {layer.name: _row_splits(layer.shard) for layer in self.driver.layers}}


def _row_splits(shard: ShardLayout) -> list[int]:
    """How many of the layer's rows each rank holds, in rank order."""
    row_numel = max(1, math.prod(shard.shape[1:]))
    return [count // row_numel for count in shard.flat_counts]


def _shard_hash(mask: torch.Tensor, flat_offset: int) -> torch.Tensor:
    """`mask_hash` of a shard with its global flat indices: sums over disjoint shards."""
    if flat_offset == 0:
        return mask_hash(mask)
    from dst_core.distributed import _MIX_A, _MIX_B

    index = torch.nonzero(mask.reshape(-1)).reshape(-1) + flat_offset
    mixed = index * _MIX_A
    mixed = mixed ^ (mixed >> 31)
    mixed = mixed * _MIX_B
    return torch.stack([mixed.sum(), torch.tensor(index.numel(), device=mask.device)])


@torch.no_grad()
def select_sharded(sharding: Sharding, scores: torch.Tensor, count: int, *,
                   eligible: torch.Tensor | None = None, excluded: torch.Tensor | None = None,
                   largest: bool = True) -> torch.Tensor:
    """`select_mask` of the whole layer, for this rank's part `scores` (1-D, its rows' flat
    order): a bool (local numel,) of the entries it holds among exactly `count` highest (or
    lowest) allowed scores of the whole layer, ties to the lower global index. The same
    answer as one process's `select_mask` on the concatenated scores.

    A sample of every rank's allowed scores (all-gathered, ∝ its size) brackets the
    count-th score; one all-reduce counts the certain entries and the band between the
    bounds; only the band's values are all-gathered and resolved, identically everywhere."""
    flat = scores.reshape(-1)
    local_size = flat.numel()
    allowed = torch.ones(local_size, dtype=torch.bool, device=flat.device) \
        if eligible is None else eligible.reshape(-1).clone()
    if excluded is not None:
        allowed = torch.gt(allowed, excluded.reshape(-1))
    total_size = sharding.all_sum([local_size])[0]
    if count > total_size:
        raise ValueError(f"count: cannot select {count} of {total_size} positions")
    if count <= 0:
        return torch.zeros(local_size, dtype=torch.bool, device=flat.device)
    oriented = _oriented(flat, largest)  # (local,) higher wins
    if total_size > SORT_BELOW:
        generator = torch.Generator(device=flat.device)
        generator.manual_seed(_SAMPLE_SEED + sharding.rank)
        share_of_sample = max(1, round(SAMPLE_SIZE * local_size / total_size))
        sample_index = torch.randint(local_size, (share_of_sample,), generator=generator,
                                     device=flat.device) if local_size else \
            torch.zeros(0, dtype=torch.int64, device=flat.device)
        drawn = sharding.all_sum([sample_index.numel()])[0]
        sample_index = sample_index[allowed[sample_index]]
        sizes = sharding.all_gather_counts([sample_index.numel()])[:, 0].tolist()
        sample = sharding.all_gather_varying(oriented[sample_index], sizes)  # (S,)
        allowed_estimate = max(1.0, total_size * sample.numel() / max(1, drawn))
        share = min(1.0, count / allowed_estimate)
        rank = share * sample.numel()
        for sigmas in BAND_SIGMAS:
            low, high = band_bounds(sample, rank, share, sigmas)
            if not math.isfinite(low):
                break
            candidates = allowed & (oriented >= low)
            certain = candidates & (oriented > high)
            band = flat_nonzero(torch.gt(candidates, certain))  # (B,) local ascending
            certain_total, band_total = sharding.all_sum([count_true(certain), band.numel()])
            if certain_total > count or certain_total + band_total < count:
                continue
            return _resolve_band(sharding, certain, band, oriented, count - certain_total)
    # Exact fallback (and small layers): every allowed finite score is the band.
    certain = torch.zeros(local_size, dtype=torch.bool, device=flat.device)
    band = flat_nonzero(allowed & (oriented > -math.inf))
    band_total = sharding.all_sum([band.numel()])[0]
    if band_total < count:
        raise ValueError(f"count: cannot select {count} of {band_total} eligible positions")
    return _resolve_band(sharding, certain, band, oriented, count)


def _resolve_band(sharding: Sharding, certain: torch.Tensor, band: torch.Tensor,
                  oriented: torch.Tensor, needed: int) -> torch.Tensor:
    """Choose the `needed` highest of every rank's band (ties to the lower global index:
    rank order is global index order), identically on every rank; mark this rank's."""
    sizes = sharding.all_gather_counts([band.numel()])[:, 0].tolist()
    values = sharding.all_gather_varying(oriented.index_select(0, band), sizes)  # (ΣB,)
    chosen = _top_in_order(values, needed)
    start = sum(sizes[:sharding.rank])
    mine = chosen[start:start + band.numel()].to(band.device)
    certain[band[mine]] = True
    return certain


@torch.no_grad()
def random_choice_sharded(sharding: Sharding, excluded: torch.Tensor, count: int,
                          candidate_count: int, generator, shard: ShardLayout) -> torch.Tensor:
    """`selection.random_choice` of the whole layer (the same draws from the same generator,
    so the same positions), for this rank's rows: (local numel,) bool. `excluded` is this
    rank's part; `count` and `candidate_count` are the whole layer's. Draws are global
    indices; a rank keeps those in its rows, and the surplus a batch gives back is chosen
    over every rank's hits in global index order."""
    from dst_core.selection import FEW_CANDIDATES_BELOW, RANDOM_SCORES_ABOVE

    flat_excluded = excluded.reshape(-1)
    size = shard.numel
    local_size = flat_excluded.numel()
    device = flat_excluded.device
    start, stop = shard.flat_offset, shard.flat_offset + local_size
    if count > candidate_count:
        raise ValueError(f"count: cannot choose {count} of {candidate_count} candidates")
    if count <= 0:
        return torch.zeros(local_size, dtype=torch.bool, device=device)
    if candidate_count * FEW_CANDIDATES_BELOW < size:
        candidates = flat_nonzero(~flat_excluded)  # (C_r,) local
        sizes = sharding.all_gather_counts([candidates.numel()])[:, 0].tolist()
        scores = torch.rand(sum(sizes), generator=generator, device=device)
        chosen = select_mask(scores, count)  # the same on every rank
        offset = sum(sizes[:sharding.rank])
        result = torch.zeros(local_size, dtype=torch.bool, device=device)
        result[candidates[chosen[offset:offset + candidates.numel()]]] = True
        return result
    if count > RANDOM_SCORES_ABOVE * candidate_count or size <= SORT_BELOW:
        whole = torch.empty(size, device=device)
        whole.uniform_(generator=generator)
        scores = whole[start:stop].clone()
        del whole
        return select_sharded(sharding, scores, count, excluded=flat_excluded)
    chosen = torch.zeros(local_size, dtype=torch.bool, device=device)
    batch = torch.zeros(local_size, dtype=torch.bool, device=device)
    needed, available = count, candidate_count
    while needed > 0:
        draws = torch.randint(size, (draw_count(needed, available, size),),
                              generator=generator, device=device)
        mine = draws[(draws >= start) & (draws < stop)] - start
        batch.zero_()
        batch[mine] = True
        torch.gt(batch, flat_excluded, out=batch)
        if needed < count:
            torch.gt(batch, chosen, out=batch)
        local_hits = count_true(batch)
        sizes = sharding.all_gather_counts([local_hits])[:, 0].tolist()
        hit_count = sum(sizes)
        if hit_count > needed:
            positions = flat_nonzero(batch)  # (local hits,) ascending
            scores = torch.rand(hit_count, generator=generator, device=device)
            give_back = select_mask(scores, hit_count - needed)  # the same on every rank
            offset = sum(sizes[:sharding.rank])
            batch[positions[give_back[offset:offset + local_hits]]] = False
            hit_count = needed
        chosen |= batch
        needed -= hit_count
        available -= hit_count
    return chosen


class RecordedLayer:
    """What the recorder reads of one sharded layer: the whole shape, rank 0's whole mask."""

    def __init__(self, layer: Any) -> None:
        self._layer = layer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)

    @property
    def mask(self) -> torch.Tensor:
        return self._layer.record


class RecordedDriver:
    """A sharded driver as rank 0's recorder sees it: layers with whole masks (the host copy
    kept from the gathered changes), whole-layer counts; everything else is the driver's."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self.layers = [RecordedLayer(layer) for layer in driver.layers]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


def recording_view(driver: Any) -> Any:
    """What a recorder should follow: the driver itself, or on rank 0 of an FSDP2 job its
    whole-mask view (other ranks do not record)."""
    if getattr(driver, "sharding", None) is None:
        return driver
    return RecordedDriver(driver)
