"""sparsescope's dynamic-sparse-training engine: pure PyTorch, no web imports."""

from dst_core import algorithms as _algorithms  # noqa: F401  (fills the registry)
from dst_core.config import RunConfig
from dst_core.density import layer_densities
from dst_core.driver import LayerChange, MaskedLayer, SparseDriver
from dst_core.recording import Recorder, RunStore
from dst_core.rewire import REGISTRY, Rewirer, RewireResult, register_rewirer, rewire

__version__ = "0.1.0"

__all__ = [
    "REGISTRY", "LayerChange", "MaskedLayer", "Recorder", "RewireResult", "Rewirer",
    "RunConfig", "RunStore", "SparseDriver", "layer_densities", "register_rewirer", "rewire",
]
