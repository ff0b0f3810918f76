"""`import sparsescope`: the notebook entry point, `sparsescope.show(run_id_or_folder)`.

The library itself lives in `dst_core` (engine, recording) and `backend` (the server); this
module only gathers what a notebook user types first.
"""

from dst_core.recording.notebook import show, start_server, stop_servers

__all__ = ["show", "start_server", "stop_servers"]
