"""The settings a run actually used, as stored with every run and shown by the dashboard.

A run is labelled by what it ran, never by a form's defaults: the driver's resolved settings
(`SparseDriver.settings()`: every "method default" replaced by its value) plus what the driver
cannot know, the model and the task. Built-in runs name their model as the config did
(`mlp [64, 64]`); a script's own module is `custom: <ClassName> (<parameter count>)`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def parameter_count_text(count: int) -> str:
    """`840 params`, `12.3 k params`, `25.6 M params`: short enough for a list column."""
    if count < 1_000:
        return f"{count} params"
    if count < 1_000_000:
        return f"{count / 1_000:.1f} k params"
    return f"{count / 1_000_000:.1f} M params"


def custom_model_label(model: nn.Module) -> str:
    """How a model that is not a built-in one is shown: its class and its size."""
    count = sum(parameter.numel() for parameter in model.parameters())
    return f"custom: {type(model).__name__} ({parameter_count_text(count)})"


def builtin_model_label(name: str, hidden: Sequence[int]) -> str:
    """A built-in model as the run config names it: `mlp [64, 64]`, `cnn [128]`."""
    return f"{name} [{', '.join(str(width) for width in hidden)}]"


def run_settings(driver, *, model: nn.Module, label: str | None = None,
                 task: str | None = None) -> dict:
    """The driver's resolved settings plus the model (label, class, parameter count) and task.

    `label` is the built-in model's name; left out, the model is a custom one."""
    settings = dict(driver.settings())
    settings.update(
        model=label or custom_model_label(model),
        model_class=type(model).__name__,
        parameter_count=sum(parameter.numel() for parameter in model.parameters()),
        task=task,
    )
    return settings
