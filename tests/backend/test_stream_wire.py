"""What goes out on the websocket is valid JSON whatever is stored; announce mode; fan-out."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.websockets import WebSocketDisconnect

from backend.services.stream_hub import Outbox, RunFollower, RunHub, StreamHubs
from dst_core.store import RunStore
from dst_core.store.codec import parse_binary_message
from tests.backend.test_stream import read_all, record_run


def strict_json(text: str):
    """JSON.parse's rules: NaN and Infinity are not JSON."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} on the wire"))


def receive_all(socket) -> list:
    """Every message up to `end`, parsed strictly (binary headers too)."""
    messages = []
    while True:
        message = socket.receive()
        if message.get("bytes") is not None:
            length = int.from_bytes(message["bytes"][:4], "little")
            messages.append(strict_json(message["bytes"][4:4 + length].decode()))
            continue
        messages.append(strict_json(message["text"]))
        if messages[-1]["type"] == "end":
            return messages


def store_literal_nan(store: RunStore, run_id: str) -> None:
    """What an imported export can hold: payload text with literal NaN and Infinity."""
    store.db.execute("UPDATE events SET payload = replace(payload, '\"loss\":1.0', "
                     "'\"loss\":NaN,\"grad\":-Infinity') WHERE run_id = ? AND type = 'metrics'",
                     (run_id,))
    store.db.execute("UPDATE events SET payload = json_set(payload, '$.active', 'X') "
                     "WHERE run_id = ? AND type = 'topology'", (run_id,))
    store.db.execute("UPDATE events SET payload = replace(payload, '\"X\"', 'Infinity') "
                     "WHERE run_id = ? AND type = 'topology'", (run_id,))


@pytest.mark.parametrize("query", ["", "&format=binary", "&topology=announce"])
def test_non_finite_numbers_are_null_on_every_path(client, query):
    store = client.app.state.store
    run_id = record_run(store, rewires=3)
    store_literal_nan(store, run_id)
    with client.websocket_connect(f"/ws/runs/{run_id}?from_seq=0{query}") as socket:
        messages = receive_all(socket)
    metrics = [m for m in messages if m["type"] == "metrics"]
    assert metrics[0]["loss"] is None and metrics[0]["grad"] is None
    frames = [m for m in messages if m["type"] == "topology"]
    assert frames and all(frame["active"] is None for frame in frames)
    assert messages[-1]["type"] == "end"


def damage(store: RunStore, run_id: str, how: str) -> int:
    seq = store.db.execute("SELECT MIN(seq) FROM events WHERE run_id = ? AND type = 'topology' "
                           "AND keyframe = 0", (run_id,)).fetchone()[0]
    statements = {
        "blob": "UPDATE events SET blob = x'02ffffffff' WHERE run_id = ? AND seq = ?",
        "no_index": "UPDATE events SET payload = json_remove(payload, '$.index') "
                    "WHERE run_id = ? AND seq = ?",
        "no_layer": "UPDATE events SET payload = json_remove(payload, '$.layer') "
                    "WHERE run_id = ? AND seq = ?",
        "shape": "UPDATE events SET payload = json_set(payload, '$.shape', json('[0, 5]')) "
                 "WHERE run_id = ? AND seq = ?",
        "not_json": "UPDATE events SET payload = '{bad' WHERE run_id = ? AND seq = ?",
    }
    store.db.execute(statements[how], (run_id, seq))
    return seq


@pytest.mark.parametrize("how", ["blob", "no_index", "no_layer", "shape", "not_json"])
@pytest.mark.parametrize("query", ["", "&format=binary", "&topology=announce"])
def test_a_malformed_stored_frame_is_an_error_then_end(client, how, query):
    store = client.app.state.store
    run_id = record_run(store, rewires=3)
    seq = damage(store, run_id, how)
    if query == "&topology=announce" and how == "blob":
        seq = None  # announce never reads the blob: the stream goes on to the end
    with client.websocket_connect(f"/ws/runs/{run_id}?from_seq=0{query}") as socket:
        messages = receive_all(socket)
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert messages[-1] == {"type": "end", "last_seq": store.last_seq(run_id)}
    if seq is None:
        assert closed.value.code == 1000
        return
    error = messages[-2]
    assert error["type"] == "error" and error["at_seq"] == seq and f"seq {seq}" in error["error"]
    assert [m.get("seq") for m in messages[:-2]] == list(range(1, seq))
    assert closed.value.code == 4500


def test_announce_sends_frame_headers_only(client):
    store = client.app.state.store
    run_id = record_run(store, rewires=4)
    with client.websocket_connect(f"/ws/runs/{run_id}?topology=announce") as socket:
        announced = read_all(socket)
    full = store.read_events(run_id, 0, 10_000)
    assert len(announced) == len(full) + 1
    for message, event in zip(announced, full, strict=False):
        if event["type"] != "topology":
            assert message == event
            continue
        assert message["announce"] is True
        assert not {"bits", "added", "removed"} & set(message)
        for key in ("seq", "step", "type", "layer", "index", "keyframe", "active", "shape"):
            assert message[key] == event[key]
    with client.websocket_connect(f"/ws/runs/{run_id}?topology=announce&format=binary") as socket:
        assert all(isinstance(m, dict) for m in read_all(socket))  # announce is always text


def test_a_bad_topology_mode_is_refused_clearly(client):
    run_id = record_run(client.app.state.store, rewires=1)
    with client.websocket_connect(f"/ws/runs/{run_id}?topology=some") as socket:
        message = json.loads(socket.receive_text())
        assert message["type"] == "error" and message["error"].startswith("topology:")
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 4400


# ---- fan-out: one reader per live run ------------------------------------------------------
async def follow(store, run_id, hub, from_seq=0, mode="json", limit_bytes=8 << 20,
                 slow_client_s=2.0, pause_s=0.0, taking: asyncio.Event | None = None
                 ) -> list[dict]:
    """A viewer's messages up to its `end`; it takes one only while `taking` is set, and
    waits `pause_s` (seconds, or a function giving them) after each."""
    outbox = Outbox(limit_bytes=limit_bytes)
    follower = RunFollower(store, run_id, from_seq, mode, outbox, hub, slow_client_s)
    task = asyncio.create_task(follower.run())
    received = []
    while True:
        if taking is not None:
            await taking.wait()
        message, kind = await outbox.get()
        received.append(json.loads(message) if isinstance(message, str) else
                        parse_binary_message(message)[0])
        if kind == "end":
            break
        pause = pause_s() if callable(pause_s) else pause_s
        if pause:
            await asyncio.sleep(pause)
    await task
    return received


async def write_live(store, run_id, rewires: int, pause_s: float = 0.01,
                     shape=(64, 96)) -> None:
    """More frames of a live run (of the layer `shape` it has: the store checks each frame
    against its layer), written while it is followed, then its end."""
    source = RunStore(store.data_dir)
    template = record_run(source, rewires=rewires, shape=shape, status="completed")
    events = source.read_events(template, 0, 100_000)
    for event in events:
        if event["type"] in ("topology", "metrics", "rewire"):
            payload = {k: v for k, v in event.items() if k not in ("seq", "step", "type")}
            await asyncio.to_thread(store.append_events, run_id,
                                    [(event["type"], event["step"] + 10_000, payload)])
            await asyncio.sleep(pause_s)
    await asyncio.to_thread(store.set_status, run_id, "completed")


def test_many_viewers_of_a_live_run_share_one_reader(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    run_id = record_run(store, rewires=5, status="running")
    reads: list[int] = []
    import backend.services.stream_hub as stream

    def counted(store_, run_id_, from_seq, limit):
        reads.append(from_seq)
        return stream.read_events.__wrapped__(store_, run_id_, from_seq, limit)

    counted.__wrapped__ = stream.read_events
    monkeypatch.setattr(stream, "read_events", counted)

    async def scenario():
        hubs = StreamHubs(store)
        hubs_of = [await hubs.join(run_id, mode) for mode in ["json"] * 9 + ["binary"]]
        assert len({id(hub) for hub in hubs_of}) == 1  # one hub for the run
        viewers = [follow(store, run_id, hub, mode=mode) for hub, mode in
                   zip(hubs_of, ["json"] * 9 + ["binary"], strict=True)]
        results = await asyncio.gather(write_live(store, run_id, 30), *viewers)
        return hubs, hubs_of[0], results[1:]

    hubs, hub, streams = asyncio.run(asyncio.wait_for(scenario(), 60))
    seqs = [[m["seq"] for m in stream_ if "seq" in m] for stream_ in streams]
    expected = list(range(1, store.last_seq(run_id) + 1))
    assert all(got == expected for got in seqs)  # every viewer: every event, in order, once
    assert all(stream_[-1] == {"type": "end", "last_seq": expected[-1]} for stream_ in streams)
    assert hub.state == "ended"
    # The live part was read once by the hub, not once per viewer: only the history before
    # the hub started was read by the viewers themselves (each from seq 0).
    live_reads = [seq for seq in reads if seq > hub.first_seq]
    assert len(live_reads) < 2 * len(expected) / 10
    assert reads.count(0) == 10


def test_a_slow_viewer_is_skipped_without_slowing_the_others(tmp_path):
    store = RunStore(tmp_path)
    run_id = record_run(store, rewires=2, shape=(128, 128), status="running")

    async def scenario():
        hubs = StreamHubs(store)
        fast_hub, slow_hub = await hubs.join(run_id, "json"), await hubs.join(run_id, "json")
        slow_takes = asyncio.Event()
        slow_takes.set()
        writer = asyncio.create_task(write_live(store, run_id, 60, pause_s=0.01,
                                                shape=(128, 128)))
        fast = asyncio.create_task(follow(store, run_id, fast_hub))
        # 0.2 s a message until the fast viewer is done; then it reads the rest at once.
        slow = asyncio.create_task(follow(store, run_id, slow_hub, limit_bytes=6_000,
                                          slow_client_s=0.05, taking=slow_takes,
                                          pause_s=lambda: 0.0 if fast.done() else 0.2))
        await writer
        # From here the slow viewer takes nothing until the fast one has had every event: a
        # fast viewer the slow one held back would never get there (no timing to race).
        slow_takes.clear()
        try:
            fast_stream = await asyncio.wait_for(fast, 60)
        except asyncio.TimeoutError:
            pytest.fail("the fast viewer waited for the slow one, which took nothing")
        slow_takes.set()
        return fast_stream, await slow

    fast, slow = asyncio.run(asyncio.wait_for(scenario(), 120))
    expected = list(range(1, store.last_seq(run_id) + 1))
    # Every event, in order, and its end, while the slow viewer (0.2 s a message, then
    # nothing) still had messages to take: never held back by it.
    assert [m["seq"] for m in fast if "seq" in m] == expected
    assert fast[-1] == {"type": "end", "last_seq": expected[-1]}
    assert any(m["type"] == "skipped" for m in slow)
    slow_seqs = [m["seq"] for m in slow if "seq" in m]
    assert slow_seqs == sorted(set(slow_seqs)) and len(slow_seqs) < len(expected)
    assert slow[-1] == {"type": "end", "last_seq": expected[-1]}


def test_a_viewer_that_joins_late_starts_at_its_from_seq(tmp_path):
    store = RunStore(tmp_path)
    run_id = record_run(store, rewires=3, status="running")

    async def scenario():
        hubs = StreamHubs(store)
        early = await hubs.join(run_id, "json")
        writer = asyncio.create_task(write_live(store, run_id, 40, pause_s=0.01))
        first = asyncio.create_task(follow(store, run_id, early))
        await asyncio.sleep(0.3)
        late_hub = await hubs.join(run_id, "announce")
        assert late_hub is early and isinstance(late_hub, RunHub)
        late = await follow(store, run_id, late_hub, from_seq=5, mode="announce")
        await writer
        return await first, late

    first, late = asyncio.run(asyncio.wait_for(scenario(), 60))
    expected = list(range(1, store.last_seq(run_id) + 1))
    assert [m["seq"] for m in first if "seq" in m] == expected
    assert [m["seq"] for m in late if "seq" in m] == expected[4:]
    assert all(m.get("announce") for m in late if m["type"] == "topology")


def test_a_viewer_behind_the_hubs_window_reads_the_store_then_rejoins(tmp_path):
    store = RunStore(tmp_path)
    run_id = record_run(store, rewires=2, status="running")

    async def scenario():
        hub = RunHub(store, run_id, window_bytes=3_000)  # a few events only
        hub.next_seq = store.last_seq(run_id) + 1
        hub.modes["json"] += 1
        hub.task = asyncio.create_task(hub.run())
        await write_live(store, run_id, 30, pause_s=0.005)
        await asyncio.sleep(0.3)
        assert hub.first_seq > 20 and hub.size <= 3_000 + max(e.nbytes for e in hub.events)
        streamed = await follow(store, run_id, hub, from_seq=3)
        await hub.task
        return streamed

    streamed = asyncio.run(asyncio.wait_for(scenario(), 60))
    expected = list(range(3, store.last_seq(run_id) + 1))
    assert [m["seq"] for m in streamed if "seq" in m] == expected
    assert streamed[-1] == {"type": "end", "last_seq": expected[-1]}
