"""Every status transition of a run, each one an event on the run's stream."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from dst_core.store.config import RunConfig
from tests.backend.conftest import (
    DIVERGING_RUN,
    LONG_RUN,
    QUICK_RUN,
    child_pids,
    pid_alive,
    statuses_of,
    stream_events,
    wait_until,
)
from tests.conftest import wait_for_status


def receive_until(socket, event_type: str) -> dict:
    """The first event of `event_type` on a run's stream (earlier ones are skipped)."""
    while (event := json.loads(socket.receive_text()))["type"] != event_type:
        pass
    return event


def test_empty_body_and_no_body_start_runs(make_client):
    client = make_client()
    null = {"content": b"null", "headers": {"content-type": "application/json"}}
    for kwargs in ({"json": {}}, {}, null):
        response = client.post("/api/runs", **kwargs)
        assert response.status_code == 201, response.text
        run = response.json()
        assert run["status"] == "queued" and run["config"]["method"] == "set"
        client.post(f"/api/runs/{run['id']}/stop")


def test_queued_running_completed_with_summary(make_client):
    client = make_client()
    run = client.post("/api/runs", json=QUICK_RUN).json()
    events = stream_events(client, run["id"])
    assert statuses_of(events) == ["queued", "running", "completed"]
    assert events[-1] == {"type": "end", "last_seq": events[-2]["seq"]}
    done = client.get(f"/api/runs/{run['id']}").json()
    assert done["status"] == "completed" and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["ended_at"]
    summary = done["summary"]
    assert summary["steps"] == 100  # 2 epochs × 50 batches of 64 from 3,200 examples
    assert summary["final_loss"] > 0
    assert 0.5 < summary["final_test_accuracy"] <= summary["best_test_accuracy"] <= 1
    assert len(summary["density"]) == 2  # one hidden layer: two sparse weight matrices
    assert all(0 < density <= 1 for density in summary["density"].values())
    assert 0 < summary["itop_rate"] <= 1
    assert done["config"] == {**done["config"], **QUICK_RUN}


def test_queued_run_stops_before_it_starts(make_client, monkeypatch):
    client = make_client(max_concurrent_runs=1)
    manager = client.app.state.manager
    launches = []  # the supervisor's passes over the queue
    launch = manager._launch_queued
    monkeypatch.setattr(manager, "_launch_queued", lambda: (launches.append(1), launch()))
    first = client.post("/api/runs", json=LONG_RUN).json()
    second = client.post("/api/runs", json=LONG_RUN).json()
    wait_for_status(client, first["id"], ("running",))
    assert client.get(f"/api/runs/{second['id']}").json()["status"] == "queued"
    stopped = client.post(f"/api/runs/{second['id']}/stop").json()
    assert stopped["status"] == "stopped" and stopped["started_at"] is None
    assert statuses_of(stream_events(client, second["id"])) == ["queued", "stopped"]
    assert client.post(f"/api/runs/{first['id']}/stop").json()["status"] == "stopped"
    # The stopped queued run never got a worker, even once the slot was free: two passes of
    # the supervisor over the queue after the first run's worker was gone.
    wait_until(lambda: first["id"] not in manager.workers, 10, "the first worker to be reaped")
    passes = len(launches)
    wait_until(lambda: len(launches) >= passes + 2, 10, "the supervisor to look at the queue")
    assert second["id"] not in client.app.state.manager.workers
    assert client.get(f"/api/runs/{second['id']}").json()["status"] == "stopped"


@pytest.mark.real_workers  # a new worker process, importing torch
def test_stop_while_the_worker_is_starting(make_client, monkeypatch):
    client = make_client()
    manager = client.app.state.manager
    take = manager.pool.take

    def take_and_hold(run_id: str, log_path: Path):
        # Held where it is, at the start of its imports: it stays a worker that has recorded
        # nothing, however slow this test is to look (a busy machine could otherwise let it
        # finish importing and start the run first).
        process = take(run_id, log_path)
        os.kill(process.pid, signal.SIGSTOP)
        return process

    monkeypatch.setattr(manager.pool, "take", take_and_hold)
    run = client.post("/api/runs", json=LONG_RUN).json()
    wait_until(lambda: run["id"] in manager.workers, 10, "a worker process")
    process = manager.workers[run["id"]].process
    # torch takes seconds to import: the run has recorded nothing yet...
    assert client.get(f"/api/runs/{run['id']}").json()["status"] == "queued"
    stopped = client.post(f"/api/runs/{run['id']}/stop").json()
    assert stopped["status"] == "stopped"
    assert statuses_of(stream_events(client, run["id"]))[-1] == "stopped"
    # ...so it gets no grace period: killed at once, not after SIGTERM and 3 s.
    assert process.wait(timeout=10) == -signal.SIGKILL


def test_stopped_long_run_reads_stopped_and_keeps_frames(make_client):
    client = make_client()
    run = client.post("/api/runs", json=LONG_RUN).json()
    wait_for_status(client, run["id"], ("running",))
    with client.websocket_connect(f"/ws/runs/{run['id']}") as socket:
        receive_until(socket, "topology")
    worker = client.app.state.manager.workers[run["id"]]
    # The stop request answers once the run has ended, and gives up waiting after 4.5 s:
    # reading `stopped` in its answer is the 5-second contract.
    stopped = client.post(f"/api/runs/{run['id']}/stop").json()
    assert stopped["status"] == "stopped" and stopped["ended_at"] is not None
    wait_until(lambda: not pid_alive(worker.process.pid), 10, "the worker to exit")
    events = stream_events(client, run["id"])
    assert any(event["type"] == "topology" for event in events)
    assert any(event["type"] == "meta" for event in events)
    assert statuses_of(events) == ["queued", "running", "stopped"]
    # Stopping an ended run changes nothing.
    again = client.post(f"/api/runs/{run['id']}/stop").json()
    assert again["status"] == "stopped" and again["ended_at"] == stopped["ended_at"]


def test_hung_worker_is_killed_after_the_grace_period(make_client):
    client = make_client(stop_grace_s=0.5)
    run = client.post("/api/runs", json=LONG_RUN).json()
    wait_for_status(client, run["id"], ("running",))
    worker = client.app.state.manager.workers[run["id"]]
    os.kill(worker.process.pid, signal.SIGSTOP)  # a step that never returns
    stopped = client.post(f"/api/runs/{run['id']}/stop").json()
    assert stopped["status"] == "stopped"
    assert worker.process.returncode == -signal.SIGKILL
    events = stream_events(client, run["id"])
    assert statuses_of(events) == ["queued", "running", "stopped"]


def test_killed_worker_marks_the_run_failed(make_client):
    client = make_client()
    run = client.post("/api/runs", json=LONG_RUN).json()
    wait_for_status(client, run["id"], ("running",))
    os.kill(client.app.state.manager.workers[run["id"]].process.pid, signal.SIGKILL)
    failed = wait_for_status(client, run["id"], ("failed", "stopped", "completed"), 10)
    assert failed["status"] == "failed"
    assert "worker killed by SIGKILL" in failed["error"]
    events = stream_events(client, run["id"])
    assert events[-2]["status"] == "failed" and "SIGKILL" in events[-2]["error"]


def test_diverged_loss_fails_the_run(make_client):
    client = make_client()
    run = client.post("/api/runs", json=DIVERGING_RUN).json()
    failed = wait_for_status(client, run["id"], ("failed", "completed", "stopped"), 60)
    assert failed["status"] == "failed" and failed["error"].startswith("diverged: loss became")
    events = stream_events(client, run["id"])
    assert statuses_of(events) == ["queued", "running", "failed"]
    assert "diverged" in events[-2]["error"]
    # The non-finite loss reached the stream as null, never as a bare NaN.
    assert any(event["type"] == "metrics" and event["loss"] is None for event in events)


def test_delete_stops_and_removes_everything(make_client):
    client = make_client()
    run = client.post("/api/runs", json=LONG_RUN).json()
    wait_for_status(client, run["id"], ("running",))
    worker = client.app.state.manager.workers[run["id"]]
    log_path = worker.log_path
    assert client.delete(f"/api/runs/{run['id']}").status_code == 204
    assert not pid_alive(worker.process.pid)
    assert client.get(f"/api/runs/{run['id']}").status_code == 404
    assert run["id"] not in [item["id"] for item in client.get("/api/runs").json()]
    assert client.app.state.store.read_events(run["id"]) == []
    assert not log_path.exists()
    assert client.delete(f"/api/runs/{run['id']}").status_code == 404
    # A queued run is deleted before it ever starts.
    blocker = client.post("/api/runs", json=LONG_RUN).json()
    queued = client.post("/api/runs", json=LONG_RUN).json()
    assert client.delete(f"/api/runs/{queued['id']}").status_code == 204
    assert queued["id"] not in client.app.state.manager.queue
    client.post(f"/api/runs/{blocker['id']}/stop")


def test_delete_of_a_run_being_streamed_ends_its_stream(make_client):
    client = make_client()
    run = client.post("/api/runs", json=LONG_RUN).json()
    wait_for_status(client, run["id"], ("running",))
    with client.websocket_connect(f"/ws/runs/{run['id']}?from_seq=0") as socket:
        receive_until(socket, "topology")
        assert client.delete(f"/api/runs/{run['id']}").status_code == 204
        # The viewer is told the run is over, instead of waiting on a run that is gone.
        while (message := json.loads(socket.receive_text()))["type"] not in ("end", "error"):
            assert message["type"] in ("metrics", "eval", "rewire", "topology", "keepalive")
    assert client.get(f"/api/runs/{run['id']}").status_code == 404
    assert client.get("/api/health").status_code == 200


@pytest.mark.real_workers  # what the server's own start-up gives a worker
def test_concurrent_workers_and_queue_limit(make_client):
    client = make_client(max_concurrent_runs=2, max_queued_runs=1, worker_threads=2)
    first = client.post("/api/runs", json=LONG_RUN).json()
    second = client.post("/api/runs", json=LONG_RUN).json()
    wait_for_status(client, first["id"], ("running",))
    wait_for_status(client, second["id"], ("running",))
    for worker in client.app.state.manager.workers.values():
        pid = worker.process.pid
        # A direct child of the server, leading its own process group, with its thread budget.
        assert pid in child_pids(os.getpid()) and os.getpgid(pid) == pid
        arguments = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        assert arguments[arguments.index("--threads") + 1] == "2"
        assert b"OMP_NUM_THREADS=2\0" in Path(f"/proc/{pid}/environ").read_bytes()
    third = client.post("/api/runs", json=LONG_RUN).json()
    assert client.get(f"/api/runs/{third['id']}").json()["status"] == "queued"
    full = client.post("/api/runs", json=LONG_RUN)
    assert full.status_code == 429 and "queue full" in full.json()["detail"]
    ids = [run["id"] for run in client.get("/api/runs").json()]
    assert ids[:3] == [third["id"], second["id"], first["id"]]  # newest first
    for run in (third, second, first):
        assert client.post(f"/api/runs/{run['id']}/stop").json()["status"] == "stopped"


def test_the_default_run_lasts_long_enough_to_watch_and_stop(make_client):
    # What Start on the dashboard runs: 3000 epochs of 50 steps, minutes on one thread
    # (the seed task at 100 epochs was over in under two seconds: nothing left to Stop).
    client = make_client()
    run = client.post("/api/runs", json={}).json()
    wait_for_status(client, run["id"], ("running",))
    with client.websocket_connect(f"/ws/runs/{run['id']}?from_seq=0") as socket:
        event = receive_until(socket, "meta")
    assert event["total_steps"] == RunConfig().resolved_epochs * event["steps_per_epoch"] >= 100_000
    stopped = client.post(f"/api/runs/{run['id']}/stop").json()
    assert stopped["status"] == "stopped" and stopped["summary"]["steps"] < event["total_steps"]


def test_the_default_queue_takes_64_runs_and_refuses_the_65th_clearly(make_client):
    client = make_client()
    blocker = client.post("/api/runs", json=LONG_RUN).json()
    wait_for_status(client, blocker["id"], ("running",))
    waiting = [client.post("/api/runs", json=LONG_RUN) for _ in range(64)]
    assert {response.status_code for response in waiting} == {201}
    refused = client.post("/api/runs", json=LONG_RUN)
    assert refused.status_code == 429
    assert refused.json()["detail"] == ("queue full: 64 runs are already waiting; at most 64 "
                                        "(SPARSESCOPE_MAX_QUEUED_RUNS)")
    # Stopping one waiting run makes room for exactly one more.
    assert client.post(f"/api/runs/{waiting[0].json()['id']}/stop").json()["status"] == "stopped"
    assert client.post("/api/runs", json=LONG_RUN).status_code == 201
    assert client.post("/api/runs", json=LONG_RUN).status_code == 429
    assert client.post(f"/api/runs/{blocker['id']}/stop").json()["status"] == "stopped"
