"""The schedule computed before a run starts agrees with the driver, and warns when a run
cannot show anything; every task's defaults learn and rewire."""

from __future__ import annotations

import math

import pytest
import torch

from dst_core.driver import SparseDriver
from dst_core.models import build_model
from dst_core.recording.training import build_optimizer, train
from dst_core.store.config import RunConfig
from dst_core.store.plan import TRAIN_EXAMPLES, plan_run, weight_shapes
from dst_core.tasks import TASKS, load_task


@pytest.mark.parametrize("task", TASKS)
def test_train_examples_are_the_loaded_tasks(task):
    assert TRAIN_EXAMPLES[task] == len(load_task(task).x_train)


CONFIGS = [
    {},
    {"task": "digits", "method": "rigl", "epochs": 5},
    {"task": "digits", "model": "cnn", "method": "snfs", "epochs": 3, "batch_size": 16},
    {"task": "mnist", "method": "set", "epochs": 2, "hidden": [32]},
    {"task": "digits", "method": "grad_sample", "epochs": 4, "interval_steps": 7,
     "end_fraction": 0.5, "density": 0.05},
    {"task": "synthetic", "method": "deep_r", "epochs": 3},
    {"task": "synthetic", "method": "static", "epochs": 3},
    {"task": "digits", "method": "rigl", "epochs": 6, "begin_step": 30, "interval_steps": 9,
     "dense_first_last": True, "hidden": [32, 16]},
    {"task": "digits", "method": "set", "epochs": 3, "distribution": "uniform",
     "first_layer_dense": True},
]


@pytest.mark.parametrize("fields", CONFIGS)
def test_plan_counts_what_the_driver_does(fields):
    config = RunConfig(**fields)
    plan = plan_run(config)
    input_shape, num_classes = {"synthetic": ((20,), 2), "digits": ((1, 8, 8), 10),
                                "mnist": ((1, 28, 28), 10)}[config.task]
    model = build_model(config.model, input_shape, config.hidden, num_classes)
    steps_per_epoch = math.ceil(TRAIN_EXAMPLES[config.task] / config.batch_size)
    driver = SparseDriver(  # as dst_core.recording.training builds it
        model, build_optimizer(config, model.parameters()), method=config.method,
        density=config.density, total_steps=steps_per_epoch * config.resolved_epochs,
        steps_per_epoch=steps_per_epoch, **config.driver_options())
    assert [layer.shape for layer in driver.layers] == weight_shapes(config)
    schedule = driver.schedule
    due = [step for step in range(1, schedule.total_steps + 1) if schedule.is_due(step)]
    assert plan.total_steps == schedule.total_steps
    assert plan.interval_steps == schedule.interval_steps
    assert plan.end_step == schedule.end_step
    if config.method == "static":
        assert plan.rewires == 0 and plan.warnings == []
        return
    assert plan.rewires == len(due)
    assert plan.last_rewire_step == (due[-1] if due else None)
    if config.method != "deep_r" and due:
        fraction = schedule.fraction_at(due[0])
        # A layer the distribution made dense has nowhere to grow: it cannot change.
        assert plan.connections_moved == sum(int(fraction * layer.active_count)
                                             for layer in driver.layers
                                             if layer.active_count < layer.mask.numel())


def test_zero_rewires_are_warned():
    plan = plan_run(RunConfig(task="digits", method="rigl", epochs=5))
    assert (plan.total_steps, plan.interval_steps, plan.rewires) == (115, 100, 0)
    (warning,) = plan.warnings
    assert "no rewire" in warning and "115 steps" in warning and "every 100" in warning


def test_a_drop_fraction_that_moves_nothing_is_warned():
    plan = plan_run(RunConfig(task="synthetic", method="set", density=0.01, drop_fraction=0.01,
                              hidden=[8], epochs=3))
    assert plan.rewires > 0 and plan.connections_moved == 0
    (warning,) = plan.warnings
    assert "moves no connection" in warning


class Collect:
    def __init__(self):
        self.events: list[tuple[str, int, dict]] = []

    def emit(self, type, step, payload):
        self.events.append((type, step, payload))


@pytest.mark.parametrize("task", TASKS)
def test_every_tasks_defaults_learn_and_rewire(task):
    """The form's defaults (only the task chosen): rewires that move connections, and accuracy
    well above chance early in the run."""
    config = RunConfig(task=task)
    plan = plan_run(config)
    assert plan.warnings == [] and plan.rewires >= 10 and plan.connections_moved > 0
    sink = Collect()
    # Four rewires in, and 400 steps (the default digits MLP at density 0.1 leaves chance
    # after ~160 steps; synthetic and MNIST sooner).
    stop_after = max(4 * plan.interval_steps, 400)
    torch.set_num_threads(1)
    train(config, sink, should_stop=lambda: any(
        step >= stop_after for kind, step, _ in sink.events if kind == "metrics"))
    rewires = [payload for kind, _, payload in sink.events if kind == "rewire"]
    assert len(rewires) >= 3
    assert all(sum(layer["added"] for layer in r["layers"].values()) > 0 for r in rewires)
    accuracy = [payload["accuracy"] for kind, _, payload in sink.events if kind == "metrics"]
    chance = 1 / {"synthetic": 2, "digits": 10, "mnist": 10}[task]
    assert accuracy[-1] > min(0.9, 3 * chance), accuracy
