"""Warm workers: a started run is handed to a process that already imported torch; still one
process per run, a direct child in its own group, stoppable, and gone with the server."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.backend.conftest import LONG_RUN, QUICK_RUN, child_pids, pid_alive, wait_until
from tests.conftest import wait_for_status

pytestmark = pytest.mark.real_workers  # the server's own pool, not the suite's forks


def torch_loaded(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def idle_pid(manager) -> int:
    wait_until(lambda: manager.pool.idle and torch_loaded(manager.pool.idle[0].process.pid),
               90, "an idle worker with torch imported")
    return manager.pool.idle[0].process.pid


def test_a_run_goes_to_the_warm_worker_and_another_takes_its_place(make_client):
    client = make_client(warm_workers=1)
    manager = client.app.state.manager
    warm = idle_pid(manager)
    assert warm in child_pids(os.getpid()) and os.getpgid(warm) == warm
    run = client.post("/api/runs", json=QUICK_RUN).json()
    wait_until(lambda: run["id"] in manager.workers or client.get(
        f"/api/runs/{run['id']}").json()["status"] == "completed", 10, "the run to be taken")
    assert wait_for_status(client, run["id"], ("completed",))["summary"]["steps"] > 0
    # It trained this one run and exits (the run is stored completed just before it does).
    wait_until(lambda: not pid_alive(warm), 15, "the warm worker to exit after its run")
    log = client.app.state.settings.data_dir / "logs" / f"{run['id']}.log"
    assert log.exists()
    replacement = idle_pid(manager)
    assert replacement != warm
    events = client.get(f"/api/runs/{run['id']}").json()
    assert events["settings"]["model"] == "mlp [32]"


def test_a_warm_started_run_stops_and_shutdown_ends_the_idle_worker(make_client):
    client = make_client(warm_workers=1)
    manager = client.app.state.manager
    warm = idle_pid(manager)
    run = client.post("/api/runs", json=LONG_RUN).json()
    wait_for_status(client, run["id"], ("running",))
    assert manager.workers[run["id"]].process.pid == warm
    assert client.post(f"/api/runs/{run['id']}/stop").json()["status"] == "stopped"
    wait_until(lambda: not pid_alive(warm), 10, "the stopped worker to exit")
    replacement = idle_pid(manager)
    client.__exit__(None, None, None)
    assert not pid_alive(replacement)


def test_an_idle_worker_dies_with_a_killed_server(tmp_path, servers):
    server = servers(tmp_path / "data", env={"SPARSESCOPE_WARM_WORKERS": "1"})
    wait_until(lambda: child_pids(server.process.pid), 30, "the idle worker")
    (idle,) = child_pids(server.process.pid)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    wait_until(lambda: not pid_alive(idle), 10, "the idle worker to die")
