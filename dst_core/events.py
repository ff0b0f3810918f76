"""Plain-data events a run emits; recorders store them and streams send them as JSON.

The topology payload is the one wire format shared by the store, the websocket and the
dashboard: keyframes carry the whole mask as little-endian packed bits, deltas the sorted
flat indices of net added and removed edges as little-endian uint32, both base64 text.
"""

from __future__ import annotations

import base64
import math
from typing import Protocol

import numpy as np
import torch


class EventSink(Protocol):
    """Anything that takes run events: the SQLite recorder, a remote recorder, a test list."""

    def emit(self, type: str, step: int, payload: dict) -> None: ...


def matrix_shape(shape: tuple[int, ...]) -> list[int]:
    """Weights are shown as output × input; a conv kernel is flattened into the input axis."""
    return [int(shape[0]), int(math.prod(shape[1:]))] if len(shape) > 1 else [1, int(shape[0])]


def encode_bits(mask: torch.Tensor) -> str:
    flat = mask.reshape(-1).to(torch.bool).cpu().numpy()
    return base64.b64encode(np.packbits(flat, bitorder="little").tobytes()).decode("ascii")


def decode_bits(text: str, numel: int) -> np.ndarray:
    packed = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(packed, bitorder="little", count=numel).astype(bool)


def encode_indices(indices: torch.Tensor | np.ndarray) -> str:
    array = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
    return base64.b64encode(array.astype("<u4").tobytes()).decode("ascii")


def decode_indices(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<u4").astype(np.int64)


def keyframe_payload(layer: str, index: int, shape, mask: torch.Tensor) -> dict:
    return {"layer": layer, "index": index, "shape": matrix_shape(tuple(shape)),
            "keyframe": True, "active": int(mask.sum()), "bits": encode_bits(mask)}


def delta_payload(layer: str, index: int, shape, added, removed, active: int) -> dict:
    return {"layer": layer, "index": index, "shape": matrix_shape(tuple(shape)),
            "keyframe": False, "active": int(active), "added": encode_indices(added),
            "removed": encode_indices(removed)}
