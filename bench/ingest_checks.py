"""What checking frames against their layer's history costs a writer (issue 30).

    .venv/bin/python bench/ingest_checks.py [--rewires 200]

The 784-1024-1024-10 MLP's layers at density 0.1, SET-sized rewires (30% of each layer's
active connections replaced at random), a keyframe every 10 rewires, stored two ways: through
`RunStore.ingest_events` as a remote writer's batches arrive (base64 on the wire, one batch
per rewire), and through `RunStore.append_events` as the local Recorder hands them over (in
process; its rewire keyframes carry their changes). The frames are built before the clock
starts, so the time is the store's alone: validation, encoding, indexing, SQLite. CPU time
of this process (a busy machine stretches wall time, not this), median of `--repeat` runs;
where the checks exist, the CPU time spent in them (schema.frame_misfit and the keyframes'
bit count) is measured on its own too. Run it from two checkouts (e.g. `git archive HEAD |
tar -x -C /tmp/head`, then run it from there) to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path.cwd()))

from dst_core.events import LOCAL_CHANGES, delta_payload, keyframe_payload, to_wire  # noqa: E402
from dst_core.store import topology_index  # noqa: E402
from dst_core.store.run_store import RunStore  # noqa: E402

CHECKS = ("frame_misfit", "packed_count")  # what topology_index checks a frame with
spent = {"checks": 0.0}


def _timed_check(check):
    def timed_call(*args, **kwargs):
        start = time.process_time()
        try:
            return check(*args, **kwargs)
        finally:
            spent["checks"] += time.process_time() - start
    return timed_call


for _name in CHECKS:
    if hasattr(topology_index, _name):
        setattr(topology_index, _name, _timed_check(getattr(topology_index, _name)))

SHAPES = [(1024, 784), (1024, 1024), (10, 1024)]
DENSITY, REPLACED, KEYFRAME_EVERY = 0.1, 0.3, 10


def frames(rewires: int, seed: int = 0) -> list[list[tuple[str, int, dict]]]:
    """One batch per rewire (the first: meta and keyframes), in process."""
    rng = np.random.default_rng(seed)
    masks = [rng.random(shape) < DENSITY for shape in SHAPES]
    meta = {"layers": [{"name": f"l{i}", "shape": list(s), "matrix": list(s)}
                       for i, s in enumerate(SHAPES)]}
    batches = [[("meta", 0, meta)] + [
        ("topology", 0, keyframe_payload(f"l{i}", i, m.shape, torch.from_numpy(m)))
        for i, m in enumerate(masks)]]
    for rewire in range(1, rewires + 1):
        batch = []
        for index, mask in enumerate(masks):
            flat = mask.reshape(-1)
            on, off = np.flatnonzero(flat), np.flatnonzero(~flat)
            count = int(on.size * REPLACED)
            removed = np.sort(rng.choice(on, count, replace=False))
            added = np.sort(rng.choice(off, count, replace=False))
            flat[removed], flat[added] = False, True
            if rewire % KEYFRAME_EVERY == 0:
                payload = keyframe_payload(f"l{index}", index, mask.shape,
                                           torch.from_numpy(mask), (added, removed))
            else:
                payload = delta_payload(f"l{index}", index, mask.shape, added, removed,
                                        int(flat.sum()))
            batch.append(("topology", rewire * 10, payload))
        batches.append(batch)
    return batches


def wire(batches) -> list[list[dict]]:
    out, seq = [], 2
    for batch in batches:
        events = []
        for event_type, step, payload in batch:
            payload = {k: v for k, v in payload.items() if k != LOCAL_CHANGES}
            events.append({**to_wire(payload), "seq": seq, "step": step, "type": event_type})
            seq += 1
        out.append(events)
    return out


def timed(folder: Path, batches, remote: bool) -> float:
    store = RunStore(folder)
    run_id = store.create_run({}, "bench", status="running")["id"]
    start = time.process_time()
    for batch in batches:
        if remote:
            store.ingest_events(run_id, batch)
        else:
            store.append_events(run_id, batch)
    elapsed = time.process_time() - start
    store.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rewires", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    local = frames(args.rewires)
    remote = wire(local)
    changes = sum(payload.get("added", np.zeros(0)).size for batch in local[1:]
                  for _, _, payload in batch)
    for name, batches, is_remote in (("ingest (remote writer)", remote, True),
                                     ("append (local Recorder)", local, False)):
        times, checks = [], []
        for _ in range(args.repeat):
            spent["checks"] = 0.0
            with tempfile.TemporaryDirectory() as folder:
                times.append(timed(Path(folder), batches, is_remote))
            checks.append(spent["checks"])
        median, in_checks = statistics.median(times), statistics.median(checks)
        print(f"{name}: {args.rewires} rewires × {len(SHAPES)} layers, {changes:,} connections "
              f"grown in deltas: {median:.2f} s CPU ({median / args.rewires * 1000:.1f} ms a "
              f"rewire; runs {', '.join(f'{t:.2f}' for t in times)}); in the frame checks "
              f"{in_checks:.3f} s ({in_checks / median:.1%})")


if __name__ == "__main__":
    main()
