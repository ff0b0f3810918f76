"""Topology frames: turns a driver's rewires into stored events (keyframes + deltas).

Frames are stored in the layer's *matrix* orientation, outputs first ([out, in·kernel…]),
whatever axis the weight keeps its outputs on: Hugging Face's `Conv1D` stores (in, out), and
its masks and changes are transposed here, once, so views, fan-in/fan-out, heads and the
cohort index read every layer the same way. `weight_shape` and `output_axis` in the run's
meta say how the parameter itself is laid out.
"""

from __future__ import annotations

import numpy as np

from dst_core.driver import SparseDriver
from dst_core.events import EventSink, delta_payload, keyframe_payload, matrix_shape
from dst_core.masked_layer import LayerChange
from dst_core.store.codec import layer_kind

EMPTY = np.zeros(0, dtype="<u4")
# The layer types of dst_core.prunable as the stored `kind` (how a matrix maps to its weight).
STORED_KIND = {"linear": "linear", "hf_conv1d": "linear", "attention_in_proj": "linear",
               "conv": "conv"}


def matrix_order(shape: tuple[int, ...], output_axis: int) -> tuple[int, ...]:
    """The weight's axes in matrix order: the output axis first, the others as they come."""
    return (output_axis,) + tuple(axis for axis in range(len(shape)) if axis != output_axis)


def matrix_layout_shape(shape: tuple[int, ...], output_axis: int) -> tuple[int, ...]:
    return tuple(shape[axis] for axis in matrix_order(shape, output_axis))


def to_matrix_indices(indices, shape: tuple[int, ...], output_axis: int) -> np.ndarray:
    """Sorted flat indices of the weight's layout → sorted flat indices of its matrix."""
    array = np.asarray(indices.cpu() if hasattr(indices, "cpu") else indices, dtype=np.int64)
    if array.size > 1 and not (array[1:] > array[:-1]).all():
        array = np.unique(array)
    if not output_axis or array.size == 0:
        return array
    order = matrix_order(shape, output_axis)
    coords = np.unravel_index(array, shape)
    moved = np.ravel_multi_index(tuple(coords[axis] for axis in order),
                                 tuple(shape[axis] for axis in order))
    # Ascending in the weight's layout, the indices of one output are already in the matrix's
    # order: a stable sort by the output alone orders them all. numpy sorts a 16-bit key by
    # radix: 5x faster than sorting the moved indices (a GPT-2 rewire spent 0.19 s here).
    key = coords[output_axis]
    if shape[output_axis] <= 1 << 16:
        key = key.astype(np.uint16)
    return moved[np.argsort(key, kind="stable")]


def matrix_mask(layer):
    """The layer's mask with its outputs first (a view; packed bits copy it in that order)."""
    return layer.mask.movedim(layer.output_axis, 0) if layer.output_axis else layer.mask


class FrameEmitter:
    """Turns the driver's rewires into stored topology frames: a keyframe every K rewires."""

    def __init__(self, driver: SparseDriver, sink: EventSink, keyframe_every: int):
        self.driver = driver
        self.sink = sink
        self.keyframe_every = keyframe_every
        self.rewires = 0
        self.itop_rate = driver.itop_rate()  # as of the latest rewire (a pass over every layer)

    def keyframes(self, step: int, changes: list[LayerChange] = (),
                  only: set[str] | None = None) -> None:
        """A keyframe of every layer (or of the layers named in `only`: masks replaced outside
        a rewire, whose next delta must start from what they hold now)."""
        by_layer = {change.layer: (change.added, change.removed) for change in changes}
        for index, layer in enumerate(self.driver.layers):
            if only is not None and layer.name not in only:
                continue
            # A layer the rewire left out has no changes: an empty pair says so.
            found = by_layer.get(layer.name, (EMPTY, EMPTY)) if changes else None
            if found is not None and layer.output_axis:
                found = tuple(to_matrix_indices(part, layer.shape, layer.output_axis)
                              for part in found)
            self.sink.emit("topology", step, keyframe_payload(
                layer.name, index, matrix_layout_shape(layer.shape, layer.output_axis),
                matrix_mask(layer), found))

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
            added, removed = (to_matrix_indices(part, layer.shape, layer.output_axis)
                              for part in (change.added, change.removed))
            self.sink.emit("topology", step, delta_payload(
                change.layer, index, matrix_layout_shape(layer.shape, layer.output_axis),
                added, removed, change.active_count))

    def meta(self, heads: dict[str, dict] | None = None) -> dict:
        """The layers and schedule, so a viewer can lay out one heatmap per layer; `heads`:
        layer name → its attention head layout (dst_core.heads)."""
        driver = self.driver
        return {
            "method": driver.method,
            "total_steps": driver.schedule.total_steps,
            "layers": [self._layer_meta(layer, (heads or {}).get(layer.name))
                       for layer in driver.layers],
            "schedule": {"drop_fraction": driver.schedule.drop_fraction,
                         "kind": driver.schedule.kind,
                         "interval_steps": driver.schedule.interval_steps,
                         "end_fraction": driver.schedule.end_fraction},
        }

    @staticmethod
    def _layer_meta(layer, heads: dict | None) -> dict:
        moved = matrix_layout_shape(layer.shape, layer.output_axis)
        # A custom (include=) tensor: a 2-D one reads as a linear layer, others by rank.
        kind = STORED_KIND.get(layer.kind) or layer_kind(moved)
        entry = {"name": layer.name, "shape": list(layer.shape), "matrix": matrix_shape(moved),
                 "density": layer.density, "weight_shape": list(layer.shape), "kind": kind}
        if layer.output_axis:
            entry["output_axis"] = layer.output_axis
        if layer.kind != kind:
            entry["layer_type"] = layer.kind
        if heads is not None:
            entry["heads"] = heads
        return entry
