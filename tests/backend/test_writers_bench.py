"""bench/writers.py's core on a tiny scale: two remote writers into one real server lose no
event, and the figures it prints come from traffic that actually crossed the wire."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

from bench.writers import WriterOptions, run_round


def test_two_tiny_writers_into_one_server_lose_nothing(tmp_path):
    options = WriterOptions(widths=[64, 32, 10], batch_size=4, interval_steps=2,
                            duration_s=1.0, keyframe_every=3)
    result = run_round(2, options, tmp_path)
    assert len(result.emitted) == 2  # two runs, one per writer
    assert result.lost == 0
    assert result.max_seq_ok
    assert result.stored == result.emitted
    assert all(count > 0 for count in result.emitted.values())
    # What the round reports, recounted from the data folder its server wrote.
    with closing(sqlite3.connect(f"file:{tmp_path / 'data-2' / 'runs.sqlite3'}?mode=ro",
                                 uri=True)) as db:
        def count(where: str) -> int:
            return sum(db.execute(f"SELECT COUNT(*) FROM events WHERE run_id = ? AND {where}",
                                  (run_id,)).fetchone()[0] for run_id in result.emitted)

        stored_rewires = count("type = 'rewire'")
        stored_events, before_training = count("1"), count("step = 0")
    assert result.rewires == stored_rewires > 0
    # The window counts every batch acknowledged after the writers started training: all the
    # training's events (steps from 1) and perhaps some of the start's (step 0: status, meta
    # and keyframes, sent before or after the window opened), no more than were stored.
    assert stored_events - before_training <= result.events <= stored_events
    assert len(result.latencies_s) <= result.events  # one round trip per batch of ≥ 1 event
    assert result.body_bytes > 30 * result.events  # every event's JSON has seq, step and type
    # The server parsed and committed those batches in the window: CPU time it spent then
    # (a tick is 10 ms), at most all the cores for the whole window.
    assert 0 < result.server_cpu_s <= result.window_s * os.cpu_count()
    # Its high-water mark in bytes: more than the 32 MiB any Python server with SQLite and
    # FastAPI loaded holds (VmHWM's kB unconverted would be 1/1024 of it), less than the machine.
    assert 32 * 2**20 < result.server_peak_rss_bytes < os.sysconf("SC_PHYS_PAGES") * os.sysconf(
        "SC_PAGE_SIZE")
