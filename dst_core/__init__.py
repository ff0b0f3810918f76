"""sparsescope's dynamic-sparse-training engine: pure PyTorch, no web imports.

`import dst_core` loads the engine only (driver, rewire, algorithms, density, schedules):
no pydantic, no SQLite, no HTTP client. `RunConfig` (pydantic), `Recorder` and `RunStore`
(SQLite, urllib) stay importable from here but are loaded on first use, so a training
script that never records pays for none of them and the engine cannot come to depend on them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from dst_core import algorithms as _algorithms  # noqa: F401  (fills the registry)
from dst_core.density import layer_densities
from dst_core.driver import LayerChange, MaskedLayer, SparseDriver, find_prunable
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

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time see __getattr__
    from dst_core.config import RunConfig
    from dst_core.recording import Recorder, RunStore

__version__ = "0.1.0"

# Public names that live outside the engine: name -> module that defines it.
_LAZY = {"RunConfig": "dst_core.config", "Recorder": "dst_core.recording",
         "RunStore": "dst_core.recording"}

__all__ = [
    "REGISTRY", "Algorithm", "LayerChange", "MaskedLayer", "Recorder", "RewireResult",
    "RewireSchedule", "Rewirer", "RunConfig", "RunStore", "SparseDriver", "find_prunable",
    "get_algorithm", "layer_densities", "register_rewirer", "rewire",
]


def __getattr__(name: str):
    """Load RunConfig / Recorder / RunStore on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dst_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
