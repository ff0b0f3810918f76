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

from dst_core.density import layer_densities
from dst_core.rewire import Algorithm, Rewirer, get_algorithm
from dst_core.schedules import RewireSchedule
from dst_core.store.config import CNN_CHANNELS, CNN_KERNEL, CNN_POOLINGS, TASK_SHAPES, RunConfig

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
    resolved: dict[str, bool | int | float | str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # How long it would take, from the steps/s earlier finished runs of the same task and
    # model measured on this server ({seconds, steps_per_s, runs, basis}); the server fills it
    # in (backend/services/estimate.py), None here.
    estimate: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def weight_shapes(config: RunConfig) -> list[tuple[int, ...]]:
    """The shapes of the weights the driver sparsifies in the built-in model of `config`
    (find_prunable's order; `dense_first_last` leaves the first and the last out)."""
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
    return shapes[1:-1] if config.dense_first_last and len(shapes) >= 2 else shapes


def plan_run(config: RunConfig) -> RunPlan:
    """The schedule `config` will run, and a warning for each setting that cannot show anything.

    The settings come from the one resolver the driver uses (`RunConfig.resolved_settings`);
    the count of connections a rewire moves is each layer's int(f · k), exact for per-layer
    selection (global selection and N:M redistribute it, the total stays near)."""
    algorithm = get_algorithm(config.method)
    steps_per_epoch = math.ceil(TRAIN_EXAMPLES[config.task] / config.batch_size)
    epochs = config.resolved_epochs
    total_steps = steps_per_epoch * epochs
    used = config.resolved_settings(steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    schedule = RewireSchedule(
        drop_fraction=float(used.drop_fraction), kind=used.schedule,
        interval_steps=int(used.interval_steps), end_fraction=float(used.end_fraction),
        total_steps=total_steps, begin_step=int(used.begin_step),
        min_drop_fraction=float(used.min_drop_fraction))
    distribution = used.distribution
    density = 1.0 if algorithm.trains_dense else config.density
    # The baselines never change their mask (no after-step hook); Deep R flips connections
    # every step and reports them on the schedule; the rewirers drop and grow on it.
    changes_mask = type(algorithm).after_optimizer_step is not Algorithm.after_optimizer_step
    drops_on_schedule = isinstance(algorithm, Rewirer)
    # Steps s > begin with (s - begin) % interval == 0 and s < end_step
    # (RewireSchedule.is_due), counted.
    begin, interval = schedule.begin_step, schedule.interval_steps
    due_count = max(0, (schedule.end_step - 1 - begin) // interval)
    rewires = due_count if changes_mask else 0
    first_rewire_step = begin + interval
    last_rewire_step = begin + rewires * interval if rewires else None
    moved = 0
    if rewires and drops_on_schedule:
        shapes = weight_shapes(config)
        densities = layer_densities(shapes, density, distribution)
        if used.first_layer_dense and distribution == "uniform" and len(densities) > 1:
            densities[0] = 1.0
        first_fraction = schedule.fraction_at(first_rewire_step)
        for shape, layer_density in zip(shapes, densities, strict=True):
            numel = math.prod(shape)
            active = min(numel, max(1, round(layer_density * numel)))  # driver.random_mask
            # A layer kept dense has no inactive position to grow into.
            moved += int(first_fraction * active) if active < numel else 0
    warnings = []
    if changes_mask and rewires == 0:
        warnings.append(
            f"no rewire: {total_steps} steps, rewire every {interval} steps"
            + (f" after step {begin}" if begin else "")
            + f", rewiring stops at {schedule.end_fraction:.0%} of training (step "
            f"{schedule.end_step}); the mask stays as initialised. Train more epochs or set "
            f"interval_steps below {max(1, schedule.end_step - begin)}.")
    elif drops_on_schedule and rewires and moved == 0:
        warnings.append(
            f"drop fraction {schedule.fraction_at(first_rewire_step):.3g} moves no "
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
        resolved={"epochs": epochs, **{  # every field a config may leave to the method
            name: value for name, value in used.as_dict().items()
            if name in RunConfig.model_fields and RunConfig.model_fields[name].default is None}})
