"""Topology frames: turns a driver's rewires into stored events (keyframes + deltas)."""

from __future__ import annotations

import numpy as np

from dst_core.driver import LayerChange, SparseDriver
from dst_core.events import EventSink, delta_payload, keyframe_payload, matrix_shape
from dst_core.store.codec import layer_kind

EMPTY = np.zeros(0, dtype="<u4")


class FrameEmitter:
    """Turns the driver's rewires into stored topology frames: a keyframe every K rewires."""

    def __init__(self, driver: SparseDriver, sink: EventSink, keyframe_every: int):
        self.driver = driver
        self.sink = sink
        self.keyframe_every = keyframe_every
        self.rewires = 0
        self.itop_rate = driver.itop_rate()  # as of the latest rewire (a pass over every layer)

    def keyframes(self, step: int, changes: list[LayerChange] = ()) -> None:
        by_layer = {change.layer: (change.added, change.removed) for change in changes}
        for index, layer in enumerate(self.driver.layers):
            # A layer the rewire left out has no changes: an empty pair says so.
            found = by_layer.get(layer.name, (EMPTY, EMPTY)) if changes else None
            self.sink.emit("topology", step, keyframe_payload(layer.name, index, layer.shape,
                                                              layer.mask, found))

    def __call__(self, changes: list[LayerChange]) -> None:
        self.rewires += 1
        step = changes[0].step if changes else self.driver.step_count
        self.itop_rate = self.driver.itop_rate()
        self.sink.emit("rewire", step, {
            "drop_fraction": self.driver.schedule.fraction_at(step),
            "layers": {c.layer: {"added": int(c.added.numel()), "removed": int(c.removed.numel()),
                                 "active": c.active_count,
                                 **({"weights": c.weights} if c.weights is not None else {})}
                       for c in changes},
            "turnover": sum(int(c.added.numel()) for c in changes)
            / max(1, sum(c.active_count for c in changes)),
            "itop_rate": self.itop_rate,
        })
        if self.rewires % self.keyframe_every == 0:
            self.keyframes(step, changes)
            return
        # A rewire may leave layers out (a dense layer, one SNFS gave nothing to move): the
        # frame's index is the layer's own, never its position in `changes`.
        index_of = {layer.name: index for index, layer in enumerate(self.driver.layers)}
        for change in changes:
            index = index_of[change.layer]
            layer = self.driver.layers[index]
            self.sink.emit("topology", step, delta_payload(
                change.layer, index, layer.shape, change.added, change.removed,
                change.active_count))

    def meta(self) -> dict:
        """The layers and schedule, so a viewer can lay out one heatmap per layer."""
        driver = self.driver
        return {
            "method": driver.method,
            "total_steps": driver.schedule.total_steps,
            "layers": [{"name": layer.name, "shape": list(layer.shape),
                        "matrix": matrix_shape(layer.shape), "density": layer.density,
                        "weight_shape": list(layer.shape), "kind": layer_kind(layer.shape)}
                       for layer in driver.layers],
            "schedule": {"drop_fraction": driver.schedule.drop_fraction,
                         "kind": driver.schedule.kind,
                         "interval_steps": driver.schedule.interval_steps,
                         "end_fraction": driver.schedule.end_fraction},
        }
