"""Many viewers of one live run: every one receives every event, in order, once."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect

from tests.backend.conftest import statuses_of

VIEWERS = 20
LIVE_RUN = {"epochs": 6, "hidden": [32]}


async def watch(url: str) -> list[dict]:
    messages = []
    async with connect(url, max_size=None) as socket:
        async for text in socket:
            message = json.loads(text)
            messages.append(message)
            if message["type"] == "end":
                break
    return messages


async def watch_all(url: str, count: int) -> list[list[dict]]:
    return await asyncio.wait_for(asyncio.gather(*(watch(url) for _ in range(count))), 180)


def test_twenty_viewers_of_one_live_run(tmp_path, servers):
    server = servers(tmp_path / "data")
    run = server.post("/api/runs", json=LIVE_RUN).json()
    # Connected while the run is still queued: they follow it live from its first event.
    assert run["status"] == "queued"
    streams = asyncio.run(watch_all(f"{server.ws_url}/ws/runs/{run['id']}?from_seq=0", VIEWERS))
    stored = [[message for message in stream if "seq" in message] for stream in streams]
    reference = stored[0]
    assert [message["seq"] for message in reference] == list(range(1, len(reference) + 1))
    assert statuses_of(reference) == ["queued", "running", "completed"]
    assert {"meta", "metrics", "eval", "rewire", "topology"} <= {m["type"] for m in reference}
    for stream, events in zip(streams, stored, strict=True):
        assert events == reference  # same events, same order, no gaps, no repeats
        assert stream[-1] == {"type": "end", "last_seq": reference[-1]["seq"]}
        assert all(message["type"] == "keepalive" for message in stream[:-1]
                   if "seq" not in message)
    # A replay after the run ended is the same stream again.
    replay = asyncio.run(watch_all(f"{server.ws_url}/ws/runs/{run['id']}", 1))[0]
    assert [message for message in replay if "seq" in message] == reference
