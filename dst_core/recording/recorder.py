"""Recorder: writes one run's events into the run store, from any training loop.

    with Recorder("./sparsescope-data", name="my-model", config={...}) as rec:
        rec.attach(driver)              # topology frames at every rewire
        ...; rec.log(step, loss=...)    # metrics whenever you like

Events are batched and committed every `flush_interval_s` so recording costs a small share
of a training step; readers see each batch as soon as it commits.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from dst_core.recording.store import RunStore

DEFAULT_DATA_DIR = "./sparsescope-data"


class Recorder:
    """The single writer of one run (the worker, the CLI, or a user's script)."""

    def __init__(
        self,
        data_dir: str | Path = DEFAULT_DATA_DIR,
        *,
        name: str = "",
        config: dict | None = None,
        run_id: str | None = None,
        flush_interval_s: float = 0.25,
        keyframe_every: int = 10,
    ) -> None:
        self.store = RunStore(data_dir)
        self.flush_interval_s = flush_interval_s
        self.keyframe_every = keyframe_every
        self._buffer: list[tuple[str, int, dict]] = []
        self._last_flush = time.monotonic()
        self.summary: dict = {"steps": 0}
        if run_id is None:
            run = self.store.create_run(config or {}, name or "script run", status="queued")
            run_id = run["id"]
        elif self.store.get_run(run_id) is None:
            raise ValueError(f"run_id: no run {run_id!r} in {data_dir}")
        self.run_id = run_id
        self.last_step = 0

    # ---- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        self.store.set_status(self.run_id, "running")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.flush()
        if exc_type is None:
            self.finish("completed")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("stopped")
        else:
            text = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            self.finish("failed", error=text)
        self.store.close()
        return False

    def finish(self, status: str, error: str | None = None) -> None:
        self.flush()
        self.store.set_status(self.run_id, status, error=error, step=self.last_step)

    # ---- events -------------------------------------------------------------------------------
    def emit(self, type: str, step: int, payload: dict) -> None:
        self._buffer.append((type, int(step), payload))
        self.last_step = max(self.last_step, int(step))
        self._update_summary(type, int(step), payload)
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def log(self, step: int, **metrics) -> None:
        """Record metrics of a user's own loop (loss, accuracy, test_accuracy, …)."""
        self.emit("metrics", step, {key: float(value) for key, value in metrics.items()})

    def attach(self, driver) -> None:
        """Follow a SparseDriver: its layers now, a topology frame at each rewire."""
        from dst_core.topology import TopologyEmitter

        emitter = TopologyEmitter(driver, self, self.keyframe_every)
        self.emit("meta", driver.step_count, emitter.meta())
        emitter.keyframes(driver.step_count)
        driver.listeners.append(emitter)

    def flush(self) -> None:
        if self._buffer:
            self.store.append_events(self.run_id, self._buffer)
            self._buffer = []
            self.store.update_summary(self.run_id, self.summary)
        self._last_flush = time.monotonic()

    def _update_summary(self, type: str, step: int, payload: dict) -> None:
        summary = self.summary
        summary["steps"] = max(summary.get("steps", 0), step)
        if type == "metrics":
            if "loss" in payload:
                summary["final_loss"] = payload["loss"]
            if "layer_density" in payload:
                summary["density"] = payload["layer_density"]
            if "itop_rate" in payload:
                summary["itop_rate"] = payload["itop_rate"]
        accuracy = payload.get("test_accuracy") if type in ("eval", "metrics") else None
        if accuracy is not None:
            summary["final_test_accuracy"] = accuracy
            best = summary.get("best_test_accuracy")
            summary["best_test_accuracy"] = accuracy if best is None else max(best, accuracy)
