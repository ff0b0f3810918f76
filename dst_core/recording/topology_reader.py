"""Topology of a recorded run at any step: degrees, ages, cohort survival, distances, chains.

Works for every stored run, whatever wrote it: the metrics are derived from the stored
masks (keyframes + net deltas), so older and imported runs answer like new ones; the |w|
quantiles come from the rewire events of runs whose driver recorded them, and are absent
(None) otherwise, never invented.

Ages and cohort survival need a layer's whole history. Replaying it on every request would
cost the run's length (a 1,000-rewire layer is ~1,000 deltas), so each (run, layer) keeps one
`LayerHistory` in a process-wide cache bounded in bytes (least recently used goes first).
It is built once by one pass over the stored frames and then only extended by the frames
stored since (a live run), so a request costs one mask seek plus a walk of the active
connections' growth events. A cached history is checked against the store on every request
(frame count up to its last seq), so a deleted or replaced run is rebuilt, not served stale.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from dst_core.analytics import LayerHistory, chain_connectivity, degrees
from dst_core.recording import codec
from dst_core.recording.masks import StoredDataError
from dst_core.recording.reader import RunReader
from dst_core.recording.store import RunStore

FRAME_BATCH = 64  # frames decoded per SQLite fetch while a history is built: bounded memory
ANSWERS_PER_LAYER = 64  # rewires answered lately, kept: scrubbing back and forth is free
DEFAULT_CACHE_MB = int(os.environ.get("SPARSESCOPE_TOPOLOGY_CACHE_MB", "1024"))
# A run's first topology request builds its other layers' histories in the background ("0"
# turns it off). Not opening the run: the run view's Topology section asks once the player is
# still or the section is on screen, and building 54 ResNet layers' histories while the heatmaps
# were scrubbed slowed every scrub (the server's CPU and its GIL are shared).
PREFETCH = os.environ.get("SPARSESCOPE_TOPOLOGY_PREFETCH", "1") != "0"
PREFETCH_SHARE = 0.75  # prefetching stops once the cache holds this share of its bound
# … and starts this long after that request: the layer asked for is built first, by the request.
PREFETCH_DELAY_S = float(os.environ.get("SPARSESCOPE_TOPOLOGY_PREFETCH_DELAY_S", "0.5"))
PREFETCH_AGAIN_S = 30.0  # a run prefetched this recently is not queued again by each request
LOG = logging.getLogger(__name__)


@dataclass
class _Entry:
    """One layer's cached history and where in the stored events it stands."""

    history: LayerHistory | None = None
    steps: list[int] = field(default_factory=list)  # step of rewire r (index r)
    first_seq: int = 0  # the layer's first topology frame
    last_seq: int = 0  # newest topology frame taken in
    frames: int = 0  # topology frames taken in
    weights: dict[int, dict] = field(default_factory=dict)  # rewire step -> weights
    last_rewire_seq: int = 0  # newest rewire event taken in
    error: str | None = None  # a stored frame that could not be taken in (history stops there)
    error_step: int | None = None  # its step: requests at or after it answer the error
    # rewire -> its answer (an earlier rewire's answer never changes as the run grows)
    answers: OrderedDict[int, dict] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class HistoryCache:
    """(store file, run, layer) -> _Entry, least recently used evicted beyond `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_MB << 20):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            self._entries.move_to_end(key)
            return entry

    def drop(self, key: tuple) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def trim(self) -> None:
        """Evict the least recently used histories until the total fits (the newest stays)."""
        with self._lock:
            total = sum(_bytes(entry) for entry in self._entries.values())
            while total > self.max_bytes and len(self._entries) > 1:
                _, evicted = self._entries.popitem(last=False)
                total -= _bytes(evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def total_bytes(self) -> int:
        with self._lock:
            return sum(_bytes(entry) for entry in self._entries.values())


def _bytes(entry: _Entry) -> int:
    return entry.history.nbytes if entry.history is not None else 0


CACHE = HistoryCache()


class Prefetcher:
    """One background thread that builds the histories of a run's other layers once one of
    them is asked about, so the next requests (another layer, the summary) are cached answers
    (≤ 200 ms) instead of a pass over the run's stored frames (seconds for a 1 M-connection
    layer of 1,000 rewires).

    Runs are taken in the order they were opened, each at most once at a time; a layer a
    request is already building is waited for, not built twice (the entry's lock). The
    thread runs at a lower CPU priority, so training on the same machine keeps its share,
    and stops prefetching while the cache holds PREFETCH_SHARE of its bound (it never evicts
    a history a request built for histories nobody asked for yet)."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._queued: set[tuple] = set()
        self._done: dict[tuple, float] = {}  # run -> when its last pass ended (monotonic)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def submit(self, reader: TopologyReader, run_id: str) -> None:
        key = (str(reader.store.path), run_id)
        with self._lock:
            if key in self._queued or time.monotonic() - self._done.get(key, -1e9) < PREFETCH_AGAIN_S:
                return  # a live run's newer frames are taken in by the requests themselves
            self._queued.add(key)
            self._queue.put((key, reader, run_id, time.monotonic() + PREFETCH_DELAY_S))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="topology-prefetch",
                                                daemon=True)
                self._thread.start()

    def forget(self) -> None:
        """Let every run be prefetched again at its next request (after a cache clear)."""
        with self._lock:
            self._done.clear()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Until every submitted run is built (True) or `timeout_s` passed (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queued, timeout_s)

    def _work(self) -> None:
        try:  # Linux: the thread's own nice value (the server's other threads keep theirs)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while True:
            key, reader, run_id, start_at = self._queue.get()
            time.sleep(max(0.0, start_at - time.monotonic()))
            try:
                reader.build_all(run_id)
            except Exception as error:  # noqa: BLE001 a request answers the same error itself
                LOG.info("topology prefetch of run %s stopped: %s", run_id, error)
            finally:
                with self._idle:
                    self._queued.discard(key)
                    self._done[key] = time.monotonic()
                    while len(self._done) > 256:  # oldest first: dicts keep insertion order
                        self._done.pop(next(iter(self._done)))
                    self._idle.notify_all()


PREFETCHER = Prefetcher()


class TopologyReader:
    """Per-layer and whole-model topology of one data folder's runs."""

    def __init__(self, store: RunStore, cache: HistoryCache | None = None,
                 reader: RunReader | None = None):
        self.store = store
        self.reader = reader if reader is not None else RunReader(store)  # shares its mask cache
        self.cache = cache if cache is not None else CACHE

    def prefetch(self, run_id: str) -> None:
        """Build every layer's history in the background (a topology request came)."""
        if PREFETCH:
            PREFETCHER.submit(self, run_id)

    def build_all(self, run_id: str) -> None:
        """Bring every layer's history up to the newest stored frame, layer by layer, while
        the cache has room (see Prefetcher)."""
        for index in range(len(self.reader.layers(run_id))):
            if self.cache.total_bytes() > PREFETCH_SHARE * self.cache.max_bytes:
                return
            self._synced(run_id, index)

    # ---- one layer ----------------------------------------------------------------------------
    def layer(self, run_id: str, layer: str | int, step: int) -> dict:
        """Every per-layer field of the newest rewire at or before `step` (see analytics)."""
        layers = self.reader.layers(run_id)
        index = self.reader.layer_index(run_id, layer)
        name = layers[index].get("name", str(index))
        entry = self._synced(run_id, index)
        with entry.lock:  # a concurrent request may be extending this history
            if entry.error_step is not None and int(step) >= entry.error_step:
                raise StoredDataError(entry.error)
            rewire = bisect.bisect_right(entry.steps, int(step)) - 1
            if rewire < 0:
                raise ValueError(f"step: no topology frame of layer {name!r} at or before "
                                 f"step {step}")
            history = entry.history
            if history is None or rewire > history.rewires:
                raise StoredDataError(entry.error or "the layer's frames stop before this step")
            answer = entry.answers.get(rewire)
            if answer is None:
                answer = self._answer(run_id, index, name, entry, rewire)
                # The newest rewire's rewire event (its weights) may still be on its way.
                if rewire < history.rewires:
                    entry.answers[rewire] = answer
                    while len(entry.answers) > ANSWERS_PER_LAYER:
                        entry.answers.popitem(last=False)
            else:
                entry.answers.move_to_end(rewire)
            return {**answer, "requested_step": int(step)}

    def _answer(self, run_id: str, index: int, name: str, entry: _Entry, rewire: int) -> dict:
        history = entry.history
        rewire_step = entry.steps[rewire]
        if rewire == history.rewires:
            mask = history.mask.reshape(history.shape)
        else:
            mask, _ = self.reader.mask_at(run_id, index, rewire_step)
            if mask.shape != history.shape:
                raise StoredDataError(f"layer {name!r} changes shape to {list(mask.shape)}")
        return {"layer": name, "index": index, "step": rewire_step,
                "shape": list(history.shape), **degrees(mask), **history.at(rewire, mask),
                "weights": entry.weights.get(rewire_step, {}).get(name)}

    def series(self, run_id: str, layer: str | int, points: int = 200) -> dict:
        """Per-rewire summaries for charts over time, at most `points` rewires (evenly picked,
        the first and the newest always in): degree histogram, dead units, distances."""
        if points < 2:
            raise ValueError("points: must be at least 2")
        layers = self.reader.layers(run_id)
        index = self.reader.layer_index(run_id, layer)
        entry = self._synced(run_id, index)
        with entry.lock:
            history = entry.history
            if history is None:
                if entry.error:
                    raise StoredDataError(entry.error)
                raise ValueError(f"layer: no topology frame of layer {layer!r}")
            count = history.rewires + 1
            picked = np.unique(np.linspace(0, count - 1, min(points, count)).round().astype(int))
            rows = [history.series[r] for r in picked]
            return {
                "layer": layers[index].get("name", str(index)), "index": index,
                "shape": list(history.shape), "rewires": history.rewires,
                "rewire": picked.tolist(), "step": [entry.steps[r] for r in picked],
                "active": [history.active[r] for r in picked],
                "fan_in_counts": [row["fan_in_counts"].tolist() for row in rows],
                "fan_in_mean": [row["fan_in_stats"]["mean"] for row in rows],
                "fan_in_max": [row["fan_in_stats"]["max"] for row in rows],
                "fan_out_mean": [row["fan_out_stats"]["mean"] for row in rows],
                "fan_out_max": [row["fan_out_stats"]["max"] for row in rows],
                "dead_in": [row["dead_in"] for row in rows],
                "dead_out": [row["dead_out"] for row in rows],
                "distance_initial": [row["distance_initial"] for row in rows],
                "distance_previous": [row["distance_previous"] for row in rows],
                "repruned_next": history.repruned_series(history.rewires),
            }

    # ---- the whole model --------------------------------------------------------------------------
    def model(self, run_id: str, step: int) -> dict:
        """Every layer's degrees summary at `step`, and each MLP-shaped chain of Linear layers'
        cut-off units and effective parameter count."""
        layers = self.reader.layers(run_id)
        summaries, masks = [], {}
        for index, meta in enumerate(layers):
            name = meta.get("name", str(index))
            try:
                mask, frame_step = self.reader.mask_at(run_id, index, int(step))
            except ValueError as error:  # no frame yet, or a frame that does not decode
                summaries.append({"layer": name, "index": index, "error": str(error)})
                continue
            found = degrees(mask)
            masks[index] = mask
            summaries.append({"layer": name, "index": index, "step": frame_step,
                              "shape": list(mask.shape), "active": int(mask.sum()),
                              "density": float(mask.mean()),
                              **{key: found[key] for key in ("fan_in_stats", "fan_out_stats",
                                                             "dead_in", "dead_out")}})
        chains = []
        for chain in linear_chains(layers):
            if not all(index in masks for index in chain):
                continue
            found = chain_connectivity([masks[index] for index in chain])
            found["per_layer"] = found.pop("layers")
            chains.append({"layers": [layers[index].get("name", str(index)) for index in chain],
                           **found})
        return {"requested_step": int(step), "layers": summaries, "chains": chains}

    # ---- building the cached history -----------------------------------------------------------
    def _synced(self, run_id: str, index: int) -> _Entry:
        key = (str(self.store.path), run_id, index)
        entry = self.cache.get(key)
        with entry.lock:
            if entry.frames and not self._still_matches(run_id, index, entry):
                self.cache.drop(key)
                entry = self.cache.get(key)
            self._take_frames(run_id, index, entry)
            self._take_rewires(run_id, entry)
            if entry.history is not None:  # merged here, so the answer itself does not
                entry.history.compact_if_due()
        self.cache.trim()
        return entry

    def _still_matches(self, run_id: str, index: int, entry: _Entry) -> bool:
        """The first and the newest frame taken in are still stored as they were (two primary
        key lookups: counting the layer's frames would scan the run's blobs)."""
        rows = self.store.db.execute(
            "SELECT seq, step FROM events WHERE run_id = ? AND seq IN (?, ?) AND layer = ? "
            "AND type = 'topology' ORDER BY seq",
            (run_id, entry.first_seq, entry.last_seq, index)).fetchall()
        found = [(int(row[0]), int(row[1])) for row in rows]
        expected = sorted({(entry.first_seq, entry.steps[0]), (entry.last_seq, entry.steps[-1])})
        return found == expected

    def _take_frames(self, run_id: str, index: int, entry: _Entry) -> None:
        if entry.error is not None:
            return  # the history stops at a bad frame; earlier rewires still answer
        while True:
            rows = self.store.db.execute(
                "SELECT seq, step, payload, blob FROM events WHERE run_id = ? AND layer = ? "
                "AND type = 'topology' AND seq > ? ORDER BY seq LIMIT ?",
                (run_id, index, entry.last_seq, FRAME_BATCH)).fetchall()
            for row in rows:
                try:
                    self._take_frame(entry, row)
                except (ValueError, KeyError, TypeError) as error:  # FrameError is a ValueError
                    entry.error = (f"stored frame seq {row['seq']} (step {row['step']}) "
                                   f"is unreadable ({error})")
                    entry.error_step = int(row["step"])
                    return
                if not entry.frames:
                    entry.first_seq = int(row["seq"])
                entry.last_seq = int(row["seq"])
                entry.frames += 1
            if len(rows) < FRAME_BATCH:
                return

    @staticmethod
    def _take_frame(entry: _Entry, row) -> None:
        header = json.loads(row["payload"])
        numel = codec.frame_numel(header["shape"])
        shape = (int(header["shape"][0]), int(header["shape"][1]))
        history = entry.history
        if history is not None and shape != history.shape:
            raise codec.FrameError(f"shape {list(shape)} differs from {list(history.shape)}")
        if entry.steps and int(row["step"]) < entry.steps[-1]:
            raise codec.FrameError(f"step {row['step']} goes back before {entry.steps[-1]}")
        if header["keyframe"]:
            packed = np.frombuffer(codec.decode_keyframe(row["blob"], numel), dtype=np.uint8)
            mask = np.unpackbits(packed, bitorder="little", count=numel).astype(bool)
            if history is None:
                entry.history = LayerHistory(mask, shape)
            else:
                history.advance_to(mask)
        elif history is None:
            raise codec.FrameError("the layer's first frame is a delta, not a keyframe")
        else:
            added, removed = codec.decode_delta(row["blob"], numel)
            history.advance(added, removed)
        entry.steps.append(int(row["step"]))

    def _take_rewires(self, run_id: str, entry: _Entry) -> None:
        """The |w| quantiles each rewire event carries per layer (runs recorded with them)."""
        rows = self.store.db.execute(
            "SELECT seq, step, payload FROM events WHERE run_id = ? AND type = 'rewire' "
            "AND seq > ? ORDER BY seq", (run_id, entry.last_rewire_seq)).fetchall()
        for row in rows:
            entry.last_rewire_seq = int(row["seq"])
            try:
                layers = json.loads(row["payload"]).get("layers", {})
                weights = {name: value["weights"] for name, value in layers.items()
                           if isinstance(value, dict) and isinstance(value.get("weights"), dict)}
            except (ValueError, AttributeError):
                continue  # a malformed rewire event: its weights are simply unknown
            if weights:
                entry.weights[int(row["step"])] = weights


def linear_chains(layers: list[dict]) -> list[list[int]]:
    """Maximal runs of >= 2 consecutive Linear layers where each takes the previous one's
    outputs as its inputs: the MLP-shaped parts of a model, in layer order. `layers` are
    RunReader.layers entries (`kind`, `matrix` = [outputs, inputs])."""
    chains: list[list[int]] = []
    current: list[int] = []
    for index, meta in enumerate(layers):
        linear = meta.get("kind") == "linear"
        if linear and current and layers[current[-1]]["matrix"][0] == meta["matrix"][1]:
            current.append(index)
            continue
        if len(current) >= 2:
            chains.append(current)
        current = [index] if linear else []
    if len(current) >= 2:
        chains.append(current)
    return chains
