"""Issue 30, item 7: deleting a run another live process writes is refused naming that writer
(as Stop is), or forced, which stops the writer; nothing is ever stored for a deleted id."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import httpx
import pytest

from backend.cli import main
from dst_core.recording import Recorder, RemoteRecorderError
from dst_core.store.run_store import RunGone, RunStore


def stored_for(store: RunStore, run_id: str) -> tuple[int, int, int]:
    """(runs rows, events, artifacts) the store holds for `run_id`."""
    return tuple(store.db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?",
                                  (run_id,)).fetchone()[0]
                 for table, column in (("runs", "id"), ("events", "run_id"),
                                       ("artifacts", "run_id")))


def test_delete_of_a_run_a_live_script_writes_is_409_naming_it_unless_forced(client):
    store = client.app.state.store
    recorder = Recorder(store.data_dir, name="script", heartbeat_s=0.2)
    recorder.log(1, loss=1.0)
    recorder.flush()
    refused = client.delete(f"/api/runs/{recorder.run_id}")
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert "a user's script" in detail and f"pid {os.getpid()} on {platform.node()}" in detail
    assert "force=true" in detail
    assert client.get(f"/api/runs/{recorder.run_id}").status_code == 200  # still there
    assert client.delete(f"/api/runs/{recorder.run_id}?force=true").status_code == 204
    # The writer's next write finds the run gone: it says so and stops.
    with pytest.raises(RunGone, match=f"run {recorder.run_id} .*deleted"):
        recorder.log(2, loss=0.5)
        recorder.flush()
    with pytest.raises(RunGone):
        recorder.log(3, loss=0.25)  # and keeps saying so, storing nothing
    beat = recorder._beat_thread  # the other thread that writes: beats, and quiet flushes
    recorder.finish("completed")  # the end of its `with` block: nothing to store, no error
    beat.join(timeout=30)
    assert not beat.is_alive()  # its heartbeat thread has stopped; nothing came back meanwhile
    assert stored_for(store, recorder.run_id) == (0, 0, 0)


def test_a_run_whose_writer_is_gone_is_deleted_without_force(client):
    store = client.app.state.store
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    run = store.create_run({}, "orphan", status="running",
                           info={"writer": "cli", "pid": int(dead.stdout),
                                 "host": platform.node()})
    assert client.delete(f"/api/runs/{run['id']}").status_code == 204


def test_nothing_is_stored_for_a_deleted_id(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run({}, "gone", status="running")["id"]
    store.delete_run(run_id)
    for write in (lambda: store.append_events(run_id, [("metrics", 1, {"loss": 1.0})]),
                  lambda: store.ingest_events(run_id, [{"seq": 5, "step": 1, "type": "metrics",
                                                        "loss": 1.0}]),
                  lambda: store.put_artifact(run_id, "model.pt", b"weights")):
        with pytest.raises(RunGone, match="deleted"):
            write()
    assert not store.set_status(run_id, "failed", error="late")
    store.heartbeat(run_id)
    store.update_summary(run_id, {"steps": 3})
    assert stored_for(store, run_id) == (0, 0, 0)


def test_a_remote_writer_of_a_deleted_run_gives_up_saying_so(tmp_path, servers):
    server = servers(tmp_path / "data")
    recorder = Recorder(url=server.url, name="remote", heartbeat_s=0.2,
                        spool_dir=tmp_path / "spool")
    recorder.log(1, loss=1.0)
    recorder.flush()
    refused = httpx.delete(f"{server.url}/api/runs/{recorder.run_id}", timeout=30)
    assert refused.status_code == 409 and "a remote writer" in refused.json()["detail"]
    # Warned once, from the sender thread, at its next request (a heartbeat may come first).
    with pytest.warns(RuntimeWarning, match="deleted"), \
            pytest.raises(RemoteRecorderError, match=f"run {recorder.run_id} is no longer on "
                                                     "the server: it was deleted"):
        assert httpx.delete(f"{server.url}/api/runs/{recorder.run_id}?force=true",
                            timeout=30).status_code == 204
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the sender finds out at its next request
            recorder.log(2, loss=0.5)
            recorder.flush()
            time.sleep(0.1)
    assert httpx.get(f"{server.url}/api/runs/{recorder.run_id}", timeout=30).status_code == 404
    store = RunStore(tmp_path / "data")
    assert stored_for(store, recorder.run_id) == (0, 0, 0)


def test_cli_delete_names_the_live_writer_and_force_stops_it(tmp_path):
    recorder = Recorder(tmp_path, name="script", heartbeat_s=0)
    recorder.log(1, loss=1.0)
    recorder.flush()
    with pytest.raises(SystemExit, match="a user's script .*--force"):
        main(["runs", "delete", recorder.run_id, "--data-dir", str(tmp_path)])
    assert RunStore(tmp_path).get_run(recorder.run_id) is not None
    assert main(["runs", "delete", recorder.run_id, "--force", "--data-dir", str(tmp_path)]) == 0
    with pytest.raises(RunGone):
        recorder.log(2, loss=0.5)
        recorder.flush()
    recorder.finish("completed")
    assert stored_for(RunStore(tmp_path), recorder.run_id) == (0, 0, 0)
