"""Worker processes started ahead of their run, so Start begins training at once.

A new Python process spends seconds importing torch before it can train; on a loaded machine
that was most of the time from Start to the first heatmap. The pool keeps `warm_workers`
processes that have already imported torch and the engine and wait, blocked on stdin, for the
id of the run they are to train. Each trains exactly one run and exits, as a cold worker
would: one process per run, each in its own process group, a direct child of the server that
dies with it, stopped by SIGTERM and killed by SIGKILL of its group. A taken worker is
replaced at once, from the event-loop thread (PR_SET_PDEATHSIG follows the spawning thread,
and this one lives as long as the server).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from backend.logfmt import log_event
from backend.settings import Settings
from dst_core.plugins import plugin_environment

log = logging.getLogger("sparsescope.runs")


@dataclass
class IdleWorker:
    process: subprocess.Popen
    log_path: Path  # its output so far (the imports); becomes the run's log when taken
    plugins: dict[str, str]  # the user methods' modules it will import (SPARSESCOPE_PLUGINS)


class WorkerPool:
    """Idle, torch-loaded worker processes; `take` hands one its run."""

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings = settings
        self.log_dir = log_dir
        self.idle: list[IdleWorker] = []
        self._numbers = itertools.count()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "backend.worker", "--data-dir", str(self.settings.data_dir),
                "--parent-pid", str(os.getpid()), "--threads", str(self.settings.worker_threads)]

    def _start(self) -> IdleWorker:
        """A new worker, importing torch now; raises OSError when it cannot be started."""
        plugins = plugin_environment()  # methods registered in this process, for the worker
        env = {**os.environ, "OMP_NUM_THREADS": str(self.settings.worker_threads), **plugins}
        # Its own name until it is taken; then renamed to the run's log.
        log_path = self.log_dir / f"idle-{os.getpid()}-{next(self._numbers)}.log"
        with open(log_path, "ab") as handle:
            process = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=handle,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env=env)
        return IdleWorker(process, log_path, plugins)

    def fill(self) -> None:
        """Forget idle workers that died (their log stays), start up to `warm_workers`."""
        for worker in [w for w in self.idle if w.process.poll() is not None]:
            self.idle.remove(worker)
            log_event(log, "idle_worker_exited", logging.WARNING, pid=worker.process.pid,
                      code=worker.process.returncode, log=str(worker.log_path))
        while len(self.idle) < self.settings.warm_workers:
            try:
                worker = self._start()
            except OSError as error:  # said once per pass; a later pass retries
                log_event(log, "idle_worker_failed", logging.WARNING, error=str(error))
                return
            self.idle.append(worker)
            log_event(log, "idle_worker_started", pid=worker.process.pid)

    def take(self, run_id: str, log_path: Path) -> subprocess.Popen:
        """A worker training `run_id` (an idle one if any is alive, else a new one); its output
        goes on in `log_path`. Raises OSError when no worker can be started."""
        plugins = plugin_environment()
        while self.idle:
            worker = self.idle.pop(0)
            if worker.plugins != plugins:  # started before a method was registered here
                self._discard(worker)
                continue
            if self._hand_over(worker, run_id, log_path):
                return worker.process
        worker = self._start()
        if not self._hand_over(worker, run_id, log_path):
            raise OSError(f"a new worker exited at once (code {worker.process.poll()}); "
                          f"see {log_path}")
        return worker.process

    @staticmethod
    def _hand_over(worker: IdleWorker, run_id: str, log_path: Path) -> bool:
        """Give the worker its run; False if it has died (while idle, or right now)."""
        if worker.process.poll() is not None:
            return False
        try:
            worker.process.stdin.write(f"{run_id}\n".encode())
            worker.process.stdin.close()
        except OSError:  # BrokenPipeError: it died between poll() and the write
            return False
        with contextlib.suppress(OSError):
            os.replace(worker.log_path, log_path)  # its open handle keeps writing into it
        return True

    def close(self) -> None:
        """Kill every idle worker (nothing to save: none has a run) and reap it."""
        for worker in self.idle:
            self._discard(worker)
        self.idle = []

    @staticmethod
    def _discard(worker: IdleWorker) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=5)
        with contextlib.suppress(OSError):
            worker.log_path.unlink()

