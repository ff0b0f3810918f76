"""Off loopback a token is required: the server refuses to start without one, and every REST
call and websocket must present it; /api/health stays open."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from backend.app import create_app
from backend.settings import Settings
from tests.backend.conftest import QUICK_RUN, statuses_of, stream_events
from tests.conftest import REPO, wait_for_status

TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def guarded(make_client):
    return make_client(host="0.0.0.0", token=TOKEN)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}, bearer("")],
                         ids=["none", "wrong", "no-scheme", "basic", "empty"])
def test_rest_needs_the_bearer_token(guarded, headers):
    assert guarded.get("/api/runs", headers=headers).status_code == 401
    response = guarded.post("/api/runs", json=QUICK_RUN, headers=headers)
    assert response.status_code == 401 and "token" in response.json()["detail"]
    assert guarded.get("/api/runs/0123456789abcdef", headers=headers).status_code == 401
    assert guarded.post("/api/runs/0123456789abcdef/stop", headers=headers).status_code == 401
    assert guarded.delete("/api/runs/0123456789abcdef", headers=headers).status_code == 401
    assert guarded.post("/api/runs/import", content=b"x", headers=headers).status_code == 401
    assert guarded.get("/api/runs", headers=bearer()).json() == []  # nothing was created


def test_health_and_the_page_need_no_token(guarded):
    assert guarded.get("/api/health").json()["status"] == "ok"
    assert guarded.get("/").status_code == 200  # the page asks the person for the token


def test_websocket_needs_the_token(guarded):
    run = guarded.post("/api/runs", json=QUICK_RUN, headers=bearer()).json()
    for query in ("", "&token=wrong", "&token="):
        with guarded.websocket_connect(f"/ws/runs/{run['id']}?from_seq=0{query}") as socket:
            message = socket.receive_json()
            assert message["type"] == "error" and "token" in message["error"]
            assert "seq" not in message
    events = stream_events(guarded, run["id"], query=f"&token={TOKEN}")
    assert statuses_of(events)[-1] == "completed"


def test_app_refuses_to_build_off_loopback_without_a_token(tmp_path):
    for host in ("0.0.0.0", "192.168.1.20", "::", "example.org"):
        with pytest.raises(ValueError, match="SPARSESCOPE_TOKEN"):
            create_app(Settings(host=host, data_dir=tmp_path))
        with pytest.raises(ValueError, match="token"):
            create_app(Settings(host=host, token="   ", data_dir=tmp_path))
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert Settings(host=host).is_loopback


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_server_process_refuses_to_start_without_a_token(tmp_path, how):
    env = {key: value for key, value in os.environ.items() if key != "SPARSESCOPE_TOKEN"}
    args = ["--host", "0.0.0.0"] if how == "flag" else []
    if how == "environment":
        env["SPARSESCOPE_HOST"] = "0.0.0.0"
    result = subprocess.run([sys.executable, "-m", "backend", "--data-dir", str(tmp_path / "d"),
                             *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "SPARSESCOPE_TOKEN" in result.stderr and "0.0.0.0" in result.stderr


def test_real_server_off_loopback_checks_rest_and_websocket(tmp_path, servers):
    server = servers(tmp_path / "data", "--host", "0.0.0.0", env={"SPARSESCOPE_TOKEN": TOKEN})
    assert httpx.get(f"{server.url}/api/runs").status_code == 401
    run = server.post("/api/runs", json=QUICK_RUN).json()
    assert httpx.get(f"{server.url}/api/runs/{run['id']}", headers=server.headers).status_code == 200
    with connect(f"{server.ws_url}/ws/runs/{run['id']}") as socket:
        refused = json.loads(socket.recv(timeout=10))
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
    assert refused["type"] == "error" and closed.value.rcvd.code == 4401
    with connect(f"{server.ws_url}/ws/runs/{run['id']}?token={TOKEN}") as socket:
        messages = []
        while not messages or messages[-1]["type"] != "end":
            messages.append(json.loads(socket.recv(timeout=60)))
    assert statuses_of(messages)[-1] == "completed"
    # The token never reaches the log, not even from the websocket's query string.
    output = server.read_output()
    assert TOKEN not in output and "token=***" in output


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_passes_the_token_and_the_container_refuses_without_it(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "SPARSESCOPE_TOKEN"}
    command = ["docker-compose", "-f", "docker-compose.yml", "config"]
    assert subprocess.run([*command, "-q"], cwd=REPO, env=env, timeout=60).returncode == 0
    rendered = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=60, check=True).stdout
    environment = yaml.safe_load(rendered)["services"]["app"]["environment"]
    assert environment["SPARSESCOPE_HOST"] == "0.0.0.0" and not environment["SPARSESCOPE_TOKEN"]
    # What the container runs, with the environment compose gives it: it must refuse.
    container_env = {**env, **{key: str(value) for key, value in environment.items()},
                     "SPARSESCOPE_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([sys.executable, "-m", "backend"], cwd=REPO, env=container_env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "SPARSESCOPE_TOKEN" in result.stderr
    with_token = subprocess.run(command, cwd=REPO, env={**env, "SPARSESCOPE_TOKEN": TOKEN},
                                capture_output=True, text=True, timeout=60, check=True).stdout
    assert yaml.safe_load(with_token)["services"]["app"]["environment"][
        "SPARSESCOPE_TOKEN"] == TOKEN


def test_token_guards_loopback_too_when_set(make_client):
    client = make_client(token=TOKEN)
    assert client.get("/api/runs").status_code == 401
    run = client.post("/api/runs", json=QUICK_RUN, headers=bearer()).json()
    assert wait_for_status(_Authed(client), run["id"], ("completed",))["status"] == "completed"


class _Authed:
    """A client that adds the bearer header, for helpers that call `.get(path)`."""

    def __init__(self, client):
        self.client = client

    def get(self, path: str):
        return self.client.get(path, headers=bearer())

