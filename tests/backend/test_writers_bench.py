"""bench/writers.py's core on a tiny scale: two remote writers into one real server lose no
event, and the figures it prints come from traffic that actually crossed the wire."""

from __future__ import annotations

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
    # The window saw real batches: events, bytes and round trips, not just the final drain.
    assert result.events > 0 and result.body_bytes > 0 and result.latencies_s
    assert result.rewires > 0
    assert result.server_cpu_s >= 0 and result.server_peak_rss_bytes > 0
