"""`/ws/runs/{id}`: the one stream of a run's stored events (the hubs, followers and
outboxes that feed it are `backend.services.stream_hub`, which says how)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket

from backend.middleware import authorized
from backend.services.stream_hub import (
    MAX_FROM_SEQ,
    SEND_TIMEOUT_S,
    TOPOLOGY_MODES,
    Outbox,
    RunFollower,
    SlowClient,
    StreamHubs,
)
from backend.wire import error_message
from dst_core.store import FINAL_STATUSES, RunStore

router = APIRouter()
log = logging.getLogger("sparsescope")


def parse_from_seq(raw: str) -> int:
    """`from_seq` as a non-negative integer, or ValueError naming it.

    Parsed here rather than by FastAPI: a websocket that fails query validation is refused
    at the handshake (an HTTP 403 with no body), which tells a client nothing."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_FROM_SEQ:
        raise ValueError(f"from_seq: must be an integer from 0 to {MAX_FROM_SEQ}, got {raw!r}")
    return int(text)


async def _send_all(websocket: WebSocket, outbox: Outbox) -> None:
    while True:
        message, event_type = await outbox.get()
        try:
            # asyncio.timeout, not wait_for: no extra task per message (50 viewers of a live
            # run send thousands of messages a second)
            async with asyncio.timeout(SEND_TIMEOUT_S):
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)
        except TimeoutError:
            raise SlowClient(f"one message not accepted for {SEND_TIMEOUT_S:g} s") from None
        if event_type == "end":
            return


async def _drain(websocket: WebSocket) -> None:
    with contextlib.suppress(Exception):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


async def _refuse(websocket: WebSocket, error: str, code: int) -> None:
    await websocket.send_text(error_message(error))
    await websocket.close(code=code)


@router.websocket("/ws/runs/{run_id}")
async def stream_run(websocket: WebSocket, run_id: str, from_seq: str = "0",
                     format: str = "json", topology: str = "full") -> None:
    """Stored events from `from_seq` in order, following while the run is active, then `end`.

    `?format=binary` sends each topology event as one binary message (see codec.py);
    `?topology=announce` sends it as its header only (the page fetches `/view`); every
    other message stays JSON text."""
    store: RunStore = websocket.app.state.store
    await websocket.accept()
    if not authorized(websocket.scope, websocket.app.state.settings.token):
        await websocket.send_text(json.dumps({"type": "error", "error": "missing or wrong token"}))
        await websocket.close(code=4401)
        return
    if format not in ("json", "binary"):
        await _refuse(websocket, "format: must be 'json' or 'binary'", 4400)
        return
    if topology not in TOPOLOGY_MODES:
        await _refuse(websocket, "topology: must be 'full' or 'announce'", 4400)
        return
    try:
        first_seq = parse_from_seq(from_seq)
    except ValueError as error:
        await _refuse(websocket, str(error), 4422)
        return
    run = await asyncio.to_thread(store.get_run, run_id)
    if run is None:
        await _refuse(websocket, f"no run {run_id!r}", 4404)
        return
    mode = "announce" if topology == "announce" else format
    hubs: StreamHubs = websocket.app.state.stream_hubs  # made with the app (create_app)
    # A live run's viewers share one reader; a replay's viewer reads alone.
    hub = await hubs.join(run_id, mode) if run["status"] not in FINAL_STATUSES else None
    outbox = Outbox()
    follower = RunFollower(store, run_id, first_seq, mode, outbox, hub, reader=hubs.reader)
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
        if hub is not None:
            hubs.leave(hub, mode)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await websocket.close(code=code)
