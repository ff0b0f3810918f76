"""The run store, its codec and reader: exact masks back, migrations, two processes, README."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dst_core import SparseDriver
from dst_core.events import delta_payload, keyframe_payload, to_wire
from dst_core.recording import Recorder
from dst_core.rewire import mask_level_methods
from dst_core.store import RunReader, RunStore, codec
from dst_core.store.run_store import SCHEMA_VERSION, dumps

REPO = Path(__file__).resolve().parents[2]


def test_keyframe_codec_round_trip_and_size():
    generator = np.random.default_rng(0)
    mask = generator.random(256 * 256) < 0.1
    packed = np.packbits(mask, bitorder="little").tobytes()
    blob = codec.encode_keyframe(packed)
    assert len(blob) <= len(packed) + 1  # never worse than packed bits (1/8 of bool bytes)
    assert codec.decode_keyframe(blob, mask.size) == packed


@pytest.mark.parametrize(("kind", "at_most"), [("random 10%", 0.5), ("dense", 0.01),
                                               ("rows on or off", 0.01), ("99% sparse", 0.13)])
def test_keyframes_of_real_models_masks_compress(kind, at_most):
    """Unstructured masks squeeze to about their entropy; the runs real models have (a dense
    layer, whole output channels pruned, a very sparse layer) to far less than packed bits."""
    rng = np.random.default_rng(1)
    rows, cols = 512, 1024
    mask = {"random 10%": lambda: rng.random(rows * cols) < 0.1,
            "dense": lambda: np.ones(rows * cols, bool),
            "rows on or off": lambda: np.repeat(rng.random(rows) < 0.5, cols),
            "99% sparse": lambda: rng.random(rows * cols) < 0.01}[kind]()
    packed = np.packbits(mask, bitorder="little").tobytes()
    blob = codec.encode_keyframe(packed)
    assert len(blob) <= at_most * len(packed)
    assert codec.decode_keyframe(blob, mask.size) == packed


@pytest.mark.parametrize("count", [0, 1, 7, 5000])
def test_delta_codec_round_trip(count):
    generator = np.random.default_rng(count)
    numel = 1024 * 1024
    added = np.sort(generator.choice(numel, count, replace=False)).astype("<u4")
    removed = np.sort(generator.choice(numel, count // 2, replace=False)).astype("<u4")
    blob = codec.encode_delta(added, removed)
    got_added, got_removed = codec.decode_delta(blob, numel)
    assert np.array_equal(got_added, added) and np.array_equal(got_removed, removed)
    if count >= 5000:
        assert len(blob) <= 4 * (added.size + removed.size)


def test_in_process_and_wire_payloads_store_the_same_blob():
    """Payloads hold numpy arrays in process and base64 text on the wire; both store alike."""
    mask = torch.rand(30, 70, generator=torch.Generator().manual_seed(0)) < 0.2
    for payload in (keyframe_payload("w", 0, (30, 70), mask),
                    delta_payload("w", 0, (30, 70), torch.tensor([3, 99, 2000]),
                                  torch.tensor([5, 6]), 420)):
        wire = to_wire(payload)
        assert all(isinstance(value, str) for key, value in wire.items()
                   if key in ("bits", "added", "removed"))
        assert codec.payload_to_stored(payload) == codec.payload_to_stored(wire)
        assert json.loads(dumps(payload)) == wire  # the store's JSON carries the wire form


def test_deltas_stored_by_older_versions_still_decode():
    """Older runs zlib'd all four byte planes (tag ZLIB), then the three high ones (SPLIT)."""
    import struct
    import zlib

    added = np.array([3, 10, 70_000, 900_000], dtype="<u4")
    removed = np.array([5, 6], dtype="<u4")
    gaps = np.concatenate([np.diff(added, prepend=0), np.diff(removed, prepend=0)]).astype("<u4")
    planes = gaps.view(np.uint8).reshape(-1, 4).T
    legacy = struct.pack("<II", 4, 2) + bytes([codec.ZLIB]) + zlib.compress(planes.tobytes())
    split = (struct.pack("<II", 4, 2) + bytes([codec.SPLIT]) + planes[0].tobytes()
             + zlib.compress(planes[1:].tobytes()))
    for blob in (legacy, split):
        got_added, got_removed = codec.decode_delta(blob, 1 << 20)
        assert np.array_equal(got_added, added) and np.array_equal(got_removed, removed)
    assert codec.encode_delta(added, removed)[8] == codec.PLANES
    assert np.array_equal(codec.decode_delta(codec.encode_delta(added, removed), 1 << 20)[0], added)


@pytest.mark.parametrize(("largest_gap", "high"), [(0, 0), (255, 0), (256, 1), (65_535, 1),
                                                   (65_536, 2), (2**24, 3), (2**32 - 2, 3)])
def test_a_delta_stores_only_the_high_byte_planes_its_gaps_use(largest_gap, high):
    added = np.array([1, 1 + largest_gap], dtype="<u4") if largest_gap else np.array([1], "<u4")
    removed = np.array([0], dtype="<u4")
    blob = codec.encode_delta(added, removed)
    total = added.size + removed.size
    assert (blob[8], blob[9]) == (codec.PLANES, high)
    if high == 0:
        assert len(blob) == 10 + total  # the low plane alone, nothing zlib'd
    got_added, got_removed = codec.decode_delta(blob, 2**32)
    assert got_added.tolist() == added.tolist() and got_removed.tolist() == [0]
    with pytest.raises(codec.FrameError):
        codec.decode_delta(blob + b"\0", 2**32)  # trailing bytes
    with pytest.raises(codec.FrameError):
        codec.decode_delta(blob[:9] + bytes([4]) + blob[10:], 2**32)  # more planes than exist


@pytest.mark.parametrize("indices", [[5, 3], [3, 3], [0, 7, 7], [1, 2, 1000], [2**31, 5, 2**31 + 9]])
def test_a_delta_that_is_not_ascending_and_distinct_is_refused(indices):
    """The store checks a delta's lists from their own gaps: a step down wraps round and is
    caught by the gaps' sum, a repeat by a zero gap, an index past the layer by its end."""
    payload = delta_payload("w", 0, (10, 100), np.array(indices), np.array([], int), 3)
    with pytest.raises(codec.FrameError, match="sorted distinct"):
        codec.payload_to_stored(payload)
    fine = delta_payload("w", 0, (10, 100), np.array([0, 7, 999]), np.array([3]), 3)
    header, blob = codec.payload_to_stored(fine)
    added, removed = codec.decode_delta(blob, 1000)
    assert added.tolist() == [0, 7, 999] and removed.tolist() == [3]


def test_corrupted_frames_are_rejected():
    added = np.arange(0, 1000, 3, dtype="<u4")
    blob = codec.encode_delta(added, added[:5])
    with pytest.raises(codec.FrameError):
        codec.decode_delta(blob[:-10], 1000)  # truncated
    with pytest.raises(codec.FrameError):
        codec.decode_delta(blob[:20], 1000)  # truncated inside the low plane
    with pytest.raises(codec.FrameError):
        codec.decode_delta(blob, 500)  # indices outside the layer
    with pytest.raises(codec.FrameError):
        codec.decode_delta(b"\xff\xff\xff\x7f\x00\x00\x00\x00\x01x", 1000)  # absurd count
    bomb = bytes([codec.ZLIB]) + __import__("zlib").compress(b"\0" * 10_000_000)
    with pytest.raises(codec.FrameError):
        codec.decode_keyframe(bomb, 64)  # stops at the shape's size, never inflates it all
    with pytest.raises(codec.FrameError):
        codec.frame_numel([1 << 20, 1 << 20])


def _train_loop(tmp_path, method="set", steps=120, keyframe_every=3):
    """A user's own loop with three recorder lines; returns run id and masks after each rewire."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 48), torch.nn.ReLU(), torch.nn.Linear(48, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=0.2, total_steps=steps,
                          interval_steps=4, end_fraction=1.0)
    snapshots = {0: [layer.mask.clone() for layer in driver.layers]}
    with Recorder(tmp_path / "data", name="loop", config={"lr": 0.1, "seed": 0},
                  keyframe_every=keyframe_every, flush_interval_s=0.0) as recorder:
        recorder.attach(driver)
        driver.listeners.append(lambda changes: snapshots.__setitem__(
            driver.step_count, [layer.mask.clone() for layer in driver.layers]))
        for step in range(1, steps + 1):
            x, y = torch.randn(16, 20), torch.randint(0, 4, (16,))
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            driver.step()
            recorder.log(step, loss=loss.item())
    return recorder.run_id, snapshots


@pytest.mark.parametrize("shape, output_axis", [((7, 5), 1), ((300, 70_000), 1), ((3, 4, 2, 2), 1),
                                                 ((2, 3, 4), 2), ((5, 6), 0)])
def test_weight_layout_indices_become_the_matrix_order(shape, output_axis):
    """A HF Conv1D's (in, out) weight, a conv with its outputs elsewhere: each index moves to
    the matrix whose rows are the outputs, ascending (as numpy's transpose lists them), from
    sorted input and from unsorted input alike."""
    from dst_core.store.frames import matrix_order, to_matrix_indices

    rng = np.random.default_rng(len(shape))
    numel = int(np.prod(shape))
    indices = np.sort(rng.choice(numel, min(numel, 5000), replace=False))
    chosen = np.zeros(numel, dtype=bool)
    chosen[indices] = True
    expected = np.flatnonzero(chosen.reshape(shape).transpose(matrix_order(shape, output_axis)))
    assert to_matrix_indices(indices, shape, output_axis).tolist() == expected.tolist()
    assert to_matrix_indices(torch.from_numpy(rng.permutation(indices)), shape,
                             output_axis).tolist() == expected.tolist()


# every registered rewiring method of this build (SET at least; others as they are merged)
@pytest.mark.parametrize("method", mask_level_methods())
def test_reconstructed_masks_equal_the_engines_at_every_recorded_step(tmp_path, method):
    run_id, snapshots = _train_loop(tmp_path, method)
    reader = RunReader(RunStore(tmp_path / "data"))
    assert len(snapshots) >= 25
    steps = sorted(snapshots)
    for step in range(0, 121):
        recorded = max(s for s in steps if s <= step)  # between rewires the mask is unchanged
        for index, expected in enumerate(snapshots[recorded]):
            mask, frame_step = reader.mask_at(run_id, index, step)
            assert frame_step == recorded
            assert np.array_equal(mask, expected.reshape(mask.shape).numpy()), (step, index)
    name = reader.layers(run_id)[1]["name"]
    assert np.array_equal(reader.mask_at(run_id, name, 120)[0],
                          snapshots[steps[-1]][1].reshape(4, 48).numpy())


def test_run_stores_versions_commit_and_seed(tmp_path):
    run_id, _ = _train_loop(tmp_path, steps=8)
    run = RunStore(tmp_path / "data").get_run(run_id)
    info = run["info"]
    assert info["torch"] == torch.__version__ and info["sparsescope"]
    assert info["seed"] == 0 and "git_commit" in info and info["writer"] == "script"
    assert run["status"] == "completed" and run["config"]["lr"] == 0.1


def test_metrics_downsampling_keeps_min_max_last(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run({}, "m")["id"]
    losses = [float(value) for value in range(100)]
    losses[37] = 1000.0  # a spike that must survive downsampling
    store.append_events(run_id, [("metrics", step, {"loss": loss})
                                 for step, loss in enumerate(losses, start=1)])
    series = RunReader(store).metrics(run_id, buckets=10)["metrics"]["loss"]
    assert len(series["step"]) == 10 and series["step"][-1] == 100
    assert max(series["max"]) == 1000.0 and series["min"][0] == 0.0
    assert series["last"][-1] == 99.0
    assert RunReader(store).metrics(run_id, buckets=1000)["metrics"]["loss"]["max"] == losses


def _v1_file(path: Path) -> tuple[str, list[dict]]:
    """A data folder written by the foundation's store (schema_version 1, JSON payloads)."""
    from dst_core.store.run_store import _SCHEMA_V1

    path.mkdir(parents=True)
    db = sqlite3.connect(path / "runs.sqlite3")
    db.executescript(_SCHEMA_V1)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO runs (id, name, config, status, created_at) VALUES "
               "('00112233445566aa', 'old', '{}', 'completed', 1.0)")
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask.view(-1)[[1, 5, 9, 33]] = True
    payloads = [
        ("status", 0, {"status": "completed"}),
        ("topology", 0, keyframe_payload("fc.weight", 0, (6, 10), mask)),
        ("topology", 4, delta_payload("fc.weight", 0, (6, 10), torch.tensor([2, 50]),
                                      torch.tensor([5]), 5)),
    ]
    for seq, (kind, step, payload) in enumerate(payloads, start=1):
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                   ("00112233445566aa", seq, step, kind, json.dumps(to_wire(payload))))
    db.commit()
    db.close()
    return "00112233445566aa", [{**to_wire(p), "seq": s, "step": st, "type": k}
                                for s, (k, st, p) in enumerate(payloads, start=1)]


def test_migrates_a_version_1_file(tmp_path):
    run_id, original = _v1_file(tmp_path / "old")
    store = RunStore(tmp_path / "old")
    version = store.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 5
    assert store.read_events(run_id) == original  # the wire format is unchanged
    assert store.db.execute("SELECT COUNT(*) FROM events WHERE blob IS NOT NULL").fetchone()[0] == 2
    store.db.execute("INSERT INTO meta VALUES ('probe', '1')")  # ordinary writes still work
    store.db.execute("CREATE TABLE IF NOT EXISTS layers (layer TEXT)")  # meta lookups ignore it
    layers_meta = [{"name": "fc.weight", "shape": [6, 10], "matrix": [6, 10], "density": 0.1}]
    store.append_events(run_id, [("meta", 0, {"layers": layers_meta})])
    mask, step = RunReader(store).mask_at(run_id, "fc.weight", 10)
    assert step == 4 and sorted(np.flatnonzero(mask)) == [1, 2, 9, 33, 50]
    # Version 3's cohort index: empty after the upgrade; the first topology request replays
    # the old run's frames and, the run having ended, stores what it built.
    from backend.services.topology_reader import TopologyReader

    assert store.db.execute("SELECT COUNT(*) FROM topology_index").fetchone()[0] == 0
    answer = TopologyReader(store).layer(run_id, "fc.weight", 10)
    assert answer["rewire"] == 1 and answer["age"] == [[0, 2], [1, 3]]
    assert [tuple(row) for row in store.db.execute(
        "SELECT first_rewire, last_rewire FROM topology_index")] \
        == [(0, 1)]
    RunStore(tmp_path / "old")  # opening again migrates nothing and keeps the data
    assert RunStore(tmp_path / "old").read_events(run_id)[:3] == original


def test_refuses_a_newer_schema(tmp_path):
    RunStore(tmp_path)
    db = sqlite3.connect(tmp_path / "runs.sqlite3")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(ValueError, match="schema_version"):
        RunStore(tmp_path)


WRITER = textwrap.dedent("""
    import sys, time, torch
    from dst_core import REGISTRY, SparseDriver
    from dst_core.recording import Recorder
    steps = int(sys.argv[2])
    model = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    driver = SparseDriver(model, optimizer, method="set", density=0.3, total_steps=steps,
                          interval_steps=2)
    with Recorder(sys.argv[1], name="child", flush_interval_s=0.0, keyframe_every=4) as rec:
        print(rec.run_id, flush=True)
        rec.attach(driver)
        for step in range(1, steps + 1):
            loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 30)),
                                                     torch.randint(0, 5, (8,)))
            optimizer.zero_grad(); loss.backward(); driver.step()
            rec.log(step, loss=loss.item())
            time.sleep(float(sys.argv[3]))
""")


def start_writer(data_dir: Path, steps: int, pause_s: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir), str(steps),
                                str(pause_s)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_writer_and_reader_in_two_processes(tmp_path):
    process, run_id = start_writer(tmp_path, 150, 0.01)
    store = RunStore(tmp_path)
    reader = RunReader(store)
    seen: list[dict] = []
    reads_while_running = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = store.get_run(run_id)["status"]
        batch = store.read_events(run_id, len(seen) + 1, 10_000)
        seen.extend(batch)
        if status == "running" and batch:
            reads_while_running += 1
            frames = [e for e in seen if e["type"] == "topology" and e["index"] == 0]
            if frames:  # whatever is committed is decodable while the writer goes on
                reader.mask_at(run_id, 0, frames[-1]["step"])
        if status == "completed" and not batch:
            break
        time.sleep(0.02)
    assert process.wait(timeout=60) == 0
    assert reads_while_running >= 2
    assert [event["seq"] for event in seen] == list(range(1, len(seen) + 1))
    assert seen[-1] == {**seen[-1], "type": "status", "status": "completed"}
    rewires = sum(1 for event in seen if event["type"] == "rewire")
    assert rewires >= 70
    assert sum(1 for event in seen if event["type"] == "topology") == 2 * (1 + rewires)


def _run_python(code: str, cwd) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                            text=True, timeout=600, env={"PYTHONPATH": str(REPO),
                                                         "PATH": "/usr/bin:/bin",
                                                         "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr


def test_readme_example_runs_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Recording your own training loop", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    added = [line for line in code.splitlines() if "rec." in line or "Recorder(" in line]
    assert len(added) == 4  # the four lines a loop adds
    _run_python(code, tmp_path)
    store = RunStore(tmp_path / "sparsescope-data")
    (run,) = store.list_runs()
    events = store.read_events(run["id"], 0, 100_000)
    assert run["status"] == "completed"
    assert {"meta", "metrics", "eval", "topology", "rewire"} <= {event["type"] for event in events}
    assert run["settings"]["method"] == "set" and run["settings"]["interval_steps"] == 50
    assert run["settings"]["model"].startswith("custom: Sequential (")
    keyframe = next(e for e in events if e["type"] == "topology")
    assert len(base64.b64decode(keyframe["bits"])) == -(-np.prod(keyframe["shape"]) // 8)


def test_the_recording_pages_script_is_listed_by_what_it_ran(tmp_path):
    """docs/recording.md's complete script: a CNN with BatchNorm, RigL at density 0.2 every
    10 steps, a Recorder with no config; listed as rigl, 0.2, custom: DigitsNet."""
    page = (REPO / "docs" / "recording.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    assert len(code.strip().splitlines()) <= 45
    _run_python(code, tmp_path)
    (run,) = RunStore(tmp_path / "sparsescope-data").list_runs()
    settings = run["settings"]
    assert (settings["method"], settings["density"], settings["interval_steps"]) == ("rigl", 0.2, 10)
    assert settings["model"] == "custom: DigitsNet (2.8 k params)"  # as the page says
    assert run["config"] == {} and run["summary"]["best_test_accuracy"] > 0.5
    events = RunStore(tmp_path / "sparsescope-data").read_events(run["id"], 0, 100_000)
    assert sum(event["type"] == "eval" for event in events) == 10


def test_recorder_ends_runs_with_the_right_status_and_beats(tmp_path):
    with pytest.raises(RuntimeError):
        with Recorder(tmp_path, name="boom", heartbeat_s=0.05) as recorder:
            reader = RunStore(tmp_path)
            first = reader.get_run(recorder.run_id)["heartbeat_at"]
            deadline = time.monotonic() + 30  # a beat every 0.05 s; a loaded machine is late
            while reader.get_run(recorder.run_id)["heartbeat_at"] == first \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            assert reader.get_run(recorder.run_id)["heartbeat_at"] > first
            reader.close()
            raise RuntimeError("loss exploded")
    run = RunStore(tmp_path).get_run(recorder.run_id)
    assert run["status"] == "failed" and "loss exploded" in run["error"]
    with pytest.raises(KeyboardInterrupt):
        with Recorder(tmp_path, name="ctrl-c") as recorder:
            raise KeyboardInterrupt
    assert RunStore(tmp_path).get_run(recorder.run_id)["status"] == "stopped"
    with pytest.raises(ValueError, match="run_id"):
        Recorder(tmp_path, run_id="0000000000000000")


@pytest.mark.parametrize("method", ["snfs", "set"])
def test_logged_densities_and_itop_follow_the_driver_on_a_conv_net(tmp_path, method):
    """The recorder keeps per-layer counts from each rewire's changes instead of recounting
    every mask: what it stores must still equal the driver's own recount, on a ResNet-shaped
    net (conv + BatchNorm) and with SNFS, which moves density between layers."""
    def block(channels):
        return [torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(channels), torch.nn.ReLU()]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                *[part for _ in range(6) for part in block(8)],
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    driver = SparseDriver(model, optimizer, method=method, density=0.3, total_steps=40,
                          interval_steps=4, distribution="erk")
    expected = {}
    with Recorder(tmp_path, name=method, heartbeat_s=0) as recorder:
        recorder.attach(driver)
        for step in range(1, 21):
            loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)),
                                                     torch.randint(0, 10, (4,)))
            optimizer.zero_grad()
            loss.backward()
            driver.step()
            recorder.log(step, loss=loss.item())
            expected[step] = (driver.global_density(), driver.densities(), driver.itop_rate())
    metrics = [e for e in RunStore(tmp_path).read_events(recorder.run_id, limit=1000)
               if e["type"] == "metrics"]
    assert len(metrics) == 20
    # Per-layer density is logged when it changed: carried forward, it is the driver's at
    # every step, and it is logged no more often than it changes.
    logged = [event for event in metrics if "layer_density" in event]
    assert logged and logged[0] is metrics[0]
    changes = sum(1 for before, after in zip(metrics[:-1], metrics[1:], strict=True)
                  if expected[before["step"]][1] != expected[after["step"]][1])
    assert len(logged) == 1 + changes
    if method == "snfs":  # the total stays, layers' shares move: the case a stale count misses
        assert changes > 0 and logged[-1]["layer_density"] != logged[0]["layer_density"]
    else:
        assert changes == 0  # SET keeps every layer's count: logged once
    current = None
    for event in metrics:
        density, layers, itop = expected[event["step"]]
        current = event.get("layer_density", current)
        assert event["density"] == pytest.approx(density, abs=1e-12)
        assert event["itop_rate"] == pytest.approx(itop, abs=1e-12)
        assert current == pytest.approx(layers, abs=1e-12)
    assert metrics[-1]["itop_rate"] > metrics[0]["itop_rate"]  # rewires happened
    summary = RunStore(tmp_path).get_run(recorder.run_id)["summary"]
    assert summary["density"] == pytest.approx(expected[20][1], abs=1e-12)


def test_the_heartbeat_thread_checkpoints_the_wal_not_the_training_thread(tmp_path):
    """A commit on the training thread never copies the WAL into the file (a checkpoint
    fsyncs); the heartbeat does, and finish() leaves the file whole."""
    with Recorder(tmp_path / "plain", name="no beat", heartbeat_s=0) as recorder:
        assert recorder.store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 0
    recorder = Recorder(tmp_path, name="beats", heartbeat_s=3600)  # no beat during the test
    db_file = recorder.store.path
    assert recorder.store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    before = db_file.stat().st_size
    rng = np.random.default_rng(0)
    recorder.emit("meta", 0, {"layers": [{"name": "w", "shape": [256, 1024],
                                          "matrix": [256, 1024]}]})
    for step in range(1, 200):  # ~4 MB of frames: past the 1,000 pages that autocheckpoint
        recorder.emit("topology", step, keyframe_payload(
            "w", 0, (256, 1024), torch.from_numpy(rng.random((256, 1024)) < 0.5)))
        recorder.flush()
    assert db_file.stat().st_size == before  # everything is still in the WAL
    recorder.writer.heartbeat()
    grown = db_file.stat().st_size
    assert grown > before + 2_000_000
    recorder.emit("metrics", 200, {"loss": 1.0})
    recorder.finish("completed")
    reader = RunStore(tmp_path)
    assert reader.get_run(recorder.run_id)["status"] == "completed"
    assert len(reader.frame_steps(recorder.run_id)) == 199


def test_an_event_left_buffered_by_a_paused_loop_is_stored_within_the_flush_interval(tmp_path):
    """A script logs an eval and then pauses (a long validation, a checkpoint): nothing else
    is emitted that would flush it, yet a reader sees it without waiting for the run to go on."""
    # The heartbeat itself is an hour away: while the loop is paused, only the flush of a
    # quiet loop (due 0.1 s after the eval) can store it before finish().
    with Recorder(tmp_path, name="paused", flush_interval_s=0.1, heartbeat_s=3600) as rec:
        rec.flush()
        rec.eval(2, test_accuracy=0.5)  # right after a flush: it stays in the buffer
        deadline = time.monotonic() + 60
        reader = RunStore(tmp_path)
        stored = []
        while time.monotonic() < deadline and not stored:
            stored = [e for e in reader.read_events(rec.run_id) if e["type"] == "eval"]
            time.sleep(0.05)
        assert stored and stored[0]["test_accuracy"] == 0.5  # stored by now, not at finish()
        reader.close()


def test_a_loop_that_keeps_emitting_flushes_itself_not_from_the_heartbeat_thread(tmp_path):
    """The heartbeat thread flushes only a quiet loop: flushing from there while training runs
    would compete with it for the cores and the GIL."""
    # Quiet means no emit for flush_interval_s: 0.25 s, so a loaded machine's late sleep
    # (tens of ms) does not make the emitting loop look quiet.
    with Recorder(tmp_path, name="busy", flush_interval_s=0.25, heartbeat_s=0.25) as rec:
        writers = []
        write = rec.writer.write

        def traced(events, summary):
            writers.append(threading.current_thread() is threading.main_thread())
            write(events, summary)

        rec.writer.write = traced
        step = 0
        for _attempt in range(5):
            # An emit every 20 ms, never quiet for 250 ms, until the loop has flushed ten
            # times. A machine so busy that this loop itself stalled for 250 ms did make it
            # quiet (the heartbeat thread was then right to flush): that attempt says
            # nothing, and the loop emits again.
            first = len(writers)
            longest_gap_s, emitted_at = 0.0, time.monotonic()
            while len(writers) - first < 10:
                step += 1
                rec.log(step, loss=1.0)
                longest_gap_s = max(longest_gap_s, rec._last_emit - emitted_at)
                emitted_at = rec._last_emit
                time.sleep(0.02)
            rec.flush()
            busy = writers[first:]
            if longest_gap_s < rec.flush_interval_s:
                break
        assert longest_gap_s < rec.flush_interval_s, "this machine never let the loop emit"
        rec.log(step + 1, loss=0.5)  # right after a flush: it stays in the buffer
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(writers) == first + len(busy):
            time.sleep(0.01)
    assert len(busy) >= 10 and all(busy)  # every flush while it emitted was its own
    assert writers[first + len(busy)] is False  # then, quiet, the heartbeat thread flushed it


def test_masks_loaded_after_attach_are_followed_by_the_logged_densities(tmp_path):
    """Densities are kept from each rewire's counts; a driver whose masks are replaced outside
    a rewire (a checkpoint loaded after attach) must still log its own numbers."""
    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(),
                                   torch.nn.Linear(30, 4))

    def make(density):
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        return SparseDriver(model, optimizer, method="set", density=density, total_steps=100,
                            interval_steps=50, distribution="uniform")

    driver, other = make(0.5), make(0.2)
    with Recorder(tmp_path, name="resumed", heartbeat_s=0) as recorder:
        recorder.attach(driver)
        recorder.log(1, loss=1.0)
        driver.load_state_dict(other.state_dict())
        recorder.log(2, loss=1.0)
        loaded = (driver.global_density(), driver.densities(), driver.itop_rate())
        for step in range(3, 53):  # a SET rewire at step 50: its delta starts from the new mask
            driver.step()
            recorder.log(step, loss=1.0)
    reader = RunReader(RunStore(tmp_path))
    for index, layer in enumerate(driver.layers):  # stored, and read back as the driver holds it
        stored, _ = reader.mask_at(recorder.run_id, index, 10**6)
        assert np.array_equal(stored.reshape(-1), layer.mask.reshape(-1).numpy())
    metrics = [e for e in RunStore(tmp_path).read_events(recorder.run_id) if e["type"] == "metrics"]
    assert metrics[0]["density"] == pytest.approx(0.5, abs=0.02)
    assert metrics[1]["density"] == pytest.approx(loaded[0], abs=1e-12)
    assert metrics[1]["density"] == pytest.approx(0.2, abs=0.02)
    assert metrics[1]["layer_density"] == pytest.approx(loaded[1], abs=1e-12)
    assert metrics[1]["itop_rate"] == pytest.approx(loaded[2], abs=1e-12)
