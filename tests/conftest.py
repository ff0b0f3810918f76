"""Shared fixtures: isolated apps on temporary data folders and a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.settings import Settings
from backend.worker_pool import WorkerPool
from tests.warm_workers import FORKS, forked_start


class LoopbackClient(TestClient):
    """A TestClient that talks to the app as a browser on this machine would: REST and
    websockets carry `Host: 127.0.0.1:8000` (TestClient's own "testserver" is refused by the
    DNS-rebinding check of a server bound to loopback, as any unknown name is)."""

    def __init__(self, app, **kwargs):
        super().__init__(app, base_url="http://127.0.0.1:8000", **kwargs)

    def websocket_connect(self, url: str, *args, **kwargs):
        return super().websocket_connect(urljoin("ws://127.0.0.1:8000", url), *args, **kwargs)

REPO = Path(__file__).resolve().parent.parent

# The suite's models are tiny, and two cores are shared by this process, the servers it starts,
# their workers and chromium: a second torch thread per process only spins waiting for a busy
# core (recording a width-2 ResNet took 24 s with two threads, 2.5 s with one, beside one
# busy process). Servers started from here inherit OMP_NUM_THREADS; a server's workers get
# their own setting (`worker_threads`).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
# No idle worker in any server the suite starts (in this process, `python -m backend`, a
# notebook's) unless a test asks for one: each imports torch, seconds of CPU, and most of
# those servers never start a run. tests/backend/test_worker_pool.py covers the warm path.
os.environ["SPARSESCOPE_WARM_WORKERS"] = "0"


def pytest_configure(config):
    # `--dist loadfile` hands the test files to its two processes in the order collected
    # (pytest_collection_modifyitems), not xdist's default of most tests first: that default
    # left the few-test, slow files (a server, chromium, training each) for last, one process
    # finishing them alone while the other had nothing left.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The browser test files first (the slowest, a server and trainings each; the quick files
    then fill in behind them), and `cuda` tests skipped, saying why, where no GPU exists:
    they run on a GPU machine."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/browser/") else 1)
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture(autouse=True)
def forked_workers(request, monkeypatch):
    """The runs of apps in this process train in workers forked from one warm copy (one torch
    import per test process, tests/warm_workers.py); tests marked `real_workers` get the
    server's own start-up, a new process importing torch."""
    if request.node.get_closest_marker("real_workers") is None:
        monkeypatch.setattr(WorkerPool, "_start", forked_start)
        if {"client", "make_client"} & set(request.fixturenames):
            FORKS.prestart()  # importing while the test sets up, not at its first run


def pytest_sessionfinish(session, exitstatus):
    FORKS.close()


@pytest.fixture
def settings(tmp_path) -> Settings:
    # No idle worker: most tests start no run, and each idle one imports torch (seconds of
    # CPU); tests/backend/test_worker_pool.py covers the warm path.
    return Settings(data_dir=tmp_path / "data", stop_grace_s=3.0, warm_workers=0)


@pytest.fixture
def client(settings):
    with LoopbackClient(create_app(settings)) as test_client:
        yield test_client


def wait_for_status(client, run_id: str, statuses, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never reached {statuses}; last: {run['status']}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(tmp_path):
    """`python -m backend` exactly as a user starts it, on a free port."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "backend", "--port", str(port), "--data-dir",
         str(tmp_path / "data")], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        raise AssertionError(process.stdout.read().decode(errors="replace"))
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
