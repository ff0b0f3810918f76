"""Churn and overlap endpoint benchmark (issue 24: a churn request ≤ 200 ms at any step).

    .venv/bin/python bench/churn_overlap.py [--quick] [--keep DIR]

Churn: bench/stream.py's recorded 10,000-step run (the 784-1024-1024-10 MLP's layer shapes at
density 0.1, SET-sized rewires replacing 30% of the active connections at random, a keyframe
every 10 rewires), rewired every 100 steps (100 rewires a layer, the issue's run) and, the
worst case for the growth history a cold request counts, every 10 steps (1,000 rewires, the
run of bench/topology.py). `GET /churn` of the 1024 × 1024 layer at its first, middle and
last rewire: cold (every in-process cache emptied before the request: the first request after
a server start) and warm (asked again at a neighbouring step: the growth total at the segment
end before it is cached), then 20 cold requests at random steps.

Overlap: N runs of one 4096 × 4096 layer (16.7 M connections, density 0.1, a keyframe, then
SET-sized rewires every 100 steps, each run's steps offset so that the series grid is the
union of N different step sets). `GET /api/compare/overlap` of 2 and of 16 runs at the newest
step, cold (mask cache emptied) and warm (masks cached, the answer not), with the peak of
Python-tracked memory (tracemalloc: numpy's arrays included) during the request; and
`/overlap/series` at 64 points, cold. Every request goes through the HTTP app (TestClient).
Medians and maxima of one run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402

from backend.app import create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402
from bench.stream import DENSITY, DROP_FRACTION, record_seek_run  # noqa: E402
from dst_core.events import delta_payload, keyframe_payload  # noqa: E402
from dst_core.recording import Recorder  # noqa: E402
from dst_core.store.cohorts import LayerIndexer  # noqa: E402
from dst_core.store.run_store import RunStore  # noqa: E402

BIG = (4096, 4096)


def empty_caches(client: TestClient) -> None:
    state = client.app.state
    state.topology.cache.clear()
    state.layer_views.chains.cache.clear()  # rebuilt masks and decoded deltas
    state.churn.totals.clear()
    state.churn.answers.clear()
    state.overlap.answers.clear()


def timed_get(client: TestClient, url: str, params: dict,
              memory: bool = False) -> tuple[float, dict, float]:
    """(seconds, answer, peak MB tracked during the request when `memory`)."""
    if memory:
        tracemalloc.start()
    start = time.perf_counter()
    response = client.get(url, params=params)
    elapsed = time.perf_counter() - start
    peak = 0.0
    if memory:
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    if response.status_code != 200:
        raise RuntimeError(f"{url} {params}: {response.status_code} {response.text[:200]}")
    return elapsed, response.json(), peak


def recorded(folder: Path, name: str, make) -> object:
    """What `make()` recorded into `folder`, recorded once (a --keep folder reuses it)."""
    marker = folder / f"{name}.json"
    if marker.exists():
        return json.loads(marker.read_text())
    found = make()
    marker.write_text(json.dumps(found))
    return found


def record_big_run(folder: Path, seed: int, rewires: int, offset: int) -> str:
    """One run of a single 4096 × 4096 layer: a keyframe at step 0, then `rewires` SET-sized
    random rewires at steps offset + 100·r (a keyframe every 10)."""
    rng = np.random.default_rng(100 + seed)
    numel = BIG[0] * BIG[1]
    mask = np.zeros(numel, dtype=bool)
    mask[rng.choice(numel, int(DENSITY * numel), replace=False)] = True
    recorder = Recorder(folder, name=f"big {seed}", flush_interval_s=1.0, heartbeat_s=0)
    recorder.emit("meta", 0, {"layers": [{"name": "big.weight", "shape": list(BIG),
                                          "matrix": list(BIG), "density": DENSITY}]})
    recorder.emit("topology", 0, keyframe_payload("big.weight", 0, BIG,
                                                  torch.from_numpy(mask.reshape(BIG))))
    for rewire in range(1, rewires + 1):
        active = np.flatnonzero(mask)
        count = int(DROP_FRACTION * active.size)
        removed = np.sort(rng.choice(active, count, replace=False))
        added = np.flatnonzero(~mask)
        added = np.sort(added[rng.choice(added.size, count, replace=False)])
        mask[removed], mask[added] = False, True
        step = offset + 100 * rewire
        if rewire % 10 == 0:
            payload = keyframe_payload("big.weight", 0, BIG, torch.from_numpy(mask.reshape(BIG)))
        else:
            payload = delta_payload("big.weight", 0, BIG, added, removed, int(mask.sum()))
        recorder.emit("topology", step, payload)
    recorder.finish("completed")
    return recorder.run_id


def index_mb(folder: Path, run_id: str) -> float:
    return RunStore(folder).db.execute(
        "SELECT COALESCE(SUM(LENGTH(blob) + LENGTH(header)), 0) FROM topology_index "
        "WHERE run_id = ?", (run_id,)).fetchone()[0] / 1e6


def record_without_growth_counts(folder: Path, total_steps: int, interval: int) -> list:
    """The same run written by an index without growth counts (format 3's checkpoints)."""
    original = LayerIndexer.__init__

    def without(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.grown_total = None

    LayerIndexer.__init__ = without
    try:
        return list(record_seek_run(folder, total_steps, interval, keyframe_every=10))
    finally:
        LayerIndexer.__init__ = original


def indexer_cpu_ms(counts: bool, rewires: int = 128, rounds: int = 3) -> dict:
    """Process CPU time the writer's indexers spend on the MLP's three layers per rewire (SET
    replacing 30% of the active connections) and per segment cut, with or without the growth
    counts: best of `rounds`, so other jobs on the machine count as little as they can."""
    from bench.stream import random_mask, rewire_indices
    from dst_core.store import cohorts

    rng = np.random.default_rng(4)
    shapes = [(1024, 784), (1024, 1024), (10, 1024)]
    masks = [random_mask(*shape, rng) for shape in shapes]
    initial = [mask.copy() for mask in masks]
    changes = []
    for _ in range(rewires):
        step_changes = []
        for mask in masks:
            added, removed = rewire_indices(mask, rng)
            mask[removed], mask[added] = False, True
            step_changes.append((added, removed, int(mask.sum())))
        changes.append(step_changes)
    take, cut_with, cut_without = [], [], []
    for _ in range(rounds):
        indexers = [LayerIndexer(mask, shape, 0, 1) for mask, shape in zip(initial, shapes,
                                                                              strict=True)]
        if not counts:
            for indexer in indexers:
                indexer.grown_total = None
        take_s, cuts = 0.0, {True: [], False: []}
        for rewire, step_changes in enumerate(changes, start=1):
            started = time.process_time()
            for indexer, (added, removed, active) in zip(indexers, step_changes, strict=True):
                indexer.take_changes(rewire, rewire + 1, added.astype(np.uint32),
                                     removed.astype(np.uint32), active, checked=True)
            take_s += time.process_time() - started
            if indexers[0].due:
                holds = indexers[0]._holds_counts(indexers[0].pending)
                started = time.process_time()
                for indexer in indexers:
                    indexer.cut()
                cuts[holds].append(time.process_time() - started)
        take.append(1e3 * take_s / rewires)
        cut_without.append(1e3 * statistics.mean(cuts[False]))
        if cuts[True]:
            cut_with.append(1e3 * statistics.mean(cuts[True]))
    return {"take_ms_per_rewire": min(take),
            "cut_ms_segment_without_counts": min(cut_without),
            "cut_ms_segment_with_counts": min(cut_with) if cut_with else None,
            "segments_per_counts": cohorts.GROWN_EVERY}


def churn_figures(client: TestClient, run_id: str, total_steps: int, interval: int,
                  probes: int, rng: np.random.Generator) -> dict:
    url = f"/api/runs/{run_id}/churn"
    layer = "3.weight"
    figures: dict = {}
    for label, step in (("first", 0), ("middle", total_steps // 2),
                        ("last", total_steps)):
        empty_caches(client)
        cold, answer, _ = timed_get(client, url, {"layer": layer, "step": step})
        # the next rewire over (scrubbing): its growth total's segment end is cached now
        nearby = min(total_steps, step + interval) if step < total_steps else step - interval
        warm, _, _ = timed_get(client, url, {"layer": layer, "step": nearby})
        again, _, _ = timed_get(client, url, {"layer": layer, "step": step})
        figures[label] = {"step": step, "rewire": answer["rewire"], "cold_ms": 1e3 * cold,
                          "warm_ms": 1e3 * warm, "repeat_ms": 1e3 * again,
                          "bytes": len(json.dumps(answer))}
    colds = []
    for _ in range(probes):
        empty_caches(client)
        colds.append(timed_get(client, url, {"layer": int(rng.integers(0, 3)),
                                             "step": int(rng.integers(0, total_steps + 1))})[0])
    figures["random_cold_ms"] = {"median": 1e3 * statistics.median(colds),
                                 "max": 1e3 * max(colds)}
    return figures


def overlap_figures(client: TestClient, ids: list[str]) -> dict:
    params = {"runs": ",".join(ids), "layer": "big.weight"}
    empty_caches(client)
    cold, answer, cold_peak = timed_get(client, "/api/compare/overlap", params, memory=True)
    client.app.state.overlap.answers.clear()
    warm, _, warm_peak = timed_get(client, "/api/compare/overlap", params, memory=True)
    empty_caches(client)
    series, found, series_peak = timed_get(client, "/api/compare/overlap/series",
                                           {**params, "points": 64}, memory=True)
    return {"runs": len(ids), "cold_ms": 1e3 * cold, "cold_peak_mb": cold_peak,
            "warm_ms": 1e3 * warm, "warm_peak_mb": warm_peak,
            "series_ms": 1e3 * series, "series_points": len(found["steps"]),
            "series_peak_mb": series_peak, "jaccard_01": answer["jaccard"][0][1],
            "random_01": answer["random_jaccard"][0][1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true",
                        help="2,000 steps, 4 big runs of 10 rewires, fewer probes")
    parser.add_argument("--keep", type=Path, default=None,
                        help="record the runs into DIR once and reuse them on later calls")
    args = parser.parse_args()
    torch.set_num_threads(2)
    total_steps = 2_000 if args.quick else 10_000
    probes = 6 if args.quick else 20
    big_runs, big_rewires = (4, 10) if args.quick else (16, 20)
    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        results: dict = {}
        intervals = (100,) if args.quick else (100, 10)
        runs = {interval: recorded(folder, f"churn-{total_steps}-{interval}",
                                   lambda interval=interval: record_seek_run(
                                       folder, total_steps, interval, keyframe_every=10))
                for interval in intervals}
        plain = recorded(folder, f"churn-{total_steps}-{min(intervals)}-without-counts",
                         lambda: record_without_growth_counts(folder, total_steps, min(intervals)))
        # what the growth counts at the checkpoints cost the writer (the run with most rewires)
        results["writer CPU, the MLP's 3 layers, with growth counts"] = indexer_cpu_ms(True)
        results["writer CPU, the MLP's 3 layers, without"] = indexer_cpu_ms(False)
        results[f"writing the run rewired every {min(intervals)} steps"] = {
            "record_s_with": runs[min(intervals)][2], "record_s_without": plain[2],
            "index_mb_with": index_mb(folder, runs[min(intervals)][0]),
            "index_mb_without": index_mb(folder, plain[0])}
        started = time.perf_counter()
        big = recorded(folder, f"big-{big_runs}-{big_rewires}", lambda: [
            record_big_run(folder, seed, big_rewires, offset=seed) for seed in range(big_runs)])
        big_record_s = time.perf_counter() - started
        app = create_app(Settings(data_dir=folder, warm_workers=0))
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            for interval, (run_id, rewires, _) in runs.items():
                results[f"churn, rewired every {interval} steps ({rewires} rewires)"] = \
                    churn_figures(client, run_id, total_steps, interval, probes, rng)
            pair = [run_ids for run_ids in (big[:2], big)]
            results["overlap, 4096 × 4096"] = [overlap_figures(client, ids) for ids in pair]
        results["big runs recorded in s (0 when reused)"] = big_record_s
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
