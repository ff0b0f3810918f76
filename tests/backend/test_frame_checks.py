"""Issue 30, items 3-4: one range of seqs, and topology frames checked against their layer's
history where they enter (ingest 422, import 400, nothing of the batch stored), while a frame
an older version stored anyway is skipped alike by every reader (/mask, /view, /topology)."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from dst_core.events import decode_bits, decode_indices, delta_payload, keyframe_payload, to_wire
from dst_core.store import codec, export_run, topology_index
from dst_core.store.run_store import RunStore
from dst_core.store.schema import MAX_SEQ, InvalidValue
from tests.backend.conftest import stream_events
from tests.dst_core.test_analytics import brute_degrees

SHAPE = (4, 6)
LAYERS = [{"name": "fc1", "shape": list(SHAPE), "matrix": list(SHAPE)},
          {"name": "fc2", "shape": [3, 4], "matrix": [3, 4]}]


def initial_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, ::2] = True  # 12 of 24 active: flat indices with an even column
    return mask


def keyframe(mask: np.ndarray, name: str = "fc1", index: int = 0, **changes) -> dict:
    return {**keyframe_payload(name, index, mask.shape, torch.from_numpy(mask)), **changes}


def delta(added, removed, active: int, shape=SHAPE, name: str = "fc1", index: int = 0) -> dict:
    return delta_payload(name, index, shape, np.array(added, dtype=np.int64),
                         np.array(removed, dtype=np.int64), active)


# Each: (what is wrong, the offending frame after a meta event and fc1's keyframe, the words
# the refusal must use). Flat index 0 is active in the keyframe, index 1 is not.
BAD_FRAMES = {
    "removes an inactive connection": (delta([3], [1], 12), "removes a connection that is not active"),
    "adds an active connection": (delta([0], [2], 12), "adds a connection that is already active"),
    "another shape than its keyframe": (delta([1], [0], 12, shape=(6, 4)), "shape [6, 4]"),
    "before any keyframe": (delta([0], [], 1, shape=(3, 4), name="fc2", index=1),
                            "a delta before any keyframe"),
    "active disagreeing with the bits": (keyframe(initial_mask(), active=13),
                                         "active is 13 but its bits hold 12"),
    "a count that is not the mask's": (delta([1], [0], 14), "holds 12 connections after it"),
    "an index beyond the layers": (delta([1], [0], 12, name="fc3", index=2), "declares 2 layers"),
    "another name than the meta's": (delta([1], [0], 12, name="fc9"), "layer 0 of the run's meta"),
}


def good_start() -> list[tuple[str, int, dict]]:
    return [("meta", 0, {"layers": LAYERS}), ("topology", 0, keyframe(initial_mask()))]


# ---- ingest --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_ingest_refuses_a_frame_that_does_not_fit_its_layer_and_stores_nothing(client, case):
    frame, reason = BAD_FRAMES[case]
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    start = [{"seq": 2 + position, "step": step, "type": event_type, **to_wire(payload)}
             for position, (event_type, step, payload) in enumerate(good_start())]
    assert client.post(f"/api/ingest/runs/{run_id}/events", json={"events": start}).status_code \
        == 200
    store = client.app.state.store
    before = store.read_events(run_id, 0, 100)
    batch = [{"seq": 4, "step": 5, "type": "metrics", "loss": 1.0},
             {"seq": 5, "step": 10, "type": "topology", **to_wire(frame)}]
    response = client.post(f"/api/ingest/runs/{run_id}/events", json={"events": batch})
    assert response.status_code == 422, response.text
    message = response.json()["detail"][0]["msg"]
    assert "seq 5" in message and f"layer {frame['layer']!r}" in message and reason in message
    assert store.read_events(run_id, 0, 100) == before  # not even the metrics of that batch
    # The layer goes on from what was stored: a frame that fits is taken.
    fits = {"seq": 4, "step": 10, "type": "topology", **to_wire(delta([1], [0], 12))}
    assert client.post(f"/api/ingest/runs/{run_id}/events",
                       json={"events": [fits]}).status_code == 200


def test_a_recorders_own_frames_pass_the_same_check(tmp_path):
    """The local writer's frames are not trusted blindly: an inconsistent one is refused at
    the flush, naming it, and nothing of its batch is stored."""
    store = RunStore(tmp_path)
    run_id = store.create_run({}, "script", status="running")["id"]
    store.append_events(run_id, good_start())
    last = store.last_seq(run_id)
    with pytest.raises(InvalidValue, match="removes a connection that is not active") as refused:
        store.append_events(run_id, [("metrics", 1, {"loss": 1.0}),
                                     ("topology", 10, delta([3], [1], 12))])
    assert f"seq {last + 2}" in str(refused.value) and "'fc1'" in str(refused.value)
    assert store.last_seq(run_id) == last
    # A keyframe at a rewire carries its changes in process: its bits are counted (O(frame))
    # and its changes checked against the mask, instead of diffing the whole mask.
    after = initial_mask()
    after.reshape(-1)[3] = True
    changes = (np.array([3], np.int64), np.array([1], np.int64))  # 1 is not active
    with pytest.raises(InvalidValue, match="its changes: removes a connection that is not"):
        store.append_events(run_id, [("topology", 10, keyframe(after, _changes=changes))])
    with pytest.raises(InvalidValue, match="active is 11 but its bits hold 12"):
        store.append_events(run_id, [("topology", 10, keyframe(initial_mask(), active=11))])
    assert store.last_seq(run_id) == last


# ---- import --------------------------------------------------------------------------------------
def export_with(tmp_path: Path, payload: dict, *, status: str = "completed") -> bytes:
    """An export of a good run with `payload` added as its last frame, written behind the
    store's back (as an older version or a hand edit could have)."""
    store = RunStore(tmp_path / "source")
    run_id = store.create_run({}, "source", status="running", info={"writer": "script"})["id"]
    store.append_events(run_id, good_start())
    if status != "running":
        store.set_status(run_id, status)
    path = export_run(store, run_id, tmp_path / "export.sparsescope")
    header, blob = codec.payload_to_stored(payload)
    db = sqlite3.connect(path)
    last = db.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    db.execute("INSERT INTO events VALUES (?, ?, ?, 'topology', ?, ?, ?, ?)",
               (run_id, last + 1, 10, json.dumps(header), header["index"],
                int(header["keyframe"]), blob))
    db.commit()
    db.close()
    return path.read_bytes()


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_import_refuses_a_frame_that_does_not_fit_its_layer(client, tmp_path, case):
    frame, reason = BAD_FRAMES[case]
    body = export_with(tmp_path, frame)
    store = client.app.state.store
    runs_before = store.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    response = client.post("/api/runs/import", content=body)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "seq 5" in detail and f"layer {frame['layer']!r}" in detail and reason in detail
    assert store.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == runs_before


def test_an_import_of_a_good_run_with_deltas_passes(client, tmp_path):
    body = export_with(tmp_path, delta([1], [0], 12))
    assert client.post("/api/runs/import", content=body).status_code == 201


# ---- one seq range ------------------------------------------------------------------------------
def test_an_export_ending_at_the_largest_sqlite_seq_is_a_400_not_a_500(client, tmp_path):
    """The import appends a `stopped` status after a running run's last event: with that event
    at 2**63 - 1 it overflowed SQLite (500 OverflowError). The store's one range refuses it."""
    store = RunStore(tmp_path / "source")
    run_id = store.create_run({}, "live", status="running", info={"writer": "script"})["id"]
    store.append_events(run_id, [("metrics", 1, {"loss": 1.0})])
    path = export_run(store, run_id, tmp_path / "live.sparsescope")
    db = sqlite3.connect(path)
    db.execute("UPDATE events SET seq = ? WHERE seq = (SELECT MAX(seq) FROM events)",
               (2**63 - 1,))
    db.commit()
    db.close()
    response = client.post("/api/runs/import", content=path.read_bytes())
    assert response.status_code == 400, response.text
    assert str(2**63 - 1) in response.json()["detail"] and "seq" in response.json()["detail"]


def test_ingest_and_import_share_one_seq_range(client, tmp_path):
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    too_far = {"events": [{"seq": MAX_SEQ + 1, "step": 0, "type": "metrics", "loss": 1.0}]}
    assert client.post(f"/api/ingest/runs/{run_id}/events", json=too_far).status_code == 422
    at_the_end = {"events": [{"seq": MAX_SEQ, "step": MAX_SEQ, "type": "metrics", "loss": 1.0}]}
    assert client.post(f"/api/ingest/runs/{run_id}/events", json=at_the_end).status_code == 200
    # The server still appends its own final status after it.
    assert client.app.state.store.set_status(run_id, "stopped")
    exported = client.get(f"/api/runs/{run_id}/export").content
    assert client.post("/api/runs/import", content=exported).status_code == 400  # MAX_SEQ + 1
    store = RunStore(tmp_path / "source")
    live = store.create_run({}, "live", status="running", info={"writer": "script"})["id"]
    path = export_run(store, live, tmp_path / "live.sparsescope")
    db = sqlite3.connect(path)
    db.execute("UPDATE events SET seq = ?", (MAX_SEQ,))
    db.commit()
    db.close()
    imported = client.post("/api/runs/import", content=path.read_bytes())
    assert imported.status_code == 201, imported.text  # its stopped status lands at MAX_SEQ + 1
    events = client.app.state.store.read_events(imported.json()["id"], 0, 10)
    assert [event["seq"] for event in events] == [MAX_SEQ, MAX_SEQ + 1]


# ---- frames an older version stored -------------------------------------------------------------
def insert_legacy(store: RunStore, run_id: str, seq: int, step: int, payload: dict) -> None:
    header, blob = codec.payload_to_stored(payload)
    store.db.execute("INSERT INTO events VALUES (?, ?, ?, 'topology', ?, ?, ?, ?)",
                     (run_id, seq, step, json.dumps(header), header["index"],
                      int(header["keyframe"]), blob))


def mask_of(response) -> np.ndarray:
    body = response.json()
    bits = np.frombuffer(base64.b64decode(body["bits"]), np.uint8)
    return np.unpackbits(bits, bitorder="little", count=int(np.prod(body["shape"]))) \
        .astype(bool).reshape(body["shape"])


def test_stored_frames_that_do_not_fit_are_skipped_alike_by_every_reader(client, tmp_path):
    """Rows written directly (as versions before these checks could): a delta removing an
    inactive connection, a keyframe whose count disagrees with its bits, a delta of another
    shape. /mask, /view and /topology skip them the same way and answer 200 throughout; the
    store's writer (its index resumed from the stored rows) checks new frames against the
    mask without them."""
    store = client.app.state.store
    run_id = store.create_run({}, "legacy", status="running")["id"]
    masks = {0: initial_mask()}
    one = initial_mask()
    one.reshape(-1)[[0, 1]] = [False, True]
    masks[10] = one
    store.append_events(run_id, [*good_start(), ("topology", 10, delta([1], [0], 12))])
    last = store.last_seq(run_id)
    wrong_keyframe = np.ones(SHAPE, dtype=bool)
    insert_legacy(store, run_id, last + 1, 20, delta([3], [5], 12))  # 5 is not active
    insert_legacy(store, run_id, last + 2, 30, keyframe(wrong_keyframe, active=3))
    insert_legacy(store, run_id, last + 3, 40, delta([5], [1], 12, shape=(6, 4)))
    for step in (20, 30, 40):
        masks[step] = masks[10]
    # A writer that starts again (the server restarted) resumes the index past them.
    writer = RunStore(store.data_dir)
    with pytest.raises(InvalidValue, match="removes a connection that is not active"):
        writer.append_events(run_id, [("topology", 50, delta([7], [5], 12))])  # fits only
        # had the skipped delta been taken
    writer.append_events(run_id, [("topology", 50, delta([3], [1], 12))])
    masks[50] = masks[10].copy()
    masks[50].reshape(-1)[[1, 3]] = [False, True]
    writer.set_status(run_id, "completed")
    client.app.state.topology.cache.clear()
    for step, expected in sorted(masks.items()):
        mask = client.get(f"/api/runs/{run_id}/mask", params={"layer": "fc1", "step": step})
        assert mask.status_code == 200, (step, mask.text)
        assert np.array_equal(mask_of(mask), expected), step
        topology = client.get(f"/api/runs/{run_id}/topology", params={"layer": 0, "step": step})
        assert topology.status_code == 200, (step, topology.text)
        got = topology.json()
        assert got["active"] == int(expected.sum()) == mask.json()["active"], step
        degrees = brute_degrees(expected)
        assert (got["fan_in"], got["fan_out"]) == (degrees["fan_in"], degrees["fan_out"]), step
        view = client.get(f"/api/runs/{run_id}/view",
                          params={"layer": 0, "step": step, "rows": 4, "cols": 6})
        assert view.status_code == 200, (step, view.text)
        assert view.json()["active"] == int(expected.sum()), step
        if step in (20, 30, 40):  # a skipped frame changed nothing
            assert view.json()["added_total"] == view.json()["removed_total"] == 0, step
    assert client.get(f"/api/runs/{run_id}/topology/series", params={"layer": 0}).json()[
        "active"] == [12, 12, 12]  # the keyframe, and the two deltas that were taken
    # The websocket's full frames skip them too: a `skipped_frame` notice (no seq) in place of
    # each, and a client that applies what it is sent holds the masks the readers answer.
    skipped = list(range(last + 1, last + 4))
    messages = stream_events(client, run_id)
    notices = [message for message in messages if message["type"] == "skipped_frame"]
    assert [notice["skipped_seq"] for notice in notices] == skipped
    assert all("seq" not in notice and notice["layer"] == "fc1" for notice in notices)
    assert "removes a connection that is not active" in notices[0]["reason"]
    frames = [message for message in messages if message["type"] == "topology"]
    assert not {frame["seq"] for frame in frames} & set(skipped)
    replayed = {}
    mask = None
    for frame in frames:
        if frame["index"] != 0:
            continue
        if frame["keyframe"]:
            mask = decode_bits(frame["bits"], 24).reshape(SHAPE)
        else:
            mask = mask.copy()
            mask.reshape(-1)[decode_indices(frame["removed"])] = False
            mask.reshape(-1)[decode_indices(frame["added"])] = True
        replayed[frame["step"]] = mask
    assert sorted(replayed) == [0, 10, 50]
    for step, expected in replayed.items():
        assert np.array_equal(expected, masks[step]), step
    # The dashboard's mode announces every stored frame (it reads /view, which skips them).
    announced = stream_events(client, run_id, query="&topology=announce")
    assert not [message for message in announced if message["type"] == "skipped_frame"]


def test_a_remote_keyframe_cannot_bring_its_own_changes(client):
    """In process, a rewire keyframe carries its changes so the index need not diff its mask;
    from a request such a field is dropped: the bits are what the layer (and its stored
    cohort index) becomes."""
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    after = initial_mask()
    after.reshape(-1)[[0, 1]] = [False, True]
    events = [{"seq": 2 + position, "step": step, "type": event_type, **to_wire(payload)}
              for position, (event_type, step, payload) in enumerate(
                  [*good_start(), ("topology", 10, keyframe(after))])]
    events[-1]["_changes"] = [[1], [6]]  # fits the mask before, is not what the bits say
    events.append({"seq": 5, "step": 10, "type": "status", "status": "completed"})
    assert client.post(f"/api/ingest/runs/{run_id}/events",
                       json={"events": events}).status_code == 200
    store = client.app.state.store
    segments = topology_index.stored_segments(lambda: store.db, run_id, 0)
    assert np.array_equal(segments[-1].checkpoint()[0], after.reshape(-1))
