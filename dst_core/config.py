"""The run configuration: one pydantic schema for REST, websockets, the worker, the CLI and
the saved run. Fields left out (None) take the chosen method's published defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TaskName = Literal["synthetic", "digits", "mnist"]
ModelName = Literal["mlp", "cnn"]
MethodName = Literal["dense", "static", "set", "set_magnitude", "rigl", "snfs", "deep_r",
                     "grad_sample"]


class RunConfig(BaseModel):
    """Everything that defines a training run; `POST /api/runs` with `{}` is a valid run."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, description="Label shown in the runs list")
    task: TaskName = Field("synthetic", description="Data set (all ship with their packages)")
    model: ModelName = Field("mlp", description="mlp: fully connected; cnn: LeNet-style")
    hidden: list[int] = Field([64, 64], description="Hidden layer widths")
    method: MethodName = Field("set", description="Dynamic sparse training algorithm")
    density: float = Field(0.1, gt=0.0, le=1.0, description="Share of connections kept active")
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
    epochs: int = Field(100, ge=1, description="Passes over the training set")
    batch_size: int = Field(64, ge=1, le=65536, description="Examples per step")
    lr: float = Field(0.05, gt=0.0, le=10.0, description="Learning rate")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="Optimizer")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 / decoupled weight decay")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds masks, init, data order")
    keyframe_every: int = Field(10, ge=1, description="Full masks stored every K rewires")
    temperature: float = Field(1.0, gt=0.0, description="Deep R noise / grad_sample temperature")
    l1: float = Field(1e-5, ge=0.0, description="Deep R L1 shrink of active parameters")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train")

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        if self.model == "cnn" and self.task == "synthetic":
            raise ValueError("model: 'cnn' needs an image task (digits or mnist)")
        for width in self.hidden:
            if width < 1:
                raise ValueError("hidden: every width must be >= 1")
        return self

    def display_name(self) -> str:
        return self.name or f"{self.method} · {self.task} · {self.model} · d={self.density:g}"
