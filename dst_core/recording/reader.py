"""Reading a recorded run: any layer's mask at any step, and metrics downsampled per bucket.

A mask is rebuilt from the newest keyframe at or before the step plus the deltas after it
(at most K-1 of them), so seeking costs the same at step 10 and at step 10 million. Long
metric series are cut into N step ranges and each range keeps its min, max and last value
(as W&B does), so a chart of a million points still shows every spike.
"""

from __future__ import annotations

import json

import numpy as np

from dst_core.recording import codec
from dst_core.recording.schema import check_frame_header
from dst_core.recording.store import RunStore

METRIC_EVENT_TYPES = ("metrics", "eval")


class RunReader:
    """Read-only views of one data folder's runs."""

    def __init__(self, store: RunStore):
        self.store = store

    def layers(self, run_id: str) -> list[dict]:
        """The `layers` list of the run's first meta event (name, shape, matrix, density).

        New rows are checked at entry; a legacy row's malformed entries are left out, so a
        read never fails on them."""
        row = self.store.db.execute(
            "SELECT payload FROM events WHERE run_id = ? AND type = 'meta' ORDER BY seq LIMIT 1",
            (run_id,)).fetchone()
        try:
            layers = json.loads(row[0]).get("layers", []) if row else []
        except (ValueError, AttributeError, RecursionError):
            return []
        if not isinstance(layers, list):
            return []
        return [entry for entry in layers
                if isinstance(entry, dict) and isinstance(entry.get("name"), str)]

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
        """(mask as a (rows, cols) bool array, step of the newest frame used) at `step`."""
        index = self.layer_index(run_id, layer)
        frames = self.store.frames_for_mask(run_id, index, int(step))
        if not frames:
            raise ValueError(f"step: no topology frame of layer {layer!r} at or before step {step}")
        limit = self.store.max_frame_elements
        header = json.loads(frames[0]["payload"])
        # Bounded before decoding, also for a legacy row: no frame is larger than a model.
        numel = check_frame_header(header, limit, "frame")
        rows, cols = header["shape"]
        packed = np.frombuffer(codec.decode_keyframe(frames[0]["blob"], numel), dtype=np.uint8)
        mask = np.unpackbits(packed, bitorder="little", count=numel).astype(bool)  # (rows*cols,)
        for frame in frames[1:]:
            header = json.loads(frame["payload"])
            if check_frame_header(header, limit, "frame") != numel:
                raise codec.FrameError("frame: the layer's shape changes between frames")
            if header["keyframe"]:
                packed = np.frombuffer(codec.decode_keyframe(frame["blob"], numel), dtype=np.uint8)
                mask = np.unpackbits(packed, bitorder="little", count=numel).astype(bool)
                continue
            added, removed = codec.decode_delta(frame["blob"], numel)
            mask[removed] = False
            mask[added] = True
        return mask.reshape(rows, cols), int(frames[-1]["step"])

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
