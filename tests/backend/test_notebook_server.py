"""`show()` in a notebook: where the view points, which server it uses, what it refuses."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend import notebook
from backend.notebook import InlineView, public_base, run_url, show, start_server
from dst_core.recording import Recorder
from tests.conftest import REPO


@pytest.fixture
def no_notebook_env(monkeypatch):
    for name in ("SPARSESCOPE_NOTEBOOK_URL", "SPARSESCOPE_NOTEBOOK_PORT", "SPARSESCOPE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_base_url_template_and_environment(no_notebook_env, monkeypatch):
    assert public_base("http://127.0.0.1:8123", None) == "http://127.0.0.1:8123"
    assert public_base("http://127.0.0.1:8123", "/proxy/{port}/") == "/proxy/8123"
    monkeypatch.setenv("SPARSESCOPE_NOTEBOOK_URL", "http://localhost:18800")
    assert public_base("http://127.0.0.1:8123", None) == "http://localhost:18800"
    assert run_url("/proxy/8123", "abc", step=40) == "/proxy/8123/#/run/abc?step=40"


def test_bad_targets_and_ports_are_named(no_notebook_env, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="target"):
        show(42, display=False)
    with pytest.raises(ValueError, match="target: no run 'nope'"):
        show("nope", data_dir=tmp_path, display=False)
    with pytest.raises(ValueError, match="target: no runs recorded"):
        show(tmp_path, display=False)
    monkeypatch.setenv("SPARSESCOPE_NOTEBOOK_PORT", "eighty")
    with pytest.raises(ValueError, match="SPARSESCOPE_NOTEBOOK_PORT"):
        notebook._port_setting(None)


def test_a_recorder_is_shown_by_its_plain_values(no_notebook_env, tmp_path):
    """The launcher knows nothing of Recorder: a Recorder passed whole, or `rec.show()`, is
    refused with the call that works."""
    with Recorder(tmp_path / "data", name="r", heartbeat_s=0) as rec:
        pass
    assert rec.data_dir == tmp_path / "data" and rec.server_url is None
    with pytest.raises(ValueError, match=r"sparsescope.show\(rec.run_id, data_dir=rec.data_dir\)"):
        show(rec, display=False)
    with pytest.raises(AttributeError, match=r"moved to sparsescope.show"):
        rec.show()


def test_the_inline_view_escapes_its_address():
    view = InlineView('http://h:1/#/run/x"><script>', 300)
    assert "<script>" not in view._repr_html_() and 'height="300"' in view._repr_html_()


def test_one_background_server_per_folder_serves_every_view(no_notebook_env, tmp_path):
    data_dir = tmp_path / "data"
    with Recorder(data_dir, name="first") as first:
        pass
    with Recorder(data_dir, name="second") as second:
        pass
    try:
        view = show(first.run_id, data_dir=first.data_dir, display=False)
        dashboard = start_server(data_dir)
        assert view.src == f"{dashboard.url}/#/run/{first.run_id}"
        assert dashboard.process is not None and dashboard.alive()
        # Reused: the same server for the other run, for the folder and for its run id.
        assert show(second.run_id, data_dir=data_dir, display=False).src == \
            f"{dashboard.url}/#/run/{second.run_id}"
        assert show(data_dir, display=False).src.endswith(f"/#/run/{second.run_id}")  # newest
        assert start_server(data_dir) is dashboard
        run = httpx.get(f"{dashboard.url}/api/runs/{first.run_id}", timeout=30).json()
        assert run["name"] == "first" and run["status"] == "completed"
        # A remote recorder's view points at the server it records into, whatever its folder.
        with Recorder(url=dashboard.url, name="remote", heartbeat_s=0) as remote:
            view = show(remote.run_id, server=remote.server_url, display=False)
            assert view.src == f"{dashboard.url}/#/run/{remote.run_id}"
        assert start_server(data_dir) is dashboard  # no second server was started for it
    finally:
        notebook.stop_servers()
    assert dashboard.process.poll() is not None


KILLED_KERNEL = """
import os, signal, sys
from backend import notebook
print(notebook.start_server(sys.argv[1]).process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # a kernel that dies without running atexit
"""


def test_the_background_server_ends_with_a_killed_kernel(no_notebook_env, tmp_path):
    result = subprocess.run([sys.executable, "-c", KILLED_KERNEL, str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    server = int(result.stdout.split()[0])
    deadline = time.monotonic() + 20
    while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
        status = Path(f"/proc/{server}/stat").read_text(errors="replace").split(") ")[-1][:1]
        if status == "Z":  # exited, waiting for its (new) parent to reap it
            break
        time.sleep(0.2)
    alive = Path(f"/proc/{server}").exists() and \
        Path(f"/proc/{server}/stat").read_text(errors="replace").split(") ")[-1][:1] != "Z"
    assert not alive, "the notebook's server outlived its kernel"


def test_a_server_that_refuses_frames_is_said_so_not_shown_blank(no_notebook_env, tmp_path,
                                                                 servers, monkeypatch):
    """A server started outside the notebook (`make run`: frame-ancestors 'self') is reused,
    and the view says why it cannot be framed instead of drawing an iframe that stays blank."""
    monkeypatch.delenv("SPARSESCOPE_FRAME_ANCESTORS", raising=False)
    data_dir = tmp_path / "data"
    with Recorder(data_dir, name="made elsewhere") as rec:
        pass
    server = servers(data_dir)
    try:
        assert notebook.frame_refusal(server.url) == "frame-ancestors 'self'"
        view = show(rec.run_id, data_dir=rec.data_dir, display=False)
        assert view.src == f"{server.url}/#/run/{rec.run_id}"  # reused, not a second server
        page = view._repr_html_()
        assert "<iframe" not in page and "SPARSESCOPE_FRAME_ANCESTORS" in page and server.url in page
        # Through Jupyter's own origin (a proxy path) 'self' is Jupyter: framed as usual.
        proxied = show(rec.run_id, data_dir=rec.data_dir, display=False, base_url="/proxy/{port}")
        assert proxied.refused is None and "<iframe" in proxied._repr_html_()
    finally:
        notebook.stop_servers()
