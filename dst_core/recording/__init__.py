"""Durable runs: the SQLite run store and the Recorder that writes into it."""

from dst_core.recording.recorder import Recorder
from dst_core.recording.store import ACTIVE_STATUSES, FINAL_STATUSES, RunStore

__all__ = ["ACTIVE_STATUSES", "FINAL_STATUSES", "Recorder", "RunStore"]
