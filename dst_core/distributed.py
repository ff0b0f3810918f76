"""Everything `torch.distributed`: identical masks on every rank of a DDP job.

Each rank of a DistributedDataParallel job holds its own copy of the masks. DDP all-reduces
the (masked) gradients, so the weights stay identical, but nothing makes two drivers' rewire
decisions agree: a driver given `seed=rank` starts from different masks, and a rank whose
rewire reads its own un-reduced dense gradient grows different connections. The replicas
then silently train different networks. `SparseDriver` attaches a `DistributedSync` when a
process group is initialised (nothing for the user to pass), which keeps them identical by
construction:

1. at construction (and after `load_state_dict`) rank 0's masks, ITOP union, sparsified
   weights, init bounds, algorithm buffers (Deep R's signs) and seed are broadcast;
2. the dense gradient the driver keeps aside (before DDP's all-reduce, by a post-accumulate
   hook) is averaged across ranks before any algorithm reads it: RigL, grad_sample and
   srigl score the reduced gradient, SNFS's momentum is completed from it;
3. the driver's generator is re-seeded at every step from rank 0's seed and the step count,
   so every rank draws the same random numbers (SET's growth, Deep R's noise and revival,
   RigL's drop noise) whatever it drew before;
4. every `verify_every` rewires an all-gathered hash of each layer's mask is compared, and
   `MaskDivergenceError` names the first layer that differs and the ranks that disagree.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

# Odd 64-bit constants (splitmix64): multiplying a flat index by one and folding its high
# bits spreads neighbouring indices over the whole range, so a sum of hashed indices tells
# two different sets of the same size apart.
_MIX_A = 0x9E3779B97F4A7C15 - (1 << 64)  # as a signed int64
_MIX_B = 0xBF58476D1CE4E5B9 - (1 << 64)
_STEP_SEED_MASK = (1 << 63) - 1


class MaskDivergenceError(RuntimeError):
    """Ranks of one job hold different masks: their replicas train different networks."""


def is_distributed() -> bool:
    """Whether this process is a rank of an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many ranks the job has (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def process_info() -> dict[str, Any] | None:
    """The job's layout for a run's info (None outside a process group). No collective: a
    script may build its Recorder on rank 0 only, and a collective there would hang."""
    if not is_distributed():
        return None
    size = world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    return {"world_size": size, "backend": str(dist.get_backend()), "rank": rank(),
            "ranks": list(range(size)), "local_world_size": local,
            "nodes": max(1, size // max(1, local))}


def communication_device() -> torch.device:
    """Where collectives' tensors must live: NCCL reduces CUDA tensors only."""
    if str(dist.get_backend()) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def step_seed(base_seed: int, step: int) -> int:
    """The generator's seed for one step: a function of rank 0's seed and the step only."""
    return (base_seed * 6364136223846793005 + 1442695040888963407 * (step + 1)) & _STEP_SEED_MASK


@torch.no_grad()
def mask_hash(mask: torch.Tensor) -> torch.Tensor:
    """(2,) int64 on the mask's device summarising a bool mask: the active count and a
    wrapping sum of mixed flat indices. One pass over the mask, no host copy."""
    index = torch.nonzero(mask.reshape(-1)).reshape(-1)  # (k,) int64
    mixed = index * _MIX_A
    mixed = mixed ^ (mixed >> 31)
    mixed = mixed * _MIX_B
    return torch.stack([mixed.sum(), torch.tensor(index.numel(), device=mask.device)])


class VerifiedEvery:
    """Counts rewires and checks the ranks agree (`verify()`) at every `verify_every`-th
    (0: never): DDP's sync and FSDP2's sharding (dst_core.sharded) alike."""

    verify_every: int
    rewires: int

    def after_rewire(self) -> None:
        """Count the rewire; every `verify_every`-th, check the masks agree."""
        self.rewires += 1
        if self.verify_every and self.rewires % self.verify_every == 0:
            self.verify()

    def verify(self) -> None:
        raise NotImplementedError


class DistributedSync(VerifiedEvery):
    """A driver's link to the process group (see the module docstring)."""

    def __init__(self, driver: Any, verify_every: int) -> None:
        self.driver = driver
        self.verify_every = verify_every
        self.rank = rank()
        self.world_size = world_size()
        self.device = communication_device()
        self.rewires = 0
        self.base_seed = int(driver.seed)
        self.broadcast_state()

    # ---- rank 0's state everywhere --------------------------------------------------------
    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of `tensor` (same shape and dtype on every rank), as a new tensor on
        the tensor's device; bool travels as uint8 (not every backend reduces bool)."""
        wire = tensor.to(self.device, torch.uint8 if tensor.dtype == torch.bool else None,
                         copy=True).contiguous()
        dist.broadcast(wire, src=0)
        return wire.to(tensor.device, tensor.dtype)

    @torch.no_grad()
    def broadcast_state(self) -> None:
        """Make every rank's masks, weights and algorithm state rank 0's. Masks are assigned
        new tensors (never written in place) so the driver's cached float multiplier follows."""
        driver = self.driver
        seed = self._broadcast(torch.tensor([int(driver.seed)], dtype=torch.int64))
        self.base_seed = int(seed.item())
        bounds = self._broadcast(torch.tensor([layer.init_bound for layer in driver.layers],
                                              dtype=torch.float64))
        for layer, bound in zip(driver.layers, bounds.tolist(), strict=True):
            layer.mask = self._broadcast(layer.mask)
            layer.ever_active = self._broadcast(layer.ever_active)
            layer.weight.data.copy_(self._broadcast(layer.weight.data))
            layer.init_bound = float(bound)
            layer.buffers = {key: self._broadcast(layer.buffers[key])
                             for key in sorted(layer.buffers)}
        driver.apply_masks()

    # ---- per step -------------------------------------------------------------------------
    def before_step(self) -> None:
        """Seed this step's draws identically on every rank."""
        driver = self.driver
        driver.generator.manual_seed(step_seed(self.base_seed, driver.step_count))

    @torch.no_grad()
    def reduce_dense_grads(self, dense_grads: dict[str, torch.Tensor]) -> None:
        """Average the dense gradients kept aside this step across ranks, in place, in one
        all-reduce (DDP averages `.grad` the same way). They were copied before DDP's own
        reduction, so without this each rank would score its own batch."""
        kept = [dense_grads[layer.name] for layer in self.driver.layers
                if layer.name in dense_grads]
        if not kept:
            return
        flat = torch.cat([grad.reshape(-1).to(self.device) for grad in kept])  # (Σ numel,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(self.world_size)
        for grad, part in zip(kept, flat.split([grad.numel() for grad in kept]), strict=True):
            grad.copy_(part.view(grad.shape))

    @torch.no_grad()
    def verify(self) -> None:
        """All-gather every layer's mask hash; raise MaskDivergenceError on every rank (so
        none is left waiting in a collective) naming the first differing layer and ranks."""
        driver = self.driver
        hashes = torch.stack([mask_hash(layer.mask).to(self.device)
                              for layer in driver.layers])  # (L, 2)
        gathered = [torch.empty_like(hashes) for _ in range(self.world_size)]
        dist.all_gather(gathered, hashes)
        table = torch.stack(gathered).cpu()  # (world, L, 2)
        disagree = (table != table[0]).any(dim=2)  # (world, L)
        differs = disagree.any(dim=0)  # (L,)
        if bool(differs.any()):
            index = int(torch.nonzero(differs)[0])
            ranks = torch.nonzero(disagree[:, index]).reshape(-1).tolist()
            count = int(differs.sum())
            raise MaskDivergenceError(
                f"masks diverged across ranks at step {driver.step_count}: layer "
                f"{driver.layers[index].name!r} on rank(s) {ranks} differs from rank 0"
                + (f" ({count} layers differ)" if count > 1 else "")
                + "; the replicas no longer train one network (a rank-local random draw or "
                "score in the method?)")


def attach(driver: Any, verify_every: int) -> DistributedSync | None:
    """The driver's DistributedSync when a process group is initialised, else None."""
    return DistributedSync(driver, verify_every) if is_distributed() else None
