"""sparsescope's dynamic-sparse-training engine: pure PyTorch, no web imports."""

from dst_core import algorithms as _algorithms  # noqa: F401  (fills the registry)
from dst_core.config import RunConfig
from dst_core.density import layer_densities
from dst_core.driver import LayerChange, MaskedLayer, SparseDriver, find_prunable
from dst_core.recording import Recorder, RunStore
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

__all__ = [
    "REGISTRY", "Algorithm", "LayerChange", "MaskedLayer", "Recorder", "RewireResult",
    "RewireSchedule", "Rewirer", "RunConfig", "RunStore", "SparseDriver", "find_prunable",
    "get_algorithm", "layer_densities", "register_rewirer", "rewire",
]
