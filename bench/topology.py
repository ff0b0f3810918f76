"""Topology endpoint benchmark on bench/stream.py's 10,000-step run (issue 14: ≤ 200 ms).

    .venv/bin/python bench/topology.py [--quick] [--keep DIR]

The run: the 784-1024-1024-10 MLP's layer shapes at density 0.1, SET-sized rewires (30% of
active connections replaced at random) every 10 steps, a keyframe every 10 rewires: 1,000
rewires per layer, the worst case for cohort history (every position regrows ~30 times).
Measured end to end through the HTTP app (TestClient): the first request of each layer
when nothing prefetched it (it builds its history from the stored frames itself); then the
run view's path: the Topology section's first request (layer 0) builds its layer and
prefetches the others in the background, the time until that is done, the first request per
layer (a random step) after it, and requests at random steps and layers. Medians, p95 and
maxima of one run; nothing is asserted.
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
from dst_core.recording import topology_reader  # noqa: E402
from dst_core.recording.topology_reader import CACHE, PREFETCHER  # noqa: E402


def timed_get(client: TestClient, url: str, params: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    response = client.get(url, params=params)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{url} {params}: {response.status_code} {response.text[:200]}")
    return elapsed, response.json()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2,000 steps, fewer probes")
    parser.add_argument("--keep", type=Path, default=None,
                        help="record the run into DIR once and reuse it on later calls")
    args = parser.parse_args()
    torch.set_num_threads(2)
    total_steps = 2_000 if args.quick else 10_000
    probes = 20 if args.quick else 60
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        marker = folder / f"run-{total_steps}.json"
        if marker.exists():
            run_id, rewires, record_s = json.loads(marker.read_text())
        else:
            run_id, rewires, record_s = record_seek_run(folder, total_steps, interval_steps=10,
                                                        keyframe_every=10)
            marker.write_text(json.dumps([run_id, rewires, record_s]))
        # Loopback Host (the DNS-rebinding check refuses TestClient's "testserver"); no warm
        # worker process competing for the 2 cores.
        app = create_app(Settings(data_dir=folder, warm_workers=0))
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            url = f"/api/runs/{run_id}/topology"
            # Cold: a request that finds no history builds it itself (nothing prefetched).
            CACHE.clear()
            topology_reader.PREFETCH = False
            cold = {}
            for layer in range(3):
                cold[layer], _ = timed_get(client, url, {"layer": layer, "step": total_steps})
            # The run view's path: the Topology section's first request (layer 0, the newest
            # rewire) builds its layer and prefetches the others in the background.
            topology_reader.PREFETCH = True
            CACHE.clear()
            PREFETCHER.forget()
            start = time.perf_counter()
            section_s, _ = timed_get(client, url, {"layer": 0, "step": total_steps})
            PREFETCHER.wait()
            ready_s = time.perf_counter() - start
            opened = {}
            for layer in range(3):
                step = int(rng.integers(0, total_steps + 1))
                opened[layer], _ = timed_get(client, url, {"layer": layer, "step": step})
            warm, sizes = [], []
            for _ in range(probes):
                params = {"layer": int(rng.integers(0, 3)),
                          "step": int(rng.integers(0, total_steps + 1))}
                elapsed, body = timed_get(client, url, params)
                warm.append(elapsed)
                sizes.append(len(json.dumps(body)))
            newest = [timed_get(client, url, {"layer": 1, "step": total_steps})[0]
                      for _ in range(5)]
            series_s, _ = timed_get(client, f"{url}/series", {"layer": 1, "points": 200})
            model_s, _ = timed_get(client, f"{url}/model", {"step": total_steps // 2})
            cache_mb = CACHE.total_bytes() / 1e6
    result = {
        "steps": total_steps, "rewires": rewires, "record_s": record_s,
        "cold_first_request_s": {str(layer): seconds for layer, seconds in cold.items()},
        "section_first_request_s": section_s, "open_to_ready_s": ready_s,
        "first_request_after_open_ms": {str(layer): 1e3 * seconds
                                        for layer, seconds in opened.items()},
        "warm_median_ms": 1e3 * statistics.median(warm),
        "warm_p95_ms": 1e3 * float(np.percentile(warm, 95)), "warm_max_ms": 1e3 * max(warm),
        "newest_rewire_median_ms": 1e3 * statistics.median(newest),
        "response_kb_median": statistics.median(sizes) / 1e3,
        "series_200_points_ms": 1e3 * series_s, "model_ms": 1e3 * model_s,
        "cache_mb": cache_mb,
    }
    print(f"topology: {total_steps:,}-step run, {rewires} rewires per layer (written in "
          f"{record_s:.1f} s); cold first request per layer (builds its history): "
          + ", ".join(f"layer {layer} {seconds:.2f} s" for layer, seconds in cold.items())
          + f"; the section's first request {section_s:.2f} s, every layer's history ready "
          f"{ready_s:.2f} s after it was sent, then the first request per "
          "layer " + ", ".join(f"{layer}: {1e3 * seconds:.0f} ms"
                               for layer, seconds in opened.items())
          + f"; then {probes} requests at random layers and steps: median "
          f"{result['warm_median_ms']:.0f} ms, p95 {result['warm_p95_ms']:.0f} ms, max "
          f"{result['warm_max_ms']:.0f} ms "
          f"(target ≤ 200 ms); newest rewire {result['newest_rewire_median_ms']:.0f} ms; "
          f"series of 200 rewires {result['series_200_points_ms']:.0f} ms; model summary "
          f"{result['model_ms']:.0f} ms; response {result['response_kb_median']:.0f} kB; "
          f"cached histories {cache_mb:.0f} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
