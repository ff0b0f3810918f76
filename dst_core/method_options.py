"""A method's typed defaults and the ONE function that resolves a run's settings from them.

Every registered method carries a `MethodDefaults` (its published schedule, layer
distribution and options). `resolve_settings` fills every option left at None from the
method's defaults; the driver, the training loop (learning rate) and the run config all call
it, so "what does this run actually do" has one answer, recorded with the run
(`SparseDriver.settings()`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

DEFAULT_INTERVAL_STEPS = 100  # a per-epoch method driven without steps_per_epoch
STRUCTURES = ("unstructured", "n:m")


@dataclass(frozen=True)
class MethodDefaults:
    """A method's published defaults; a None option of a config or driver takes these."""

    drop_fraction: float = 0.3  # share of a layer's active connections replaced per rewire
    schedule: str = "constant"  # drop-fraction schedule: "constant" or "cosine"
    min_drop_fraction: float = 0.0  # floor of the cosine schedule (SNFS's CosineDecay: 0.005)
    interval_steps: int | str = DEFAULT_INTERVAL_STEPS  # steps between rewires, or "epoch"
    end_fraction: float = 1.0  # no rewiring after this share of training
    begin_step: int = 0  # no rewiring before this step (rigl's begin_step)
    distribution: str = "erk"  # layer-wise density: "uniform", "er" or "erk"
    first_layer_dense: bool = False  # with "uniform": the first layer stays dense (RigL)
    temperature: float = 1.0  # Deep R noise / grad_sample softmax temperature
    l1: float = 0.0  # Deep R's L1 shrink of active parameters
    lr: float = 0.05  # learning rate of the built-in training loop
    drop_noise: float = 0.0  # std of Gaussian noise added to |w| drop scores (rigl: 1e-5)
    skip_update_on_rewire: bool = False  # no optimizer update on a mask-update step (rigl)
    global_selection: bool = False  # drop and grow by one ranking across all layers
    ablation_threshold: float = 0.0  # SRigL γ_sal: share of salient weights a unit needs
    structure: str = "unstructured"  # "unstructured" or "n:m" (≤ n active in every m inputs)
    n: int = 2  # N of N:M
    m: int = 4  # M of N:M


OPTION_NAMES = tuple(field.name for field in fields(MethodDefaults))


@dataclass(frozen=True)
class ResolvedSettings(MethodDefaults):
    """`MethodDefaults` with nothing left open: the settings a run actually uses."""

    method: str = "set"
    interval_steps: int = DEFAULT_INTERVAL_STEPS  # resolved: "epoch" became steps_per_epoch
    total_steps: int | None = None
    steps_per_epoch: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_settings(
    method: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
) -> ResolvedSettings:
    """Every option of `method`: the given value where not None, else the method's default.

    `interval_steps="epoch"` (SET's, SNFS's) becomes `steps_per_epoch`, or
    `DEFAULT_INTERVAL_STEPS` when the caller does not know its epoch. Unknown option names
    raise ValueError naming them. Ranges are checked by the consumer (driver, schedule).
    """
    from dst_core.rewire import get_algorithm  # the registry imports this module

    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"{unknown[0]}: not an option; options: {', '.join(OPTION_NAMES)}")
    defaults = get_algorithm(method).defaults
    chosen = {name: overrides[name] if overrides.get(name) is not None
              else getattr(defaults, name) for name in OPTION_NAMES}
    if chosen["interval_steps"] == "epoch":
        chosen["interval_steps"] = steps_per_epoch or DEFAULT_INTERVAL_STEPS
    return ResolvedSettings(method=method, total_steps=total_steps,
                            steps_per_epoch=steps_per_epoch, **chosen)


def with_defaults(base: MethodDefaults | None = None, **changes: Any) -> MethodDefaults:
    """A method's defaults: `base` (or the generic ones) with `changes`, for class bodies."""
    return replace(base or MethodDefaults(), **changes)
