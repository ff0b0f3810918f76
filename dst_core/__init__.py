"""sparsescope's dynamic-sparse-training engine: pure PyTorch, no web imports.

`import dst_core` loads the engine only (driver, rewire, algorithms, density, schedules):
no pydantic, no SQLite, no HTTP client. The layers above it live in their own packages and
import the engine, never the reverse: the run format and store in `dst_core.store`
(`RunConfig`, `RunStore`, `RunReader`), the writer SDK in `dst_core.recording` (`Recorder`),
the server in `backend`. `dst_core.RunConfig`, `.Recorder` and `.RunStore` moved there; asking
for them here says where (the engine cannot import them without depending on them).
"""

from __future__ import annotations

from dst_core import algorithms as _algorithms  # noqa: F401  (fills the registry)
from dst_core.compact import compact, compact_layers
from dst_core.density import layer_densities
from dst_core.driver import SparseDriver
from dst_core.masked_layer import LayerChange, MaskedLayer
from dst_core.prunable import find_prunable, plan_prunable
from dst_core.rewire import (
    REGISTRY,
    Algorithm,
    Rewirer,
    RewireResult,
    get_algorithm,
    register_rewirer,
    rewire,
)
from dst_core.schedules import RewireSchedule

__version__ = "0.1.0"

# Public names that moved out of the engine: name -> where they live now.
_MOVED = {"RunConfig": "dst_core.store", "Recorder": "dst_core.recording",
          "RunStore": "dst_core.store"}

__all__ = [
    "REGISTRY", "Algorithm", "LayerChange", "MaskedLayer", "RewireResult",
    "RewireSchedule", "Rewirer", "SparseDriver", "compact", "compact_layers", "find_prunable",
    "plan_prunable", "get_algorithm", "layer_densities", "register_rewirer", "rewire",
]


def __getattr__(name: str):
    """Names that moved to the layers above say where they went (PEP 562)."""
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'dst_core' has no attribute {name!r}")
    raise AttributeError(f"dst_core.{name} moved: use `from {home} import {name}`")
