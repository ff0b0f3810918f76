"""The one stream: stored events of a run from `from_seq`, following it while it is active.

Live view and replay are the same loop; a run that has ended simply runs out of events, at
which point the final `end` message is sent and the socket closes.

A live run has one reader, its RunHub, that tails the store once for all its viewers and
keeps a window of the newest events, each encoded once per mode in use (wire.py). Each
client gets three tasks: a follower that moves events from the hub's window (or, for what
lies before it and for replays, from the store) into the client's own bounded outbox, a
sender that empties the outbox into the socket, and a receiver that notices a client that
went away. The hub never waits for a client, so a slow client can only fall behind itself:
when its outbox stays full while the run is live, it skips ahead to the newest stored
keyframe (a `skipped` notice without a `seq` says so; every message with a `seq` is still
exactly a stored event); a client that makes no progress at all is disconnected. The
encodings, messages and close codes are specified in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import logging
from collections import Counter, deque

from backend.wire import (
    StoredEvent,
    WireError,
    encode_all,
    end_message,
    error_message,
    judge_frames,
    read_events,
)
from dst_core.store import FINAL_STATUSES, RunReader, RunStore
from dst_core.store.schema import MAX_SEQ

log = logging.getLogger("sparsescope")
BATCH = 256  # events per store read
POLL_S = 0.1  # how often a live run's store is checked for new events
KEEPALIVE_S = 15.0  # proxies drop idle sockets
OUTBOX_BYTES = 8 * 1024 * 1024  # per client: a few keyframes of a large layer
# … and this many messages: announcements are ~100 bytes, so bytes alone would let a page that
# renders slower than the run records fall minutes behind before it counts as slow.
OUTBOX_MESSAGES = 1024
SLOW_CLIENT_S = 2.0  # an outbox full this long while the run is live: skip to a keyframe
MAX_SKIPS = 5  # skips in a row without the client taking one message: disconnect it
SEND_TIMEOUT_S = 30.0  # one message not accepted by the socket for this long: disconnect
MAX_FROM_SEQ = MAX_SEQ  # the store's range of seqs (SQLite integers are 64-bit)
HUB_WINDOW_BYTES = 32 * 1024 * 1024  # newest events a live run's hub keeps for its viewers
HUB_WINDOW_EVENTS = 8 * BATCH  # … and at most this many: a viewer behind them reads the store
TOPOLOGY_MODES = ("full", "announce")


class Outbox:
    """A per-client queue bounded by bytes (a mask keyframe can be megabytes) and by count."""

    def __init__(self, limit_bytes: int = OUTBOX_BYTES, limit_messages: int = OUTBOX_MESSAGES):
        self.limit_bytes, self.limit_messages = limit_bytes, limit_messages
        self.items: deque[tuple[str | bytes, str]] = deque()
        self.size = 0
        self.taken = 0  # messages the sender has taken: the client's progress
        self.changed = asyncio.Event()

    def fits(self, message: str | bytes) -> bool:
        return not self.items or (self.size + len(message) <= self.limit_bytes
                                  and len(self.items) < self.limit_messages)

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


class RunHub:
    """The one reader of a live run: tails the store once and keeps the newest events in
    memory for every viewer of the run.

    It never waits for a viewer. Each viewer pulls from the hub's window of recent events
    into its own outbox at its own pace; one that falls behind the window reads the store
    itself (as a replay does) until it is back in it, so a slow viewer holds back nobody and
    the hub holds no viewer's history. Events are encoded once per mode in use, in the
    hub's thread, and shared."""

    def __init__(self, store: RunStore, run_id: str, window_bytes: int = HUB_WINDOW_BYTES,
                 reader: RunReader | None = None):
        self.store, self.run_id, self.window_bytes = store, run_id, window_bytes
        self.reader = reader if reader is not None else RunReader(store)
        self.stored_run: dict | None = None  # its row, read once: frames are judged against it
        self.events: deque[StoredEvent] = deque()
        self._sizes: deque[int] = deque()  # each event's bytes as counted when it came in
        self.size = 0
        self.next_seq = 0  # the first seq the hub has not read yet (set before it starts)
        self.state: str = "live"  # then "ended" (last event read), "deleted" or "failed"
        self.last_seq = -1  # the run's last stored seq, once ended
        self.modes: Counter[str] = Counter()  # viewers per encoding: what to pre-encode
        self.changed = asyncio.Event()
        self.task: asyncio.Task | None = None

    @property
    def first_seq(self) -> int:
        return self.events[0].seq if self.events else self.next_seq

    def covers(self, seq: int) -> bool:
        """True when events from `seq` on are in the window (or not stored yet)."""
        return self.first_seq <= seq

    def events_from(self, seq: int, limit: int) -> list[StoredEvent]:
        if not self.events or seq >= self.next_seq:
            return []
        offset = bisect.bisect_left(self.events, seq, key=lambda event: event.seq)
        return list(itertools.islice(self.events, offset, offset + limit))

    def _notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def run(self) -> None:
        try:
            await self._follow()
        except Exception as error:
            # A store that cannot be read (disk fault): every viewer reads on its own and
            # meets the error itself.
            log.warning("stream hub of run %s stopped: %r", self.run_id, error)
            self.state = "failed"
            self._notify()

    async def _follow(self) -> None:
        while True:
            modes = tuple(self.modes)
            events = await asyncio.to_thread(self._read, self.next_seq, modes)
            if events:
                self._append(events)
                if len(events) == BATCH:
                    continue
            else:
                run = await asyncio.to_thread(self.store.get_run, self.run_id)
                if run is None:
                    self.state = "deleted"
                    self._notify()
                    return
                # The final status is stored before the run counts as ended: one last read.
                if run["status"] in FINAL_STATUSES:
                    events = await asyncio.to_thread(self._read, self.next_seq, modes)
                    if events:
                        self._append(events)
                        continue
                    self.last_seq = await asyncio.to_thread(self.store.last_seq, self.run_id)
                    self.state = "ended"
                    self._notify()
                    return
            await asyncio.sleep(POLL_S)

    def _read(self, from_seq: int, modes: tuple[str, ...]) -> list[StoredEvent]:
        events = read_events(self.store, self.run_id, from_seq, BATCH)
        if any(mode != "announce" for mode in modes):
            self.stored_run = self.stored_run or self.store.get_run(self.run_id)
            judge_frames(events, self.reader, self.stored_run)
        encode_all(events, modes)
        return events

    def _append(self, events: list[StoredEvent]) -> None:
        for event in events:
            self.events.append(event)
            self._sizes.append(event.nbytes)
            self.size += self._sizes[-1]
        self.next_seq = events[-1].seq + 1
        while len(self.events) > 1 and (self.size > self.window_bytes
                                        or len(self.events) > HUB_WINDOW_EVENTS):
            self.events.popleft()
            self.size -= self._sizes.popleft()
        self._notify()


class StreamHubs:
    """The hubs of an app's live runs: created by a run's first live viewer, gone with its
    last viewer or when the run has ended."""

    def __init__(self, store: RunStore, reader: RunReader | None = None):
        self.store = store
        self.reader = reader if reader is not None else RunReader(store)  # the app's, its caches
        self.hubs: dict[str, RunHub] = {}
        self.viewers: Counter[str] = Counter()

    async def join(self, run_id: str, mode: str) -> RunHub:
        hub = self.hubs.get(run_id)
        if hub is None or hub.state != "live":
            # The hub starts at the live edge; what lies before it, a viewer reads itself.
            next_seq = await asyncio.to_thread(lambda: self.store.last_seq(run_id) + 1)
            hub = self.hubs.get(run_id)  # another viewer may have made one meanwhile
            if hub is None or hub.state != "live":
                hub = self.hubs[run_id] = RunHub(self.store, run_id, reader=self.reader)
                hub.next_seq = next_seq
                hub.task = asyncio.create_task(hub.run(), name=f"ws-hub-{run_id}")
                self.viewers[run_id] = 0
        hub.modes[mode] += 1
        self.viewers[run_id] += 1
        return hub

    def leave(self, hub: RunHub, mode: str) -> None:
        hub.modes[mode] -= 1
        if hub.modes[mode] <= 0:
            del hub.modes[mode]
        if self.hubs.get(hub.run_id) is not hub:
            return
        self.viewers[hub.run_id] -= 1
        if self.viewers[hub.run_id] <= 0:
            del self.hubs[hub.run_id], self.viewers[hub.run_id]
            if hub.task is not None:
                hub.task.cancel()


class RunFollower:
    """Sends one viewer a run's stored events from a seq, following the live edge.

    With a hub (a live run) it takes events from the hub's window and reads the store only
    for what lies before it; without one (a replay) it reads the store alone."""

    def __init__(self, store: RunStore, run_id: str, from_seq: int, mode: str,
                 outbox: Outbox, hub: RunHub | None = None,
                 slow_client_s: float = SLOW_CLIENT_S, reader: RunReader | None = None):
        self.store, self.run_id, self.seq, self.mode = store, run_id, max(0, from_seq), mode
        self.reader = reader if reader is not None else RunReader(store)
        self.stored_run: dict | None = None  # its row, read once: frames are judged against it
        self.outbox, self.hub = outbox, hub
        self.slow_client_s = slow_client_s
        self.skips = 0
        self.close_code = 1000  # 4404 when the run is deleted, 4500 for an unreadable event

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_put = loop.time()
        while True:
            changed = self.hub.changed if self.hub else None
            batch = await self._next_batch()
            if batch:
                for event in batch:
                    try:
                        message = event.message(self.mode)
                    except WireError as error:
                        await self._fail(str(error), error.seq)
                        return
                    if not await self._put(message, event.type):
                        break  # skipped ahead: read again from the new seq
                    self.seq = event.seq + 1
                last_put = loop.time()
                continue
            ended = await self._ended()
            if ended is not None:
                await self._finish(*ended)
                return
            if loop.time() - last_put > KEEPALIVE_S:
                await self._put_wait(json.dumps({"type": "keepalive"}), "keepalive")
                last_put = loop.time()
            if changed is None or self.hub is None:
                await asyncio.sleep(POLL_S)
            else:  # woken by the hub's next read, or in time for a keepalive
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), KEEPALIVE_S)

    async def _next_batch(self) -> list[StoredEvent]:
        if self.hub is not None and self.hub.state == "failed":
            self.hub = None
        hub = self.hub
        if hub is not None and hub.covers(self.seq):
            batch = hub.events_from(self.seq, BATCH)
        else:
            batch = await asyncio.to_thread(self._read, self.seq, BATCH)
        if any(not event.encoded(self.mode) for event in batch):
            await asyncio.to_thread(self._encode, batch)  # off the event loop
        return batch

    def _encode(self, batch: list[StoredEvent]) -> None:
        if self.mode != "announce":  # frames sent whole: the ones readers skip are not
            self.stored_run = self.stored_run or self.store.get_run(self.run_id)
            judge_frames(batch, self.reader, self.stored_run)
        encode_all(batch, (self.mode,))

    def _read(self, from_seq: int, limit: int) -> list[StoredEvent]:
        return read_events(self.store, self.run_id, from_seq, limit)

    async def _ended(self) -> tuple[str, int] | None:
        """("ended" | "deleted", last seq) once the run has ended and every event is read."""
        hub = self.hub
        if hub is not None:
            if hub.state == "live":
                return None
            if hub.state == "ended" and self.seq <= hub.last_seq:
                # The hub has stopped reading (and will never wake anyone again); what is
                # left, stored after its last read, this viewer reads from the store itself.
                self.hub = None
                return None
            return hub.state, hub.last_seq if hub.state == "ended" else self.seq - 1
        run = await asyncio.to_thread(self.store.get_run, self.run_id)
        if run is None:
            return "deleted", self.seq - 1
        if run["status"] not in FINAL_STATUSES:
            return None
        # The final status is stored before the run counts as ended: one last read.
        if await asyncio.to_thread(self._read, self.seq, 1):
            return None
        # last_seq is the run's last stored event, also for a from_seq past the end.
        return "ended", await asyncio.to_thread(self.store.last_seq, self.run_id)

    async def _finish(self, state: str, last_seq: int) -> None:
        if state == "deleted":  # say so, then end (a client waiting for `end` stops)
            await self._put_wait(error_message(f"run {self.run_id} was deleted"), "error")
            self.close_code = 4404
        await self._put_wait(end_message(last_seq), "end")

    async def _fail(self, reason: str, seq: int) -> None:
        """An event that cannot be sent: say which and why, then end (never a silent stop)."""
        last_seq = await asyncio.to_thread(self.store.last_seq, self.run_id)
        await self._put_wait(error_message(reason, at_seq=seq), "error")
        await self._put_wait(end_message(last_seq), "end")
        self.close_code = 4500

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
