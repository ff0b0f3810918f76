"""The golden fixtures of docs/protocol.md: the real code still produces them exactly, and
each expected encoding decodes back to its input by the spec's rules (not by the encoder)."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import numpy as np
import pytest

from tests.fixtures.protocol.generate import HERE, build, dump

FIXTURES = build()


def load(name: str) -> dict:
    return json.loads((HERE / name).read_text())


def strict(text: str):
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_the_committed_fixture_is_what_the_code_produces(name):
    assert (HERE / name).read_text() == dump(FIXTURES[name]), \
        f"{name} changed: the protocol changed (update docs/protocol.md and regenerate)"


def unpack_bits(packed: bytes, shape) -> np.ndarray:
    rows, cols = shape
    bits = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little", count=rows * cols)
    return bits.reshape(rows, cols)


def split_binary(message: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("<I", message)
    assert (4 + length) % 4 == 0  # the payload starts 4-byte aligned
    return strict(message[4:4 + length].decode()), message[4 + length:]


def test_keyframe_encodings_decode_to_the_mask():
    fixture = load("keyframe.json")
    mask, shape = np.array(fixture["input"]["mask"]), fixture["input"]["shape"]
    expected = fixture["expected"]
    blob = base64.b64decode(expected["stored_blob"])
    assert blob[0] == 0 and np.array_equal(unpack_bits(blob[1:], shape), mask)  # tag RAW
    message = strict(expected["json"])
    assert (message["seq"], message["step"], message["type"]) == (7, 0, "topology")
    assert message["keyframe"] is True and message["active"] == mask.sum()
    assert np.array_equal(unpack_bits(base64.b64decode(message["bits"]), shape), mask)
    header, payload = split_binary(base64.b64decode(expected["binary"]))
    assert header["seq"] == 7 and "bits" not in header
    assert np.array_equal(unpack_bits(payload, shape), mask)
    announce = strict(expected["announce"])
    assert announce["announce"] is True and not {"bits", "added", "removed"} & set(announce)
    assert {k: announce[k] for k in ("layer", "index", "shape", "keyframe", "active")} == \
        {k: message[k] for k in ("layer", "index", "shape", "keyframe", "active")}


def test_a_compressible_keyframe_is_stored_zlib():
    fixture = load("keyframe_zlib.json")
    blob = base64.b64decode(fixture["expected"]["stored_blob"])
    assert blob[0] == 1
    bits = unpack_bits(zlib.decompress(blob[1:]), fixture["input"]["shape"]).reshape(-1)
    assert np.flatnonzero(bits).tolist() == fixture["input"]["active_flat"]


def test_delta_encodings_decode_to_the_indices():
    fixture = load("delta.json")
    added, removed = fixture["input"]["added"], fixture["input"]["removed"]
    expected = fixture["expected"]
    blob = base64.b64decode(expected["stored_blob"])
    n_added, n_removed = struct.unpack_from("<II", blob)
    total = n_added + n_removed
    assert (n_added, n_removed, blob[8]) == (len(added), len(removed), 3)  # tag PLANES
    high = blob[9]  # high byte planes stored: those the largest gap uses
    stored = zlib.decompress(blob[10 + total:]) if high else b""
    planes = blob[10:10 + total] + stored + bytes((3 - high) * total)
    gaps = np.frombuffer(planes, np.uint8).reshape(4, total).T.copy().view("<u4").reshape(-1)
    assert np.cumsum(gaps[:n_added]).tolist() == added
    assert np.cumsum(gaps[n_added:]).tolist() == removed
    message = strict(expected["json"])
    assert message["keyframe"] is False
    assert np.frombuffer(base64.b64decode(message["added"]), "<u4").tolist() == added
    assert np.frombuffer(base64.b64decode(message["removed"]), "<u4").tolist() == removed
    header, payload = split_binary(base64.b64decode(expected["binary"]))
    assert (header["n_added"], header["n_removed"]) == (len(added), len(removed))
    assert np.frombuffer(payload, "<u4").tolist() == added + removed


def test_stored_events_are_sent_as_their_json_and_non_finite_is_null():
    fixture = load("messages.json")
    for item in fixture["stored"]:
        message = strict(item["message"])
        stored = item["stored"]
        payload = json.loads(stored["payload"])  # Python's parser accepts the literal NaN
        assert message == {"seq": stored["seq"], "step": stored["step"], "type": stored["type"],
                           **{key: None if isinstance(value, float) and not np.isfinite(value)
                              else value for key, value in payload.items()}}
    notices = {name: strict(text) for name, text in fixture["notices"].items()}
    assert notices["end"] == {"type": "end", "last_seq": 8}
    assert all("seq" not in notice for notice in notices.values())  # not stored events
    assert notices["error_unreadable"]["at_seq"] == fixture["unreadable_row"]["seq"]
    assert "'index'" in notices["error_unreadable"]["error"]


def reference_bins(matrix: np.ndarray, grid_rows: int, grid_cols: int) -> np.ndarray:
    rows, cols = matrix.shape
    return np.array([[matrix[i * rows // grid_rows:(i + 1) * rows // grid_rows,
                             j * cols // grid_cols:(j + 1) * cols // grid_cols].sum()
                      for j in range(grid_cols)] for i in range(grid_rows)])


def test_view_answers_are_the_masks_binned():
    fixture = load("view.json")
    masks = [np.array(mask) for mask in fixture["input"]["masks"]]
    steps = fixture["input"]["steps"]
    assert fixture["rewires"]["steps"] == steps
    for item in fixture["views"]:
        query, answer = item["query"], item["answer"]
        rewire = max(r for r, step in enumerate(steps) if step <= query["step"])
        now = masks[rewire]
        before = masks[rewire - 1] if rewire else now
        grid = [min(query["rows"], now.shape[0]), min(query["cols"], now.shape[1])]
        assert (answer["rewire"], answer["step"], answer["grid"]) == (rewire, steps[rewire], grid)
        added, removed = now & (1 - before), before & (1 - now)
        for field, matrix in (("kept", now - added), ("added", added), ("removed", removed),
                              ("possible", np.ones_like(now))):
            data = np.frombuffer(base64.b64decode(answer[field]), "<" + answer["dtype"])
            assert np.array_equal(data.reshape(grid), reference_bins(matrix, *grid)), field
        assert answer["exact"] == (grid == list(now.shape))
        assert answer["added_total"] == added.sum() and answer["removed_total"] == removed.sum()
