"""The rewire-series read-model: per-layer rewire history of a run, downsampled: what the
layer overview's sparklines, the layer × step density map and the added/removed chart show,
in one small answer.

Each `rewire` event stores, per layer, the active count and the net added/removed counts; a run
with thousands of rewires is cut into at most `buckets` ranges of consecutive rewires, each
keeping the last active count and the sums of added and removed (so no change is lost), and the
answer's size depends on `buckets` and the number of layers, never on the run's length.
"""

from __future__ import annotations

import json

import numpy as np

from dst_core.store import RunStore


def rewire_series(store: RunStore, run_id: str, buckets: int) -> dict:
    """{steps, rewires, layers: [{name, size}], active/added/removed: [layer][bucket],
    turnover, itop_rate: [bucket]} from the run's stored `rewire` events."""
    meta = store.db.execute(
        "SELECT payload FROM events WHERE run_id = ? AND type = 'meta' ORDER BY seq LIMIT 1",
        (run_id,)).fetchone()
    try:
        meta = json.loads(meta[0]) if meta else {}
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    layers = meta.get("layers") if isinstance(meta.get("layers"), list) else []
    layers = [layer for layer in layers if isinstance(layer, dict)]
    names = [str(layer.get("name", index)) for index, layer in enumerate(layers)]
    position = {name: index for index, name in enumerate(names)}
    rows = store.db.execute(
        "SELECT step, payload FROM events WHERE run_id = ? AND type = 'rewire' ORDER BY seq",
        (run_id,)).fetchall()
    count = len(rows)
    steps = np.zeros(count, np.int64)
    active = np.full((len(names), count), np.nan)  # (L, R); NaN = layer not in this rewire
    added = np.zeros((len(names), count))
    removed = np.zeros((len(names), count))
    turnover = np.full(count, np.nan)
    itop = np.full(count, np.nan)

    def number(value) -> float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan

    for column, (step, payload) in enumerate(rows):
        try:
            event = json.loads(payload)
        except ValueError:
            event = {}
        steps[column] = step
        changes = event.get("layers") if isinstance(event, dict) else None
        for name, change in (changes.items() if isinstance(changes, dict) else ()):
            row = position.get(name)
            if row is None or not isinstance(change, dict):
                continue
            active[row, column] = number(change.get("active"))
            added[row, column] = np.nan_to_num(number(change.get("added")))
            removed[row, column] = np.nan_to_num(number(change.get("removed")))
        if isinstance(event, dict):
            turnover[column] = number(event.get("turnover"))
            itop[column] = number(event.get("itop_rate"))
    # A layer missing from a rewire keeps its previous active count (forward fill along R).
    if count:
        filled = np.where(np.isnan(active), 0, np.arange(count))  # (L, R) last valid column
        np.maximum.accumulate(filled, axis=1, out=filled)
        active = np.take_along_axis(active, filled, axis=1)
    # Buckets of consecutive rewires: bucket b ends at rewire ends[b].
    bucket_count = min(buckets, count)
    ends = (np.arange(1, bucket_count + 1) * count // max(1, bucket_count)) - 1  # (B,)
    starts = np.r_[0, ends[:-1] + 1] if bucket_count else np.zeros(0, np.int64)

    def sums(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts, axis=-1) if bucket_count else values[..., :0]

    def means(values: np.ndarray) -> np.ndarray:
        if not bucket_count:
            return values[:0]
        finite = np.isfinite(values)
        total = np.add.reduceat(np.where(finite, values, 0.0), starts)
        seen = np.add.reduceat(finite.astype(float), starts)
        with np.errstate(all="ignore"):
            return total / seen

    def listed(array: np.ndarray) -> list:
        return [None if not np.isfinite(v) else (int(v) if float(v).is_integer() else float(v))
                for v in np.asarray(array, float).ravel()]

    return {
        "steps": steps[ends].tolist(), "rewires": count,
        "layers": [{"name": name, "size": int(np.prod(layers[i].get("matrix") or layers[i].get("shape")
                                                      or [0]))}
                   for i, name in enumerate(names)],
        "active": [listed(row) for row in active[:, ends]],
        "added": [listed(row) for row in sums(added)],
        "removed": [listed(row) for row in sums(removed)],
        "turnover": listed(means(turnover)), "itop_rate": listed(itop[ends]),
        # What the first layer reads, so the input view can draw its column sums as an image.
        "input": {"image_shape": meta.get("image_shape") if isinstance(meta.get("image_shape"), list)
                  else None},
    }
