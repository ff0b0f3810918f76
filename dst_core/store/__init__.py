"""The run format and its store: what a run is on disk, whoever wrote it.

One layer above the engine (`dst_core`) and below the writers (`dst_core.recording`) and
the server (`backend`): the run config schema (`config`), the validation every stored value
passes (`schema`), topology frames and their codec (`frames`, `codec`), the cohort index's
blob format (`cohorts`, `topology_index`), the SQLite store (`run_store`), reading masks
back at any step (`masks`, `reader`) and import/export (`transfer`). It imports the engine,
never a writer or the server.
"""

from dst_core.store.config import RunConfig
from dst_core.store.reader import RunReader
from dst_core.store.run_store import DB_NAME, DEFAULT_DATA_DIR, MODEL_ARTIFACT, SCHEMA_VERSION, RunStore
from dst_core.store.schema import ACTIVE_STATUSES, FINAL_STATUSES, STATUSES
from dst_core.store.transfer import BadExportError, export_run, import_run, load_model

__all__ = ["ACTIVE_STATUSES", "DB_NAME", "DEFAULT_DATA_DIR", "FINAL_STATUSES", "MODEL_ARTIFACT",
           "SCHEMA_VERSION", "STATUSES", "BadExportError", "RunConfig", "RunReader", "RunStore", "export_run",
           "import_run", "load_model"]
