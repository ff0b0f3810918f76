"""`import sparsescope`: the notebook entry point, `sparsescope.show(run_id_or_folder)`.

The library itself lives in `dst_core` (the engine; `dst_core.store`, the run format;
`dst_core.recording`, the writer) and `backend` (the server, and the launcher that starts
one for a notebook); this module only gathers what a notebook user types first.
"""

from backend.notebook import show, start_server, stop_servers

__all__ = ["show", "start_server", "stop_servers"]
