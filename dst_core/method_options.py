"""The method options, declared once, and the one function that resolves a run's settings.

`MethodOptions` declares every option a method has a published default for: its type (that of
its generic default), what it sets and the values it takes (`Option`, in the field's
metadata). Everything else is generated from it: `SparseDriver`'s option keywords and their
checks (`check_type`, `check_settings`), `resolve_settings`, the run config's fields
(`dst_core.store.config.RunConfig`) and, through the run config, the OpenAPI schema, the
dashboard's form and `sparsescope train`'s flags. An option is added here, once.

Every registered method carries a `MethodOptions` of its published defaults
(`Algorithm.defaults`); `resolve_settings` fills every option left at None from them, so
"what does this run actually do" has one answer, recorded with the run
(`SparseDriver.settings()`).

Each option also says how the dashboard's form shows it (`label`, `group`) and which methods it
means something for (`applies`, a scope that dst_core.rewire.option_applies answers); the run config
puts both in its JSON schema (`x-group`, `x-methods`), so the form shows only the chosen
method's options.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from numbers import Integral, Real
from typing import Any

from dst_core.density import DISTRIBUTIONS
from dst_core.schedules import SCHEDULES
from dst_core.structure import STRUCTURES

DEFAULT_INTERVAL_STEPS = 100  # a per-epoch method driven without steps_per_epoch


# Which methods an option means something for, by scope name; dst_core.rewire.option_applies
# answers it for a method's class by what the class does (so a user's method that subclasses
# a built-in gets its parent's options). Names, not tests on classes: those classes live in
# modules that import this one.
OPTION_SCOPES = {
    "every": "every method",
    "sparse": "methods with a mask (all but the dense baseline)",
    "mask_changing": "methods whose mask changes during training (an after-step hook)",
    "drop_and_grow": "the rewirers: they drop a share of the active connections and grow as many",
    "noisy_drop": "rewirers that rank drops by the base |w| score (drop-score noise applies)",
    "global_selection": "methods that can rank across all layers",
    "structured": "methods that can keep an N:M constraint",
    "temperature": "Deep R (its noise) and grad_sample (its sampling)",
    "deep_r": "Deep R",
    "srigl": "SRigL",
}


@dataclass(frozen=True)
class Option:
    """What one method option takes and how it is shown: a `MethodOptions` field's metadata."""

    description: str  # what it sets, as the run config, the form and the CLI's --help say
    label: str = ""  # its name in the form ("Drop fraction"); the field name is in its help
    group: str = "method"  # the form's group: "method", "schedule", "optimisation", "advanced"
    applies: str = "every"  # the methods it means something for: a key of OPTION_SCOPES
    # Shown in the form only while other fields have these values ((("structure", "n:m"),)).
    shown_when: tuple[tuple[str, str], ...] = ()
    choices: tuple[str, ...] = ()  # the values a text option takes
    # Bounds the driver and the run config both check.
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    # Bounds only the run config has, where the driver has none: a run started from the
    # dashboard or the CLI stays in a range the server trains; a script's driver may go further.
    config_ge: float | None = None
    config_le: float | None = None
    keyword: bool = True  # a SparseDriver keyword (lr belongs to the training loop)
    config: bool = True  # a RunConfig field
    # Filled from the field: its name and the type its values take (its default's).
    name: str = ""
    kind: type = object


def option(default: Any, description: str, **spec: Any) -> Any:
    """A `MethodOptions` field: its generic default and its `Option`."""
    if spec.get("applies", "every") not in OPTION_SCOPES:
        raise ValueError(f"applies: {spec['applies']!r} is not one of {sorted(OPTION_SCOPES)}")
    return field(default=default, metadata={"option": Option(description, **spec)})


@dataclass(frozen=True)
class MethodOptions:
    """The method options; an instance is one method's published defaults, and a None option
    of a config or driver takes them."""

    drop_fraction: float = option(
        0.3, "Share of active connections replaced per rewire", ge=0.0, le=1.0,
        label="Drop fraction", group="schedule", applies="drop_and_grow")
    schedule: str = option(
        "constant", "Drop-fraction schedule; default: the method's", choices=SCHEDULES,
        label="Drop-fraction schedule", group="schedule", applies="drop_and_grow")
    min_drop_fraction: float = option(
        0.0, "Where the cosine schedule ends (SNFS's CosineDecay: 0.005)", ge=0.0, le=1.0,
        keyword=False, config=False)
    # "epoch" in a method's defaults: once per epoch (steps_per_epoch, when known).
    interval_steps: int | str = option(
        DEFAULT_INTERVAL_STEPS, "Steps between rewires; default: the method's (SET: one epoch)",
        ge=1, label="Rewire every (steps)", group="schedule", applies="mask_changing")
    end_fraction: float = option(
        1.0, "Stop rewiring after this share of training", ge=0.0, le=1.0,
        label="Stop rewiring at (share of training)", group="schedule",
        applies="mask_changing")
    begin_step: int = option(
        0, "No rewiring before this step (default 0)", ge=0, config_le=10**9,
        label="First rewire after step", group="schedule", applies="mask_changing")
    distribution: str = option(
        "erk", "Layer-wise density; default: the method's (SET er, RigL erk)",
        choices=DISTRIBUTIONS, label="Layer densities", applies="sparse")
    first_layer_dense: bool = option(
        False, "With uniform densities, keep the first layer dense; default: the method's "
               "(RigL yes)", label="Dense first layer", applies="sparse")
    temperature: float = option(
        1.0, "Deep R noise / grad_sample temperature; default: the method's (grad_sample 1, "
             "Deep R 1e-6)", gt=0.0, config_le=1e6, label="Temperature",
        applies="temperature")
    l1: float = option(
        0.0, "Deep R L1 shrink of active parameters (default 1e-5)", ge=0.0, config_le=1.0,
        label="L1 shrink", applies="deep_r")
    lr: float = option(
        0.05, "Learning rate; default: the method's (0.05; Deep R 0.2)", gt=0.0, config_le=10.0,
        keyword=False, label="Learning rate", group="optimisation")
    drop_noise: float = option(
        0.0, "Std of Gaussian noise added to |w| drop scores; default: the method's (RigL 1e-5, "
             "others 0)", ge=0.0, config_le=1.0, label="Drop-score noise", group="advanced",
        applies="noisy_drop")
    skip_update_on_rewire: bool = option(
        False, "No optimizer update on a rewire step; default: the method's (RigL yes, as its "
               "reference)", label="Skip the update on rewire steps", group="optimisation",
        applies="mask_changing")
    global_selection: bool = option(
        False, "Drop and grow by one ranking across all layers (magnitude and gradient "
               "methods); default no", label="Global selection", group="advanced",
        applies="global_selection")
    ablation_threshold: float = option(
        0.0, "SRigL γ_sal: a unit with fewer salient weights than this share of its fan-in is "
             "ablated (0.3)", ge=0.0, config_le=1.0, label="Neuron ablation threshold",
        applies="srigl")
    structure: str = option(
        "unstructured", "n:m keeps at most n active weights in every m consecutive inputs of a "
                        "row (2:4 by default: what GPUs accelerate)", choices=STRUCTURES,
        label="Structure", applies="structured")
    # N:M's own check (NMStructure: 1 <= n <= m) applies once structure is "n:m".
    n: int = option(2, "N of N:M (default 2)", config_ge=1, config_le=64, label="N (of N:M)",
                    applies="structured", shown_when=(("structure", "n:m"),))
    m: int = option(4, "M of N:M (default 4)", config_ge=1, config_le=64, label="M (of N:M)",
                    applies="structured", shown_when=(("structure", "n:m"),))


OPTIONS: dict[str, Option] = {
    item.name: replace(item.metadata["option"], name=item.name, kind=type(item.default))
    for item in fields(MethodOptions)}
OPTION_NAMES = tuple(OPTIONS)
KEYWORDS = tuple(name for name, spec in OPTIONS.items() if spec.keyword)  # SparseDriver's


@dataclass(frozen=True)
class ResolvedSettings(MethodOptions):
    """`MethodOptions` with nothing left open: the settings a run actually uses."""

    method: str = "set"
    interval_steps: int = DEFAULT_INTERVAL_STEPS  # resolved: "epoch" became steps_per_epoch
    total_steps: int | None = None
    steps_per_epoch: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_settings(
    method: str,
    defaults: MethodOptions,
    overrides: Mapping[str, Any] | None = None,
    *,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
) -> ResolvedSettings:
    """Every option of `method`: the given value where not None, else `defaults` (the method's,
    `get_algorithm(method).defaults`).

    `interval_steps="epoch"` (SET's, SNFS's) becomes `steps_per_epoch`, or
    `DEFAULT_INTERVAL_STEPS` when the caller does not know its epoch. Unknown option names
    raise ValueError naming them. Values are checked by the consumer (`check_settings` in the
    driver, the run config's fields).
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"{unknown[0]}: not an option; options: {', '.join(OPTION_NAMES)}")
    chosen = {name: overrides[name] if overrides.get(name) is not None
              else getattr(defaults, name) for name in OPTION_NAMES}
    if chosen["interval_steps"] == "epoch":
        chosen["interval_steps"] = steps_per_epoch or DEFAULT_INTERVAL_STEPS
    return ResolvedSettings(method=method, total_steps=total_steps,
                            steps_per_epoch=steps_per_epoch, **chosen)


def with_defaults(base: MethodOptions | None = None, **changes: Any) -> MethodOptions:
    """A method's defaults: `base` (or the generic ones) with `changes`, for class bodies."""
    return replace(base or MethodOptions(), **changes)


def check_type(name: str, value: Any, kind: type) -> None:
    """ValueError naming `name` unless `value` is a `kind` (float: a finite real number; int:
    an integer; bool: True or False; text is checked against its choices once resolved).
    None passes: the method's default."""
    if value is None or kind is str:
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected True or False, got {value!r}")
    elif isinstance(value, bool):  # True is an int to Python, not a number to a user
        raise ValueError(f"{name}: expected {_KIND_TEXT[kind]}, got {value!r}")
    elif kind is int and not isinstance(value, Integral):
        raise ValueError(f"{name}: expected an int, got {value!r}")
    elif kind is float and (not isinstance(value, Real) or not math.isfinite(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")


_KIND_TEXT = {int: "an int", float: "a finite number"}


def check_settings(settings: MethodOptions) -> None:
    """ValueError naming the first option outside its choices or its bounds (those the driver
    and the run config share; the run config's own caps are checked by its fields)."""
    for name, spec in OPTIONS.items():
        value = getattr(settings, name)
        if spec.choices and value not in spec.choices:
            raise ValueError(f"{name}: unknown {value!r}; known: {', '.join(spec.choices)}")
        if not ((spec.ge is None or value >= spec.ge) and (spec.gt is None or value > spec.gt)
                and (spec.le is None or value <= spec.le)):
            raise ValueError(f"{name}: must {_range_text(spec)}, got {value}")


def _range_text(spec: Option) -> str:
    low = spec.ge if spec.ge is not None else spec.gt
    if spec.le is not None and low is not None:
        return f"lie in {'[' if spec.ge is not None else '('}{low:g}, {spec.le:g}]"
    if low is not None:
        return f"be {'>=' if spec.ge is not None else '>'} {low:g}"
    return f"be <= {spec.le:g}"
