"""The rewire-response read-model: how a logged metric moved across each rewire of a run.

For rewire r (the r-th stored `rewire` event, counting from 1) at step s and a window of k
steps, `before` is the mean of the metric's logged values at steps s-k+1..s and `after` the
mean over s+1..s+k; `change` = after - before. A value logged at step s was computed before that
step's rewire (a training loop logs the loss of the step it just took), so it counts as before.
Only rewires whose two windows lie inside the metric's first..last logged step and each hold at
least one logged value are answered.

Computed from the stored `metrics` events, not the downsampled series: SQLite extracts the one
field (numbers only: text, booleans, nulls and unparseable payloads are skipped there), numpy
sorts the values by step once, finds each window's points with two binary searches and sums
them with one `np.add.reduceat`: the cost is O(points log points + the points the windows
cover), the memory two columns of the metric.
"""

from __future__ import annotations

import numpy as np

from dst_core.store import RunStore

FETCH_ROWS = 65_536  # rows per fetch: the Python tuples of a long run never exist all at once


def _columns(cursor, dtypes: tuple) -> tuple[np.ndarray, ...]:
    """The cursor's rows as one numpy array per column, read in bounded chunks."""
    chunks: list[list[np.ndarray]] = [[] for _ in dtypes]
    while rows := cursor.fetchmany(FETCH_ROWS):
        for column, (chunk, dtype) in enumerate(zip(chunks, dtypes, strict=True)):
            chunk.append(np.fromiter((row[column] for row in rows), dtype, len(rows)))
    return tuple(np.concatenate(chunk) if chunk else np.zeros(0, dtype)
                 for chunk, dtype in zip(chunks, dtypes, strict=True))


def metric_points(store: RunStore, run_id: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `metric` in the run's `metrics` events, finite numbers only, sorted by
    step (stable: points of one step keep their stored order). `metric` must already be a safe
    name ([A-Za-z0-9_.:-]+, checked by the route): it is quoted into a JSON path."""
    path = f'$."{metric}"'
    cursor = store.db.execute(
        "SELECT step, value FROM (SELECT step, CASE WHEN json_valid(payload) AND "
        "json_type(payload, ?1) IN ('integer', 'real') THEN json_extract(payload, ?1) END AS value "
        "FROM events WHERE run_id = ?2 AND type = 'metrics' AND typeof(step) = 'integer' "
        "ORDER BY seq) WHERE value IS NOT NULL", (path, run_id))
    steps, values = _columns(cursor, (np.int64, np.float64))
    finite = np.isfinite(values)  # a stored 1e400 reads back as inf
    steps, values = steps[finite], values[finite]
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def rewire_steps(store: RunStore, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, readable) of every stored `rewire` event, in stored order (rewire r is entry
    r-1): a hostile row whose step is not an integer keeps its number but has no answer."""
    cursor = store.db.execute(
        "SELECT CASE WHEN typeof(step) = 'integer' THEN step ELSE 0 END, typeof(step) = 'integer'"
        " FROM events WHERE run_id = ? AND type = 'rewire' ORDER BY seq", (run_id,))
    steps, readable = _columns(cursor, (np.int64, np.bool_))
    return steps, readable


def rewire_response(store: RunStore, run_id: str, window: int, metric: str) -> dict:
    """{window, metric, rewires: [{rewire, step, before, after, change}]} (see the module)."""
    answer = {"window": window, "metric": metric, "rewires": []}
    rewires, readable = rewire_steps(store, run_id)  # (R,), (R,)
    if not readable.any():
        return answer
    steps, values = metric_points(store, run_id, metric)  # (P,), (P,)
    if not steps.size:
        return answer
    padded = np.concatenate((values, [0.0]))  # (P+1,): an `end` of P is a valid index
    # Steps and windows as floats: a hostile stored step near 2**63 must not wrap around.
    keys = steps.astype(np.float64)
    at = rewires.astype(np.float64)
    bounds = {"before": (at - window + 1, at), "after": (at + 1, at + window)}
    sums, counts = {}, {}
    for side, (low, high) in bounds.items():
        start = np.searchsorted(keys, low, side="left")  # (R,) first point at or after low
        end = np.searchsorted(keys, high, side="right")  # (R,) first point after high
        # Each window summed on its own (reduceat over start, end pairs), not as a difference
        # of prefix sums: one huge logged value would cancel every later window's digits.
        pairs = np.stack((start, end), axis=1).ravel()  # (2R,)
        with np.errstate(all="ignore"):
            sums[side] = np.add.reduceat(padded, pairs)[::2]  # an empty window: masked below
        counts[side] = end - start
    inside = (bounds["before"][0] >= keys[0]) & (bounds["after"][1] <= keys[-1])
    full = readable & inside & (counts["before"] > 0) & (counts["after"] > 0)
    with np.errstate(all="ignore"):
        before = sums["before"] / np.maximum(counts["before"], 1)
        after = sums["after"] / np.maximum(counts["after"], 1)
        change = after - before
    # Means of values near the float limit can overflow: such a rewire has no finite answer.
    full &= np.isfinite(before) & np.isfinite(after) & np.isfinite(change)
    answer["rewires"] = [
        {"rewire": int(r) + 1, "step": int(rewires[r]), "before": float(before[r]),
         "after": float(after[r]), "change": float(change[r])}
        for r in np.flatnonzero(full)]
    return answer
