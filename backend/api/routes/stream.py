"""The one stream: stored events of a run from `from_seq`, following it while it is active.

Live view and replay are the same loop; a run that has ended simply runs out of events, at
which point the final `end` message is sent and the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from dst_core.recording import FINAL_STATUSES, RunStore

router = APIRouter()
BATCH = 256
POLL_S = 0.1
KEEPALIVE_S = 15.0


@router.websocket("/ws/runs/{run_id}")
async def stream_run(websocket: WebSocket, run_id: str, from_seq: int = 0) -> None:
    store: RunStore = websocket.app.state.store
    token = websocket.app.state.settings.token
    await websocket.accept()
    if token and not hmac.compare_digest((websocket.query_params.get("token") or "").encode(),
                                         token.encode()):
        await websocket.send_text(json.dumps({"type": "error", "error": "missing or wrong token"}))
        await websocket.close(code=4401)
        return
    if await asyncio.to_thread(store.get_run, run_id) is None:
        await websocket.send_text(json.dumps({"type": "error", "error": f"no run {run_id!r}"}))
        await websocket.close(code=4404)
        return
    # A receive loop beside the sender notices a client that went away.
    receiver = asyncio.create_task(_drain(websocket))
    try:
        await _send_events(websocket, store, run_id, max(0, from_seq), receiver)
    except (WebSocketDisconnect, RuntimeError, asyncio.CancelledError):
        pass
    finally:
        receiver.cancel()
        with contextlib.suppress(Exception):
            await websocket.close()


async def _drain(websocket: WebSocket) -> None:
    with contextlib.suppress(Exception):
        while True:
            await websocket.receive_text()


async def _send_events(websocket: WebSocket, store: RunStore, run_id: str, seq: int,
                       receiver: asyncio.Task) -> None:
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    while not receiver.done():
        events = await asyncio.to_thread(store.read_event_texts, run_id, seq, BATCH)
        if events:
            for event_seq, text in events:
                await websocket.send_text(text)
                seq = event_seq + 1
            last_sent = loop.time()
            continue
        run = await asyncio.to_thread(store.get_run, run_id)
        if run is None or run["status"] in FINAL_STATUSES:
            # The final status is stored before the run counts as ended: one last read.
            events = await asyncio.to_thread(store.read_event_texts, run_id, seq, BATCH)
            if events:
                continue
            await websocket.send_text(json.dumps({"type": "end", "last_seq": seq - 1}))
            return
        if loop.time() - last_sent > KEEPALIVE_S:
            await websocket.send_text(json.dumps({"type": "keepalive"}))
            last_sent = loop.time()
        await asyncio.sleep(POLL_S)
