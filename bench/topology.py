"""Topology endpoint benchmark on bench/stream.py's 10,000-step run (issue 14: ≤ 200 ms).

    .venv/bin/python bench/topology.py [--quick] [--keep DIR]

The run: the 784-1024-1024-10 MLP's layer shapes at density 0.1, SET-sized rewires (30% of
active connections replaced at random) every 10 steps, a keyframe every 10 rewires: 1,000
rewires per layer, the worst case for cohort history (every position regrows ~30 times).
Recorded through the Recorder, so the cohort index is stored with the frames; recorded once
more with indexing switched off, for the writer's cost. Measured end to end through the HTTP
app (TestClient): cold requests (every in-process cache emptied before each one: what the
first request after a server start costs) at random layers and steps and at the newest
rewire; then warm requests; the series and the model summary; and, for a run stored without
an index (older or imported), its first request per layer (a replay of its frames, stored
afterwards) and the next cold one. Medians, p95 and maxima of one run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402

from backend.app import create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402
from bench.stream import record_seek_run  # noqa: E402
from dst_core.store.run_store import RunStore  # noqa: E402
from dst_core.store.topology_index import IndexWriter  # noqa: E402


def timed_get(client: TestClient, url: str, params: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    response = client.get(url, params=params)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{url} {params}: {response.status_code} {response.text[:200]}")
    return elapsed, response.json()


def cold_get(client: TestClient, url: str, params: dict) -> tuple[float, dict]:
    client.app.state.topology.cache.clear()
    client.app.state.layer_views.chains.cache.clear()  # rebuilt masks and decoded deltas
    return timed_get(client, url, params)


def record(folder: Path, total_steps: int, indexed: bool) -> tuple[str, int, float]:
    marker = folder / f"run-{total_steps}-{'indexed' if indexed else 'plain'}.json"
    if marker.exists():
        return tuple(json.loads(marker.read_text()))
    original = IndexWriter.take
    if not indexed:
        IndexWriter.take = lambda *args, **kwargs: None
    try:
        found = record_seek_run(folder, total_steps, interval_steps=10, keyframe_every=10)
    finally:
        IndexWriter.take = original
    marker.write_text(json.dumps(found))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2,000 steps, fewer probes")
    parser.add_argument("--keep", type=Path, default=None,
                        help="record the runs into DIR once and reuse them on later calls")
    args = parser.parse_args()
    torch.set_num_threads(2)
    total_steps = 2_000 if args.quick else 10_000
    probes = 12 if args.quick else 30
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        plain_id, _, plain_s = record(folder, total_steps, indexed=False)
        run_id, rewires, record_s = record(folder, total_steps, indexed=True)
        index_mb = RunStore(folder).db.execute(
            "SELECT COALESCE(SUM(LENGTH(blob) + LENGTH(header)), 0) FROM topology_index "
            "WHERE run_id = ?", (run_id,)).fetchone()[0] / 1e6
        frames_mb = RunStore(folder).db.execute(
            "SELECT SUM(LENGTH(blob) + LENGTH(payload)) FROM events WHERE run_id = ?",
            (run_id,)).fetchone()[0] / 1e6
        # Loopback Host (the DNS-rebinding check refuses TestClient's "testserver"); no warm
        # worker process competing for the 2 cores.
        app = create_app(Settings(data_dir=folder, warm_workers=0))
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            url = f"/api/runs/{run_id}/topology"
            cold, sizes = [], []
            for _ in range(probes):
                params = {"layer": int(rng.integers(0, 3)),
                          "step": int(rng.integers(0, total_steps + 1))}
                elapsed, body = cold_get(client, url, params)
                cold.append(elapsed)
                sizes.append(len(json.dumps(body)))
            newest = [cold_get(client, url, {"layer": layer, "step": total_steps})[0]
                      for layer in (0, 1, 2)]
            warm = []
            for _ in range(probes):
                params = {"layer": int(rng.integers(0, 3)),
                          "step": int(rng.integers(0, total_steps + 1))}
                warm.append(timed_get(client, url, params)[0])
            series_s, _ = cold_get(client, f"{url}/series", {"layer": 1, "points": 200})
            model_s, _ = cold_get(client, f"{url}/model", {"step": total_steps // 2})
            cache_mb = client.app.state.topology.cache.total_bytes() / 1e6
            # A run stored without an index: its first request per layer replays its frames
            # (and stores the index: taken out again, so a kept folder measures the same).
            with client.app.state.store._write() as db:
                db.execute("DELETE FROM topology_index WHERE run_id = ?", (plain_id,))
            plain_url = f"/api/runs/{plain_id}/topology"
            replay = {layer: cold_get(client, plain_url, {"layer": layer, "step": total_steps})[0]
                      for layer in range(3)}
            after = {layer: cold_get(client, plain_url, {"layer": layer, "step": total_steps})[0]
                     for layer in range(3)}
    result = {
        "steps": total_steps, "rewires": rewires,
        "record_s": record_s, "record_without_index_s": plain_s,
        "index_mb": index_mb, "frames_mb": frames_mb,
        "cold_median_ms": 1e3 * statistics.median(cold),
        "cold_p95_ms": 1e3 * float(np.percentile(cold, 95)), "cold_max_ms": 1e3 * max(cold),
        "cold_newest_ms": [1e3 * seconds for seconds in newest],
        "warm_median_ms": 1e3 * statistics.median(warm),
        "warm_max_ms": 1e3 * max(warm),
        "response_kb_median": statistics.median(sizes) / 1e3,
        "series_200_points_cold_ms": 1e3 * series_s, "model_cold_ms": 1e3 * model_s,
        "cache_mb": cache_mb,
        "unindexed_first_request_s": {str(layer): s for layer, s in replay.items()},
        "unindexed_after_ms": {str(layer): 1e3 * s for layer, s in after.items()},
    }
    print(f"topology: {total_steps:,}-step run, {rewires} rewires per layer; written in "
          f"{record_s:.1f} s with the index, {plain_s:.1f} s without; index "
          f"{index_mb:.0f} MB beside {frames_mb:.0f} MB of events. {probes} cold requests "
          f"(nothing cached) at random layers and steps: median "
          f"{result['cold_median_ms']:.0f} ms, p95 {result['cold_p95_ms']:.0f} ms, max "
          f"{result['cold_max_ms']:.0f} ms (target ≤ 200 ms); newest rewire cold "
          + ", ".join(f"{ms:.0f}" for ms in result["cold_newest_ms"])
          + f" ms; warm median {result['warm_median_ms']:.0f} ms, max "
          f"{result['warm_max_ms']:.0f} ms; series of 200 rewires cold "
          f"{result['series_200_points_cold_ms']:.0f} ms; model summary cold "
          f"{result['model_cold_ms']:.0f} ms; response {result['response_kb_median']:.0f} kB; "
          f"a run stored without an index: first request per layer "
          + ", ".join(f"{s:.2f} s" for s in replay.values())
          + " (replays its frames and stores the index), then cold "
          + ", ".join(f"{ms:.0f} ms" for ms in result["unindexed_after_ms"].values()))
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
