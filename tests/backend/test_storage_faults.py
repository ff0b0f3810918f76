"""Issue 12, disk faults and run liveness: a store that refuses writes (full disk, read-only
database) gives 507/503 with sqlite's own words, loses nothing committed, and the run manager
records a worker's ending, with its real cause, once the disk is back.

The faults are SQLite's own limits on the store's real connections, so the errors are the
ones a real disk gives, raised where the product's writes really fail: `max_page_count`
pinned to the file's size (a write that needs one more page fails with SQLITE_FULL, "database
or disk is full") and `query_only` (every write fails with SQLITE_READONLY, "attempt to write
a readonly database")."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from backend.manager import INTERRUPTED, RunManager, Worker
from backend.settings import Settings
from dst_core.store import RunStore

FULL = "database or disk is full"  # sqlite's words for SQLITE_FULL
READ_ONLY = "attempt to write a readonly database"  # and for SQLITE_READONLY


@contextmanager
def _faulty_disk(store: RunStore, monkeypatch, fault: str) -> Iterator[None]:
    """Inside: every connection of `store` meets a real SQLite limit, "full" or "read-only"
    (see the module's docstring); on leaving, the disk is back.

    The limits are per connection and the store opens one per thread (the server's requests
    run on pool threads): the pragma goes on each connection open now and on each one
    `connect` opens meanwhile."""
    probe = store.db
    # A full file has no free page either: a write could otherwise reuse one and succeed.
    assert probe.execute("PRAGMA freelist_count").fetchone()[0] == 0
    if fault == "full":
        limit = f"PRAGMA max_page_count = {probe.execute('PRAGMA page_count').fetchone()[0]}"
        restore = f"PRAGMA max_page_count = {probe.execute('PRAGMA max_page_count').fetchone()[0]}"
    else:
        limit, restore = "PRAGMA query_only = ON", "PRAGMA query_only = OFF"
    module = sys.modules[RunStore.__module__]  # where RunStore.db finds `connect`
    plain_connect = module.connect

    def limited_connect(*args, **kwargs):
        conn = plain_connect(*args, **kwargs)
        conn.execute(limit)
        return conn

    with monkeypatch.context() as patch:
        patch.setattr(module, "connect", limited_connect)
        for conn in list(store._connections):
            conn.execute(limit)
        try:
            yield
        finally:
            for conn in list(store._connections):
                conn.execute(restore)


def _request(client, method: str, path: str, body):
    if isinstance(body, bytes):
        return client.request(method, path, content=body)
    return client.request(method, path, json=body)


def test_a_full_disk_is_507_with_sqlites_words_and_loses_nothing(make_client, monkeypatch):
    client = make_client()
    store = client.app.state.store
    created = client.post("/api/ingest/runs", json={}).json()
    remote, first_seq = created["id"], created["next_seq"]
    batch = {"events": [{"seq": first_seq + offset, "step": offset, "type": "metrics",
                         "loss": 1 / (offset + 1)} for offset in range(200)]}
    stored = client.post(f"/api/ingest/runs/{remote}/events", json={"events": batch["events"][:1]})
    assert stored.status_code == 200, stored.text
    events_before = store.read_events(remote, 0, 100_000)
    runs_before = client.get("/api/runs").json()
    # Writes too large for the pages the file has: each needs new ones.
    writes = (("POST", "/api/ingest/runs", {"config": {"notes": "x" * 20_000}}),
              ("POST", f"/api/ingest/runs/{remote}/events", batch),
              ("PUT", f"/api/ingest/runs/{remote}/artifacts/model.pt", bytes(20_000)))
    with _faulty_disk(store, monkeypatch, "full"):
        for method, path, body in writes:
            response = _request(client, method, path, body)
            assert response.status_code == 507, (path, response.text)
            assert response.json()["detail"].startswith(f"storage full: {FULL} (data folder "), (
                path, response.text)
        # Reads still answer, and the refused writes left nothing, not even part of the batch.
        assert client.get("/api/runs").json() == runs_before
        assert store.read_events(remote, 0, 100_000) == events_before
    # The disk is back: the writer resends its batch (the stored seq is dropped) and goes on.
    response = client.post(f"/api/ingest/runs/{remote}/events", json=batch)
    assert response.status_code == 200 and response.json()["last_seq"] == first_seq + 199
    assert store.read_events(remote, 0, 100_000)[:len(events_before)] == events_before
    for method, path, body in (writes[0], writes[2]):
        assert _request(client, method, path, body).status_code in (201, 204), path


def test_a_read_only_database_is_503_with_sqlites_words_and_recovers(make_client, monkeypatch):
    client = make_client(max_queued_runs=0)
    store = client.app.state.store
    kept = store.create_run({}, "kept", status="completed")["id"]
    remote = client.post("/api/ingest/runs", json={}).json()["id"]
    events_before = store.read_events(remote, 0, 100_000)
    with _faulty_disk(store, monkeypatch, "read-only"):
        for method, path, body in (("POST", "/api/ingest/runs", {}),
                                   ("DELETE", f"/api/runs/{kept}", None),
                                   ("POST", f"/api/ingest/runs/{remote}/heartbeat", None),
                                   ("POST", f"/api/ingest/runs/{remote}/events",
                                    {"events": [{"seq": len(events_before) + 1, "step": 1,
                                                 "type": "metrics", "loss": 0.5}]})):
            response = _request(client, method, path, body)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["detail"].startswith(
                f"storage unavailable: {READ_ONLY} (data folder "), (path, response.text)
        assert [run["id"] for run in client.get("/api/runs").json()] == [remote, kept]
    assert client.get(f"/api/runs/{kept}").json()["status"] == "completed"  # nothing lost
    assert store.read_events(remote, 0, 100_000) == events_before
    assert client.delete(f"/api/runs/{kept}").status_code == 204  # and the disk is back
    assert client.post(f"/api/ingest/runs/{remote}/heartbeat").status_code == 204


def _exited_worker(tmp_path, run_id: str, last_words: str) -> Worker:
    log_path = tmp_path / f"{run_id}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-c",
                                    f"import sys; print({last_words!r}, file=sys.stderr); "
                                    "sys.exit(1)"], stderr=log_file)
    process.wait()
    return Worker(run_id, process, log_path, time.monotonic())


def _small_page_store(data_dir) -> RunStore:
    """A store whose file has 512-byte pages: a row of a few hundred bytes (a worker's last
    words) spills to an overflow page, so on a full disk even a run's ending needs a page."""
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "small-pages.sqlite3") as db:
        db.execute("PRAGMA page_size = 512")
        db.execute("PRAGMA journal_mode = WAL")  # writes the header: the page size is fixed
    db.close()
    store = RunStore(data_dir, file_name="small-pages.sqlite3")
    assert store.db.execute("PRAGMA page_size").fetchone()[0] == 512
    return store


@pytest.mark.parametrize("fault, message", [("full", FULL), ("read-only", READ_ONLY)])
def test_a_worker_that_died_on_a_bad_disk_ends_failed_with_its_cause_once_the_disk_is_back(
        tmp_path, monkeypatch, caplog, fault, message):
    store = _small_page_store(tmp_path / "data")
    manager = RunManager(store, Settings(data_dir=tmp_path / "data"))
    run_id = store.create_run({}, "w", status="running", info={"writer": "worker"})["id"]
    last_words = f"sqlite3.OperationalError: {message}"
    manager.workers[run_id] = _exited_worker(tmp_path, run_id, last_words)
    with _faulty_disk(store, monkeypatch, fault), caplog.at_level(logging.ERROR):
        manager._reap()
        assert run_id in manager.workers  # still ours: Stop does not say "another process"
        # The ending was refused by sqlite itself, logged once with its words.
        faults = [record.getMessage() for record in caplog.records
                  if "storage_fault" in record.getMessage()]
        assert len(faults) == 1 and message in faults[0] and run_id in faults[0], faults
        stopped = asyncio.run(manager.stop(run_id, wait_s=0.1))
        assert stopped["status"] == "running"
        manager._reap()
        assert len([record for record in caplog.records
                    if "storage_fault" in record.getMessage()]) == 1  # not again each poll
    manager._reap()
    run = store.get_run(run_id)
    assert run_id not in manager.workers
    assert run["status"] == "failed"
    assert run["error"] == f"worker exited with code 1: {last_words}"
    assert store.read_events(run_id, 0, 100)[-1]["error"] == run["error"]


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
