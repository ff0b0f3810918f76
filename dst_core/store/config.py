"""The run configuration: one pydantic schema for REST, websockets, the worker, the CLI and
the saved run. Fields left out (None) take the chosen method's published defaults.

The run's own fields are written here (`RunFields`); the method options' fields are generated
from their one declaration, `dst_core.method_options.MethodOptions` (`RunConfig`).

Validation here is what is true on every machine (ranges, `cnn` needs images); what depends
on the machine serving the request (a GPU, the server's limits) is checked by the server.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from dst_core.method_options import OPTIONS, ResolvedSettings, resolve_settings
from dst_core.rewire import REGISTRY, get_algorithm, option_applies

TaskName = Literal["synthetic", "digits", "mnist"]
ModelName = Literal["mlp", "cnn"]


def registered_methods() -> list[str]:
    """Every method in `dst_core.rewire.REGISTRY`, built-in and user-registered, sorted: the
    source of `method`'s choices in the config, the OpenAPI enum, the form and the CLI."""
    from dst_core import algorithms  # noqa: F401  (fills the registry)
    return sorted(REGISTRY)


def _method_enum(schema: dict[str, Any]) -> None:
    # Read when the schema is generated, so a method registered after import is listed.
    schema["enum"] = registered_methods()
    schema["x-group"] = "method"


# The dashboard's form shows the fields in these groups, in this order (`x-group` of each
# field's schema); `x-methods` lists the methods a field means something for (absent: all),
# `x-shown-when` the values other fields must have for it to matter, `x-choice-labels` the
# words for a choice's values. JSON Schema keeps unknown `x-` keys; nothing validates by them.
FORM_GROUPS = ("task", "method", "schedule", "optimisation", "advanced")


def form_schema(group: str, applies: str = "every",
                shown_when: tuple[tuple[str, str], ...] = (),
                choice_labels: dict[str, str] | None = None) -> Callable[[dict[str, Any]], None]:
    """A field's `json_schema_extra`: how the form shows it (see FORM_GROUPS). `applies`, a
    scope of method_options.OPTION_SCOPES, is asked of every registered method's class when
    the schema is generated, so a method registered after import is placed too."""
    def extra(schema: dict[str, Any]) -> None:
        schema["x-group"] = group
        if applies != "every":
            schema["x-methods"] = [name for name in registered_methods()
                                   if option_applies(applies, type(REGISTRY[name]))]
        if shown_when:
            schema["x-shown-when"] = dict(shown_when)
        if choice_labels:
            schema["x-choice-labels"] = dict(choice_labels)
    return extra


# (input_shape, num_classes) of each built-in task, so a run's size is known before any data
# is loaded (tests/backend/test_validation.py checks it against dst_core.tasks).
TASK_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "synthetic": ((20,), 2),
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
}
# LeNet's feature extractor (dst_core.models.LeNet): two 3×3 convs, each followed by a 2×2 pool.
CNN_CHANNELS = (16, 32)
CNN_KERNEL = 3
CNN_POOLINGS = 2

Width = Annotated[int, Field(ge=1, description="Units in one hidden layer")]


TASK_EPOCHS = {"synthetic": 3000, "digits": 100, "mnist": 30}
# Each task as the form names it, with its real size (dst_core.tasks; 20 % of it is held out).
TASK_LABELS = {
    "synthetic": "Synthetic (4,000 points, 20 features)",
    "digits": "Digits (scikit-learn, 1,797 8×8 images)",
    "mnist": "MNIST (5,000-image subset)",
}
# The method options a run config has (all but those only a method's defaults set).
CONFIG_OPTIONS = tuple(name for name, spec in OPTIONS.items() if spec.config)
BOOLEAN_FIELDS = frozenset({"dense_first_last", *(name for name in CONFIG_OPTIONS
                                                  if OPTIONS[name].kind is bool)})
# RunConfig fields that are SparseDriver keywords of the same name.
DRIVER_OPTIONS = ("dense_first_last", *(name for name in CONFIG_OPTIONS if OPTIONS[name].keyword))


def method_option_fields() -> dict[str, Any]:
    """`create_model` field definitions of the method options a run config has: optional
    (None: the method's default), typed, described and bounded as `MethodOptions` declares."""
    definitions = {}
    for name in CONFIG_OPTIONS:
        spec = OPTIONS[name]
        kind = Literal[spec.choices] if spec.choices else spec.kind
        bounds = {"ge": spec.ge if spec.config_ge is None else spec.config_ge, "gt": spec.gt,
                  "le": spec.le if spec.config_le is None else spec.config_le}
        definitions[name] = (kind | None, Field(
            None, title=spec.label or None, description=spec.description,
            json_schema_extra=form_schema(spec.group, spec.applies, spec.shown_when),
            **{key: value for key, value in bounds.items() if value is not None}))
    return definitions


class RunFields(BaseModel):
    """The run config's own fields and its checks; `RunConfig` adds the method options."""

    # NaN or ±inf would slip past one-sided bounds (inf > 0): reject them outright.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("", max_length=200, title="Run name",
                      description="Label shown in the runs list",
                      json_schema_extra=form_schema("task"))
    task: TaskName = Field("synthetic", title="Task",
                           description="Data set (all ship with their packages)",
                           json_schema_extra=form_schema("task", choice_labels=TASK_LABELS))
    model: ModelName = Field("mlp", title="Model",
                             description="mlp: fully connected; cnn: LeNet-style",
                             json_schema_extra=form_schema("task"))
    hidden: list[Width] = Field([64, 64], title="Hidden layers",
                                description="Hidden layer widths",
                                json_schema_extra=form_schema("task"))
    method: str = Field("set", title="Method", description="Dynamic sparse training algorithm "
                        "(any registered method)", json_schema_extra=_method_enum)
    density: float = Field(0.1, gt=0.0, le=1.0, title="Density",
                           description="Share of connections kept active (ignored for dense: 1)",
                           json_schema_extra=form_schema("method", "sparse"))
    # Left out, it is the task's: the seed task's epoch is 50 steps of a tiny MLP, so Start on
    # the dashboard trains for minutes, long enough to watch and Stop (150,000 steps; measured
    # in docs/benchmarks.md); digits and MNIST converge in far fewer.
    epochs: int | None = Field(
        None, ge=1,
        description="Passes over the training set; default: the task's (synthetic 3000 = "
                    "150,000 steps, minutes to watch; digits 100; mnist 30)",
        title="Epochs", json_schema_extra=form_schema("schedule"))
    batch_size: int = Field(64, ge=1, le=65536, title="Batch size",
                            description="Examples per step",
                            json_schema_extra=form_schema("optimisation"))
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "sgd", description="Optimizer (Deep R moves its sparse weights by its own SGD rule "
                           "whatever is chosen here, as the paper's Algorithm 1; biases follow "
                           "this one: compare Deep R with others under SGD)",
        title="Optimizer", json_schema_extra=form_schema("optimisation"))
    momentum: float = Field(0.9, ge=0.0, lt=1.0, title="Momentum", description="SGD momentum",
                            json_schema_extra=form_schema("optimisation",
                                                          shown_when=(("optimizer", "sgd"),)))
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, title="Weight decay",
                                description="L2 / decoupled weight decay",
                                json_schema_extra=form_schema("optimisation"))
    seed: int = Field(0, ge=0, le=2**31 - 1, title="Seed", description="Seeds masks, init, data order",
                      json_schema_extra=form_schema("advanced"))
    keyframe_every: int = Field(10, ge=1, le=1_000_000, title="Full masks every (rewires)",
                                description="Full masks stored every K rewires",
                                json_schema_extra=form_schema("advanced"))
    dense_first_last: bool = Field(False, title="Dense first and last layer",
                                   description="Keep the first and the last layer dense",
                                   json_schema_extra=form_schema("method", "sparse"))
    init: Literal["pytorch", "he", "he_sparse"] = Field(
        "pytorch",
        description="Initial weights: pytorch (PyTorch's default, as the DST papers train), he "
                    "(He init), he_sparse (He, then each unit scaled to its active fan-in: "
                    "learns faster at low density, but narrows DST's lead over a static mask)",
        title="Initial weights", json_schema_extra=form_schema("optimisation"))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", title="Device",
                                                   description="Where to train",
                                                   json_schema_extra=form_schema("advanced"))

    @property
    def resolved_epochs(self) -> int:
        """`epochs`, else the task's default (TASK_EPOCHS)."""
        return self.epochs if self.epochs is not None else TASK_EPOCHS[self.task]

    @model_validator(mode="before")
    @classmethod
    def _dense_ignores_density(cls, data: Any) -> Any:
        # A dense run keeps every connection: whatever density came with it is meaningless,
        # so it is neither validated nor stored as anything but 1.
        if isinstance(data, dict) and data.get("method") == "dense":
            return {**data, "density": 1.0}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1 and false as 0: {"epochs": true} would quietly
        # train for one epoch. Only the yes/no fields take booleans.
        if info.field_name in BOOLEAN_FIELDS:
            return value
        if isinstance(value, bool) or (isinstance(value, list)
                                       and any(isinstance(item, bool) for item in value)):
            raise ValueError("true/false is not a valid value here")
        return value

    @field_validator("method")
    @classmethod
    def _method_registered(cls, method: str) -> str:
        known = registered_methods()
        if method not in known:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(known)}")
        return method

    @model_validator(mode="after")
    def _structure_fits(self) -> RunConfig:
        settings = self.resolved_settings()
        if settings.structure == "n:m":
            if settings.n > settings.m:
                raise ValueError(f"n: must not exceed m ({settings.n} > {settings.m})")
            if self.density > settings.n / settings.m:
                raise ValueError(f"density: {self.density:g} does not fit {settings.n}:"
                                 f"{settings.m} (at most n/m = {settings.n / settings.m:g})")
        return self

    def driver_options(self) -> dict[str, Any]:
        """The config's driver options (None: the method's default), as SparseDriver takes
        them."""
        return {name: getattr(self, name) for name in DRIVER_OPTIONS}

    def resolved_settings(self, steps_per_epoch: int | None = None,
                          total_steps: int | None = None) -> ResolvedSettings:
        """This config's settings with the method's defaults filled in (the one resolver,
        `dst_core.method_options.resolve_settings`, that the driver uses too)."""
        options = {name: getattr(self, name) for name in CONFIG_OPTIONS}
        return resolve_settings(self.method, get_algorithm(self.method).defaults, options,
                                total_steps=total_steps, steps_per_epoch=steps_per_epoch)

    @field_validator("model")
    @classmethod
    def _model_fits_task(cls, model: str, info: ValidationInfo) -> str:
        task = info.data.get("task")
        if model == "cnn" and task is not None and len(TASK_SHAPES[task][0]) != 3:
            raise ValueError(f"'cnn' needs an image task (digits or mnist), not {task!r}")
        return model

    def display_name(self) -> str:
        return self.name or f"{self.method} · {self.task} · {self.model} · d={self.density:g}"

    def parameter_count(self) -> int:
        """Dense parameters (weights and biases) of the model this config builds, computed
        from shapes alone: the server refuses oversized runs without allocating them."""
        input_shape, num_classes = TASK_SHAPES[self.task]
        total = 0
        if self.model == "cnn":
            channels, height, width = input_shape
            for out_channels in CNN_CHANNELS:
                total += channels * out_channels * CNN_KERNEL * CNN_KERNEL + out_channels
                channels = out_channels
            scale = 2 ** CNN_POOLINGS
            input_shape = (channels, height // scale, width // scale)
        fan_in = math.prod(input_shape)
        for out in [*self.hidden, num_classes]:
            total += fan_in * out + out
            fan_in = out
        return total


# Everything that defines a training run: the run's own fields, then the method options.
RunConfig = create_model("RunConfig", __base__=RunFields, __module__=__name__,
                         __doc__="Everything that defines a training run; `POST /api/runs` "
                                 "with `{}` is a valid run.",
                         **method_option_fields())
