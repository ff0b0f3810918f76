"""The one stream: stored events of a run from `from_seq`, following it while it is active.

Live view and replay are the same loop; a run that has ended simply runs out of events, at
which point the final `end` message is sent and the socket closes.

Each client gets three tasks: a reader that tails the store into the client's own bounded
outbox, a sender that empties the outbox into the socket, and a receiver that notices a
client that went away. Nothing is shared between clients and training writes to the store
from another process, so a slow client can only fall behind itself: when its outbox stays
full while the run is live, it skips ahead to the newest stored keyframe (a `skipped` notice
without a `seq` says so; every message with a `seq` is still exactly a stored event); a
client that makes no progress at all is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque

from fastapi import APIRouter, WebSocket

from backend.middleware import authorized
from dst_core.recording import FINAL_STATUSES, RunStore

router = APIRouter()
BATCH = 256  # events per store read
POLL_S = 0.1  # how often a live run's store is checked for new events
KEEPALIVE_S = 15.0  # proxies drop idle sockets
OUTBOX_BYTES = 8 * 1024 * 1024  # per client: a few keyframes of a large layer
SLOW_CLIENT_S = 2.0  # an outbox full this long while the run is live: skip to a keyframe
MAX_SKIPS = 5  # skips in a row without the client taking one message: disconnect it
SEND_TIMEOUT_S = 30.0  # one message not accepted by the socket for this long: disconnect
MAX_FROM_SEQ = 2**62  # SQLite integers are 64-bit; a larger from_seq cannot name any event


def parse_from_seq(raw: str) -> int:
    """`from_seq` as a non-negative integer, or ValueError naming it.

    Parsed here rather than by FastAPI: a websocket that fails query validation is refused
    at the handshake (an HTTP 403 with no body), which tells a client nothing."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_FROM_SEQ:
        raise ValueError(f"from_seq: must be an integer from 0 to {MAX_FROM_SEQ}, got {raw!r}")
    return int(text)


class Outbox:
    """A per-client queue bounded by bytes (a mask keyframe can be megabytes)."""

    def __init__(self, limit_bytes: int = OUTBOX_BYTES):
        self.limit_bytes = limit_bytes
        self.items: deque[tuple[str | bytes, str]] = deque()
        self.size = 0
        self.taken = 0  # messages the sender has taken: the client's progress
        self.changed = asyncio.Event()

    def fits(self, message: str | bytes) -> bool:
        return not self.items or self.size + len(message) <= self.limit_bytes

    def put(self, message: str | bytes, event_type: str = "") -> None:
        self.items.append((message, event_type))
        self.size += len(message)
        self.changed.set()

    async def get(self) -> tuple[str | bytes, str]:
        while not self.items:
            self.changed.clear()
            await self.changed.wait()
        message, event_type = self.items.popleft()
        self.size -= len(message)
        self.taken += 1
        self.changed.set()
        return message, event_type

    async def wait_for_room(self, message: str | bytes, timeout_s: float | None) -> bool:
        """True once `message` fits; False after `timeout_s` (None: wait as long as it takes)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while not self.fits(message):
            self.changed.clear()
            if deadline is None:
                await self.changed.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True

    def drop_all_but(self, keep_types: tuple[str, ...]) -> int:
        kept = [(m, t) for m, t in self.items if t in keep_types]
        dropped = len(self.items) - len(kept)
        self.items = deque(kept)
        self.size = sum(len(m) for m, _ in kept)
        return dropped


class SlowClient(Exception):
    """The client took nothing for too long: it is disconnected (it may reconnect)."""


class RunFollower:
    """Reads one run's stored events from a seq into an Outbox, following the live edge."""

    def __init__(self, store: RunStore, run_id: str, from_seq: int, binary: bool,
                 outbox: Outbox, slow_client_s: float = SLOW_CLIENT_S):
        self.store, self.run_id, self.seq, self.binary = store, run_id, max(0, from_seq), binary
        self.outbox = outbox
        self.slow_client_s = slow_client_s
        self.skips = 0
        self.close_code = 1000  # 4404 when the run is deleted while it is streamed

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_put = loop.time()
        while True:
            batch = await asyncio.to_thread(self.store.read_messages, self.run_id, self.seq, BATCH,
                                            self.binary)
            if batch:
                for seq, message, event_type in batch:
                    if not await self._put(message, event_type):
                        break  # skipped ahead: read again from the new seq
                    self.seq = seq + 1
                last_put = loop.time()
                continue
            run = await asyncio.to_thread(self.store.get_run, self.run_id)
            if run is None:
                # Deleted while streamed: say so, then end (a client waiting for `end` stops).
                last_seq = self.seq - 1
                await self._put_wait(json.dumps({"type": "error", "error": f"run {self.run_id} was "
                                                 "deleted"}), "error")
                await self._put_wait(json.dumps({"type": "end", "last_seq": last_seq}), "end")
                self.close_code = 4404
                return
            if run["status"] in FINAL_STATUSES:
                # The final status is stored before the run counts as ended: one last read.
                if await asyncio.to_thread(self.store.read_messages, self.run_id, self.seq, 1):
                    continue
                # last_seq is the run's last stored event, also for a from_seq past the end.
                last_seq = await asyncio.to_thread(self.store.last_seq, self.run_id)
                await self._put_wait(json.dumps({"type": "end", "last_seq": last_seq}), "end")
                return
            if loop.time() - last_put > KEEPALIVE_S:
                await self._put_wait(json.dumps({"type": "keepalive"}), "keepalive")
                last_put = loop.time()
            await asyncio.sleep(POLL_S)

    async def _put_wait(self, message: str | bytes, event_type: str) -> None:
        await self.outbox.wait_for_room(message, None)
        self.outbox.put(message, event_type)

    async def _put(self, message: str | bytes, event_type: str) -> bool:
        """Queue one stored event; False when the client was skipped ahead instead."""
        taken_before = self.outbox.taken
        if await self.outbox.wait_for_room(message, self.slow_client_s):
            self.outbox.put(message, event_type)
            return True
        run = await asyncio.to_thread(self.store.get_run, self.run_id)
        target = await asyncio.to_thread(self.store.latest_keyframe_seq, self.run_id, self.seq)
        if run is None or run["status"] in FINAL_STATUSES or target is None:
            # A replay has no live edge to catch up with: the client sets the pace.
            await self._put_wait(message, event_type)
            return True
        self.skips = self.skips + 1 if self.outbox.taken == taken_before else 1
        if self.skips > MAX_SKIPS:
            raise SlowClient(f"client took nothing for {MAX_SKIPS} skips")
        # Status and meta events are small and a viewer needs them; frames are superseded.
        self.outbox.drop_all_but(("status", "meta"))
        self.outbox.put(json.dumps({"type": "skipped", "from_seq": self.seq, "to_seq": target}),
                        "skipped")
        self.seq = target
        return False


async def _send_all(websocket: WebSocket, outbox: Outbox) -> None:
    while True:
        message, event_type = await outbox.get()
        send = websocket.send_bytes(message) if isinstance(message, bytes) else \
            websocket.send_text(message)
        try:
            await asyncio.wait_for(send, SEND_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise SlowClient(f"one message not accepted for {SEND_TIMEOUT_S:g} s") from None
        if event_type == "end":
            return


async def _drain(websocket: WebSocket) -> None:
    with contextlib.suppress(Exception):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


@router.websocket("/ws/runs/{run_id}")
async def stream_run(websocket: WebSocket, run_id: str, from_seq: str = "0",
                     format: str = "json") -> None:
    """Stored events from `from_seq` in order, following while the run is active, then `end`.

    `?format=binary` sends each topology event as one binary message (see codec.py);
    every other message stays JSON text."""
    store: RunStore = websocket.app.state.store
    await websocket.accept()
    if not authorized(websocket.scope, websocket.app.state.settings.token):
        await websocket.send_text(json.dumps({"type": "error", "error": "missing or wrong token"}))
        await websocket.close(code=4401)
        return
    if format not in ("json", "binary"):
        await websocket.send_text(json.dumps({"type": "error",
                                              "error": "format: must be 'json' or 'binary'"}))
        await websocket.close(code=4400)
        return
    try:
        first_seq = parse_from_seq(from_seq)
    except ValueError as error:
        await websocket.send_text(json.dumps({"type": "error", "error": str(error)}))
        await websocket.close(code=4422)
        return
    if await asyncio.to_thread(store.get_run, run_id) is None:
        await websocket.send_text(json.dumps({"type": "error", "error": f"no run {run_id!r}"}))
        await websocket.close(code=4404)
        return
    outbox = Outbox()
    follower = RunFollower(store, run_id, first_seq, format == "binary", outbox)
    receiver = asyncio.create_task(_drain(websocket), name="ws-receive")
    reader = asyncio.create_task(follower.run(), name="ws-read")
    sender = asyncio.create_task(_send_all(websocket, outbox), name="ws-send")
    tasks = {receiver, reader, sender}
    code = 1000
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if done == {reader} and reader.exception() is None:  # `end` queued: let it be sent
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            done = done | {reader}
            code = follower.close_code
        for task in done:
            if not task.cancelled() and isinstance(task.exception(), SlowClient):
                code = 1013  # "try again later": the client may reconnect with from_seq
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await websocket.close(code=code)
