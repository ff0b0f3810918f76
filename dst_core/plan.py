"""A run's schedule before it runs: steps, rewires, when they stop, and what cannot show.

A run that never rewires, or whose drop fraction moves no connection at its density, trains
a static mask while the dashboard waits for topology changes that never come (RigL on digits
for 5 epochs: 115 steps, rewire every 100, stop at 75 %: zero rewires). The server computes
this from the config alone, from shapes and counts (no model is built, no data loaded), with
the same schedule rules the driver uses, and answers it with every started run and from
`POST /api/runs/plan` for the form.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from dst_core.config import CNN_CHANNELS, CNN_KERNEL, CNN_POOLINGS, TASK_SHAPES, RunConfig
from dst_core.density import layer_densities
from dst_core.rewire import Algorithm, Rewirer, get_algorithm
from dst_core.schedules import RewireSchedule
from dst_core.training import resolved_lr

# Training examples of each built-in task (dst_core.tasks: the examples left after the fixed
# 20 % test split), so a run's steps are known before its data is loaded
# (tests/dst_core/test_plan.py checks them against the loaded tasks).
TRAIN_EXAMPLES = {"synthetic": 3200, "digits": 1438, "mnist": 4000}


@dataclass(frozen=True)
class RunPlan:
    """What a run config will do, as the driver will resolve it."""

    steps_per_epoch: int
    epochs: int
    total_steps: int
    method: str
    density: float
    distribution: str
    drop_fraction: float
    schedule: str
    interval_steps: int
    end_fraction: float
    end_step: int  # no rewire at or after this step
    rewires: int  # topology changes the run will record (0 for the dense/static baselines)
    last_rewire_step: int | None
    connections_moved: int  # connections dropped (and regrown) at the first rewire, all layers
    # The value each field left out (None) takes: what the form shows as "method default".
    resolved: dict[str, float | int | str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def weight_shapes(config: RunConfig) -> list[tuple[int, ...]]:
    """The shapes of the weights the driver sparsifies in the built-in model of `config`."""
    input_shape, num_classes = TASK_SHAPES[config.task]
    shapes: list[tuple[int, ...]] = []
    if config.model == "cnn":
        channels, height, width = input_shape
        for out_channels in CNN_CHANNELS:
            shapes.append((out_channels, channels, CNN_KERNEL, CNN_KERNEL))
            channels = out_channels
        scale = 2 ** CNN_POOLINGS
        input_shape = (channels, height // scale, width // scale)
    fan_in = math.prod(input_shape)
    for out in [*config.hidden, num_classes]:
        shapes.append((out, fan_in))
        fan_in = out
    return shapes


def plan_run(config: RunConfig) -> RunPlan:
    """The schedule `config` will run, and a warning for each setting that cannot show anything."""
    algorithm = get_algorithm(config.method)
    defaults = algorithm.defaults
    steps_per_epoch = math.ceil(TRAIN_EXAMPLES[config.task] / config.batch_size)
    epochs = config.resolved_epochs
    total_steps = steps_per_epoch * epochs
    interval = config.interval_steps if config.interval_steps is not None \
        else defaults.get("interval_steps", 100)
    if interval == "epoch":
        interval = steps_per_epoch
    schedule = RewireSchedule(
        drop_fraction=float(config.drop_fraction if config.drop_fraction is not None
                            else defaults.get("drop_fraction", 0.3)),
        kind=config.schedule or defaults.get("schedule", "constant"),
        interval_steps=int(interval),
        end_fraction=float(config.end_fraction if config.end_fraction is not None
                           else defaults.get("end_fraction", 1.0)),
        total_steps=total_steps,
    )
    distribution = config.distribution or defaults.get("distribution", "uniform")
    density = 1.0 if algorithm.trains_dense else config.density
    # The baselines never change their mask (no after-step hook); Deep R flips connections
    # every step and reports them on the schedule; the rewirers drop and grow on it.
    changes_mask = type(algorithm).after_optimizer_step is not Algorithm.after_optimizer_step
    drops_on_schedule = isinstance(algorithm, Rewirer)
    # Steps s with s % interval == 0 and s < end_step (RewireSchedule.is_due), counted.
    due_count = max(0, (schedule.end_step - 1) // schedule.interval_steps)
    rewires = due_count if changes_mask else 0
    last_rewire_step = rewires * schedule.interval_steps if rewires else None
    moved = 0
    if rewires and drops_on_schedule:
        shapes = weight_shapes(config)
        first_fraction = schedule.fraction_at(schedule.interval_steps)
        for shape, layer_density in zip(shapes, layer_densities(shapes, density, distribution),
                                        strict=True):
            numel = math.prod(shape)
            active = min(numel, max(1, round(layer_density * numel)))  # driver.random_mask
            # A layer kept dense has no inactive position to grow into.
            moved += int(first_fraction * active) if active < numel else 0
    warnings = []
    if changes_mask and rewires == 0:
        warnings.append(
            f"no rewire: {total_steps} steps, rewire every {schedule.interval_steps} steps, "
            f"rewiring stops at {schedule.end_fraction:.0%} of training (step "
            f"{schedule.end_step}); the mask stays as initialised. Train more epochs or set "
            f"interval_steps below {max(1, schedule.end_step)}.")
    elif drops_on_schedule and rewires and moved == 0:
        warnings.append(
            f"drop fraction {schedule.fraction_at(schedule.interval_steps):g} moves no "
            f"connection at density {density:g}: each rewire replaces int(drop fraction × "
            "active connections) per layer, which is 0 in every layer here. Raise the drop "
            "fraction or the density.")
    return RunPlan(
        steps_per_epoch=steps_per_epoch, epochs=epochs, total_steps=total_steps,
        method=config.method, density=density, distribution=distribution,
        drop_fraction=schedule.drop_fraction, schedule=schedule.kind,
        interval_steps=schedule.interval_steps, end_fraction=schedule.end_fraction,
        end_step=schedule.end_step, rewires=rewires, last_rewire_step=last_rewire_step,
        connections_moved=moved, warnings=warnings,
        resolved={"epochs": epochs, "distribution": distribution,
                  "drop_fraction": schedule.drop_fraction, "schedule": schedule.kind,
                  "interval_steps": schedule.interval_steps,
                  "end_fraction": schedule.end_fraction, "lr": resolved_lr(config),
                  "temperature": float(config.temperature if config.temperature is not None
                                       else defaults.get("temperature", 1.0)),
                  "l1": float(config.l1 if config.l1 is not None else defaults.get("l1", 0.0))})
