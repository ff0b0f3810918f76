"""How long a run config would train, from what this server measured: the steps per second of
earlier finished runs of the same task and model (and, where there are some, the same method),
their recorded steps over their wall time. No run is timed to answer; a new task or model has no
estimate, and says why."""

from __future__ import annotations

import json
import statistics
from typing import Any

from dst_core.store import RunStore
from dst_core.store.config import RunConfig

CANDIDATES = 200  # newest finished runs of the task and model looked at
MEASURED = 5  # of those, the newest that fit are averaged (median)
SAME_SHAPE = ("hidden", "batch_size", "device")  # what changes a step's cost besides the method


def estimate_duration(store: RunStore, config: RunConfig, total_steps: int) -> dict[str, Any]:
    """{seconds, steps_per_s, runs, basis}: seconds and steps_per_s None when nothing fits."""
    wanted = config.model_dump()
    rows = store.db.execute(
        "SELECT config, summary, started_at, ended_at FROM runs WHERE status = 'completed' "
        "AND json_valid(config) AND json_valid(summary) AND config ->> '$.task' = ? "
        "AND config ->> '$.model' = ? ORDER BY created_at DESC LIMIT ?",
        (config.task, config.model, CANDIDATES)).fetchall()
    same_method, other_method = [], []
    for config_text, summary_text, started, ended in rows:
        try:
            stored, summary = json.loads(config_text), json.loads(summary_text)
            steps = summary.get("steps")
            seconds = float(ended) - float(started)
        except (TypeError, ValueError, AttributeError):
            continue  # a damaged row: not a measurement
        if not isinstance(steps, int) or steps <= 0 or not seconds > 0:
            continue
        if any(stored.get(key) != wanted.get(key) for key in SAME_SHAPE):
            continue
        (same_method if stored.get("method") == config.method else other_method).append(
            steps / seconds)
    measured, which = (same_method, "of this method") if same_method \
        else (other_method, "of other methods")
    what = f"{config.task} · {config.model}"
    if not measured:
        return {"seconds": None, "steps_per_s": None, "runs": 0,
                "basis": f"no finished run of {what} with this width, batch size and device "
                         "on this server to time it by"}
    rate = statistics.median(measured[:MEASURED])
    runs = min(len(measured), MEASURED)
    return {"seconds": total_steps / rate, "steps_per_s": rate, "runs": runs,
            "basis": f"{rate:,.0f} steps/s, the median of {runs} finished run"
                     f"{'s' if runs > 1 else ''} of {what} {which} on this server"}
