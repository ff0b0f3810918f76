"""Reading a recorded run: its layers, any layer's mask at any step (masks.py), and metrics
downsampled per bucket.

Long metric series are cut into N step ranges and each range keeps its min, max and last value
(as W&B does), so a chart of a million points still shows every spike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from dst_core.store.masks import Frame, FrameChains, NoFittingFrame, StoredDataError
from dst_core.store.run_store import MAX_METRIC_NAME_CHARS, RunStore
from dst_core.store.schema import parse_layers

METRIC_EVENT_TYPES = ("metrics", "eval")
MAX_METRIC_SERIES = 64  # series one metrics answer holds, however many fields a run logged
MAX_LISTED_NAMES = 10_000  # names metric_names lists (new runs hold MAX_METRIC_NAMES at most)


class MetricAnswer(NamedTuple):
    series: dict  # {type: {field: {step, min, max, last}}}
    available: int  # numeric (type, field) pairs the run has (counted up to MAX_LISTED_NAMES)


LAYER_LISTS = 64  # runs whose parsed layer lists are kept


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
            layers = parse_layers(payload[0] if payload else None)
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

    def frame_misfit(self, run: dict, seq: int, step: int, header: dict) -> str | None:
        """Why readers skip the stored topology frame at `seq` (its decoded `header`), None
        when it fits its layer's history; a frame of no declared layer, or of one larger
        than this server's frame limit, is not judged here (None)."""
        layers = self.layers(run["id"])
        index = header.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(layers):
            return None
        rows, cols = layers[index]["matrix"]
        if rows * cols > self.store.max_frame_elements:
            return None
        frame = Frame(int(seq), int(step), bool(header.get("keyframe")))
        return self.chains.misfit(run, index, frame, rows * cols, (rows, cols))

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
        try:  # frames that do not fit the layer are skipped; with no keyframe left, none is
            mask = self.chains.mask(run, index, chain, rows * cols, (rows, cols))
        except NoFittingFrame:
            raise ValueError(f"step: no topology frame of layer {layer!r} that fits its "
                             f"history at or before step {step}") from None
        return mask.reshape(rows, cols), chain[-1].step

    def metrics(self, run_id: str, buckets: int = 500, fields: Iterable[str] | None = None,
                types=METRIC_EVENT_TYPES) -> dict:
        """Numeric fields of metrics/eval events as {type: {field: series}}: those named in
        `fields`, else the first ones logged; at most MAX_METRIC_SERIES series (metric_series).

        A series is {"step": [...], "min": [...], "max": [...], "last": [...]}, one entry per
        non-empty bucket of equal step width; with fewer points than buckets every point is
        its own bucket (min = max = last).
        """
        return self.metric_series(run_id, buckets, fields, types).series

    def metric_series(self, run_id: str, buckets: int = 500, fields: Iterable[str] | None = None,
                      types=METRIC_EVENT_TYPES) -> MetricAnswer:
        """The series `metrics` answers, and how many numeric (type, field) pairs the run has.

        An answer is bounded whatever a writer logged: at most MAX_METRIC_SERIES series (in
        type order, each type's fields in the order they were first logged), names longer
        than MAX_METRIC_NAME_CHARS left out (stored before that limit)."""
        if buckets < 1:
            raise ValueError("buckets: must be at least 1")
        wanted = None if fields is None else set(fields)
        out: dict[str, dict] = {}
        admitted, available = 0, set()
        for event_type in types:
            columns: dict[str, tuple[list[int], list[float]]] = {}
            for step, payload in self._metric_payloads(run_id, event_type):
                for key, value in payload.items():
                    if not (value is None or (isinstance(value, (int, float))
                                              and not isinstance(value, bool)
                                              and abs(value) < 1e308)):  # a legacy 10**400
                        continue
                    if (value is not None and len(available) < MAX_LISTED_NAMES
                            and len(key) <= MAX_METRIC_NAME_CHARS):
                        available.add((event_type, key))
                    column = columns.get(key)
                    if column is None:
                        if (admitted >= MAX_METRIC_SERIES or len(key) > MAX_METRIC_NAME_CHARS
                                or (wanted is not None and key not in wanted)):
                            continue
                        column = columns[key] = ([], [])
                        admitted += 1
                    column[0].append(step)
                    column[1].append(np.nan if value is None else value)  # stored NaN is null
            columns = {key: column for key, column in columns.items()
                       if not np.isnan(column[1]).all()}
            if columns:
                out[event_type] = {key: downsample(np.asarray(steps), np.asarray(values, float),
                                                   buckets)
                                   for key, (steps, values) in columns.items()}
        return MetricAnswer(out, len(available))

    def metric_names(self, run_id: str, types=METRIC_EVENT_TYPES) -> dict:
        """{type: [field, …]} of every numeric field, in the order first logged with a
        number, at most MAX_LISTED_NAMES in all; `total`: how many there are (counted up
        to MAX_LISTED_NAMES + 1)."""
        out: dict = {event_type: [] for event_type in types}
        seen: set[tuple[str, str]] = set()
        for event_type in types:
            for _, payload in self._metric_payloads(run_id, event_type):
                for key, value in payload.items():
                    if ((event_type, key) in seen or len(key) > MAX_METRIC_NAME_CHARS
                            or not isinstance(value, (int, float)) or isinstance(value, bool)
                            or not abs(value) < 1e308):
                        continue
                    seen.add((event_type, key))
                    if len(seen) > MAX_LISTED_NAMES:
                        return {**out, "total": len(seen)}
                    out[event_type].append(key)
        return {**out, "total": len(seen)}

    def _metric_payloads(self, run_id: str, event_type: str):
        """(step, payload) of the run's events of one type, in order; a stored payload that
        is not a JSON object (a damaged legacy row) is skipped."""
        cursor = self.store.db.execute(
            "SELECT step, payload FROM events WHERE run_id = ? AND type = ? ORDER BY seq",
            (run_id, event_type))
        while rows := cursor.fetchmany(1000):
            for step, text in rows:
                try:
                    payload = json.loads(text)
                except (TypeError, ValueError, RecursionError):
                    continue
                if isinstance(payload, dict):
                    yield step, payload


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
