"""One training run in its own process: `python -m backend.worker --data-dir D --run-id ID`.

Without `--run-id` it imports everything first, then reads the run's id from stdin: the
server's warm workers (backend/worker_pool.py). The server starts it as a direct child; it
dies with the server (PR_SET_PDEATHSIG plus a parent watchdog), stops cooperatively on
SIGTERM within one step, and records everything through the same Recorder a user's script
would use.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time


def die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us if the parent dies
    except OSError:
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(0.5)

    if os.getppid() != parent_pid:
        os._exit(3)
    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.worker")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--run-id", default=None,
                        help="the run to train; left out, one line of stdin names it (the "
                             "server's warm workers wait there with torch already imported)")
    parser.add_argument("--parent-pid", type=int, default=os.getppid())
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)

    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())

    # Everything a run needs is imported before the run is known: a warm worker waits with
    # it loaded. torch.optim imports torch._dynamo lazily (seconds, not interruptible);
    # sklearn.datasets is the digits task's loader.
    import sklearn.datasets  # noqa: F401
    import torch
    import torch._dynamo  # noqa: F401

    from dst_core.plugins import load_plugins
    from dst_core.recording import Recorder
    from dst_core.recording.recorder import run_info
    from dst_core.recording.training import Diverged, train
    from dst_core.store import FINAL_STATUSES
    from dst_core.store.config import RunConfig

    torch.set_num_threads(args.threads)
    if args.run_id is None:
        args.run_id = sys.stdin.readline().strip()
        if not args.run_id:  # the server let this idle worker go
            return 0
    recorder = Recorder(args.data_dir, run_id=args.run_id)
    try:
        load_plugins()  # the server's user-registered methods ($SPARSESCOPE_PLUGINS)
    except ValueError as error:
        recorder.finish("failed", error=str(error))
        return 1
    run = recorder.store.get_run(args.run_id)
    if run["status"] in FINAL_STATUSES or stop_requested.is_set():
        recorder.finish("stopped")
        return 0
    config = RunConfig.model_validate(run["config"])
    recorder.store.set_info(args.run_id, {**run.get("info", {}), **run_info("worker", config.seed)})
    recorder.start()  # status running + heartbeat thread
    try:
        outcome = train(config, recorder, should_stop=stop_requested.is_set)
    except Exception as error:  # the run fails, the worker reports why and exits cleanly
        # Diverged says it all ("diverged: loss became nan at step …"); others need their type.
        reason = str(error) if isinstance(error, Diverged) else f"{type(error).__name__}: {error}"
        recorder.finish("failed", error=reason)
        print(f"run {args.run_id} failed: {error}", file=sys.stderr)
        return 1
    recorder.finish(outcome)
    return 0


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is committed by now; the interpreter's teardown with torch loaded would only
    # delay every stop and shutdown.
    os._exit(exit_code)
