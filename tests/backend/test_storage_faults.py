"""Issue 12, disk faults and run liveness: a store that refuses writes (read-only, I/O error,
full disk) gives 503/507 with the cause, loses nothing committed, and the run manager records
a worker's ending, with its real cause, once the disk is back."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time

import pytest

from backend.manager import INTERRUPTED, RunManager, Worker
from backend.settings import Settings
from dst_core.recording import RunStore


def _refusing(monkeypatch, store: RunStore, message: str) -> None:
    """Every write transaction of `store` fails as sqlite does on a bad disk."""
    def refuse(self):
        raise sqlite3.OperationalError(message)

    monkeypatch.setattr(RunStore, "_write", refuse)


@pytest.mark.parametrize("message, status", [
    ("database or disk is full", 507), ("disk I/O error", 503),
    ("attempt to write a readonly database", 503),
])
def test_a_refusing_disk_is_503_or_507_with_the_cause_and_recovers(make_client, monkeypatch,
                                                                 message, status):
    client = make_client(max_queued_runs=0)
    store = client.app.state.store
    kept = store.create_run({}, "kept", status="completed")["id"]
    remote = client.post("/api/ingest/runs", json={}).json()["id"]
    with monkeypatch.context() as patch:
        _refusing(patch, store, message)
        for method, path, body in (("POST", "/api/ingest/runs", {}),
                                   ("DELETE", f"/api/runs/{kept}", None),
                                   ("POST", f"/api/ingest/runs/{remote}/heartbeat", None)):
            response = client.request(method, path, json=body)
            assert response.status_code == status, (path, response.text)
            assert message in response.json()["detail"]
        assert client.get("/api/runs").status_code == 200  # reads still answer
    assert client.get(f"/api/runs/{kept}").json()["status"] == "completed"  # nothing lost
    assert client.delete(f"/api/runs/{kept}").status_code == 204  # and the disk is back


def _exited_worker(tmp_path, run_id: str, last_words: str) -> Worker:
    log_path = tmp_path / f"{run_id}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-c",
                                    f"import sys; print({last_words!r}, file=sys.stderr); "
                                    "sys.exit(1)"], stderr=log_file)
    process.wait()
    return Worker(run_id, process, log_path, time.monotonic())


def test_a_worker_that_died_on_a_bad_disk_ends_failed_with_its_cause_once_the_disk_is_back(
        tmp_path, monkeypatch):
    store = RunStore(tmp_path / "data")
    manager = RunManager(store, Settings(data_dir=tmp_path / "data"))
    run_id = store.create_run({}, "w", status="running", info={"writer": "worker"})["id"]
    manager.workers[run_id] = _exited_worker(tmp_path, run_id,
                                             "sqlite3.OperationalError: disk I/O error")
    with monkeypatch.context() as patch:
        _refusing(patch, store, "disk I/O error")
        manager._reap()
        assert run_id in manager.workers  # still ours: Stop does not say "another process"
        stopped = asyncio.run(manager.stop(run_id, wait_s=0.1))
        assert stopped["status"] == "running"
    manager._reap()
    run = store.get_run(run_id)
    assert run_id not in manager.workers
    assert run["status"] == "failed" and "disk I/O error" in run["error"]


def test_server_start_fails_only_runs_no_writer_is_recording(tmp_path):
    store = RunStore(tmp_path)
    manager = RunManager(store, Settings(data_dir=tmp_path, stale_after_s=60))
    worker = store.create_run({}, "worker", status="running", info={"writer": "worker"})["id"]
    queued = store.create_run({}, "queued", status="queued")["id"]
    alive = store.create_run({}, "cli", status="running", info={"writer": "cli"})["id"]
    silent = store.create_run({}, "remote", status="running", info={"writer": "remote"})["id"]
    store.db.execute("UPDATE runs SET heartbeat_at = 0 WHERE id = ?", (silent,))
    assert sorted(manager.fail_interrupted()) == sorted([worker, queued, silent])
    assert store.get_run(alive)["status"] == "running"
    assert store.get_run(worker)["error"] == INTERRUPTED


def test_the_stale_watcher_fails_silent_and_gone_writers_but_not_supervised_ones(tmp_path):
    store = RunStore(tmp_path)
    manager = RunManager(store, Settings(data_dir=tmp_path, stale_after_s=30))
    silent = store.create_run({}, "remote", status="running", info={"writer": "remote"})["id"]
    fresh = store.create_run({}, "remote", status="running", info={"writer": "remote"})["id"]
    ours = store.create_run({}, "worker", status="running", info={"writer": "worker"})["id"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = store.create_run({}, "cli", status="running",
                            info={"writer": "cli", "pid": dead.pid,
                                  "host": __import__("platform").node()})["id"]
    store.db.execute("UPDATE runs SET heartbeat_at = 0 WHERE id IN (?, ?)", (silent, ours))
    assert sorted(manager.mark_stale({ours})) == sorted([silent, gone])
    assert store.get_run(silent)["error"].startswith("stale")
    assert store.get_run(gone)["error"].startswith("interrupted: its writer process is gone")
    assert store.get_run(fresh)["status"] == store.get_run(ours)["status"] == "running"
