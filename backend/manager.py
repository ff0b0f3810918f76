"""Run lifecycle: a queue of runs and the worker processes that train them.

Training never runs in the server process: each run is a child process in its own process
group, so a crash, an out-of-memory or a hung step cannot take the server down, and Stop
always works (SIGTERM for a cooperative stop within one step, SIGKILL of the group after the
grace period).

The manager only ever launches, stops or recovers runs it accepted itself. The same data
folder also receives runs written by the CLI or by a user's script (their own Recorder) and
by remote writers: the manager must not start those, nor mark them interrupted when the
server restarts while their writer is still alive. Which writer a run has is stored with the
run (`info.writer`), and a foreign writer's liveness is its heartbeat (or, on this host, its
pid), so run liveness lives here, next to the workers it complements: a restarted server
fails exactly the runs its dead predecessor (or a dead writer) left behind
(`fail_interrupted`), and the stale-writer watcher started with the manager fails a run whose
writer went silent (`mark_stale`).

A storage fault (read-only folder, I/O error, full disk) must not lose a run's ending: a
worker that exited is kept under supervision until its final status has been recorded, so
the run ends `failed` with the worker's own last words once the disk is back, and Stop keeps
knowing that the run is ours.

    queued ──► running ──► completed | stopped | failed
       └──────────────────► stopped (stopped before a worker took it)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
import sqlite3
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from backend.logfmt import log_event
from backend.settings import Settings
from backend.worker_pool import WorkerPool
from dst_core.store import ACTIVE_STATUSES, FINAL_STATUSES, RunStore
from dst_core.store.config import RunConfig

log = logging.getLogger("sparsescope.runs")
POLL_INTERVAL_S = 0.1
STOP_WAIT_S = 4.5  # a stop answers once the run has ended: grace (3 s) + kill + reap
INTERRUPTED = "interrupted: the server stopped while the run was active"
STOPPED_EXIT_CODES = (0, -signal.SIGTERM, -signal.SIGKILL)
WRITER_GONE_ERROR = "interrupted: its writer process is gone"
STALE_ERROR = "stale: writer went silent"
# What Stop can say about a run another process writes: who that is, and what is left to do.
FOREIGN_WRITERS = {
    "cli": "the sparsescope CLI",
    "script": "a user's script (its own Recorder)",
    "remote": "a remote writer (a training job sending events over HTTP)",
}


class QueueFull(RuntimeError):
    """More runs are waiting than `max_queued_runs` allows."""


class NotOwned(RuntimeError):
    """The run is active but written by another process (the CLI, a script, a remote job)."""


class BeingWritten(NotOwned):
    """Delete refused: another live process is writing the run (`force` deletes it anyway)."""


def writer_gone(info: dict) -> bool:
    """True when a run's local writer (a CLI or a script on this host) no longer exists: a
    killed writer is then known at once instead of after the heartbeat timeout. Remote writers
    are judged by their heartbeat alone (their pid means nothing here)."""
    pid = info.get("pid")
    if info.get("writer") not in ("cli", "script") or not isinstance(pid, int) or pid <= 0:
        return False
    if info.get("host") != platform.node():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def writer_name(run: dict) -> str:
    """Who writes a run, as a refusal names it: "the sparsescope CLI (pid 12 on host)"."""
    info = run.get("info") or {}
    writer = info.get("writer")
    who = FOREIGN_WRITERS.get(writer, "this server's worker" if writer in (None, "worker")
                              else "another process")
    if writer in ("cli", "script", "worker", None) and info.get("pid"):
        who += f" (pid {info['pid']} on {info.get('host') or 'this host'})"
    return who


def not_owned_message(run: dict) -> str:
    """Stop on a run the server does not train: say who writes it and what can be done."""
    return (f"run {run['id']} is written by {writer_name(run)}, not by this server: the server "
            "cannot stop it; stop it where it runs (Ctrl-C, or end the job). The server "
            "marks it failed once its writer is silent for the stale timeout; Delete removes "
            "its data then (or at once with force, which also stops the writer)")


def live_writer(run: dict, stale_after_s: float) -> bool:
    """Whether another process is writing the run now: it is running, written by the CLI, a
    script or a remote job, and that writer was heard from within the stale timeout (and,
    when it is on this host, its process still exists) — what Stop's 409 is judged on too."""
    info = run.get("info") or {}
    if run.get("status") != "running" or info.get("writer") not in FOREIGN_WRITERS:
        return False
    beat = next((value for value in (run.get("heartbeat_at"), run.get("started_at"),
                                     run.get("created_at")) if value is not None), 0.0)
    return beat >= time.time() - stale_after_s and not writer_gone(info)


def being_written_message(run: dict, force: str) -> str:
    """Delete on a run another live process writes: who, and what `force` does."""
    return (f"run {run['id']} is being written by {writer_name(run)}, which is alive: "
            f"deleting it now would cut off what it records. Stop it where it runs first, or "
            f"delete it with {force}: the writer then stops at its next write, told that the "
            "run was deleted")


@dataclass
class Worker:
    run_id: str
    process: subprocess.Popen
    log_path: Path
    started: float
    stop_requested: bool = False
    kill_at: float | None = None
    fault_logged: bool = False  # its ending could not be stored yet (a storage fault)


class RunManager:
    """Queue, worker pool, stop/kill, crash detection and recovery for the server's runs."""

    def __init__(self, store: RunStore, settings: Settings):
        self.store = store
        self.settings = settings
        self.queue: deque[str] = deque()
        self.workers: dict[str, Worker] = {}
        self.log_dir = Path(settings.data_dir) / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pool = WorkerPool(settings, self.log_dir)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._closing = False

    # ---- server lifetime --------------------------------------------------------------------
    async def start(self) -> None:
        """Recover what a dead predecessor left active, then supervise the queue."""
        # Our workers died with the previous server (PR_SET_PDEATHSIG); foreign writers whose
        # heartbeat went stale died too. Their data stays.
        for run_id in self.fail_interrupted():
            log_event(log, "run_interrupted", run=run_id)
        self._closing = False
        self._task = asyncio.create_task(self._supervise(), name="run-supervisor")
        self._watcher = asyncio.create_task(self._watch_stale(), name="stale-writer-watcher")

    async def shutdown(self) -> None:
        """Stop every worker (cooperatively, then killed), mark their runs `stopped`."""
        self._closing = True
        for task in (self._task, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watcher = None
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
        self.pool.close()
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
            raise NotOwned(not_owned_message(run))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            run = self.store.get_run(run_id)
            if run is None or run["status"] in FINAL_STATUSES:
                return run
            await asyncio.sleep(POLL_INTERVAL_S / 2)
        return self.store.get_run(run_id)

    async def delete(self, run_id: str, force: bool = False) -> bool:
        """Stop the run if needed (its data is going anyway: no grace) and remove it all.
        Raises BeingWritten for a run another live process writes, unless `force`: that writer
        then finds the run gone at its next write and stops (no event is stored for it)."""
        run = self.store.get_run(run_id)
        if run is not None and not force and run_id not in self.workers and \
                live_writer(run, self.settings.stale_after_s):
            raise BeingWritten(being_written_message(run, "?force=true"))
        if run_id in self.queue:
            self.queue.remove(run_id)
        worker = self.workers.get(run_id)
        if worker is not None:
            worker.stop_requested = True
            self._kill(worker)
            await asyncio.to_thread(worker.process.wait)
            self._reap()
        deleted = self.store.delete_run(run_id)
        with contextlib.suppress(OSError):
            (self.log_dir / f"{run_id}.log").unlink(missing_ok=True)
        if deleted:
            log_event(log, "run_deleted", run=run_id, forced=force or None)
        return deleted

    # ---- supervision ------------------------------------------------------------------------
    async def _supervise(self) -> None:
        # Not `while True`: on Python 3.11 the cancel from shutdown() is lost when it lands as
        # the wait below ends (asyncio.wait_for returns the finished wait instead; fixed in
        # 3.12), and shutdown() then waited for this loop forever.
        while not self._closing:
            try:
                self._reap()
                self._enforce_grace()
                self._launch_queued()
                self.pool.fill()
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
                continue
            self._spawn(run_id)

    def _spawn(self, run_id: str) -> None:
        log_path = self.log_dir / f"{run_id}.log"
        try:
            process = self.pool.take(run_id, log_path)  # from the event-loop thread
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
            try:
                run = self.store.get_run(run_id)
                if run is not None and run["status"] not in FINAL_STATUSES:
                    # A worker that failed on its own (exit 1: e.g. a disk error) before a
                    # stop reached it keeps its real cause; a stopped or killed one is stopped.
                    if worker.stop_requested and code in STOPPED_EXIT_CODES:
                        self.store.set_status(run_id, "stopped")
                    else:
                        self.store.set_status(run_id, "failed", error=_exit_reason(
                            code, log_path=worker.log_path))
                final = self.store.get_run(run_id)
            except sqlite3.Error as error:
                # The disk refuses the write: keep the worker (its exit code and log stay
                # known) and record its ending on a later poll, once the disk is back.
                if not worker.fault_logged:
                    log_event(log, "storage_fault", logging.ERROR, run=run_id, error=str(error))
                    worker.fault_logged = True
                continue
            del self.workers[run_id]
            log_event(log, "worker_exited", run=run_id, code=code,
                      status=final["status"] if final else "deleted",
                      seconds=time.monotonic() - worker.started)
            self._wake.set()

    def _finish_unstarted(self, run_id: str, status: str, error: str | None = None) -> None:
        self.store.set_status(run_id, status, error=error)
        log_event(log, f"run_{status}", run=run_id, before="start", error=error)

    # ---- liveness of every run's writer -------------------------------------------------------
    def fail_interrupted(self) -> list[str]:
        """At server start: fail the active runs no writer is still recording.

        Queued runs and the server's own workers' runs died with the previous server; a run
        written by a CLI, a script or a remote job whose heartbeat is fresher than the stale
        timeout is still being recorded and is left to the stale-writer watcher."""
        cutoff = time.time() - self.settings.stale_after_s
        failed = []
        for run in self.store.runs_with_status(ACTIVE_STATUSES):
            beat = next((value for value in (run["heartbeat_at"], run["started_at"],
                                             run["created_at"]) if value is not None), 0.0)
            own = run["status"] == "queued" or run["info"].get("writer", "worker") == "worker"
            gone = own or beat < cutoff or writer_gone(run["info"])
            if gone and self.store.set_status(run["id"], "failed", error=INTERRUPTED):
                failed.append(run["id"])
        return failed

    def mark_stale(self, supervised: set[str] = frozenset()) -> list[str]:
        """Fail every running run not `supervised` by a worker here whose writer has not been
        heard from for the stale timeout, or whose local writer process is gone."""
        cutoff = time.time() - self.settings.stale_after_s
        failed = []
        for run_id, beat, info in self.store.running_beats():
            if run_id in supervised:
                continue  # the manager reaps its own workers
            gone = writer_gone(info)
            if not gone and beat >= cutoff:
                continue
            # Re-checked in the store's transaction: a heartbeat may have landed meanwhile.
            if self.store.fail_if_silent(run_id, WRITER_GONE_ERROR if gone else STALE_ERROR,
                                         None if gone else cutoff):
                failed.append(run_id)
        return failed

    async def _watch_stale(self) -> None:
        period_s = min(5.0, self.settings.stale_after_s / 4)
        while True:
            await asyncio.sleep(period_s)
            try:
                failed = await asyncio.to_thread(self.mark_stale, set(self.workers))
                for run_id in failed:
                    log_event(log, "run_stale", logging.WARNING, run=run_id,
                              silent_s=self.settings.stale_after_s)
            except Exception:  # the watcher must outlive any single bad read
                log.exception("event=stale_watcher_error")


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
