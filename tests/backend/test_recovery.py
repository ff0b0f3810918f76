"""A real server killed, restarted and shut down: workers die with it, interrupted runs are
marked failed with their data intact, a clean shutdown stops runs even with viewers open."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest
from websockets.sync.client import connect

from dst_core.recording import Recorder
from dst_core.store import RunStore
from tests.backend.conftest import (
    LONG_RUN,
    child_pids,
    pid_alive,
    statuses_of,
    wait_until,
)


def wait_running(server, run_id: str) -> None:
    wait_until(lambda: server.get(f"/api/runs/{run_id}").json()["status"] == "running", 60,
               f"run {run_id} running")


def first_topology(server, run_id: str) -> None:
    """Block until the run has stored at least one topology frame."""
    with connect(f"{server.ws_url}/ws/runs/{run_id}") as socket:
        while json.loads(socket.recv(timeout=60))["type"] != "topology":
            pass


def test_killed_server_takes_its_workers_and_restart_recovers(tmp_path, servers):
    data_dir = tmp_path / "data"
    server = servers(data_dir)
    running = server.post("/api/runs", json=LONG_RUN).json()
    queued = server.post("/api/runs", json=LONG_RUN).json()
    wait_running(server, running["id"])
    first_topology(server, running["id"])
    workers = child_pids(server.process.pid)
    assert len(workers) == 1
    server.process.kill()  # kill -9: no shutdown code runs
    server.process.wait()
    # PR_SET_PDEATHSIG (and the parent watchdog) end the orphaned worker.
    wait_until(lambda: not any(pid_alive(pid) for pid in workers), 10, "the worker to die")
    store = RunStore(data_dir)
    frames_before = len([event for event in store.read_events(running["id"], 0, 100_000)
                         if event["type"] == "topology"])
    store.close()
    assert frames_before > 0

    restarted = servers(data_dir)
    for run in (running, queued):
        after = restarted.get(f"/api/runs/{run['id']}").json()
        assert after["status"] == "failed" and "interrupted" in after["error"]
    with connect(f"{restarted.ws_url}/ws/runs/{running['id']}") as socket:
        events = []
        while not events or events[-1]["type"] != "end":
            events.append(json.loads(socket.recv(timeout=30)))
    assert len([event for event in events if event["type"] == "topology"]) == frames_before
    assert statuses_of(events) == ["queued", "running", "failed"]
    assert "interrupted" in events[-2]["error"]
    # The restarted server serves new runs normally.
    fresh = restarted.post("/api/runs", json=LONG_RUN).json()
    wait_running(restarted, fresh["id"])
    assert restarted.post(f"/api/runs/{fresh['id']}/stop").json()["status"] == "stopped"


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "Ctrl+C"])
def test_shutdown_stops_runs_with_a_websocket_open(tmp_path, servers, signal_number):
    data_dir = tmp_path / "data"
    server = servers(data_dir)
    running = server.post("/api/runs", json=LONG_RUN).json()
    queued = server.post("/api/runs", json=LONG_RUN).json()
    wait_running(server, running["id"])
    workers = child_pids(server.process.pid)
    with contextlib.ExitStack() as viewers:
        # Twenty viewers, one of them reading, the rest connected and never read from. They
        # close after the server is gone: no close handshake can complete, so none waits for
        # one (the default 10 s wait took 20 s of this test on a busy machine).
        viewer, *idle = [viewers.enter_context(connect(f"{server.ws_url}/ws/runs/{run_id}",
                                                       close_timeout=0.5))
                         for run_id in [running["id"]] * 19 + [queued["id"]]]
        while json.loads(viewer.recv(timeout=60))["type"] != "topology":
            pass
        server.process.send_signal(signal_number)
        # A generous bound that only a hang exceeds (the grace period is 3 s).
        try:
            code = server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running 20 s after {signal_number.name}: "
                        f"{server.read_output()[-2000:]}")
    # uvicorn re-raises the signal it caught once shutdown is complete.
    output = server.read_output()
    assert code in (0, -signal_number), output[-2000:]
    assert "event=server_stopped" in output and "Traceback" not in output
    assert not any(pid_alive(pid) for pid in workers)
    store = RunStore(data_dir)
    try:
        assert store.get_run(running["id"])["status"] == "stopped"
        assert store.get_run(queued["id"])["status"] == "stopped"
        assert any(event["type"] == "topology"
                   for event in store.read_events(running["id"], 0, 100_000))
    finally:
        store.close()


def test_runs_of_other_writers_are_left_alone(tmp_path, servers):
    """A user's script (or the CLI) writing into the same data folder is not the server's:
    never launched by its queue, never marked interrupted on restart while its writer's
    heartbeat is fresh, not stoppable here."""
    data_dir = tmp_path / "data"
    active = Recorder(data_dir, name="script, training", config={"lr": 0.1, "arch": "resnet"})
    active.__enter__()
    active.log(5, loss=0.5)
    active.flush()
    server = servers(data_dir)
    assert active.run_id in {run["id"] for run in server.get("/api/runs").json()}
    stored = server.get(f"/api/runs/{active.run_id}").json()
    assert stored["config"] == {"lr": 0.1, "arch": "resnet"}  # as the script gave it
    time.sleep(1.0)  # ten supervisor rounds: the manager must not pick a foreign run up
    assert server.get(f"/api/runs/{active.run_id}").json()["status"] == "running"
    assert child_pids(server.process.pid) == set()
    refused = server.post(f"/api/runs/{active.run_id}/stop")
    detail = refused.json()["detail"]
    assert refused.status_code == 409 and "script" in detail and "cannot stop it" in detail
    assert f"pid {os.getpid()}" in detail  # who to stop instead

    server.process.kill()
    server.process.wait()
    restarted = servers(data_dir)
    assert restarted.get(f"/api/runs/{active.run_id}").json()["status"] == "running"
    active.__exit__(None, None, None)
    assert restarted.get(f"/api/runs/{active.run_id}").json()["status"] == "completed"
