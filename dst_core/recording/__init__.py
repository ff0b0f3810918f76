"""Durable runs: the SQLite run store, the Recorder (local or remote), reader and transfer."""

from dst_core.recording.reader import RunReader
from dst_core.recording.recorder import Recorder
from dst_core.recording.remote import RemoteRecorderError
from dst_core.recording.store import ACTIVE_STATUSES, FINAL_STATUSES, SCHEMA_VERSION, RunStore
from dst_core.recording.transfer import BadExportError, export_run, import_run, load_model

__all__ = ["ACTIVE_STATUSES", "FINAL_STATUSES", "SCHEMA_VERSION", "BadExportError", "Recorder",
           "RemoteRecorderError", "RunReader", "RunStore", "export_run", "import_run", "load_model"]
