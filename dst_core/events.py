"""Plain-data events a run emits; recorders store them and streams send them as JSON.

The topology payload is the one format shared by the store, the websocket and the
dashboard: keyframes carry the whole mask as little-endian packed bits, deltas the sorted
flat indices of net added and removed edges as little-endian uint32. In process those fields
are numpy arrays of exactly those bytes (uint8, '<u4'); at every JSON boundary (`to_wire`,
the store's `dumps`) they become base64 text of the same bytes, the wire format. Keeping
them binary until then spares the local recorder an encode and a decode of every frame.
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


def packed_bits(mask: torch.Tensor) -> np.ndarray:
    """(ceil(numel / 8),) uint8: the mask's flat bits, little-endian within each byte."""
    flat = mask.reshape(-1).to(torch.bool).cpu().numpy()
    return np.packbits(flat, bitorder="little")


def index_array(indices: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,) '<u4' flat indices."""
    array = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
    return array.astype("<u4")


def wire_value(value):
    """A payload field as JSON carries it: binary arrays as base64 text of their bytes."""
    if isinstance(value, np.ndarray):
        return base64.b64encode(value.tobytes()).decode("ascii")
    return value


def to_wire(payload: dict) -> dict:
    """The payload with its binary fields as base64 text (the JSON wire format)."""
    return {key: wire_value(value) for key, value in payload.items()}


def decode_bits(text: str, numel: int) -> np.ndarray:
    packed = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(packed, bitorder="little", count=numel).astype(bool)


def decode_indices(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<u4").astype(np.int64)


# A keyframe written at a rewire also carries that rewire's net changes, in process only, under
# this key: the store's cohort index takes them instead of diffing the whole mask. Never
# stored or sent (the store keeps the header fields, a remote writer drops it).
LOCAL_CHANGES = "_changes"


def keyframe_payload(layer: str, index: int, shape, mask: torch.Tensor,
                     changes: tuple | None = None) -> dict:
    payload = {"layer": layer, "index": index, "shape": matrix_shape(tuple(shape)),
               "keyframe": True, "active": int(mask.sum()), "bits": packed_bits(mask)}
    if changes is not None:
        payload[LOCAL_CHANGES] = (index_array(changes[0]), index_array(changes[1]))
    return payload


def delta_payload(layer: str, index: int, shape, added, removed, active: int) -> dict:
    return {"layer": layer, "index": index, "shape": matrix_shape(tuple(shape)),
            "keyframe": False, "active": int(active), "added": index_array(added),
            "removed": index_array(removed)}
