"""A writer killed with SIGKILL mid-run: committed frames stay readable, the run ends failed."""

from __future__ import annotations

import json
import os
import signal
import time

from backend.app import create_app
from backend.settings import Settings
from dst_core.store import RunReader, RunStore
from tests.conftest import LoopbackClient
from tests.dst_core.test_recording import start_writer


def test_kill_9_of_a_writer_keeps_every_committed_frame(tmp_path):
    data_dir = tmp_path / "data"
    process, run_id = start_writer(data_dir, 100_000, 0.002)
    store = RunStore(data_dir)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        frames = store.db.execute("SELECT COUNT(*) FROM events WHERE run_id = ? AND "
                                  "type = 'topology'", (run_id,)).fetchone()[0]
        if frames >= 40:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert store.get_run(run_id)["status"] == "running"  # nobody told the store

    events = store.read_events(run_id, 0, 1_000_000)  # every committed event decodes
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    reader = RunReader(store)
    frame_steps = sorted({e["step"] for e in events if e["type"] == "topology"})
    assert len(frame_steps) >= 20
    for step in frame_steps:
        for layer in (0, 1):
            mask, _ = reader.mask_at(run_id, layer, step)
            assert mask.any()

    settings = Settings(data_dir=data_dir)
    with LoopbackClient(create_app(settings)) as client:  # the next server start
        run = client.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "failed" and "interrupted" in run["error"]
        with client.websocket_connect(f"/ws/runs/{run_id}") as socket:
            streamed = []
            while (event := json.loads(socket.receive_text()))["type"] != "end":
                streamed.append(event)
    assert streamed[: len(events)] == events
    assert streamed[-1]["type"] == "status" and streamed[-1]["status"] == "failed"
