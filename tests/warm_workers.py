"""Warm processes for the tests: one torch import per test process, instead of one per
server and per run.

A server's worker spends seconds of CPU importing torch before it trains (backend/worker.py),
and a server as many starting (the engine, FastAPI); the suite starts some sixty runs and
forty servers on two shared cores. Here one helper process per test process imports what a
worker and a server import, once, and forks either on request:

- a **worker** runs `backend.worker.main` with the server's own arguments, its own process
  group, the server's log file as its output and a pipe as its stdin (the run id arrives
  there, as a warm worker of backend/worker_pool.py receives it);
- a **server** runs `python -m backend` with the test's arguments and environment (its module
  run as `__main__`, then what an interpreter does on its way out: thread joins and atexit
  handlers), its own session, a log file as its output; its workers are its own children
  (`python -m backend.worker`, as a user's server starts them) or, where asked, warm forks of
  this helper (the browser tests: some thirty runs).

The caller gets a handle with the Popen calls it makes (`pid`, `poll`, `wait`, `send_signal`,
`stdin`, `returncode`), and stops and kills the fork as it would its own child.

What differs is the parent (the helper, not the test process or the server) and the start-up
itself. The tests about those start real processes: workers marked `real_workers` (a direct
child, its command line and environment, the warm pool, the real start-up) and servers
started as a user does (`python -m backend` in test_settings_console.py, test_auth.py,
test_guards.py, test_cli.py, the `live_server` fixture, the notebook's own launches).

    python -m tests.warm_workers SOCKET_FD PATH    # the helper; started by `WorkerForks`
"""

from __future__ import annotations

import array
import atexit
import contextlib
import itertools
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_HELPER = "SPARSESCOPE_TEST_FORKS"  # set for the servers the tests start


class ForkedProcess:
    """The handle of one fork (a worker or a server): the calls RunManager, WorkerPool and the
    tests make on a Popen."""

    def __init__(self, forks: WorkerForks, number: int, pid: int, stdin, label: str) -> None:
        self._forks = forks
        self._number = number
        self.pid = pid
        self.stdin = stdin
        self.returncode: int | None = None
        self.args = [f"{label} (forked)"]

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._forks.exit_code(self._number)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, signal_number: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal_number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WorkerForks:
    """This process's way to the helper: its own (the test process starts one), or, in a server
    the tests started, the test process's helper, at the path in $SPARSESCOPE_TEST_FORKS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._output = None  # the helper's own output until it is ready (a failed import)
        self._path: str | None = None  # where servers connect to this process's helper
        self._ready = False
        self._socket: socket.socket | None = None
        self._pending = b""
        self._numbers = itertools.count()  # of the forks: pids come round again
        self._exits: dict[int, int] = {}  # exit codes by fork number

    def prestart(self) -> str:
        """Start the helper now, not at the first run: it imports while the test sets up (the
        first fork waits for it on the app's event loop, which serves nothing meanwhile).
        Returns the path a server connects to ($SPARSESCOPE_TEST_FORKS)."""
        with self._lock:
            self._start_if_gone()
            return self._path

    def _start_if_gone(self) -> None:
        if self._socket is not None and (self._process is None or self._process.poll() is None):
            return
        self._pending, self._ready = b"", False
        shared = os.environ.get(SHARED_HELPER)
        if shared and self._process is None:  # a server: the test process's helper
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._socket.connect(shared)
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._path = os.path.join(tempfile.mkdtemp(prefix="forks-"), "socket")
        self._output = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.warm_workers", str(theirs.fileno()), self._path],
            cwd=REPO, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            stdout=self._output, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        theirs.close()
        self._socket = ours

    def _wait_ready(self) -> None:
        try:
            while not self._ready:  # {"ready": true}: it has imported everything
                self._note(self._read_message(timeout_s=120))
        except (RuntimeError, TimeoutError) as error:
            said = ""
            if self._output is not None:
                self._output.seek(0)
                said = self._output.read().decode(errors="replace")
            raise RuntimeError(f"the worker helper did not start ({error}): {said}") from None

    def _note(self, message: dict) -> None:
        """Keep what the helper says besides the answer a caller waits for."""
        if message.get("ready"):
            self._ready = True
        elif "exited" in message:
            self._exits[message["exited"]] = message["code"]

    def fork(self, command: list[str], env: dict[str, str], log_path: Path) -> ForkedProcess:
        """A worker running `command` (the pool's `python -m backend.worker ...`), its output
        appended to `log_path`, its stdin a pipe whose write end the handle holds."""
        module = command.index("backend.worker")
        stdin_read, stdin_write = os.pipe()
        try:
            number, pid = self._request({"kind": "worker", "argv": command[module + 1:], "env": env},
                                        stdin_read, log_path)
        finally:
            os.close(stdin_read)
        return ForkedProcess(self, number, pid, os.fdopen(stdin_write, "wb"), "backend.worker")

    def fork_server(self, args: list[str], env: dict[str, str], log_path: Path,
                    warm_workers: bool = False) -> ForkedProcess:
        """`python -m backend ARGS` with `env`, its output appended to `log_path`, its stdin
        /dev/null; with `warm_workers` its runs' workers are forks of this helper too."""
        stdin = os.open(os.devnull, os.O_RDONLY)
        try:
            number, pid = self._request({"kind": "server", "argv": args, "env": env,
                                         "warm_workers": warm_workers}, stdin, log_path)
        finally:
            os.close(stdin)
        return ForkedProcess(self, number, pid, None, "python -m backend")

    def _request(self, request: dict, stdin: int, log_path: Path) -> tuple[int, int]:
        """Ask the helper for a fork with `stdin` and `log_path` as its input and output:
        (its number, its pid)."""
        with open(log_path, "ab") as log:
            with self._lock:
                self._start_if_gone()
                self._wait_ready()
                number = next(self._numbers)
                line = json.dumps({**request, "number": number}).encode()
                self._socket.sendmsg([line + b"\n"], [(
                    socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [stdin, log.fileno()]))])
                while (message := self._read_message(timeout_s=60)).get("forked") != number:
                    self._note(message)
        return number, message["pid"]

    def exit_code(self, number: int) -> int | None:
        with self._lock:
            while self._socket is not None:
                message = self._read_message(timeout_s=0)
                if message is None:
                    break
                self._note(message)
            return self._exits.pop(number, None)

    def _read_message(self, timeout_s: float) -> dict | None:
        """The helper's next message; None when none has arrived within `timeout_s` (0: only
        what has arrived already)."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if timeout_s and remaining <= 0:
                raise TimeoutError("the worker helper did not answer")
            readable, _, _ = select.select([self._socket], [], [], max(0.0, remaining))
            if not readable:
                if not timeout_s:
                    return None
                continue
            chunk = self._socket.recv(65536)
            if not chunk:
                raise RuntimeError("the worker helper exited")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            if self._process is not None:  # it ends when its owner's socket closes
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=10)
                if self._process.poll() is None:
                    self._process.kill()
                    self._process.wait()
                self._process = None
                self._output.close()
                with contextlib.suppress(OSError):
                    os.unlink(self._path)
                    os.rmdir(os.path.dirname(self._path))


FORKS = WorkerForks()


def forked_start(pool):
    """`WorkerPool._start` for the tests: the same IdleWorker, its process forked warm."""
    from backend.worker_pool import IdleWorker
    from dst_core.plugins import plugin_environment

    plugins = plugin_environment()
    env = {**os.environ, "OMP_NUM_THREADS": str(pool.settings.worker_threads), **plugins}
    log_path = pool.log_dir / f"idle-{os.getpid()}-{next(pool._numbers)}.log"
    return IdleWorker(FORKS.fork(pool.command(), env, log_path), log_path, plugins)


# ---- the helper process ---------------------------------------------------------------------
def _serve(owner: socket.socket, path: str) -> None:
    """Fork a worker per request of any client (the test process, `owner`, and the servers it
    started, which connect to `path`) until the test process closes its end: this process ends
    then, and its forks with it (their PR_SET_PDEATHSIG). A server that goes takes its forks
    with it, as its own workers would die with it. Not PR_SET_PDEATHSIG here: it follows the
    thread that started this helper, which may end long before the test process."""
    import selectors

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)  # before the imports: a server may connect meanwhile, and waits
    listener.listen()
    # What a worker imports before it reads its run id (backend/worker.py), then the worker;
    # what a server imports before it serves (backend/cli.py `serve`).
    import sklearn.datasets  # noqa: F401
    import torch
    import torch._dynamo  # noqa: F401
    import uvicorn  # noqa: F401

    import backend.app  # noqa: F401
    import backend.cli  # noqa: F401
    import backend.http_limits  # noqa: F401
    import backend.worker  # noqa: F401
    import dst_core.plugins  # noqa: F401
    import dst_core.recording.recorder  # noqa: F401
    import dst_core.recording.training  # noqa: F401
    import dst_core.store.config  # noqa: F401

    torch.set_num_threads(1)
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    os.set_blocking(wakeup_read, False)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wakeup_read, selectors.EVENT_READ)
    clients: dict[socket.socket, dict] = {}  # what each has sent of its next request
    forks: dict[int, tuple[socket.socket, int]] = {}  # pid: (its client, its number)

    def add(client: socket.socket) -> None:
        clients[client] = {"pending": b"", "fds": []}
        selector.register(client, selectors.EVENT_READ)
        _send(client, {"ready": True})

    add(owner)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                add(listener.accept()[0])
                continue
            if key.fileobj == wakeup_read:
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup_read, 4096)
                continue
            client = key.fileobj
            state = clients[client]
            message, received, _, _ = socket.recv_fds(client, 65536, 2)
            if not message:
                if client is owner:  # the test process is done: so are the servers it started
                    for pid in forks:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)
                    return
                selector.unregister(client)
                del clients[client]
                client.close()
                for pid, (of, _number) in forks.items():  # they die with their server
                    if of is client:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)
                continue
            state["pending"] += message
            state["fds"] += received
            if b"\n" not in state["pending"]:
                continue  # the rest of the request is on its way
            line, state["pending"] = state["pending"].split(b"\n", 1)
            request, fds, state["fds"] = json.loads(line), state["fds"], []
            pid = os.fork()
            if pid == 0:
                run = _run_server if request["kind"] == "server" else _run_worker
                run(request, fds, [listener, *clients, wakeup_read, wakeup_write])
            for fd in fds:
                os.close(fd)
            forks[pid] = (client, request["number"])
            _send(client, {"forked": request["number"], "pid": pid})
        _report_exits(forks)


def _send(client: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):  # a server that has gone hears nothing more
        client.sendall(json.dumps(message).encode() + b"\n")


def _report_exits(forks: dict[int, tuple[socket.socket, int]]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        client, number = forks.pop(pid)
        _send(client, {"exited": number, "code": os.waitstatus_to_exitcode(status)})


def _become(request: dict, fds: list[int], inherited: list) -> None:
    """In the fork: drop the helper's handles and signal set-up, take the requested input,
    output and environment, in a session of its own (as start_new_session gives a Popen)."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for handle in inherited:  # the helper's sockets and pipe: not the fork's
        if isinstance(handle, int):
            os.close(handle)
        else:
            handle.close()
    os.setsid()
    stdin, log = fds
    os.dup2(stdin, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(stdin)
    os.close(log)
    os.environ.clear()
    os.environ.update(request["env"])


def _run_worker(request: dict, fds: list[int], inherited: list) -> None:
    """In the fork: become the worker the server asked for; never returns."""

    def run() -> int:
        argv = list(request["argv"])
        # Its parent is this helper: the worker's watchdog watches the helper.
        argv[argv.index("--parent-pid") + 1] = str(os.getppid())
        sys.argv = ["backend.worker", *argv]
        import backend.worker

        return backend.worker.main(argv)

    _live_and_leave(request, fds, inherited, run)


def _run_server(request: dict, fds: list[int], inherited: list) -> None:
    """In the fork: become `python -m backend ARGV`; never returns."""

    def run() -> int:
        sys.argv = ["backend", *request["argv"]]
        if request["warm_workers"]:
            from backend.worker_pool import WorkerPool

            WorkerPool._start = forked_start
        runpy.run_module("backend", run_name="__main__", alter_sys=True)
        return 0

    _live_and_leave(request, fds, inherited, run)


def _live_and_leave(request: dict, fds: list[int], inherited: list, run) -> None:
    """In the fork: take the request's input, output and environment, `run`, and leave as an
    interpreter would (its exit status, its threads joined and atexit handlers run, an uncaught
    Ctrl+C ending it by the signal: returncode -2); never returns."""
    code = 1
    interrupted = False
    try:
        _become(request, fds, inherited)
        try:
            code = run()
        except SystemExit as leaving:
            code = _exit_status(leaving)
        except KeyboardInterrupt:
            interrupted = True
        threading._shutdown()  # what Py_FinalizeEx does first, then atexit
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def _exit_status(leaving: SystemExit) -> int:
    """sys.exit's argument as the interpreter turns it into a status (a message: printed, 1)."""
    if leaving.code is None:
        return 0
    if isinstance(leaving.code, int):
        return leaving.code
    print(leaving.code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2])
