"""The built-in training loop: one run of a RunConfig, emitting events to a sink.

The dashboard's worker and the CLI both call `train()`; a user's own loop uses the driver
and a Recorder directly instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dst_core.driver import SparseDriver
from dst_core.events import EventSink
from dst_core.models import build_model
from dst_core.run_labels import builtin_model_label, run_settings
from dst_core.store.config import RunConfig
from dst_core.store.frames import FrameEmitter
from dst_core.tasks import load_task

METRICS_EVERY_STEPS = 10  # one metrics event per 10 steps keeps long runs' streams light


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the run ends as failed ("diverged")."""


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but no CUDA GPU is available")
        return torch.device("cuda")
    return torch.device("cpu")


def resolved_lr(config: RunConfig) -> float:
    """The config's learning rate, else the method's (Deep R updates θ by plain SGD and needs
    a larger step than the weight-space methods)."""
    return float(config.resolved_settings().lr)


def build_optimizer(config: RunConfig, params) -> torch.optim.Optimizer:
    lr = resolved_lr(config)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    model.train()
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


INITS = ("he_sparse", "he", "pytorch")


def train(
    config: RunConfig,
    sink: EventSink,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    init: str | None = None,
) -> str:
    """Train one run; returns "completed" or "stopped". Raises Diverged on a non-finite loss.

    `init` overrides `config.init`: "pytorch" (PyTorch's default init, as the DST papers'
    setups), "he" (He init) or "he_sparse" (He init, then the driver's sparsity-aware rescale).
    """
    init = init or config.init
    if init not in INITS:
        raise ValueError(f"init: unknown {init!r}; known: {', '.join(INITS)}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    task = load_task(config.task)
    model = build_model(config.model, task.input_shape, config.hidden, task.num_classes,
                        he=init in ("he_sparse", "he")).to(device)
    optimizer = build_optimizer(config, model.parameters())
    x_train, y_train = task.x_train.to(device), task.y_train.to(device)
    x_test, y_test = task.x_test.to(device), task.y_test.to(device)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    driver = SparseDriver(
        model, optimizer, method=config.method, density=config.density,
        total_steps=steps_per_epoch * config.resolved_epochs, steps_per_epoch=steps_per_epoch,
        seed=config.seed, sparse_init=init == "he_sparse", **config.driver_options(),
    )
    emitter = FrameEmitter(driver, sink, config.keyframe_every)
    driver.listeners.append(emitter)
    meta = emitter.meta()
    meta.update(task=task.name, input_shape=list(task.input_shape),
                image_shape=list(task.image_shape) if task.image_shape else None,
                num_classes=task.num_classes, steps_per_epoch=steps_per_epoch,
                settings=run_settings(driver, model=model, task=task.name,
                                      label=builtin_model_label(config.model, config.hidden)))
    sink.emit("meta", 0, meta)
    emitter.keyframes(0)
    if hasattr(sink, "flush"):  # the layers show at once, not a flush interval later
        sink.flush()
    shuffler = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    window_loss = window_correct = window_seen = 0.0
    for epoch in range(config.resolved_epochs):
        order = torch.randperm(len(x_train), generator=shuffler).to(device)
        for start in range(0, len(x_train), config.batch_size):
            if should_stop():
                return "stopped"
            batch = order[start:start + config.batch_size]
            logits = model(x_train[batch])
            loss = F.cross_entropy(logits, y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            driver.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                sink.emit("metrics", driver.step_count, {"epoch": epoch, "loss": loss_value})
                raise Diverged(f"diverged: loss became {loss_value} at step {driver.step_count}")
            window_loss += loss_value * len(batch)
            window_correct += float((logits.argmax(1) == y_train[batch]).sum())
            window_seen += len(batch)
            if driver.step_count % METRICS_EVERY_STEPS == 0:
                sink.emit("metrics", driver.step_count, {
                    "epoch": epoch, "loss": window_loss / window_seen,
                    "accuracy": window_correct / window_seen,
                    "density": driver.global_density(), "layer_density": driver.densities(),
                    "itop_rate": driver.itop_rate(),
                    "wall_time_s": time.perf_counter() - started,
                })
                window_loss = window_correct = window_seen = 0.0
        test_loss, test_accuracy = evaluate(model, x_test, y_test)
        train_loss, train_accuracy = evaluate(model, x_train, y_train)
        sink.emit("eval", driver.step_count, {
            "epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy,
            "test_loss": test_loss, "test_accuracy": test_accuracy,
        })
    if hasattr(sink, "save_model"):
        sink.save_model(model, driver)
    return "completed"
