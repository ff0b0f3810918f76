"""The run view inline in a notebook, as TensorBoard's `%tensorboard` and W&B's inline run do.

`show()` displays an iframe of the dashboard's own run view (`/#/run/<id>`), which follows
the run live while it trains and replays it afterwards: there is no second viewer to keep
in step with the dashboard. The view needs a server on the run's data folder. A server that
already serves the folder (`make run`, `sparsescope serve`, an earlier call) is reused;
otherwise one is started in the background for the kernel's lifetime: `python -m backend`
on loopback and a free port, as a child process that ends with the kernel (it is the same
app, and a crash of the server never takes the kernel with it).

Where the browser reaches the server is not always where the kernel does (JupyterLab over
SSH port forwarding, jupyter-server-proxy, a remote container): `base_url=` or the
`SPARSESCOPE_NOTEBOOK_URL` environment variable says where the browser finds it, with
`{port}` replaced by the server's port; `port=` (or `SPARSESCOPE_NOTEBOOK_PORT`) pins the
port a started server binds, so a forwarded port can be set up in advance.
"""

from __future__ import annotations

import atexit
import html
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dst_core.store import DB_NAME, DEFAULT_DATA_DIR, RunStore

SERVER_LOCK = "server.lock"  # the serving server's lock, recording its pid, bind address, port
DEFAULT_HEIGHT_PX = 900  # a notebook cell: the header, the player and the first heatmaps
START_TIMEOUT_S = 60.0  # the server imports torch and FastAPI before it answers
FRAME_ANCESTORS = "'self' http://localhost:* http://127.0.0.1:* https://localhost:* https://127.0.0.1:*"


@dataclass
class Dashboard:
    """A server the kernel can reach (`url`), and where a browser reaches it (`public_url`)."""

    url: str
    data_dir: Path | None
    process: subprocess.Popen | None = None  # set when this kernel started it

    def alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            return False
        return _healthy(self.url, timeout_s=2.0)


_servers: dict[str, Dashboard] = {}  # data folder (resolved) or server URL → its dashboard


class InlineView:
    """What `show()` returns: rendered as an iframe by Jupyter, a plain link elsewhere.

    `refused` is set when the server forbids being framed by another page (a server started
    outside the notebook keeps the dashboard's default, frame-ancestors 'self'): an iframe
    would stay blank without a word, so the view says why and how to change it instead."""

    def __init__(self, src: str, height_px: int = DEFAULT_HEIGHT_PX, refused: str | None = None):
        self.src = src
        self.height_px = int(height_px)
        self.refused = refused

    def _repr_html_(self) -> str:
        src = html.escape(self.src, quote=True)
        link = (f'<div style="font-size:12px"><a href="{src}" target="_blank" rel="noopener">'
                f'open the run in a new tab</a>: {src}</div>')
        if self.refused is not None:
            return (f'<div class="sparsescope-refused" style="font-size:13px">This dashboard server '
                    f'does not allow being shown inside another page ({html.escape(self.refused)}): '
                    f'it was started outside this notebook. Restart it with '
                    f'<code>SPARSESCOPE_FRAME_ANCESTORS="{html.escape(FRAME_ANCESTORS)}"</code>, '
                    f'or stop it and let <code>show()</code> start its own.</div>{link}')
        return (f'<iframe class="sparsescope-view" src="{src}" width="100%" '
                f'height="{self.height_px}" style="border:1px solid #ccc;border-radius:4px" '
                f'allow="clipboard-write"></iframe>{link}')

    def __repr__(self) -> str:
        return f"sparsescope run view: {self.src}"


def _healthy(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def frame_refusal(url: str, timeout_s: float = 2.0) -> str | None:
    """The server's frame policy when it refuses every other page ("frame-ancestors 'self'",
    "'none'"), from the CSP of its page; None when it allows one (or cannot be asked: the
    iframe then shows whatever the browser gets)."""
    try:
        with urllib.request.urlopen(f"{url}/", timeout=timeout_s) as response:
            policy = response.headers.get("Content-Security-Policy", "")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    for directive in policy.split(";"):
        name, _, sources = directive.strip().partition(" ")
        if name == "frame-ancestors":
            allowed = sources.split()
            if all(source in ("'self'", "'none'") for source in allowed):
                return f"frame-ancestors {' '.join(allowed)}"
            return None
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _parent_death_signal():
    """A callable for Popen's preexec_fn that asks Linux to SIGTERM the child when its parent
    (the kernel) dies, even by SIGKILL; None elsewhere (atexit still stops it on a normal exit).

    libc is loaded here, in the parent: between fork and exec a kernel's other threads may hold
    the import lock, so the child only makes the one call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _port_setting(port: int | None) -> int | None:
    if port is not None:
        return int(port)
    text = os.environ.get("SPARSESCOPE_NOTEBOOK_PORT", "").strip()
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"SPARSESCOPE_NOTEBOOK_PORT: not a port number: {text!r}")
    return int(text)


def _serving(data_dir: Path) -> str | None:
    """URL of a server already holding `data_dir`, from the folder's server lock, if it answers."""
    try:
        info = json.loads((data_dir / SERVER_LOCK).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not info or not info.get("port"):
        return None
    host = str(info.get("bind") or "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{int(info['port'])}"
    return url if _healthy(url, timeout_s=2.0) else None


def start_server(data_dir: str | Path, *, port: int | None = None,
                 timeout_s: float = START_TIMEOUT_S) -> Dashboard:
    """A dashboard server on `data_dir`: the one that already serves it, or a new background one."""
    folder = Path(data_dir).expanduser().resolve()
    key = str(folder)
    known = _servers.get(key)
    if known is not None and known.alive():
        return known
    existing = _serving(folder)
    if existing is not None:
        _servers[key] = Dashboard(existing, folder)
        return _servers[key]
    folder.mkdir(parents=True, exist_ok=True)
    port = _port_setting(port) or _free_port()
    env = dict(os.environ, SPARSESCOPE_FRAME_ANCESTORS=os.environ.get(
        "SPARSESCOPE_FRAME_ANCESTORS", FRAME_ANCESTORS))
    log_path = folder / "notebook-server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(folder)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_parent_death_signal())
    dashboard = Dashboard(f"http://127.0.0.1:{port}", folder, process)
    atexit.register(_stop, process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"data_dir: the dashboard server on {folder} exited at once: "
                               f"{_last_line(log_path)}")
        if _healthy(dashboard.url, timeout_s=1.0):
            _servers[key] = dashboard
            return dashboard
        time.sleep(0.2)
    _stop(process)
    raise RuntimeError(f"the dashboard server on {folder} did not answer within {timeout_s:g} s "
                       f"(see {log_path})")


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def stop_servers() -> None:
    """Stop every server this kernel started (they also stop when the kernel ends)."""
    for dashboard in list(_servers.values()):
        if dashboard.process is not None:
            _stop(dashboard.process)
    _servers.clear()


def public_base(dashboard_url: str, base_url: str | None) -> str:
    """Where the browser finds the server: `base_url`, `SPARSESCOPE_NOTEBOOK_URL`, or its own URL."""
    template = base_url if base_url is not None else os.environ.get("SPARSESCOPE_NOTEBOOK_URL", "")
    if not template.strip():
        return dashboard_url.rstrip("/")
    port = dashboard_url.rsplit(":", 1)[-1].split("/")[0]
    return template.strip().replace("{port}", port).rstrip("/")


def run_url(base: str, run_id: str, step: int | None = None) -> str:
    url = f"{base.rstrip('/')}/#/run/{run_id}"
    return url if step is None else f"{url}?step={int(step)}"


def _newest_run(data_dir: Path) -> str:
    runs = RunStore(data_dir).list_runs() if (data_dir / DB_NAME).exists() else []
    if not runs:
        raise ValueError(f"target: no runs recorded in {data_dir}")
    return runs[0]["id"]


def _resolve(target, data_dir, server) -> tuple[str, Path | None]:
    """(run id, its data folder, or None when `server` holds the run)."""
    if not isinstance(target, (str, os.PathLike)):
        raise ValueError(f"target: a run id or a data folder, not {type(target).__name__} "
                         "(for a Recorder: sparsescope.show(rec.run_id, data_dir=rec.data_dir))")
    text = os.fspath(target)
    if server is not None:
        return text, None
    path = Path(text).expanduser()
    if path.is_dir():
        return _newest_run(path), path
    folder = Path(data_dir or os.environ.get("SPARSESCOPE_DATA_DIR") or DEFAULT_DATA_DIR).expanduser()
    if not (folder / DB_NAME).exists() or RunStore(folder).get_run(text) is None:
        raise ValueError(f"target: no run {text!r} in {folder} (pass data_dir= or the folder)")
    return text, folder


def show(target: str | os.PathLike, *, data_dir: str | Path | None = None,
         server: str | None = None, base_url: str | None = None, port: int | None = None,
         step: int | None = None, height: int = DEFAULT_HEIGHT_PX,
         display: bool = True) -> InlineView | None:
    """Show a run's live view inline: `target` is a run id (in `data_dir`, or on `server`
    for a run recorded to a server) or a data folder (its newest run). A recording script
    passes `rec.run_id, data_dir=rec.data_dir` (or `server=rec.server_url`). In IPython the
    view is displayed at once (and None returned, so a cell ending in `show(...)` does not
    draw it twice); elsewhere, or with `display=False`, it is returned."""
    run_id, folder = _resolve(target, data_dir, server)
    dashboard_url = server.rstrip("/") if server else start_server(folder, port=port).url
    base = public_base(dashboard_url, base_url)
    refused = frame_refusal(dashboard_url)
    if refused is not None and "'none'" not in refused and base.startswith("/"):
        refused = None  # served through Jupyter's own origin (a proxy path): 'self' is Jupyter
    view = InlineView(run_url(base, run_id, step), height, refused=refused)
    if display:
        try:
            from IPython import get_ipython
            from IPython.display import display as ipython_display
        except ImportError:
            return view
        if get_ipython() is not None:
            ipython_display(view)
            return None  # displayed once; returning it too would draw a second iframe
    return view

