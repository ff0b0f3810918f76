"""The one stream: JSON and binary frames, resume, skip-ahead of a slow client, isolation."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import pytest
import torch
from starlette.websockets import WebSocketDisconnect

from backend.services.stream_hub import Outbox, RunFollower, SlowClient
from dst_core.events import delta_payload, keyframe_payload
from dst_core.store import RunStore
from dst_core.store.codec import parse_binary_message
from tests.backend.conftest import stream_events


def record_run(store: RunStore, rewires: int = 30, shape=(64, 96), status="completed",
               keyframe_every: int = 5) -> str:
    """A run written straight into the store: meta, keyframes, then deltas/keyframes."""
    generator = torch.Generator().manual_seed(0)
    run_id = store.create_run({}, "recorded", status="running")["id"]
    mask = torch.rand(shape, generator=generator) < 0.2
    events = [("meta", 0, {"layers": [{"name": "fc.weight", "shape": list(shape),
                                       "matrix": list(shape), "density": 0.2}]}),
              ("topology", 0, keyframe_payload("fc.weight", 0, shape, mask))]
    for rewire in range(1, rewires + 1):
        flat = mask.reshape(-1)
        on, off = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
        removed = on[torch.randperm(on.numel(), generator=generator)[:20]].sort().values
        added = off[torch.randperm(off.numel(), generator=generator)[:20]].sort().values
        flat[removed], flat[added] = False, True
        step = rewire * 10
        events.append(("rewire", step, {"layers": {}}))
        if rewire % keyframe_every == 0:
            events.append(("topology", step, keyframe_payload("fc.weight", 0, shape, mask)))
        else:
            events.append(("topology", step, delta_payload("fc.weight", 0, shape, added, removed,
                                                           int(mask.sum()))))
        accuracy = float("nan") if rewire % 2 else 0.5
        events.append(("metrics", step, {"loss": 1.0 / rewire, "accuracy": accuracy}))
    store.append_events(run_id, events)
    if status != "running":
        store.set_status(run_id, status)
    return run_id


def read_all(socket) -> list:
    messages = []
    while True:
        message = socket.receive()
        if message.get("bytes") is not None:
            messages.append(parse_binary_message(message["bytes"]))
            continue
        event = json.loads(message["text"])
        messages.append(event)
        if event["type"] == "end":
            return messages


def test_json_stream_is_exactly_the_stored_events(client):
    store = client.app.state.store
    run_id = record_run(store)
    with client.websocket_connect(f"/ws/runs/{run_id}?from_seq=0") as socket:
        events = read_all(socket)
    assert events[-1] == {"type": "end", "last_seq": store.last_seq(run_id)}
    assert events[:-1] == store.read_events(run_id, 0, 10_000)
    assert [e["accuracy"] for e in events if e["type"] == "metrics"][:2] == [None, 0.5]
    with client.websocket_connect(f"/ws/runs/{run_id}?from_seq=7") as socket:
        assert json.loads(socket.receive_text())["seq"] == 7


def test_binary_frames_carry_the_same_masks(client):
    store = client.app.state.store
    run_id = record_run(store)
    with client.websocket_connect(f"/ws/runs/{run_id}?format=binary") as socket:
        binary = read_all(socket)
    stored = store.read_events(run_id, 0, 10_000)
    assert len(binary) == len(stored) + 1
    for message, event in zip(binary, stored, strict=False):
        if event["type"] != "topology":
            assert message == event  # everything else stays JSON
            continue
        header, payload = message
        assert header["seq"] == event["seq"] and header["step"] == event["step"]
        assert header["keyframe"] == event["keyframe"] and header["shape"] == event["shape"]
        assert not {"bits", "added", "removed"} & set(header)
        if event["keyframe"]:
            assert payload == base64.b64decode(event["bits"])
        else:
            added, removed = base64.b64decode(event["added"]), base64.b64decode(event["removed"])
            assert (header["n_added"], header["n_removed"]) == (len(added) // 4, len(removed) // 4)
            assert payload == added + removed


def test_binary_header_is_padded_to_four_bytes(client):
    store = client.app.state.store
    run_id = record_run(store, rewires=3)
    with client.websocket_connect(f"/ws/runs/{run_id}?format=binary&from_seq=3") as socket:
        message = socket.receive()["bytes"]
    length = int.from_bytes(message[:4], "little")
    assert (4 + length) % 4 == 0
    assert json.loads(message[4:4 + length])["type"] == "topology"


def test_unknown_run_and_bad_format(client):
    with client.websocket_connect("/ws/runs/0123456789abcdef") as socket:
        assert json.loads(socket.receive_text())["type"] == "error"
    run_id = record_run(client.app.state.store, rewires=1)
    with client.websocket_connect(f"/ws/runs/{run_id}?format=xml") as socket:
        assert "format" in json.loads(socket.receive_text())["error"]


@pytest.mark.parametrize("from_seq", ["-1", "abc", "1.5", "", "99999999999999999999999", "\u00b2"])
def test_a_bad_from_seq_gets_a_clear_error_not_a_refused_handshake(client, from_seq):
    run_id = record_run(client.app.state.store, rewires=1)
    with client.websocket_connect(f"/ws/runs/{run_id}?from_seq={from_seq}") as socket:
        message = json.loads(socket.receive_text())
        assert message["type"] == "error" and "from_seq" in message["error"]
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 4422


def test_from_seq_past_the_end_ends_with_the_real_last_seq(client):
    store = client.app.state.store
    run_id = record_run(store, rewires=2)
    messages = stream_events(client, run_id, from_seq=store.last_seq(run_id) + 100)
    assert messages == [{"type": "end", "last_seq": store.last_seq(run_id)}]


def test_a_run_deleted_while_streamed_says_so_and_ends(client):
    store = client.app.state.store
    run_id = record_run(store, rewires=2, status="running")
    with client.websocket_connect(f"/ws/runs/{run_id}?from_seq=0") as socket:
        first = json.loads(socket.receive_text())
        assert first["seq"] == 1
        store.delete_run(run_id)
        messages = [first]
        while messages[-1]["type"] != "end":
            messages.append(json.loads(socket.receive_text()))
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert messages[-2] == {"type": "error", "error": f"run {run_id} was deleted"}
    assert closed.value.code == 4404


def test_a_stalled_client_of_a_live_run_skips_to_the_newest_keyframe(tmp_path):
    store = RunStore(tmp_path)
    run_id = record_run(store, rewires=40, shape=(128, 128), status="running")
    keyframe = store.latest_keyframe_seq(run_id)

    async def scenario() -> list:
        outbox = Outbox(limit_bytes=20_000)  # a few frames of 128 × 128 fill it
        follower = RunFollower(store, run_id, 0, "json", outbox, slow_client_s=0.05)
        task = asyncio.create_task(follower.run())
        await asyncio.sleep(1.0)  # nobody takes anything
        task.cancel()
        return [(json.loads(message), kind) for message, kind in outbox.items]

    queued = asyncio.run(scenario())
    kinds = [kind for _, kind in queued]
    notice = kinds.index("skipped")
    assert queued[notice][0]["to_seq"] == keyframe and "seq" not in queued[notice][0]
    assert set(kinds[:notice]) <= {"status", "meta"}  # superseded frames were dropped
    after = [event for event, _ in queued[notice + 1:]]
    assert after[0]["seq"] == keyframe and after[0]["keyframe"] is True
    assert [event["seq"] for event in after] == list(range(keyframe, store.last_seq(run_id) + 1))


def test_a_stalled_client_of_small_messages_skips_when_its_outbox_is_full_by_count(tmp_path):
    """Announcements are ~100 bytes: bounded by bytes alone, a page slower than the run would
    queue minutes of them before it counts as slow. The count bound makes it skip too."""
    store = RunStore(tmp_path)
    run_id = record_run(store, rewires=40, shape=(16, 16), status="running")
    keyframe = store.latest_keyframe_seq(run_id)

    async def scenario() -> list:
        outbox = Outbox(limit_bytes=8 * 1024 * 1024, limit_messages=20)
        follower = RunFollower(store, run_id, 0, "announce", outbox, slow_client_s=0.05)
        task = asyncio.create_task(follower.run())
        await asyncio.sleep(1.0)  # nobody takes anything
        task.cancel()
        return [kind for _, kind in outbox.items]

    kinds = asyncio.run(scenario())
    assert "skipped" in kinds and len(kinds) <= 21
    assert keyframe > 20  # the skip went past what 20 messages hold


def test_a_client_that_takes_nothing_is_disconnected(tmp_path):
    """While the writer keeps adding keyframes, a client that never reads is let go."""
    store = RunStore(tmp_path)
    run_id = record_run(store, rewires=10, shape=(128, 128), status="running")
    mask = torch.ones(128, 128, dtype=torch.bool)

    async def scenario() -> None:
        outbox = Outbox(limit_bytes=5_000)  # fewer bytes than two keyframes
        follower = RunFollower(store, run_id, 0, "json", outbox, slow_client_s=0.05)
        task = asyncio.create_task(follower.run())
        for step in range(200, 2000, 10):
            await asyncio.to_thread(store.append_events, run_id, [
                ("topology", step, keyframe_payload("fc.weight", 0, (128, 128), mask))])
            await asyncio.sleep(0.03)
            if task.done():
                break
        with pytest.raises(SlowClient):
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_a_slow_reader_catches_up_after_skipping(tmp_path):
    """After a skip the client receives stored events from the keyframe on, in order."""
    store = RunStore(tmp_path)
    run_id = record_run(store, rewires=40, shape=(128, 128), status="running")
    keyframe = store.latest_keyframe_seq(run_id)

    async def scenario() -> list:
        outbox = Outbox(limit_bytes=20_000)
        follower = RunFollower(store, run_id, 0, "json", outbox, slow_client_s=0.05)
        task = asyncio.create_task(follower.run())
        await asyncio.sleep(0.5)  # stalled long enough to be skipped ahead
        received = []
        while True:
            message, kind = await outbox.get()
            received.append(json.loads(message))
            if kind == "skipped":
                break
        store.set_status(run_id, "completed")
        while (event := json.loads((await outbox.get())[0]))["type"] != "end":
            received.append(event)
        await task
        return received

    received = asyncio.run(asyncio.wait_for(scenario(), 60))
    after = received[received.index(next(e for e in received if e["type"] == "skipped")) + 1:]
    after = [event for event in after if event["type"] not in ("status", "meta")
             or event["seq"] >= keyframe]
    assert after[0]["seq"] == keyframe and after[0]["keyframe"] is True
    assert [event["seq"] for event in after] == list(range(keyframe, keyframe + len(after)))


@pytest.mark.slow
def test_slow_client_does_not_delay_a_fast_one(live_server, tmp_path):
    """A client that reads nothing holds only its own socket; another one replays to the end."""
    from websockets.sync.client import connect

    store = RunStore(tmp_path / "data")
    run_id = record_run(store, rewires=120, shape=(1024, 1024))  # ~4.4 MB of keyframes
    url = live_server.replace("http", "ws") + f"/ws/runs/{run_id}"
    # Its buffers fill; it never reads (nor waits 10 s at the end for a close handshake queued
    # behind what it did not read).
    slow = connect(url, max_queue=1, max_size=None, close_timeout=0.5)
    try:
        first = slow.recv(timeout=30)
        assert json.loads(first)["seq"] == 1
        result: dict = {}

        def fast_client() -> None:
            with connect(url, max_size=None) as fast:
                seqs = []
                while (event := json.loads(fast.recv(timeout=60)))["type"] != "end":
                    seqs.append(event["seq"])
                result["seqs"] = seqs

        thread = threading.Thread(target=fast_client)
        thread.start()
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert result["seqs"] == list(range(1, store.last_seq(run_id) + 1))
    finally:
        slow.close()


def test_a_slow_client_replaying_an_ended_run_gets_every_event(tmp_path):
    """No live edge to catch up with: the client sets the pace and nothing is skipped."""
    store = RunStore(tmp_path)
    run_id = record_run(store, rewires=20, shape=(128, 128))

    async def scenario() -> list:
        outbox = Outbox(limit_bytes=5_000)
        follower = RunFollower(store, run_id, 0, "json", outbox, slow_client_s=0.01)
        task = asyncio.create_task(follower.run())
        received = []
        while True:
            message, kind = await outbox.get()
            received.append(json.loads(message))
            if kind == "end":
                break
            await asyncio.sleep(0.02)  # slower than the reader
        await task
        return received

    received = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert received[-1] == {"type": "end", "last_seq": store.last_seq(run_id)}
    assert [event["seq"] for event in received[:-1]] == list(range(1, store.last_seq(run_id) + 1))
