"""Reading a recorded run: its layers, any layer's mask at any step (masks.py), and metrics
downsampled per bucket.

Long metric series are cut into N step ranges and each range keeps its min, max and last value
(as W&B does), so a chart of a million points still shows every spike.
"""

from __future__ import annotations

import json
import math

import numpy as np

from dst_core.store import codec
from dst_core.store.masks import FrameChains, StoredDataError
from dst_core.store.run_store import RunStore

METRIC_EVENT_TYPES = ("metrics", "eval")


LAYER_LISTS = 64  # runs whose parsed layer lists are kept


def _parse_layers(payload: str | None) -> list[dict]:
    try:
        entries = json.loads(payload).get("layers") if payload else None
    except (AttributeError, TypeError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    layers = [_layer_entry(entry) for entry in entries]
    return layers if all(layers) else []


class RunReader:
    """Read-only views of one data folder's runs."""

    def __init__(self, store: RunStore, chains: FrameChains | None = None):
        self.store = store
        self.chains = chains if chains is not None else FrameChains(store)
        # Parsed layer lists by (run, meta seq, meta length): every panel request needs its
        # run's layers, and parsing a ResNet-50's meta each time cost more than the frames.
        self._layers: dict[tuple, list[dict]] = {}

    def layers(self, run_id: str) -> list[dict]:
        """The layers of the run's first meta event, each with `name`, `matrix` (rows, cols as
        drawn), `weight_shape` (the parameter's own shape, None if unknown), `kind` and
        `density`; [] when the meta event is missing or not a list of layers (a stored
        payload must never turn a read into a 500)."""
        row = self.store.db.execute(
            "SELECT seq, length(payload) FROM events WHERE run_id = ? AND type = 'meta'"
            " ORDER BY seq LIMIT 1", (run_id,)).fetchone()
        if row is None:
            return []
        key = (run_id, row[0], row[1])
        layers = self._layers.get(key)
        if layers is None:
            payload = self.store.db.execute(
                "SELECT payload FROM events WHERE run_id = ? AND seq = ?", (run_id, row[0])).fetchone()
            layers = _parse_layers(payload[0] if payload else None)
            if len(self._layers) >= LAYER_LISTS:
                self._layers.pop(next(iter(self._layers)))
            self._layers[key] = layers
        return [dict(entry) for entry in layers]  # callers may edit their copy

    def layer_index(self, run_id: str, layer: str | int) -> int:
        layers = self.layers(run_id)
        if isinstance(layer, int) or (isinstance(layer, str) and layer.isdigit()):
            index = int(layer)
            if 0 <= index < len(layers):
                return index
        for index, entry in enumerate(layers):
            if entry["name"] == layer:
                return index
        known = ", ".join(entry["name"] for entry in layers) or "none recorded"
        raise ValueError(f"layer: no layer {layer!r} in this run (known: {known})")

    def mask_at(self, run_id: str, layer: str | int, step: int) -> tuple[np.ndarray, int]:
        """(mask as a read-only (rows, cols) bool array, step of the newest frame used) at
        `step`. ValueError for an unknown layer or no frame by then; StoredDataError (also a
        ValueError) for a stored frame that cannot be read."""
        index = self.layer_index(run_id, layer)
        chain = self.chains.chain(run_id, index, int(step))
        if not chain:
            raise ValueError(f"step: no topology frame of layer {layer!r} at or before step {step}")
        rows, cols = self.layers(run_id)[index]["matrix"]
        if rows * cols > self.store.max_frame_elements:  # a legacy row: bounded before decoding
            raise StoredDataError(f"layer: {rows}×{cols} is larger than this server's frame limit "
                                  f"({self.store.max_frame_elements} connections)")
        run = self.store.get_run(run_id) or {"id": run_id}
        mask = self.chains.mask(run, index, chain, rows * cols)
        return mask.reshape(rows, cols), chain[-1].step

    def metrics(self, run_id: str, buckets: int = 500, types=METRIC_EVENT_TYPES) -> dict:
        """Every numeric field of metrics/eval events as {type: {field: series}}.

        A series is {"step": [...], "min": [...], "max": [...], "last": [...]}, one entry per
        non-empty bucket of equal step width; with fewer points than buckets every point is
        its own bucket (min = max = last).
        """
        if buckets < 1:
            raise ValueError("buckets: must be at least 1")
        out: dict[str, dict] = {}
        for event_type in types:
            rows = self.store.db.execute(
                "SELECT step, payload FROM events WHERE run_id = ? AND type = ? ORDER BY seq",
                (run_id, event_type)).fetchall()
            columns: dict[str, tuple[list[int], list[float]]] = {}
            for row in rows:
                for key, value in json.loads(row[1]).items():
                    if value is None or (isinstance(value, (int, float))
                                         and not isinstance(value, bool)
                                         and abs(value) < 1e308):  # a legacy 10**400 is no float
                        steps, values = columns.setdefault(key, ([], []))
                        steps.append(row[0])
                        values.append(np.nan if value is None else value)  # stored NaN is null
            columns = {key: column for key, column in columns.items()
                       if not np.isnan(column[1]).all()}
            if columns:
                out[event_type] = {key: downsample(np.asarray(steps), np.asarray(values, float),
                                                   buckets)
                                   for key, (steps, values) in columns.items()}
        return out


def _positive_ints(value) -> list[int] | None:
    if not isinstance(value, list) or not value or len(value) > 8:
        return None
    if not all(isinstance(item, int) and not isinstance(item, bool) and item > 0
               for item in value):
        return None
    return list(value)


def _layer_entry(entry) -> dict | None:
    """One meta layer, normalised; None when it is not a layer at all.

    Older runs stored only `shape` (the weight's own shape) and `matrix`; older still, only a
    2-D `shape`, which then is the matrix and the weight shape is unknown."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None
    shape = _positive_ints(entry.get("shape"))
    matrix = _positive_ints(entry.get("matrix"))
    if matrix is None or len(matrix) != 2:
        if shape is None:
            return None
        if len(shape) == 2:  # older still: the 2-D shape is the matrix, the weight unknown
            matrix, weight_shape = shape, None
        else:  # a writer that sent only the weight's shape: drawn as out × (in · kernel)
            matrix, weight_shape = [shape[0], math.prod(shape[1:])] if len(shape) > 1 \
                else [1, shape[0]], shape
    else:
        weight_shape = _positive_ints(entry.get("weight_shape")) or shape
    try:
        codec.frame_numel(matrix)
    except codec.FrameError:
        return None
    kind = entry.get("kind")
    if kind not in codec.LAYER_KINDS:
        kind = codec.layer_kind(weight_shape)
    density = entry.get("density")
    density = float(density) if isinstance(density, (int, float)) and not isinstance(
        density, bool) and math.isfinite(density) else None
    # Which axis of the weight holds its outputs (1: HF Conv1D's (in, out)); frames are stored
    # outputs first either way, so this only says how the parameter itself is laid out.
    axis = entry.get("output_axis", 0)
    axis = axis if isinstance(axis, int) and not isinstance(axis, bool) and weight_shape \
        and 0 <= axis < len(weight_shape) else 0
    layer_type = entry.get("layer_type")
    layer_type = layer_type if isinstance(layer_type, str) and len(layer_type) <= 40 else None
    return {**entry, "matrix": matrix, "weight_shape": weight_shape, "kind": kind,
            "density": density, "output_axis": axis, "layer_type": layer_type}


def downsample(steps: np.ndarray, values: np.ndarray, buckets: int) -> dict:
    """min/max/last of `values` in `buckets` equal step ranges (vectorised, order kept)."""
    if steps.size <= buckets:
        listed = [None if not np.isfinite(v) else float(v) for v in values]
        return {"step": steps.tolist(), "min": listed, "max": listed, "last": listed}
    low, high = int(steps.min()), int(steps.max())
    width = max(1.0, (high - low + 1) / buckets)
    bucket = np.minimum(((steps - low) / width).astype(np.int64), buckets - 1)  # (P,)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])  # steps are non-decreasing
    ends = np.r_[starts[1:], steps.size] - 1
    finite = np.where(np.isfinite(values), values, np.nan)
    with np.errstate(all="ignore"):
        mins = np.fmin.reduceat(finite, starts)
        maxs = np.fmax.reduceat(finite, starts)

    def clean(array: np.ndarray) -> list:
        return [None if not np.isfinite(v) else float(v) for v in array]

    return {"step": steps[ends].tolist(), "min": clean(mins), "max": clean(maxs),
            "last": clean(values[ends])}
