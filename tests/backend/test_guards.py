"""Issue 12: who may drive the server (Origin, Host), what a request may weigh (headers), the
page's security headers, one writer per run, one server per data folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from starlette.testclient import WebSocketDenialResponse

from backend.folder_lock import FolderHeld, FolderLock
from dst_core.recording import Recorder
from tests.backend.conftest import start_server
from tests.conftest import REPO, free_port

FOREIGN = "http://127.0.0.1:8643"


# ---- origins --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path, kwargs", [
    ("POST", "/api/runs", {"json": {}}),
    ("POST", "/api/runs/import", {"content": b"SQLite format 3\x00", "headers":
                                  {"content-type": "text/plain"}}),
    ("DELETE", "/api/runs/0123456789abcdef", {}),
    ("POST", "/api/runs/0123456789abcdef/stop", {}),
    ("POST", "/api/ingest/runs", {"json": {}}),
])
def test_a_foreign_origin_cannot_drive_a_tokenless_server(make_client, method, path, kwargs):
    client = make_client(max_queued_runs=0)
    headers = {**kwargs.pop("headers", {}), "origin": FOREIGN}
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == 403 and "Origin" in response.json()["detail"]
    assert client.get("/api/runs").json() == []  # nothing was created or imported


def test_requests_without_origin_and_from_the_dashboards_origin_pass(make_client):
    client = make_client(max_queued_runs=0)
    assert client.post("/api/ingest/runs", json={}).status_code == 201  # a script: no Origin
    same = client.post("/api/ingest/runs", json={}, headers={"origin": "http://127.0.0.1:8000"})
    assert same.status_code == 201
    reads = client.get("/api/runs", headers={"origin": FOREIGN})  # CORS keeps it unreadable
    assert reads.status_code == 200 and "access-control-allow-origin" not in reads.headers


def test_named_cors_origins_may_drive_the_server(make_client):
    client = make_client(cors_origins=[FOREIGN])
    assert client.post("/api/ingest/runs", json={}, headers={"origin": FOREIGN}).status_code == 201


def test_a_websocket_from_a_foreign_origin_is_refused(make_client):
    client = make_client()
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect(f"/ws/runs/{run_id}", headers={"origin": FOREIGN}):
            pass
    assert refused.value.status_code == 403
    with client.websocket_connect(f"/ws/runs/{run_id}",
                                  headers={"origin": "http://127.0.0.1:8000"}) as socket_:
        assert "type" in json.loads(socket_.receive_text())


def test_a_rebound_host_name_is_refused_on_loopback(make_client):
    client = make_client()
    response = client.get("/api/runs", headers={"host": "attacker.example"})
    assert response.status_code == 421 and "DNS rebinding" in response.json()["detail"]
    assert client.get("/api/runs", headers={"host": "localhost:8000"}).status_code == 200
    extra = make_client(allowed_hosts=["box.lan"])
    assert extra.get("/api/runs", headers={"host": "box.lan:8000"}).status_code == 200


def test_the_page_carries_csp_and_frame_headers(make_client):
    page = make_client().get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'self'" in policy
    assert "unsafe-eval" not in policy
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    assert page.headers["x-content-type-options"] == "nosniff"
    api = make_client().get("/api/health")
    assert api.headers["content-security-policy"] == "frame-ancestors 'self'"
    jupyter = make_client(frame_ancestors="'self' http://localhost:8888").get("/")
    assert "frame-ancestors 'self' http://localhost:8888" in jupyter.headers[
        "content-security-policy"]
    assert "x-frame-options" not in jupyter.headers  # it cannot name another ancestor


def test_oversized_request_headers_are_431(make_client):
    client = make_client()
    response = client.get("/api/health", headers={"x-big": "a" * 70_000})
    assert response.status_code == 431 and "SPARSESCOPE_MAX_HEADER_BYTES" in response.text


# ---- one writer per run ---------------------------------------------------------------------------
def test_ingest_on_a_run_another_writer_owns_is_409(client, tmp_path):
    store = client.app.state.store
    worker_run = client.app.state.manager.store.create_run({}, "w", status="running",
                                                           info={"writer": "worker"})["id"]
    queued = store.create_run({}, "q", status="queued")["id"]
    script = Recorder(client.app.state.settings.data_dir, name="s", heartbeat_s=0)
    completed = {"events": [{"seq": 999999, "step": 6550, "type": "status",
                             "status": "completed"}]}
    for run_id, who in ((worker_run, "worker"), (queued, "worker"), (script.run_id, "script")):
        response = client.post(f"/api/ingest/runs/{run_id}/events", json=completed)
        assert response.status_code == 409 and who in response.json()["detail"], response.text
        assert client.post(f"/api/ingest/runs/{run_id}/heartbeat").status_code == 409
    assert store.get_run(worker_run)["status"] == "running"
    script.finish("completed")


def test_stop_on_a_remote_run_says_what_it_can_and_cannot_do(client):
    run_id = client.post("/api/ingest/runs", json={}).json()["id"]
    response = client.post(f"/api/runs/{run_id}/stop")
    detail = response.json()["detail"]
    assert response.status_code == 409
    assert "remote writer" in detail and "cannot stop it" in detail and "Delete" in detail


# ---- one server per data folder ---------------------------------------------------------------------
def test_a_held_folder_names_its_holder_and_a_dead_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from backend.folder_lock import FolderLock; "
        f"FolderLock({str(tmp_path)!r}).acquire('127.0.0.1', 8123); print('held', flush=True); "
        "time.sleep(60)")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderHeld, match=f"pid {holder.pid} on .*127.0.0.1:8123"):
            FolderLock(tmp_path).acquire("127.0.0.1", 9000)
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait()
    lock = FolderLock(tmp_path)
    lock.acquire("127.0.0.1", 9000)  # the kernel released the dead holder's lock
    assert lock.held
    lock.release()


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """One `python -m backend` for the tests below: none changes what the others see."""
    server = start_server(tmp_path_factory.mktemp("real") / "data")
    yield server
    server.process.terminate()
    server.process.wait(timeout=15)


def test_a_second_server_on_a_held_folder_exits_at_once_with_one_line(real_server):
    first = real_server
    queued = first.post("/api/runs", json={"epochs": 5000, "hidden": [16]}).json()["id"]
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "backend", "--port", str(free_port()),
                             "--data-dir", str(first.data_dir)], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert second.returncode != 0 and time.monotonic() - started < 30
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.process.pid}" in lines[0], second.stderr
    assert first.get(f"/api/runs/{queued}").json()["status"] in ("queued", "running")
    assert first.post(f"/api/runs/{queued}/stop").json()["status"] == "stopped"


def test_the_real_server_bounds_request_heads_at_the_socket(real_server):
    server = real_server
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        answer = b""
        try:
            for _ in range(64):  # 4 MiB at most; the server answers after 64 KiB
                connection.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = connection.recv(4096)
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert httpx.get(server.url + "/api/health", timeout=5).status_code == 200
    evil = httpx.get(server.url + "/api/runs", headers={"host": "attacker.example"}, timeout=5)
    assert evil.status_code == 421
