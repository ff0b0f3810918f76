"""Concurrent writers on one data folder: ranks, a sweep of scripts, the CLI and the server
may all open, create and write runs at the same moment; none may see `database is locked`.

Eight processes start together (a barrier) on a fresh folder, each opens the store (the
first ones race to create the file and its schema), creates runs and appends events. The
race is timing-dependent, so it is repeated on several fresh folders.
"""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

from dst_core.store.run_store import RunStore

WRITERS = 8
ROUNDS = 4
RUNS_PER_WRITER = 2
BATCHES = 5
EVENTS_PER_BATCH = 4


def _writer(folder: str, barrier, failures, writer: int) -> None:
    try:
        barrier.wait(timeout=60)
        store = RunStore(folder)  # the first opens race to create the file and the schema
        for run in range(RUNS_PER_WRITER):
            run_id = store.create_run({}, f"writer {writer} run {run}", status="running",
                                      info={"writer": "script"})["id"]
            for batch in range(BATCHES):
                events = [("metrics", batch * EVENTS_PER_BATCH + event, {"loss": 1.0})
                          for event in range(EVENTS_PER_BATCH)]
                store.append_events(run_id, events, {"steps": batch})
            store.set_status(run_id, "completed", step=BATCHES * EVENTS_PER_BATCH)
        store.close()
    except BaseException:
        failures.put(f"writer {writer}: {traceback.format_exc()}")


def test_eight_processes_create_and_write_runs_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # the store needs no fresh interpreter
    for round_index in range(ROUNDS):
        folder = tmp_path / f"fresh-{round_index}"
        barrier, failures = context.Barrier(WRITERS), context.Queue()
        writers = [context.Process(target=_writer, args=(str(folder), barrier, failures, w))
                   for w in range(WRITERS)]
        for process in writers:
            process.start()
        for process in writers:
            process.join(timeout=120)
        errors = [failures.get() for _ in range(failures.qsize())] if not failures.empty() \
            else []
        assert not errors, "\n".join(errors)
        assert all(process.exitcode == 0 for process in writers)
        store = RunStore(folder)
        runs = store.list_runs()
        assert len(runs) == WRITERS * RUNS_PER_WRITER
        for run in runs:
            assert run["status"] == "completed"
            metrics = [event for event in store.read_events(run["id"], limit=1000)
                       if event["type"] == "metrics"]
            assert len(metrics) == BATCHES * EVENTS_PER_BATCH, run["name"]
            seqs = [event["seq"] for event in store.read_events(run["id"], limit=1000)]
            assert seqs == sorted(set(seqs))  # no seq reused or lost
        store.close()
