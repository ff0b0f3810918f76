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

Callers on one folder at once (threads of a kernel, several kernels) get one server: a
caller takes the folder's launch lock (folder_lock.launching) before it looks for a server
and starts one, and keeps it until that server answers; the next caller then finds it.

A started server lets exactly the notebook's page frame it (CSP frame-ancestors): the origin
of the Jupyter server that started this kernel (`JUPYTER_SERVER_URL`, else its runtime file,
found by the kernel's parent pid), and of an absolute `base_url` / `SPARSESCOPE_NOTEBOOK_URL`;
`SPARSESCOPE_FRAME_ANCESTORS` set by hand wins. See docs/security.md.
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
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from backend.folder_lock import folder_held, launching
from dst_core.store import DB_NAME, DEFAULT_DATA_DIR, RunStore

SERVER_LOCK = "server.lock"  # the serving server's lock, recording its pid, bind address, port
DEFAULT_HEIGHT_PX = 900  # a notebook cell: the header, the player and the first heatmaps
START_TIMEOUT_S = 60.0  # the server imports torch and FastAPI before it answers
EXAMPLE_ORIGIN = "http://localhost:8888"  # JupyterLab's default address, in messages
LOOPBACK_NAMES = ("localhost", "127.0.0.1")  # one loopback server, reached by either name
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")  # a Jupyter bound to every interface


@dataclass
class Dashboard:
    """A server the kernel can reach (`url`), and where a browser reaches it (`public_url`)."""

    url: str
    data_dir: Path | None
    process: subprocess.Popen | None = None  # set when this kernel started it
    frame_origins: tuple[str, ...] = ()  # the notebook origins it was started to allow

    def alive(self) -> bool:
        """Still serving: a server this kernel started while its process runs (a health
        check that is slow on a busy machine must not start a second one); another one while
        it answers, or still holds its folder at this address."""
        if self.process is not None:
            return self.process.poll() is None
        return _healthy(self.url, timeout_s=2.0) or (
            self.data_dir is not None and folder_held(self.data_dir)
            and _serving(self.data_dir, healthy=False) == self.url)


_servers: dict[str, Dashboard] = {}  # data folder (resolved) or server URL → its dashboard
_servers_lock = threading.Lock()  # the table, and one lock per folder for its starts
_folder_locks: dict[str, threading.Lock] = {}


class InlineView:
    """What `show()` returns: rendered as an iframe by Jupyter, a plain link elsewhere.

    `refused` is set when the server forbids being framed by another page (a server started
    outside the notebook keeps the dashboard's default, frame-ancestors 'self'): an iframe
    would stay blank without a word, so the view says why and how to change it instead."""

    def __init__(self, src: str, height_px: int = DEFAULT_HEIGHT_PX, refused: str | None = None,
                 origin: str | None = None, unsure: bool = False):
        self.src = src
        self.height_px = int(height_px)
        self.refused = refused
        self.origin = origin  # the notebook's origin when known (for the advice given)
        self.unsure = unsure  # this kernel's server allows no notebook origin: it was not found

    def _repr_html_(self) -> str:
        src = html.escape(self.src, quote=True)
        link = (f'<div style="font-size:12px"><a href="{src}" target="_blank" rel="noopener">'
                f'open the run in a new tab</a>: {src}</div>')
        allow = html.escape(f"'self' {self.origin or EXAMPLE_ORIGIN}")
        if self.refused is not None:
            return (f'<div class="sparsescope-refused" style="font-size:13px">This dashboard server '
                    f'does not allow being shown inside this page ({html.escape(self.refused)}): '
                    f'it was started outside this notebook. Restart it with '
                    f'<code>SPARSESCOPE_FRAME_ANCESTORS="{allow}"</code> (the address this '
                    f'notebook is served from), or stop it and let <code>show()</code> start its '
                    f'own.</div>{link}')
        unsure = ""
        if self.unsure:
            unsure = (f'<div class="sparsescope-origin" style="font-size:12px">The address this '
                      f'notebook is served from was not found, so the server lets only its own '
                      f'pages frame it: if the view stays blank, set <code>'
                      f'SPARSESCOPE_FRAME_ANCESTORS="{allow}"</code> (your notebook\'s address) '
                      f'and restart the kernel, or open the link.</div>')
        return (f'<iframe class="sparsescope-view" src="{src}" width="100%" '
                f'height="{self.height_px}" style="border:1px solid #ccc;border-radius:4px" '
                f'allow="clipboard-write"></iframe>{link}{unsure}')

    def __repr__(self) -> str:
        return f"sparsescope run view: {self.src}"


def _healthy(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def frame_refusal(url: str, timeout_s: float = 2.0, origins: tuple[str, ...] = ()) -> str | None:
    """The server's frame policy when it refuses every other page ("frame-ancestors 'self'",
    "'none'"), or every one of `origins` (the notebook's, when known), from the CSP of its
    page; None when it allows one (or cannot be asked: the iframe then shows whatever the
    browser gets)."""
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
            if origins and not any(source in origins or "*" in source for source in allowed):
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


def _serving(data_dir: Path, healthy: bool = True) -> str | None:
    """URL of a server already holding `data_dir`, from the folder's server lock, if it answers
    (or, not `healthy`, whether or not it does)."""
    try:
        info = json.loads((data_dir / SERVER_LOCK).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not info or not info.get("port"):
        return None
    host = str(info.get("bind") or "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{int(info['port'])}"
    return url if not healthy or _healthy(url, timeout_s=2.0) else None


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of an absolute http(s) URL, as a browser names that origin."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _runtime_dirs() -> list[Path]:
    """Where Jupyter servers write their runtime files (jpserver-<pid>.json)."""
    folders = [Path(os.environ["JUPYTER_RUNTIME_DIR"])] \
        if os.environ.get("JUPYTER_RUNTIME_DIR") else []
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        folders.append(Path(jupyter_runtime_dir()))
    except ImportError:  # no Jupyter here: its default place
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        folders.append(Path(data) / "jupyter" / "runtime")
    return folders


def _kernel_server() -> dict | None:
    """The runtime record (url, hostname, port, base_url) of the Jupyter server that started
    this kernel: its kernel launcher passes its own pid as JPY_PARENT_PID."""
    pid = os.environ.get("JPY_PARENT_PID", "").strip()
    if not pid.isdigit():
        return None
    for folder in _runtime_dirs():
        for name in (f"jpserver-{pid}.json", f"nbserver-{pid}.json"):
            try:
                info = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(info, dict) and isinstance(info.get("url"), str):
                return info
    return None


def notebook_origins(base_url: str | None = None) -> tuple[str, ...]:
    """The origins the notebook's page may be served from, as far as the environment tells:
    JUPYTER_SERVER_URL, else the Jupyter server that started this kernel, and an absolute
    `base_url` (else SPARSESCOPE_NOTEBOOK_URL: the dashboard reached through the notebook's
    own host, e.g. jupyter-server-proxy). A loopback Jupyter (or one bound to every
    interface) is reached as localhost or 127.0.0.1 on its port: both are given. () when
    none is known."""
    found: list[str] = []
    jupyter = os.environ.get("JUPYTER_SERVER_URL", "").strip()
    wildcard = False
    if not jupyter:
        info = _kernel_server()
        if info is not None:
            jupyter = info["url"]
            wildcard = str(info.get("hostname", "")).strip() in WILDCARD_HOSTS
    origin = origin_of(jupyter) if jupyter else None
    if origin is not None:
        found.append(origin)
        parts = urllib.parse.urlsplit(origin)
        if wildcard or parts.hostname in (*LOOPBACK_NAMES, "::1"):
            port = f":{parts.port}" if parts.port else ""
            found += [f"{parts.scheme}://{name}{port}" for name in LOOPBACK_NAMES]
    public = base_url if base_url is not None else os.environ.get("SPARSESCOPE_NOTEBOOK_URL", "")
    # Its host is the notebook's when the dashboard is reached through it (a proxy path,
    # `/proxy/{port}`); a host of its own (`http://localhost:{port}`, a forwarded port) is not.
    if public.strip() and "{port}" not in urllib.parse.urlsplit(public.strip()).netloc:
        public_origin = origin_of(public.replace("{port}", "0"))
        if public_origin is not None:
            found.append(public_origin)
    return tuple(dict.fromkeys(found))


def frame_ancestors(origins: tuple[str, ...]) -> str:
    """The CSP frame-ancestors a notebook's server gets: itself and the notebook's origins
    (SPARSESCOPE_FRAME_ANCESTORS, when set, is the user's and wins)."""
    return os.environ.get("SPARSESCOPE_FRAME_ANCESTORS") or " ".join(("'self'", *origins))


def start_server(data_dir: str | Path, *, port: int | None = None,
                 timeout_s: float = START_TIMEOUT_S, base_url: str | None = None) -> Dashboard:
    """A dashboard server on `data_dir`: the one that already serves it, or a new background
    one that lets the notebook's page frame it (`base_url`: see notebook_origins). Callers on
    one folder at once, threads or processes, all get the one server."""
    folder = Path(data_dir).expanduser().resolve()
    key = str(folder)
    with _servers_lock:
        folder_lock = _folder_locks.setdefault(key, threading.Lock())
    with folder_lock:  # this process's threads, one at a time; other processes: launching()
        known = _servers.get(key)
        if known is not None and known.alive():
            return known
        folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        try:
            with launching(folder, timeout_s):
                # A server holds the folder (slow to answer on a busy machine): wait for it.
                existing = _serving(folder) or _wait_for_holder(folder, deadline)
                dashboard = Dashboard(existing, folder) if existing is not None else \
                    _launch(folder, port, deadline, notebook_origins(base_url))
        except TimeoutError as error:
            raise RuntimeError(f"{error}; see {folder / 'notebook-server.log'}") from None
        with _servers_lock:
            _servers[key] = dashboard
        return dashboard


def _launch(folder: Path, port: int | None, deadline: float,
            origins: tuple[str, ...]) -> Dashboard:
    """Start a server on `folder` (the launch lock held) and wait for its health. One that
    exits because another holds the folder (a server started outside the notebook meanwhile)
    gives way to that one; any other failure is a RuntimeError quoting its own words."""
    port = _port_setting(port) or _free_port()
    env = dict(os.environ, SPARSESCOPE_FRAME_ANCESTORS=frame_ancestors(origins))
    log_path = folder / "notebook-server.log"
    with open(log_path, "ab") as log:
        start = log.seek(0, os.SEEK_END)  # what this server writes comes after
        process = subprocess.Popen(
            [sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(folder)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_parent_death_signal())
    dashboard = Dashboard(f"http://127.0.0.1:{port}", folder, process, origins)
    atexit.register(_stop, process)
    began = time.monotonic()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            holder = _wait_for_holder(folder, deadline)
            if holder is not None:
                return Dashboard(holder, folder)
            raise RuntimeError(f"data_dir: the dashboard server on {folder} exited at once "
                               f"(code {process.returncode}): {_cause(log_path, start)}")
        if _healthy(dashboard.url, timeout_s=1.0):
            return dashboard
        time.sleep(0.2)
    _stop(process)
    raise RuntimeError(f"the dashboard server on {folder} did not answer within "
                       f"{time.monotonic() - began:.0f} s (its last words: "
                       f"{_cause(log_path, start)}; see {log_path})")


def _wait_for_holder(folder: Path, deadline: float) -> str | None:
    """The URL of the live server that holds `folder`, once it answers (before `deadline`);
    None at once when no live server holds it."""
    while folder_held(folder) and time.monotonic() < deadline:
        url = _serving(folder)
        if url is not None:
            return url
        time.sleep(0.2)
    return None


def _cause(log_path: Path, start: int) -> str:
    """What the server said of its failure, from its own part of the log (from byte `start`):
    its one-line refusal (`sparsescope: ...`), else the last line naming an error, else its
    last line. Not what another server wrote there before, nor a shutdown message after."""
    try:
        with open(log_path, "rb") as log:
            log.seek(start)
            text = log.read(1 << 20).decode(errors="replace")
    except OSError as error:
        return f"its log could not be read ({error})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for wanted in (lambda line: line.startswith("sparsescope:"),
                   lambda line: "error" in line.lower() or "exception" in line.lower()):
        found = [line for line in lines if wanted(line)]
        if found:
            return found[-1]
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
    # One row of the bounded list projection: a folder's other runs are never read whole.
    runs = RunStore(data_dir).list_page(1).runs if (data_dir / DB_NAME).exists() else []
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
    origins = notebook_origins(base_url)
    dashboard = None if server else start_server(folder, port=port, base_url=base_url)
    dashboard_url = server.rstrip("/") if server else dashboard.url
    base = public_base(dashboard_url, base_url)
    # A server this kernel started allows what was found of the notebook's origin; another
    # one is asked (started outside the notebook, it may allow no other page).
    own = dashboard is not None and dashboard.process is not None
    refused = None if own else frame_refusal(dashboard_url, origins=origins)
    if refused is not None and "'none'" not in refused and base.startswith("/"):
        refused = None  # served through Jupyter's own origin (a proxy path): 'self' is Jupyter
    unsure = own and not dashboard.frame_origins and not base.startswith("/") and \
        not os.environ.get("SPARSESCOPE_FRAME_ANCESTORS")
    view = InlineView(run_url(base, run_id, step), height, refused=refused,
                      origin=origins[0] if origins else None, unsure=unsure)
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

