"""The writer SDK: record a run from any training loop, into a local folder or to a server.

`Recorder` writes one run (events, topology frames, the model) to the store in
`dst_core.store`, or to a server's ingest API (`remote`); `training.train` is the built-in
loop the dashboard's worker and the CLI record. For reading a run back, `RunReader` and
`RunStore` are re-exported from `dst_core.store`, where they live.
"""

from dst_core.recording.recorder import Recorder
from dst_core.recording.remote import RemoteRecorderError
from dst_core.store import RunReader, RunStore, load_model

__all__ = ["Recorder", "RemoteRecorderError", "RunReader", "RunStore", "load_model"]
