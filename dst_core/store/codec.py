"""Storage encoding of topology frames: small blobs on disk, the JSON wire format on the way out.

A keyframe is the mask as little-endian packed bits (1 bit per connection, 1/8 of a bool
array), deflated at level 1 with the run-length strategy (Z_RLE): unstructured DST masks have
no repeats worth a full LZ77 search, so skipping it halves the time and the output is smaller
(0.49 of the packed bytes at 10% density, against 0.58 with the search), while the runs that
real models do have (a dense layer, whole rows or channels on or off, a 99%-sparse layer)
still squeeze to almost nothing, which Huffman coding alone would not do (a dense layer: 1/8
of its packed bytes instead of 1/1000). A tag byte says whether the raw bytes were smaller;
any inflater reads it (it is plain deflate).
A delta is the sorted flat indices of added and removed connections, each list turned into
gaps (first index, then differences), the gaps' four little-endian bytes split into byte
planes (every low byte first, then every second byte, …). The low plane is stored as it is;
of the three high planes only those up to the highest nonzero one are stored, zlib'd (tag
PLANES): at DST sizes gaps rarely reach 2**16, so one mostly-zero plane is compressed instead
of three, and a changed edge costs about one byte. Older runs stored all three high planes
zlib'd (tag SPLIT) or all four (tag ZLIB): both are still read. Compressing the low plane too
saves another 15% of bytes but costs 20× the time, most of the recorder's share of training.
Everything is vectorised numpy; nothing loops over connections.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib

import numpy as np

RAW, ZLIB, SPLIT, PLANES = 0, 1, 2, 3  # SPLIT (older deltas): raw low plane + 3 high planes
# zlib'd; PLANES (deltas now): raw low plane, a byte h, then high planes 1..h zlib'd
ZLIB_LEVEL = 1  # the fastest level: recording must cost a small share of a training step
MAX_FRAME_ELEMENTS = 1 << 31  # a layer's matrix larger than this is a corrupted or hostile frame


class FrameError(ValueError):
    """A stored or uploaded frame that cannot be decoded (corrupted, truncated or hostile)."""


def _pack(raw: bytes) -> bytes:
    deflater = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_RLE)
    squeezed = deflater.compress(raw) + deflater.flush()
    return bytes([ZLIB]) + squeezed if len(squeezed) < len(raw) else bytes([RAW]) + raw


def _unpack(blob: bytes, limit: int) -> bytes:
    if not blob:
        raise FrameError("frame: empty blob")
    tag, body = blob[0], blob[1:]
    if tag == RAW:
        data = bytes(body)
    elif tag == ZLIB:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(body, limit + 1)  # bounded: a zip bomb stops at the limit
        except zlib.error as error:
            raise FrameError(f"frame: corrupted compressed data ({error})") from None
        if not inflater.eof:
            raise FrameError("frame: compressed data is truncated or larger than its shape allows")
        if inflater.unused_data:
            raise FrameError("frame: trailing bytes after the compressed data")
    else:
        raise FrameError(f"frame: unknown encoding tag {tag}")
    if len(data) > limit:
        raise FrameError("frame: more data than its shape allows")
    return data


# ---- keyframes ---------------------------------------------------------------------------------
def encode_keyframe(packed_bits: bytes) -> bytes:
    """Packed little-endian bits (the wire's `bits`, decoded) → stored blob."""
    return _pack(packed_bits)


def decode_keyframe(blob: bytes, numel: int) -> bytes:
    """Stored blob → exactly ceil(numel / 8) packed bytes."""
    expected = math.ceil(numel / 8)
    data = _unpack(blob, expected)
    if len(data) != expected:
        raise FrameError(f"frame: keyframe has {len(data)} bytes, its shape needs {expected}")
    return data


# ---- deltas ------------------------------------------------------------------------------------
def _gaps(indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices)  # (N,) sorted flat indices below 2**32
    if indices.dtype != np.dtype("<u4"):
        indices = indices.astype(np.int64)
    gaps = np.empty(indices.shape, dtype="<u4")
    if indices.size:
        gaps[0] = indices[0]
        np.subtract(indices[1:], indices[:-1], out=gaps[1:], casting="unsafe")
    return gaps


def encode_delta(added: np.ndarray, removed: np.ndarray) -> bytes:
    """Sorted added and removed flat indices → one blob: counts, tag PLANES, the number h of
    high byte planes stored, the gaps' low bytes, then their high planes 1..h zlib'd."""
    return _encode_gaps(_gaps(added), _gaps(removed))


def _encode_gaps(added_gaps: np.ndarray, removed_gaps: np.ndarray) -> bytes:
    gaps = np.concatenate([added_gaps, removed_gaps])  # (A + R,) uint32
    largest = int(gaps.max()) if gaps.size else 0
    high = max(0, (largest.bit_length() + 7) // 8 - 1)  # planes above the low one in use
    planes = gaps.view(np.uint8).reshape(-1, 4).T  # (4, A + R): low bytes first
    head = struct.pack("<IIBB", len(added_gaps), len(removed_gaps), PLANES, high)
    body = zlib.compress(planes[1:1 + high].tobytes(), ZLIB_LEVEL) if high else b""
    return head + planes[0].tobytes() + body


def decode_delta(blob: bytes, numel: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored blob → (added, removed) as sorted uint32 little-endian flat indices."""
    if len(blob) < 9:
        raise FrameError("frame: delta blob is truncated")
    n_added, n_removed = struct.unpack_from("<II", blob)
    total = n_added + n_removed
    if total > 2 * numel:
        raise FrameError(f"frame: delta claims {total} changes in a layer of {numel} connections")
    if blob[8] == PLANES:
        high = blob[9] if len(blob) > 9 else 0
        low = blob[10:10 + total]
        if len(blob) < 10 or len(low) != total or high > 3:
            raise FrameError("frame: delta is truncated" if high <= 3
                             else f"frame: delta claims {high} high byte planes (at most 3)")
        rest = blob[10 + total:]
        stored = _unpack(bytes([ZLIB]) + rest, high * total) if high else b""
        if len(stored) != high * total or (not high and rest):
            raise FrameError("frame: delta is truncated or has trailing bytes")
        planes = [np.frombuffer(low, dtype=np.uint8)] + [
            np.frombuffer(stored, dtype=np.uint8, count=total, offset=plane * total)
            for plane in range(high)]
    else:
        if blob[8] == SPLIT:
            low = blob[9:9 + total]
            if len(low) != total:
                raise FrameError("frame: delta is truncated")
            joined = low + _unpack(bytes([ZLIB]) + blob[9 + total:], 3 * total)
        else:
            joined = _unpack(blob[8:], 4 * total)
        if len(joined) != 4 * total:
            raise FrameError("frame: delta is truncated")
        planes = list(np.frombuffer(joined, dtype=np.uint8).reshape(4, total))
    # The gaps from their byte planes (low first) by shifts, not a transposed copy of the
    # (4, N) bytes (4x as long), and with no all-zero plane made up.
    gaps = planes[0].astype("<u4")
    for plane, row in enumerate(planes[1:], start=1):
        if row.any():
            gaps |= row.astype("<u4") << (8 * plane)
    # Summed wide first: below numel (< 2^31), a cumulative sum in uint32 cannot wrap, and
    # it is 2.5x as fast as one in int64 followed by a narrowing copy.
    found = []
    for name, part in (("added", gaps[:n_added]), ("removed", gaps[n_added:])):
        top = int(part.sum(dtype=np.uint64)) if part.size else 0
        if part.size and top >= numel:
            raise FrameError(f"frame: {name} index {top} outside a layer of {numel}")
        found.append(np.cumsum(part, dtype="<u4"))
    return found[0], found[1]


# ---- wire payloads <-> stored rows ---------------------------------------------------------------
HEADER_KEYS = ("layer", "index", "shape", "keyframe", "active")


LAYER_KINDS = ("conv", "linear", "other")


def layer_kind(weight_shape) -> str:
    """How a layer's matrix maps to its weight: a 2-D weight is a linear layer (out × in), a
    3-to-5-D one a convolution (out × in·kernel…, the kernel flattened into the input axis)."""
    rank = len(weight_shape) if weight_shape else 0
    return "linear" if rank == 2 else "conv" if 3 <= rank <= 5 else "other"


def frame_numel(shape) -> int:
    try:
        rows, cols = (int(value) for value in shape)
    except (TypeError, ValueError):
        raise FrameError(f"frame: shape must be [rows, cols], got {shape!r}") from None
    numel = rows * cols
    if rows < 1 or cols < 1 or numel > MAX_FRAME_ELEMENTS:
        raise FrameError(f"frame: absurd shape {shape!r}")
    return numel


def _binary(value, dtype: str) -> np.ndarray:
    """A payload's binary field: in process a numpy array, on the wire base64 text."""
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value, dtype=dtype).reshape(-1)
    return np.frombuffer(base64.b64decode(value, validate=True), dtype=dtype)


def payload_to_stored(payload: dict) -> tuple[dict, bytes]:
    """A topology payload (wire format, or in process with numpy fields) → (small JSON
    header, compressed blob)."""
    header = {key: payload[key] for key in HEADER_KEYS}
    numel = frame_numel(header["shape"])
    try:
        if payload["keyframe"]:
            bits = _binary(payload["bits"], "u1").tobytes()
            if len(bits) != math.ceil(numel / 8):
                raise FrameError(f"frame: keyframe has {len(bits)} bytes, shape "
                                 f"{header['shape']} needs {math.ceil(numel / 8)}")
            return header, encode_keyframe(bits)
        added = _binary(payload["added"], "<u4")
        removed = _binary(payload["removed"], "<u4")
    except (ValueError, TypeError) as error:  # binascii.Error and a ragged uint32 buffer
        if isinstance(error, FrameError):
            raise
        raise FrameError(f"frame: bad base64 data ({error})") from None
    gaps = []
    for name, indices in (("added", added), ("removed", removed)):
        steps = _gaps(indices)  # (N,) uint32: a list that is not ascending wraps around
        # Ascending and distinct <=> every gap but the first is positive and the gaps add up
        # to the last index (a step down wraps to a huge gap and overshoots the sum).
        if indices.size and (indices[-1] >= numel or not steps[1:].all()
                             or int(steps.sum(dtype=np.uint64)) != int(indices[-1])):
            raise FrameError(f"frame: {name} must be sorted distinct indices below {numel}")
        gaps.append(steps)
    header.update(n_added=int(added.size), n_removed=int(removed.size))
    return header, _encode_gaps(*gaps)


def keyframe_bits(payload: dict) -> np.ndarray:
    """A keyframe payload's packed bits (uint8), in process or from the wire, undecoded."""
    return _binary(payload["bits"], "u1")


def payload_changes(payload: dict) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """A checked topology payload's content, in process or from the wire: (flat bool mask,
    -, -) of a keyframe, or (None, added, removed) of a delta (sorted uint32)."""
    numel = frame_numel(payload["shape"])
    if payload["keyframe"]:
        packed = _binary(payload["bits"], "u1")
        return np.unpackbits(packed, bitorder="little", count=numel).astype(bool), EMPTY, EMPTY
    return None, _binary(payload["added"], "<u4"), _binary(payload["removed"], "<u4")


def stored_changes(header: dict, blob: bytes) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """The same of a stored frame (header + compressed blob)."""
    numel = frame_numel(header["shape"])
    if header["keyframe"]:
        packed = np.frombuffer(decode_keyframe(blob, numel), dtype=np.uint8)
        return np.unpackbits(packed, bitorder="little", count=numel).astype(bool), EMPTY, EMPTY
    added, removed = decode_delta(blob, numel)
    return None, added, removed


EMPTY = np.zeros(0, dtype="<u4")


def stored_to_raw(header: dict, blob: bytes) -> bytes:
    """The binary wire payload: packed bits, or added then removed uint32 LE indices."""
    numel = frame_numel(header["shape"])
    if header["keyframe"]:
        return decode_keyframe(blob, numel)
    added, removed = decode_delta(blob, numel)
    return added.tobytes() + removed.tobytes()


def stored_to_payload(header: dict, blob: bytes) -> dict:
    """Stored header + blob → the topology payload of the JSON wire format."""
    numel = frame_numel(header["shape"])
    payload = {key: header[key] for key in HEADER_KEYS}
    if header["keyframe"]:
        payload["bits"] = base64.b64encode(decode_keyframe(blob, numel)).decode("ascii")
    else:
        added, removed = decode_delta(blob, numel)
        payload["added"] = base64.b64encode(added.tobytes()).decode("ascii")
        payload["removed"] = base64.b64encode(removed.tobytes()).decode("ascii")
    return payload


def binary_message(header: dict, raw: bytes) -> bytes:
    """One binary websocket message: [uint32 LE header length][padded JSON header][payload]."""
    import json

    text = json.dumps(header, separators=(",", ":")).encode()
    padded = len(text) + (-(4 + len(text)) % 4)
    return struct.pack("<I", padded) + text.ljust(padded, b" ") + raw


def parse_binary_message(message: bytes) -> tuple[dict, bytes]:
    """Inverse of binary_message (used by tests and the benchmark, as a client would)."""
    import json

    (length,) = struct.unpack_from("<I", message)
    return json.loads(message[4:4 + length]), message[4 + length:]
