"""Issue 30, items 5-6: `start_server` callers on one folder at once (threads, processes) get
one server, a real failure is said in the server's own words, and a notebook's server lets
exactly the notebook's origin frame it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from backend import notebook
from backend.notebook import notebook_origins, show, start_server
from dst_core.recording import Recorder
from tests.conftest import REPO

NOTEBOOK_ENV = ("SPARSESCOPE_NOTEBOOK_URL", "SPARSESCOPE_NOTEBOOK_PORT", "SPARSESCOPE_DATA_DIR",
                "SPARSESCOPE_FRAME_ANCESTORS", "JUPYTER_SERVER_URL", "JPY_PARENT_PID",
                "JUPYTER_RUNTIME_DIR")


@pytest.fixture
def plain_env(monkeypatch):
    for name in NOTEBOOK_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    notebook.stop_servers()


def frame_policy(url: str) -> str:
    policy = httpx.get(f"{url}/", timeout=30).headers["content-security-policy"]
    return next(part.strip() for part in policy.split(";")
                if part.strip().startswith("frame-ancestors"))


# ---- one server, whoever asks ---------------------------------------------------------------------
KERNEL = """
import sys
from backend import notebook
dashboard = notebook.start_server(sys.argv[1])
print(dashboard.url, dashboard.process.pid if dashboard.process else 0, flush=True)
sys.stdin.readline()  # alive (and its server with it) until the test has read both
"""


def test_two_kernels_started_at_once_share_one_server(plain_env, tmp_path):
    """Both processes look for a server, find none and would start one each: the second to
    start lost the folder and failed. Now the second waits for the first's and uses it."""
    folder = tmp_path / "data"
    kernels = [subprocess.Popen([sys.executable, "-c", KERNEL, str(folder)], cwd=REPO,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        lines = [kernel.stdout.readline().split() for kernel in kernels]
        errors = [kernel.stderr.read() if not line else "" for kernel, line in
                  zip(kernels, lines, strict=True)]
        assert all(lines), errors
        (first_url, first_pid), (second_url, second_pid) = lines
        assert first_url == second_url
        assert sorted([first_pid == "0", second_pid == "0"]) == [False, True]  # one started it
        assert httpx.get(f"{first_url}/api/health", timeout=30).status_code == 200
    finally:
        for kernel in kernels:
            kernel.stdin.close()
            kernel.wait(timeout=60)


def test_threads_of_one_kernel_share_one_server(plain_env, tmp_path):
    folder = tmp_path / "data"
    found: list = []
    threads = [threading.Thread(target=lambda: found.append(start_server(folder)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(found) == 4 and all(dashboard is found[0] for dashboard in found)
    assert found[0].process is not None and found[0].alive()


def test_a_server_that_fails_is_said_in_its_own_words(plain_env, tmp_path, monkeypatch):
    """The shared log's last line is not the cause (a shutdown message after the error, or
    another server's words before it): the server's own error line is."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notebook-server.log").write_text("INFO an earlier server's unrelated line\n")
    with socket.socket() as busy:  # the pinned port is taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("SPARSESCOPE_NOTEBOOK_PORT", str(busy.getsockname()[1]))
        with pytest.raises(RuntimeError) as failed:
            start_server(folder, timeout_s=60)
    assert "address already in use" in str(failed.value).lower(), str(failed.value)
    monkeypatch.delenv("SPARSESCOPE_NOTEBOOK_PORT")
    monkeypatch.setenv("SPARSESCOPE_MAX_BODY_BYTES", "lots")  # a setting the server refuses
    with pytest.raises(RuntimeError, match="SPARSESCOPE_MAX_BODY_BYTES"):
        start_server(folder, timeout_s=60)


# ---- framing --------------------------------------------------------------------------------------
def test_the_notebooks_origin_is_found_in_the_environment(plain_env, tmp_path, monkeypatch):
    assert notebook_origins() == ()
    monkeypatch.setenv("JUPYTER_SERVER_URL", "http://127.0.0.1:8890/lab?token=x")
    assert notebook_origins() == ("http://127.0.0.1:8890", "http://localhost:8890")
    monkeypatch.delenv("JUPYTER_SERVER_URL")
    # The kernel's own Jupyter server, by its runtime file (what JupyterLab writes).
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "jpserver-4242.json").write_text(json.dumps(
        {"url": "https://lab.example:8443/user/me/", "hostname": "lab.example", "port": 8443,
         "pid": 4242}))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("JPY_PARENT_PID", "4242")
    assert notebook_origins() == ("https://lab.example:8443",)
    # A dashboard reached through the notebook's host (a proxy) shares its origin; one on a
    # forwarded port of its own does not name the notebook's.
    monkeypatch.delenv("JPY_PARENT_PID")
    assert notebook_origins("https://hub.example/user/me/proxy/{port}/") == \
        ("https://hub.example",)
    assert notebook_origins("http://localhost:{port}") == ()


def test_a_notebooks_server_is_framed_by_the_notebooks_origin_only(plain_env, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("JUPYTER_SERVER_URL", "http://127.0.0.1:8890/")
    with Recorder(tmp_path / "data", name="framed", heartbeat_s=0) as rec:
        pass
    view = show(rec.run_id, data_dir=rec.data_dir, display=False)
    assert "<iframe" in view._repr_html_() and "sparsescope-origin" not in view._repr_html_()
    dashboard = start_server(rec.data_dir)
    assert frame_policy(dashboard.url) == \
        "frame-ancestors 'self' http://127.0.0.1:8890 http://localhost:8890"


def test_an_unknown_origin_keeps_self_only_and_the_view_says_how(plain_env, tmp_path):
    with Recorder(tmp_path / "data", name="unknown", heartbeat_s=0) as rec:
        pass
    view = show(rec.run_id, data_dir=rec.data_dir, display=False)
    dashboard = start_server(rec.data_dir)
    policy = frame_policy(dashboard.url)
    assert policy == "frame-ancestors 'self'" and "localhost:*" not in policy
    page = view._repr_html_()
    assert "<iframe" in page and "SPARSESCOPE_FRAME_ANCESTORS" in page  # shown, and said how


def test_a_server_of_another_notebook_origin_is_said_so(plain_env, tmp_path, servers,
                                                        monkeypatch):
    """A reused server that allows some other page, not this notebook's: no blank iframe."""
    with Recorder(tmp_path / "data", name="elsewhere", heartbeat_s=0) as rec:
        pass
    server = servers(rec.data_dir, env={"SPARSESCOPE_FRAME_ANCESTORS":
                                        "'self' http://localhost:9999"})
    monkeypatch.setenv("JUPYTER_SERVER_URL", "http://127.0.0.1:8890/")
    view = show(rec.run_id, data_dir=rec.data_dir, display=False)
    assert view.src.startswith(server.url)
    assert view.refused == "frame-ancestors 'self' http://localhost:9999"
    assert "http://127.0.0.1:8890" in view._repr_html_()  # the advice names this notebook


def test_the_launcher_module_documents_its_framing():
    text = (Path(REPO) / "docs" / "security.md").read_text()
    assert "JPY_PARENT_PID" in text and "localhost:*" not in text
