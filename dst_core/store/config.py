"""The run configuration: one pydantic schema for REST, websockets, the worker, the CLI and
the saved run. Fields left out (None) take the chosen method's published defaults.

Validation here is what is true on every machine (ranges, `cnn` needs images); what depends
on the machine serving the request (a GPU, the server's limits) is checked by the server.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from dst_core.settings import OPTION_NAMES, ResolvedSettings, resolve_settings

TaskName = Literal["synthetic", "digits", "mnist"]
ModelName = Literal["mlp", "cnn"]


def registered_methods() -> list[str]:
    """Every method in `dst_core.rewire.REGISTRY`, built-in and user-registered, sorted: the
    source of `method`'s choices in the config, the OpenAPI enum, the form and the CLI."""
    from dst_core import algorithms  # noqa: F401  (fills the registry)
    from dst_core.rewire import REGISTRY

    return sorted(REGISTRY)


def _method_enum(schema: dict[str, Any]) -> None:
    # Read when the schema is generated, so a method registered after import is listed.
    schema["enum"] = registered_methods()

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
BOOLEAN_FIELDS = frozenset({"skip_update_on_rewire", "first_layer_dense", "dense_first_last",
                            "global_selection"})
# RunConfig fields that are SparseDriver options of the same name.
DRIVER_OPTIONS = ("distribution", "drop_fraction", "schedule", "interval_steps", "end_fraction",
                  "temperature", "l1", "begin_step", "drop_noise", "skip_update_on_rewire",
                  "first_layer_dense", "dense_first_last", "global_selection",
                  "ablation_threshold", "structure", "n", "m")


class RunConfig(BaseModel):
    """Everything that defines a training run; `POST /api/runs` with `{}` is a valid run."""

    # NaN or ±inf would slip past one-sided bounds (inf > 0): reject them outright.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("", max_length=200, description="Label shown in the runs list")
    task: TaskName = Field("synthetic", description="Data set (all ship with their packages)")
    model: ModelName = Field("mlp", description="mlp: fully connected; cnn: LeNet-style")
    hidden: list[Width] = Field([64, 64], description="Hidden layer widths")
    method: str = Field("set", description="Dynamic sparse training algorithm (any registered "
                        "method)", json_schema_extra=_method_enum)
    density: float = Field(0.1, gt=0.0, le=1.0,
                           description="Share of connections kept active (ignored for dense: 1)")
    distribution: Literal["uniform", "er", "erk"] | None = Field(
        None, description="Layer-wise density; default: the method's (SET er, RigL erk)")
    drop_fraction: float | None = Field(
        None, ge=0.0, le=1.0, description="Share of active connections replaced per rewire")
    schedule: Literal["constant", "cosine"] | None = Field(
        None, description="Drop-fraction schedule; default: the method's")
    interval_steps: int | None = Field(
        None, ge=1, description="Steps between rewires; default: the method's (SET: one epoch)")
    end_fraction: float | None = Field(
        None, ge=0.0, le=1.0, description="Stop rewiring after this share of training")
    # Left out, it is the task's: the seed task's epoch is 50 steps of a tiny MLP, so Start on
    # the dashboard trains for minutes, long enough to watch and Stop (150,000 steps; measured
    # in docs/benchmarks.md); digits and MNIST converge in far fewer.
    epochs: int | None = Field(
        None, ge=1,
        description="Passes over the training set; default: the task's (synthetic 3000 = "
                    "150,000 steps, minutes to watch; digits 100; mnist 30)")
    batch_size: int = Field(64, ge=1, le=65536, description="Examples per step")
    lr: float | None = Field(None, gt=0.0, le=10.0,
                             description="Learning rate; default: the method's (0.05; Deep R 0.2)")
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "sgd", description="Optimizer (Deep R moves its sparse weights by its own SGD rule "
                           "whatever is chosen here, as the paper's Algorithm 1; biases follow "
                           "this one: compare Deep R with others under SGD)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 / decoupled weight decay")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds masks, init, data order")
    keyframe_every: int = Field(10, ge=1, le=1_000_000,
                                description="Full masks stored every K rewires")
    temperature: float | None = Field(
        None, gt=0.0, le=1e6,
        description="Deep R noise / grad_sample temperature; default: the method's "
                    "(grad_sample 1, Deep R 1e-6)")
    l1: float | None = Field(None, ge=0.0, le=1.0,
                             description="Deep R L1 shrink of active parameters (default 1e-5)")
    begin_step: int | None = Field(
        None, ge=0, le=10**9, description="No rewiring before this step (default 0)")
    drop_noise: float | None = Field(
        None, ge=0.0, le=1.0, description="Std of Gaussian noise added to |w| drop scores; "
                                          "default: the method's (RigL 1e-5, others 0)")
    skip_update_on_rewire: bool | None = Field(
        None, description="No optimizer update on a rewire step; default: the method's "
                          "(RigL yes, as its reference)")
    first_layer_dense: bool | None = Field(
        None, description="With uniform densities, keep the first layer dense; default: the "
                          "method's (RigL yes)")
    dense_first_last: bool = Field(False, description="Keep the first and the last layer dense")
    global_selection: bool | None = Field(
        None, description="Drop and grow by one ranking across all layers (magnitude and "
                          "gradient methods); default no")
    ablation_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="SRigL γ_sal: a unit with fewer salient weights "
                                          "than this share of its fan-in is ablated (0.3)")
    structure: Literal["unstructured", "n:m"] | None = Field(
        None, description="n:m keeps at most n active weights in every m consecutive inputs "
                          "of a row (2:4 by default: what GPUs accelerate)")
    n: int | None = Field(None, ge=1, le=64, description="N of N:M (default 2)")
    m: int | None = Field(None, ge=1, le=64, description="M of N:M (default 4)")
    init: Literal["pytorch", "he", "he_sparse"] = Field(
        "pytorch",
        description="Initial weights: pytorch (PyTorch's default, as the DST papers train), he "
                    "(He init), he_sparse (He, then each unit scaled to its active fan-in: "
                    "learns faster at low density, but narrows DST's lead over a static mask)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train")

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
        `dst_core.settings.resolve_settings`, that the driver uses too)."""
        options = {name: value for name, value in self.driver_options().items()
                   if name in OPTION_NAMES}
        options["lr"] = self.lr
        return resolve_settings(self.method, options, total_steps=total_steps,
                                steps_per_epoch=steps_per_epoch)

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
