"""Panel views of large layers: time of `GET /api/runs/{id}/view` on a recorded run.

    .venv/bin/python bench/view.py [--rewires 60] [--samples 40]

Records a run straight into a store (no training: SET-sized random rewires, density 0.2,
drop fraction 0.3, a keyframe every 10 rewires) with a ResNet layer4 conv (512 × 512 × 3 × 3,
drawn as 512 × 4608) and a 1000 × 2048 fc, then times the endpoint through the whole app
(routing, reconstruction, binning, JSON) for panels of several sizes:
- random: a random rewire each time, after the mask cache was emptied (the cold case: the
  newest keyframe and up to 9 deltas are read and applied);
- scrub: consecutive rewires, as dragging the scrubber asks for them (one delta from the
  cached neighbour);
- back: the same backwards (one delta undone);
- again: the same rewire asked for a second time (another viewer of a live run, or a page
  without the ETag): the answer is kept.
Target (issue 11): well under 100 ms for a 512 × 4608 panel. Figures are medians and maxima
of one run on this machine, which other work may be loading.
"""
# ruff: noqa: E402

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient

from backend.app import create_app
from backend.settings import Settings
from dst_core.events import delta_payload, matrix_shape
from dst_core.store import RunStore
from dst_core.store.codec import layer_kind

DENSITY, DROP_FRACTION, KEYFRAME_EVERY = 0.2, 0.3, 10
LAYERS = [("layer4.0.conv2.weight", (512, 512, 3, 3)), ("fc.weight", (1000, 2048))]
PANELS = [(256, 1024), (2048, 2048), (128, 128)]  # 2048 × 2048 asks for every row


def record(store: RunStore, rewires: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    run_id = store.create_run({}, "bench view", status="running")["id"]
    store.append_events(run_id, [("meta", 0, {"layers": [
        {"name": name, "shape": list(shape), "matrix": matrix_shape(shape), "density": DENSITY,
         "weight_shape": list(shape), "kind": layer_kind(shape)} for name, shape in LAYERS]})])
    masks = []
    for _, shape in LAYERS:
        numel = int(np.prod(shape))
        mask = np.zeros(numel, dtype=bool)
        mask[rng.choice(numel, int(DENSITY * numel), replace=False)] = True
        masks.append(mask)

    def keyframes(step: int) -> list:
        return [("topology", step, {"layer": name, "index": index, "shape": matrix_shape(shape),
                                    "keyframe": True, "active": int(mask.sum()),
                                    "bits": np.packbits(mask, bitorder="little")})
                for index, ((name, shape), mask) in enumerate(zip(LAYERS, masks, strict=True))]

    store.append_events(run_id, keyframes(0))
    for rewire in range(1, rewires + 1):
        step = rewire * 100
        events = []
        for index, ((name, shape), mask) in enumerate(zip(LAYERS, masks, strict=True)):
            active, inactive = np.flatnonzero(mask), np.flatnonzero(~mask)
            count = int(DROP_FRACTION * active.size)
            removed = np.sort(rng.choice(active, count, replace=False))
            added = np.sort(rng.choice(inactive, count, replace=False))
            mask[removed], mask[added] = False, True
            if rewire % KEYFRAME_EVERY:
                events.append(("topology", step, delta_payload(name, index, shape, added,
                                                               removed, int(mask.sum()))))
        store.append_events(run_id, events or keyframes(step))
    store.set_status(run_id, "completed")
    return run_id


def timed(client: TestClient, url: str) -> float:
    start = time.perf_counter()
    answer = client.get(url)
    elapsed = time.perf_counter() - start
    assert answer.status_code == 200, answer.text
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rewires", type=int, default=60)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        store = RunStore(Path(folder) / "data")
        run_id = record(store, args.rewires)
        print(f"recorded {args.rewires} rewires of {', '.join(n for n, _ in LAYERS)} in "
              f"{time.perf_counter() - started:.1f} s")
        with TestClient(create_app(Settings(data_dir=Path(folder) / "data"))) as client:
            steps = client.get(f"/api/runs/{run_id}/rewires").json()["steps"]
            rewires_ms = [timed(client, f"/api/runs/{run_id}/rewires") for _ in range(20)]
            print(f"GET /rewires: median {statistics.median(rewires_ms):.1f} ms")
            views = client.app.state.layer_views
            rng = random.Random(0)
            print(f"{'layer':<22} {'panel':>10} {'case':>7} {'median ms':>10} {'max ms':>8} "
                  f"{'KB':>7}")
            for index, (name, _) in enumerate(LAYERS):
                for rows, cols in PANELS:
                    base = f"/api/runs/{run_id}/view?layer={index}&rows={rows}&cols={cols}"
                    size = len(client.get(base).content) / 1024
                    cases = {"random": [], "scrub": [], "back": [], "again": []}
                    for _ in range(args.samples):
                        views.chains.cache.clear()  # cold
                        views.answers.clear()
                        step = rng.choice(steps)
                        cases["random"].append(timed(client, f"{base}&step={step}"))
                        cases["again"].append(timed(client, f"{base}&step={step}"))
                    views.answers.clear()
                    middle = steps[len(steps) // 2 - args.samples // 4:]
                    timed(client, f"{base}&step={middle[0]}")
                    for step in middle[1:args.samples // 2 + 1]:
                        cases["scrub"].append(timed(client, f"{base}&step={step}"))
                    for step in reversed(middle[:args.samples // 2]):
                        cases["back"].append(timed(client, f"{base}&step={step}"))
                    for case, values in cases.items():
                        print(f"{name if case == 'random' else '':<22} "
                              f"{f'{rows}x{cols}' if case == 'random' else '':>10} {case:>7} "
                              f"{statistics.median(values):>10.1f} {max(values):>8.1f} "
                              f"{size if case == 'random' else 0:>7.0f}")


if __name__ == "__main__":
    main()
