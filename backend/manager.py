"""Run lifecycle: a queue of runs and the worker processes that train them.

Training never runs in the server process: each run is a child process in its own process
group, so a crash, an out-of-memory or a hung step cannot take the server down, and Stop
always works (SIGTERM for a cooperative stop within one step, SIGKILL of the group after the
grace period).

The manager only ever launches, stops or recovers runs it accepted itself. The same data
folder also receives runs written by the CLI or by a user's script (their own Recorder): the
manager must not start those, nor mark them interrupted when the server restarts while their
writer is still alive. Which writer a run has is stored with the run (`info.writer`), and a
foreign writer's liveness is its heartbeat, so a restarted server fails exactly the runs its
dead predecessor (or a dead writer) left behind: `RunStore.fail_interrupted`.

    queued ──► running ──► completed | stopped | failed
       └──────────────────► stopped (stopped before a worker took it)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from backend.logfmt import log_event
from backend.settings import Settings
from dst_core.config import RunConfig
from dst_core.recording import FINAL_STATUSES, RunStore

log = logging.getLogger("sparsescope.runs")
POLL_INTERVAL_S = 0.1
STOP_WAIT_S = 4.5  # a stop answers once the run has ended: grace (3 s) + kill + reap
INTERRUPTED = "interrupted: the server stopped while the run was active"


class QueueFull(RuntimeError):
    """More runs are waiting than `max_queued_runs` allows."""


class NotOwned(RuntimeError):
    """The run is active but written by another process (the CLI or a user's script)."""


@dataclass
class Worker:
    run_id: str
    process: subprocess.Popen
    log_path: Path
    started: float
    stop_requested: bool = False
    kill_at: float | None = None


class RunManager:
    """Queue, worker pool, stop/kill, crash detection and recovery for the server's runs."""

    def __init__(self, store: RunStore, settings: Settings):
        self.store = store
        self.settings = settings
        self.queue: deque[str] = deque()
        self.workers: dict[str, Worker] = {}
        self.log_dir = Path(settings.data_dir) / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._owned: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    # ---- server lifetime --------------------------------------------------------------------
    async def start(self) -> None:
        """Recover what a dead predecessor left active, then supervise the queue."""
        # Our workers died with the previous server (PR_SET_PDEATHSIG); foreign writers whose
        # heartbeat went stale died too. Their data stays.
        for run_id in self.store.fail_interrupted(self.settings.stale_after_s, error=INTERRUPTED):
            log_event(log, "run_interrupted", run=run_id)
        self._owned = set()
        self._closing = False
        self._task = asyncio.create_task(self._supervise(), name="run-supervisor")

    async def shutdown(self) -> None:
        """Stop every worker (cooperatively, then killed), mark their runs `stopped`."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self.queue:
            self._finish_unstarted(self.queue.popleft(), "stopped")
        for run_id in list(self.workers):
            self._request_stop(run_id)
        deadline = time.monotonic() + self.settings.stop_grace_s
        while self.workers and time.monotonic() < deadline:
            self._reap()
            await asyncio.sleep(POLL_INTERVAL_S / 2)
        for worker in list(self.workers.values()):
            self._kill(worker)
        self._reap(wait=True)
        log_event(log, "manager_stopped")

    # ---- requests ---------------------------------------------------------------------------
    def submit(self, config: RunConfig) -> dict:
        """Queue a run; raises QueueFull when `max_queued_runs` are already waiting."""
        if self._closing:
            raise QueueFull("the server is shutting down")
        if len(self.queue) >= self.settings.max_queued_runs:
            raise QueueFull(f"{len(self.queue)} runs are already waiting; at most "
                            f"{self.settings.max_queued_runs} (SPARSESCOPE_MAX_QUEUED_RUNS)")
        run = self.store.create_run(config.model_dump(), config.display_name(), status="queued")
        self.queue.append(run["id"])
        self._own(run["id"])
        log_event(log, "run_queued", run=run["id"], method=config.method, task=config.task,
                  queued=len(self.queue))
        self._wake.set()
        return run

    async def stop(self, run_id: str, wait_s: float | None = None) -> dict | None:
        """Stop a queued, starting or running run; returns the run once it has ended (or
        after `wait_s`). Raises NotOwned for an active run another process is writing."""
        if wait_s is None:
            wait_s = max(STOP_WAIT_S, self.settings.stop_grace_s + 1.5)
        run = self.store.get_run(run_id)
        if run is None or run["status"] in FINAL_STATUSES:
            return run
        if run_id in self.queue:
            self.queue.remove(run_id)
            self._finish_unstarted(run_id, "stopped")
        elif run_id in self.workers:
            self._request_stop(run_id)
        else:
            raise NotOwned(f"run {run_id} is written by another process (the CLI or a script); "
                           "stop it there")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            run = self.store.get_run(run_id)
            if run is None or run["status"] in FINAL_STATUSES:
                return run
            await asyncio.sleep(POLL_INTERVAL_S / 2)
        return self.store.get_run(run_id)

    async def delete(self, run_id: str) -> bool:
        """Stop the run if needed (its data is going anyway: no grace) and remove it all."""
        if run_id in self.queue:
            self.queue.remove(run_id)
        worker = self.workers.get(run_id)
        if worker is not None:
            worker.stop_requested = True
            self._kill(worker)
            await asyncio.to_thread(worker.process.wait)
            self._reap()
        self._disown(run_id)
        deleted = self.store.delete_run(run_id)
        with contextlib.suppress(OSError):
            (self.log_dir / f"{run_id}.log").unlink(missing_ok=True)
        if deleted:
            log_event(log, "run_deleted", run=run_id)
        return deleted

    # ---- supervision ------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while True:
            try:
                self._reap()
                self._enforce_grace()
                self._launch_queued()
            except Exception:  # the supervisor must outlive any single bad run
                log.exception("event=supervisor_error")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
            self._wake.clear()

    def _launch_queued(self) -> None:
        while self.queue and len(self.workers) < self.settings.max_concurrent_runs:
            run_id = self.queue.popleft()
            run = self.store.get_run(run_id)
            if run is None or run["status"] != "queued":
                self._disown(run_id)
                continue
            self._spawn(run_id)

    def _spawn(self, run_id: str) -> None:
        log_path = self.log_dir / f"{run_id}.log"
        command = [sys.executable, "-m", "backend.worker", "--data-dir",
                   str(self.settings.data_dir), "--run-id", run_id,
                   "--parent-pid", str(os.getpid()), "--threads",
                   str(self.settings.worker_threads)]
        from dst_core.plugins import plugin_environment

        # Methods registered in this process are imported by the worker too.
        env = {**os.environ, "OMP_NUM_THREADS": str(self.settings.worker_threads),
               **plugin_environment()}
        try:
            with open(log_path, "ab") as handle:
                # Popen from the event-loop thread: PR_SET_PDEATHSIG follows the spawning
                # thread, and this thread lives as long as the server.
                process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True,
                                           env=env)
        except OSError as error:
            self._finish_unstarted(run_id, "failed", error=f"could not start a worker: {error}")
            return
        self.workers[run_id] = Worker(run_id, process, log_path, time.monotonic())
        log_event(log, "worker_started", run=run_id, pid=process.pid)

    def _request_stop(self, run_id: str) -> None:
        worker = self.workers.get(run_id)
        if worker is None or worker.stop_requested:
            return
        worker.stop_requested = True
        run = self.store.get_run(run_id)
        if run is not None and run["status"] == "queued":
            # Still importing torch (seconds, not interruptible): nothing is recorded yet, so
            # there is nothing a grace period could save. The run reads `stopped` at once.
            log_event(log, "stop_requested", run=run_id, pid=worker.process.pid, grace_s=0)
            self._kill(worker)
            return
        worker.kill_at = time.monotonic() + self.settings.stop_grace_s
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        log_event(log, "stop_requested", run=run_id, pid=worker.process.pid,
                  grace_s=self.settings.stop_grace_s)

    def _enforce_grace(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.kill_at is not None and now >= worker.kill_at:
                log_event(log, "worker_killed", logging.WARNING, run=worker.run_id,
                          reason="grace period over")
                self._kill(worker)
                worker.kill_at = None

    def _kill(self, worker: Worker) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.process.pid, signal.SIGKILL)

    def _reap(self, wait: bool = False) -> None:
        for run_id, worker in list(self.workers.items()):
            code = worker.process.wait() if wait else worker.process.poll()
            if code is None:
                continue
            del self.workers[run_id]
            run = self.store.get_run(run_id)
            if run is not None and run["status"] not in FINAL_STATUSES:
                if worker.stop_requested:
                    self.store.set_status(run_id, "stopped")
                else:
                    self.store.set_status(run_id, "failed", error=_exit_reason(code, log_path=
                                                                                worker.log_path))
            self._disown(run_id)
            final = self.store.get_run(run_id)
            log_event(log, "worker_exited", run=run_id, code=code,
                      status=final["status"] if final else "deleted",
                      seconds=time.monotonic() - worker.started)
            self._wake.set()

    def _finish_unstarted(self, run_id: str, status: str, error: str | None = None) -> None:
        self.store.set_status(run_id, status, error=error)
        self._disown(run_id)
        log_event(log, f"run_{status}", run=run_id, before="start", error=error)

    # ---- ownership (this server's lifetime; across restarts the store's info.writer) -------
    def _own(self, run_id: str) -> None:
        self._owned.add(run_id)

    def _disown(self, run_id: str) -> None:
        self._owned.discard(run_id)


def _exit_reason(code: int, log_path: Path) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        head = f"worker killed by {name}"
    elif code == 0:
        head = "worker exited without finishing the run"
    else:
        head = f"worker exited with code {code}"
    tail = _tail(log_path)
    return f"{head}: {tail}" if tail else head


def _tail(path: Path, limit: int = 800) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read().decode(errors="replace").strip()
    except OSError:
        return ""
