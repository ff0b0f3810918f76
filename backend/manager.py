"""Run lifecycle: a queue of runs and the worker processes that train them.

Training never runs in the server process: each run is a child process in its own process
group, so a crash, an out-of-memory or a hung step cannot take the server down, and Stop
always works (SIGTERM for a cooperative stop, SIGKILL of the group after the grace period).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from backend.settings import Settings
from dst_core.recording import ACTIVE_STATUSES, FINAL_STATUSES, RunStore

log = logging.getLogger("sparsescope.runs")
POLL_INTERVAL_S = 0.1


@dataclass
class Worker:
    run_id: str
    process: subprocess.Popen
    log_path: Path
    stop_requested: bool = False
    kill_at: float | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class RunManager:
    def __init__(self, store: RunStore, settings: Settings):
        self.store = store
        self.settings = settings
        self.workers: dict[str, Worker] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.log_dir = Path(settings.data_dir) / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # ---- server lifetime --------------------------------------------------------------------
    async def start(self) -> None:
        for run in self.store.runs_with_status(ACTIVE_STATUSES):
            # Left active by a server that died: its worker died with it.
            self.store.set_status(run["id"], "failed", error="interrupted: the server stopped")
            log.info("run=%s marked failed (interrupted)", run["id"])
        self._task = asyncio.create_task(self._supervise(), name="run-supervisor")

    async def shutdown(self) -> None:
        for run_id in list(self.workers):
            self._request_stop(run_id)
        for run in self.store.runs_with_status(["queued"]):
            self.store.set_status(run["id"], "stopped")
        deadline = time.monotonic() + self.settings.stop_grace_s
        while self.workers and time.monotonic() < deadline:
            self._reap()
            await asyncio.sleep(POLL_INTERVAL_S)
        for worker in list(self.workers.values()):
            self._kill(worker)
        self._reap(wait=True)
        if self._task:
            self._task.cancel()

    # ---- requests ---------------------------------------------------------------------------
    def submit(self, config: dict, name: str) -> dict:
        run = self.store.create_run(config, name, status="queued")
        log.info("run=%s queued", run["id"])
        self._wake.set()
        return run

    async def stop(self, run_id: str, wait_s: float = 4.5) -> dict | None:
        run = self.store.get_run(run_id)
        if run is None or run["status"] in FINAL_STATUSES:
            return run
        if run_id in self.workers:
            self._request_stop(run_id)
        else:
            self.store.set_status(run_id, "stopped")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            run = self.store.get_run(run_id)
            if run is None or run["status"] in FINAL_STATUSES:
                return run
            await asyncio.sleep(POLL_INTERVAL_S)
        return self.store.get_run(run_id)

    async def delete(self, run_id: str) -> bool:
        if run_id in self.workers:
            self._request_stop(run_id)
            worker = self.workers.get(run_id)
            if worker is not None:
                self._kill(worker)
                self._reap(wait=True)
        return self.store.delete_run(run_id)

    # ---- supervision ------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while True:
            try:
                self._reap()
                self._enforce_grace()
                self._launch_queued()
            except Exception:  # the supervisor must outlive any single bad run
                log.exception("supervisor error")
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _launch_queued(self) -> None:
        free = self.settings.max_concurrent_runs - len(self.workers)
        if free <= 0:
            return
        for run in self.store.runs_with_status(["queued"])[:free]:
            self._spawn(run["id"])

    def _spawn(self, run_id: str) -> None:
        log_path = self.log_dir / f"{run_id}.log"
        command = [sys.executable, "-m", "backend.worker", "--data-dir",
                   str(self.settings.data_dir), "--run-id", run_id,
                   "--parent-pid", str(os.getpid()), "--threads",
                   str(self.settings.worker_threads)]
        with open(log_path, "ab") as handle:
            # Popen from the event-loop thread: PR_SET_PDEATHSIG follows the spawning thread.
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.workers[run_id] = Worker(run_id, process, log_path)
        log.info("run=%s worker pid=%d started", run_id, process.pid)

    def _request_stop(self, run_id: str) -> None:
        worker = self.workers.get(run_id)
        if worker is None or worker.stop_requested:
            return
        worker.stop_requested = True
        worker.kill_at = time.monotonic() + self.settings.stop_grace_s
        try:
            worker.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        log.info("run=%s stop requested", run_id)

    def _enforce_grace(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.kill_at is not None and now >= worker.kill_at:
                log.warning("run=%s did not stop within the grace period: killed", worker.run_id)
                self._kill(worker)

    def _kill(self, worker: Worker) -> None:
        try:
            os.killpg(worker.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self, wait: bool = False) -> None:
        for run_id, worker in list(self.workers.items()):
            code = worker.process.wait() if wait else worker.process.poll()
            if code is None:
                continue
            del self.workers[run_id]
            worker.exited.set()
            run = self.store.get_run(run_id)
            if run is not None and run["status"] not in FINAL_STATUSES:
                if worker.stop_requested:
                    self.store.set_status(run_id, "stopped")
                else:
                    self.store.set_status(run_id, "failed",
                                          error=f"worker exited with code {code}: "
                                          f"{_tail(worker.log_path)}")
            log.info("run=%s worker exited code=%s", run_id, code)
            self._wake.set()


def _tail(path: Path, limit: int = 800) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:].strip()
