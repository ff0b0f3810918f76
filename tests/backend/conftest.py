"""Fixtures of the service tests: apps with chosen settings, real server processes, and
helpers that read the process table and a run's stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.settings import Settings
from tests.conftest import LoopbackClient, free_port
from tests.warm_workers import FORKS, ForkedProcess

# Short runs complete in a second or two; long ones would take hours and are always stopped.
QUICK_RUN = {"epochs": 2, "hidden": [32]}
LONG_RUN = {"epochs": 5000, "hidden": [64, 64]}
# SGD at lr 10 with momentum 0.99 through six wide layers overflows within a few dozen steps.
DIVERGING_RUN = {"method": "dense", "lr": 10, "momentum": 0.99, "epochs": 20, "hidden": [256] * 6}


@pytest.fixture
def make_client(tmp_path) -> Iterator[Callable[..., TestClient]]:
    """`make_client(**settings)`: a started TestClient on its own data folder."""
    clients: list[TestClient] = []

    def make(**overrides) -> TestClient:
        overrides.setdefault("data_dir", tmp_path / f"data{len(clients)}")
        overrides.setdefault("warm_workers", 0)  # as the `settings` fixture
        client = LoopbackClient(create_app(Settings(**overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


def stream_events(client: TestClient, run_id: str, from_seq: int = 0,
                  query: str = "") -> list[dict]:
    """Every message of the run's websocket up to and including `end`."""
    messages = []
    with client.websocket_connect(f"/ws/runs/{run_id}?from_seq={from_seq}{query}") as socket:
        while True:
            message = json.loads(socket.receive_text())
            messages.append(message)
            if message["type"] in ("end", "error"):
                return messages


def statuses_of(events: list[dict]) -> list[str]:
    return [event["status"] for event in events if event.get("type") == "status"]


def child_pids(parent_pid: int) -> set[int]:
    """Live (non-zombie) direct children of `parent_pid`, read from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == parent_pid and fields[0] != "Z":
            children.add(int(entry.name))
    return children


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


@dataclass
class ServerProcess:
    """A `python -m backend` process: forked from the test process's warm helper
    (tests/warm_workers.py), its workers its own `python -m backend.worker` children."""

    process: ForkedProcess
    url: str
    data_dir: Path
    log_path: Path
    token: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=10)

    def post(self, path: str, json: dict | None = None) -> httpx.Response:
        return httpx.post(self.url + path, json=json, headers=self.headers, timeout=10)

    def read_output(self) -> str:
        """Everything the server has printed so far."""
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, *args: str, env: dict | None = None,
                 wait: bool = True) -> ServerProcess:
    port = free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "SPARSESCOPE_WARM_WORKERS": "0",
                **(env or {})}
    # Output goes to a file: an unread pipe fills up and would block the server mid-test.
    log_path = data_dir.parent / f"server-{port}.log"
    log_path.write_bytes(b"")
    process = FORKS.fork_server(["--port", str(port), "--data-dir", str(data_dir), *args],
                                full_env, log_path)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", data_dir, log_path,
                           token=full_env.get("SPARSESCOPE_TOKEN"))
    if not wait:
        return server
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {server.read_output()}")
        try:
            if httpx.get(f"{server.url}/api/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"server never became healthy: {server.read_output()}")


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerProcess]]:
    """`servers(data_dir, *args, env=...)` starts a server; all are ended afterwards."""
    started: list[ServerProcess] = []

    def start(data_dir: Path, *args: str, **kwargs) -> ServerProcess:
        server = start_server(data_dir, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
