"""Topology of a recorded run at any step: degrees, ages, cohort survival, distances, chains.

Works for every stored run, whatever wrote it. Per layer, an answer is one mask seek (the
degrees) plus the run's cohort index (dst_core.store.cohorts): ages from the checkpoint before the
rewire, survival from counting every earlier cohort in the mask, block by block. The index is
stored by whoever wrote the frames (topology_index.py), so a request on a run nobody asked
about before reads compact segments instead of replaying the run. Frames no stored segment
covers (a live run's newest rewires; every frame of a run recorded before the index existed,
or imported) are replayed into an in-memory indexer; once such a run has ended, the segments
cut from its frames are stored, so it is replayed once. The |w| quantiles come from the
rewire events of runs whose driver recorded them, and are absent (None) otherwise, never
invented.

Each (run, layer) keeps its segments (blobs loaded on first use) and indexer in one
process-wide cache bounded in bytes; a cached layer is checked against the store on every
request (its first and newest frames, and new stored segments), so a deleted or replaced run
is read again, not served stale, and a live run's new frames are taken in.
"""

from __future__ import annotations

import bisect
import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from dst_core.analytics import chain_connectivity, degrees
from dst_core.heads import check_layout, head_counts
from dst_core.store import FINAL_STATUSES, RunStore, topology_index
from dst_core.store.cohorts import IndexFormatError, LayerIndexer, LayerTimeline, Segment
from dst_core.store.masks import StoredDataError
from dst_core.store.reader import RunReader

# Two threads count a layer's segments (see LayerTimeline.alive): the cold request of a big
# layer is bound by gathering its growth history, and numpy gathers without the GIL.
COUNTING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="topology-count")
# … and read the masks `/topology/model` needs (a chain's layers): decompressing and applying
# a layer's frames runs mostly outside the GIL, two layers at a time.
MASK_READS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="topology-masks")
ANSWERS_PER_LAYER = 64  # rewires answered lately, kept: scrubbing back and forth is free
DEFAULT_CACHE_MB = 1024  # the server's is Settings.topology_cache_mb (SPARSESCOPE_TOPOLOGY_CACHE_MB)
LOG = logging.getLogger(__name__)


@dataclass
class _Entry:
    """One layer's index as this process holds it, and where in the stored events it stands."""

    segments: list[Segment] = field(default_factory=list)  # from rewire 0, in order
    stored: int = 0  # the first `stored` segments are rows of the store; the rest were cut here
    indexer: LayerIndexer | None = None  # frames after the segments, replayed here
    use_stored: bool = True  # False once the stored index disagreed with the frames
    first_seq: int = 0  # the layer's first topology frame
    first_step: int = 0
    taken_seq: int = 0  # newest frame the index holds
    taken_step: int = 0
    error: str | None = None  # a stored frame that could not be taken in (the index stops there)
    error_step: int | None = None  # its step: requests at or after it answer the error
    timeline: LayerTimeline | None = None
    # rewire -> its answer (an earlier rewire's answer never changes as the run grows)
    answers: OrderedDict[int, dict] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def nbytes(self) -> int:
        return (sum(segment.nbytes for segment in self.segments)
                + (self.indexer.nbytes if self.indexer is not None else 0))


class IndexCache:
    """(store file, run, layer) -> _Entry. Beyond `max_bytes` the least recently used entries
    first drop their stored segments' blobs (read again when needed), then go entirely."""

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
        with self._lock:
            total = sum(entry.nbytes for entry in self._entries.values())
            keys = list(self._entries)[:-1]  # the newest stays whole
            for key in keys:
                if total <= self.max_bytes:
                    return
                entry = self._entries[key]
                before = entry.nbytes
                for segment in entry.segments[:entry.stored]:
                    segment.unload()
                total -= before - entry.nbytes
            for key in keys:
                if total <= self.max_bytes:
                    return
                total -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def total_bytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())


class TopologyReader:
    """Per-layer and whole-model topology of one data folder's runs."""

    def __init__(self, store: RunStore, cache: IndexCache | None = None,
                 reader: RunReader | None = None):
        self.store = store
        self.reader = reader if reader is not None else RunReader(store)  # shares its mask cache
        self.cache = cache if cache is not None else IndexCache()

    # ---- one layer ----------------------------------------------------------------------------
    def layer(self, run_id: str, layer: str | int, step: int) -> dict:
        """Every per-layer field of the newest rewire at or before `step` (see dst_core.store.cohorts)."""
        layers = self.reader.layers(run_id)
        index = self.reader.layer_index(run_id, layer)
        name = layers[index].get("name", str(index))
        for attempt in range(2):
            entry = self._synced(run_id, index)
            with entry.lock:  # a concurrent request may be extending this index
                timeline = self._timeline(entry, name)
                if entry.error_step is not None and int(step) >= entry.error_step:
                    raise StoredDataError(entry.error)
                rewire = bisect.bisect_right(timeline.steps, int(step)) - 1
                if rewire < 0:
                    raise ValueError(f"step: no topology frame of layer {name!r} at or before "
                                     f"step {step}")
                answer = entry.answers.get(rewire)
                if answer is not None:
                    entry.answers.move_to_end(rewire)
                    return {**answer, "requested_step": int(step)}
                try:
                    answer = self._answer(run_id, index, name, entry, timeline, rewire)
                except IndexFormatError as error:
                    if attempt or not entry.use_stored:
                        raise StoredDataError(f"layer {name!r}: {error}") from None
                    # The stored index disagrees with the frames: replay the frames instead.
                    LOG.warning("run %s layer %s: stored index not used (%s)", run_id, name,
                                error)
                    self._reset(entry, use_stored=False)
                    continue
                # The newest rewire's rewire event (its weights) may still be on its way.
                if rewire < timeline.rewires:
                    entry.answers[rewire] = answer
                    while len(entry.answers) > ANSWERS_PER_LAYER:
                        entry.answers.popitem(last=False)
                return {**answer, "requested_step": int(step)}
        raise AssertionError("unreachable")

    @staticmethod
    def _timeline(entry: _Entry, name: str) -> LayerTimeline:
        if entry.timeline is None:
            if entry.error:
                raise StoredDataError(entry.error)
            raise ValueError(f"layer: no topology frame of layer {name!r}")
        return entry.timeline

    def _answer(self, run_id: str, index: int, name: str, entry: _Entry,
                timeline: LayerTimeline, rewire: int) -> dict:
        rewire_step = timeline.steps[rewire]
        # Where the index holds the mask whole (a segment's end, a run's newest rewire once it
        # ended, the indexer's current one) it is read there: a keyframe and up to K-1 deltas
        # replayed took 0.38 s of a 4096 × 11008 layer's first answer.
        mask = timeline.checkpoint_mask(rewire)
        if mask is not None:
            mask = mask.reshape(timeline.shape)
        else:
            mask, _ = self.reader.mask_at(run_id, index, rewire_step)
            if mask.shape != timeline.shape:
                raise StoredDataError(f"layer {name!r} changes shape to {list(mask.shape)}")
        return {"layer": name, "index": index, "step": rewire_step,
                "shape": list(timeline.shape), **degrees(mask), **timeline.at(rewire, mask, COUNTING.map),
                "weights": self._weights(run_id, rewire_step, name),
                "heads": self._heads(run_id, index, mask)}

    def _heads(self, run_id: str, index: int, mask: np.ndarray) -> list[dict] | None:
        """Per-head counts of an attention projection whose run stored its head layout (a
        stored layout that does not tile the layer is ignored: no heads, not an error)."""
        layout = self.reader.layers(run_id)[index].get("heads")
        if layout is None:
            return None
        try:
            layout = check_layout(layout, tuple(mask.shape))
        except (ValueError, TypeError):
            return None
        return head_counts(mask, layout)

    def _weights(self, run_id: str, step: int, name: str) -> dict | None:
        """|w| quantiles the rewire event at `step` carries for the layer (None if none)."""
        rows = self.store.db.execute(
            "SELECT payload FROM events INDEXED BY events_type WHERE run_id = ? "
            "AND type = 'rewire' AND step = ? ORDER BY seq DESC", (run_id, int(step))).fetchall()
        for (payload,) in rows:
            try:
                value = json.loads(payload).get("layers", {}).get(name)
            except (ValueError, AttributeError):
                continue  # a malformed rewire event: its weights are simply unknown
            if isinstance(value, dict) and isinstance(value.get("weights"), dict):
                return value["weights"]
        return None

    def series(self, run_id: str, layer: str | int, points: int = 200) -> dict:
        """Per-rewire summaries for charts over time, at most `points` rewires (evenly picked,
        the first and the newest always in): degree histogram, dead units, distances."""
        if points < 2:
            raise ValueError("points: must be at least 2")
        layers = self.reader.layers(run_id)
        index = self.reader.layer_index(run_id, layer)
        name = layers[index].get("name", str(index))
        entry = self._synced(run_id, index)
        with entry.lock:
            timeline = self._timeline(entry, name)
            count = timeline.rewires + 1
            picked = np.unique(np.linspace(0, count - 1, min(points, count)).round().astype(int))
            rows = [timeline.summary(int(r)) for r in picked]
            return {
                "layer": name, "index": index,
                "shape": list(timeline.shape), "rewires": timeline.rewires,
                "rewire": picked.tolist(), "step": [timeline.steps[r] for r in picked],
                "active": [timeline.active[r] for r in picked],
                "fan_in_counts": [row["fan_in_counts"].tolist() for row in rows],
                "fan_in_mean": [row["fan_in_stats"]["mean"] for row in rows],
                "fan_in_max": [row["fan_in_stats"]["max"] for row in rows],
                "fan_out_mean": [row["fan_out_stats"]["mean"] for row in rows],
                "fan_out_max": [row["fan_out_stats"]["max"] for row in rows],
                "dead_in": [row["dead_in"] for row in rows],
                "dead_out": [row["dead_out"] for row in rows],
                "distance_initial": [row["distance_initial"] for row in rows],
                "distance_previous": [row["distance_previous"] for row in rows],
                "repruned_next": timeline.repruned_series(timeline.rewires),
            }

    # ---- the whole model --------------------------------------------------------------------------
    def model(self, run_id: str, step: int) -> dict:
        """Every layer's degrees summary at `step`, and each MLP-shaped chain of Linear layers'
        cut-off units and effective parameter count.

        A layer's summary is read from its cohort index (the statistics every rewire stored
        there), not from its mask: no layer is decoded for it. Masks are read only for the
        layers of a chain, and for a layer whose index cannot answer (then its frames are)."""
        layers = self.reader.layers(run_id)
        chains = linear_chains(layers)
        in_chain = {index for chain in chains for index in chain}
        indexed = [self._indexed_summary(run_id, index, int(step), index in in_chain)
                   for index in range(len(layers))]
        wanted = [index for index, (summary, mask) in enumerate(indexed)
                  if summary is None or (index in in_chain and mask is None)]

        def read(index: int) -> tuple[np.ndarray, int] | ValueError:
            try:
                return self.reader.mask_at(run_id, index, int(step))
            except ValueError as error:  # no frame yet, or a frame that does not decode
                return error

        read_masks = dict(zip(wanted, MASK_READS.map(read, wanted), strict=True))
        summaries, masks = [], {}
        for index, meta in enumerate(layers):
            name = meta.get("name", str(index))
            summary, checkpoint = indexed[index]
            if checkpoint is not None:
                masks[index] = checkpoint
            elif index in read_masks:
                found = read_masks[index]
                if isinstance(found, ValueError):
                    summaries.append({"layer": name, "index": index, "error": str(found)})
                    continue
                mask, frame_step = found
                masks[index] = mask
                if summary is None:
                    counted = degrees(mask)
                    summary = {"step": frame_step, "shape": list(mask.shape),
                               "active": int(mask.sum()), "density": float(mask.mean()),
                               **{key: counted[key] for key in ("fan_in_stats", "fan_out_stats",
                                                                "dead_in", "dead_out")}}
            summaries.append({"layer": name, "index": index, **summary})
        found_chains = []
        for chain in chains:
            if not all(index in masks for index in chain):
                continue
            found = chain_connectivity([masks[index] for index in chain])
            found["per_layer"] = found.pop("layers")
            found_chains.append({"layers": [layers[index].get("name", str(index))
                                            for index in chain], **found})
        return {"requested_step": int(step), "layers": summaries, "chains": found_chains}

    def _indexed_summary(self, run_id: str, index: int, step: int,
                         want_mask: bool) -> tuple[dict | None, np.ndarray | None]:
        """(the layer's summary at its newest rewire at or before `step`, from its cohort
        index; its (rows, cols) mask when `want_mask` and the index holds that rewire's
        checkpoint). (None, None) where the index cannot say (no rewire by then, an index that
        stopped at a frame that does not fit): the caller reads the frames instead."""
        try:
            entry = self._synced(run_id, index)
        except ValueError:
            return None, None
        with entry.lock:
            timeline = entry.timeline
            if timeline is None or entry.error is not None:
                return None, None
            rewire = bisect.bisect_right(timeline.steps, step) - 1
            if rewire < 0:
                return None, None
            found = timeline.summary(rewire)
            rows, cols = timeline.shape
            active = int(timeline.active[rewire])
            try:
                mask = timeline.checkpoint_mask(rewire) if want_mask else None
            except IndexFormatError:
                mask = None  # a stored checkpoint that does not read: the frames are replayed
            summary = {"step": int(timeline.steps[rewire]), "shape": [int(rows), int(cols)],
                       "active": active, "density": active / (rows * cols) if rows * cols else 0.0,
                       **{key: found[key] for key in ("fan_in_stats", "fan_out_stats",
                                                      "dead_in", "dead_out")}}
            return summary, None if mask is None else mask.reshape(rows, cols)

    # ---- keeping the index up to date ---------------------------------------------------------
    def _synced(self, run_id: str, index: int) -> _Entry:
        key = (str(self.store.path), run_id, index)
        entry = self.cache.get(key)
        with entry.lock:
            if entry.taken_seq and not self._still_matches(run_id, index, entry):
                self._reset(entry, use_stored=True)
            if entry.use_stored:
                self._take_stored_segments(run_id, index, entry)
            self._take_frames(run_id, index, entry)
            self._store_if_ended(run_id, index, entry)
            if entry.segments or entry.indexer is not None:
                entry.timeline = LayerTimeline(entry.segments, entry.indexer)
        self.cache.trim()
        return entry

    @staticmethod
    def _reset(entry: _Entry, use_stored: bool) -> None:
        entry.segments, entry.stored, entry.indexer, entry.timeline = [], 0, None, None
        entry.use_stored, entry.error, entry.error_step = use_stored, None, None
        entry.first_seq = entry.first_step = entry.taken_seq = entry.taken_step = 0
        entry.answers.clear()

    def _still_matches(self, run_id: str, index: int, entry: _Entry) -> bool:
        """The first and the newest frame taken in are still stored as they were (two primary
        key lookups: counting the layer's frames would scan the run's blobs)."""
        rows = self.store.db.execute(
            "SELECT seq, step FROM events WHERE run_id = ? AND seq IN (?, ?) AND layer = ? "
            "AND type = 'topology' ORDER BY seq",
            (run_id, entry.first_seq, entry.taken_seq, index)).fetchall()
        found = [(int(row[0]), int(row[1])) for row in rows]
        expected = sorted({(entry.first_seq, entry.first_step),
                           (entry.taken_seq, entry.taken_step)})
        return found == expected

    def _take_stored_segments(self, run_id: str, index: int, entry: _Entry) -> None:
        """Segments stored since this entry was read (the writer cut them); they replace what
        was replayed here of the same rewires."""
        after = entry.segments[entry.stored - 1].last if entry.stored else -1
        try:
            found = topology_index.stored_segments(lambda: self.store.db, run_id, index, after)
        except sqlite3.DatabaseError as error:
            LOG.info("run %s layer %s: index not read (%s)", run_id, index, error)
            return
        if not found:
            return
        entry.segments = entry.segments[:entry.stored] + found
        entry.stored = len(entry.segments)
        entry.indexer = None  # resumed from the newest checkpoint by _take_frames
        entry.answers.clear()
        entry.error = entry.error_step = None
        entry.taken_seq = found[-1].last_seq
        entry.taken_step = found[-1].rewires.steps[-1]
        if not entry.first_seq:
            self._first_frame(run_id, index, entry)

    def _first_frame(self, run_id: str, index: int, entry: _Entry) -> None:
        row = self.store.db.execute(
            "SELECT seq, step FROM events INDEXED BY events_frames WHERE run_id = ? AND layer = ? "
            "AND keyframe IN (0, 1) ORDER BY step, seq LIMIT 1", (run_id, index)).fetchone()
        if row is not None:
            entry.first_seq, entry.first_step = int(row[0]), int(row[1])

    def _take_frames(self, run_id: str, index: int, entry: _Entry) -> None:
        """Replay the frames no segment holds into the entry's indexer, cutting segments."""
        if entry.error is not None:
            return  # the index stops at a bad frame; earlier rewires still answer
        newest = topology_index.newest_frame_seq(self.store.db, run_id, index)
        if newest is None or newest <= entry.taken_seq:
            return  # nothing stored since: no scan of the events after the layer's last frame
        indexer = entry.indexer
        matrix = self.reader.layers(run_id)[index]["matrix"]
        layer_shape = (int(matrix[0]), int(matrix[1]))
        for row in topology_index.stored_frames(self.store.db, run_id, index, entry.taken_seq):
            try:
                if indexer is None and entry.segments:
                    indexer = LayerIndexer.resume(entry.segments[0], entry.segments[-1])
                indexer = topology_index.take_stored(indexer, row, layer_shape)
            except topology_index.Misfit:
                continue  # a frame an older version stored that does not fit: skipped, as
                # mask seek skips it (the next replay reads it again and skips it again)
            except (ValueError, KeyError, TypeError) as error:  # FrameError is a ValueError
                if isinstance(error, IndexFormatError) and entry.use_stored:
                    self._reset(entry, use_stored=False)  # replay every frame instead
                    self._take_frames(run_id, index, entry)
                    return
                entry.error = (f"stored frame seq {row['seq']} (step {row['step']}) "
                               f"is unreadable ({error})")
                entry.error_step = int(row["step"])
                break
            if not entry.first_seq:
                entry.first_seq, entry.first_step = int(row["seq"]), int(row["step"])
            entry.taken_seq, entry.taken_step = int(row["seq"]), int(row["step"])
            if indexer.due:
                entry.segments.append(indexer.cut())
        entry.indexer = indexer

    def _store_if_ended(self, run_id: str, index: int, entry: _Entry) -> None:
        """An ended run's segments replayed here are stored, so it is replayed only once."""
        pending = entry.indexer is not None and entry.indexer.pending.steps
        if entry.error is not None or not entry.use_stored or \
                (entry.stored == len(entry.segments) and not pending):
            return
        run = self.store.get_run(run_id)
        if run is None or run.get("status") not in FINAL_STATUSES:
            return
        if pending:
            entry.segments.append(entry.indexer.cut())
        try:
            self.store.store_index_segments(run_id, index, entry.segments[entry.stored:])
        except (sqlite3.Error, ValueError) as error:  # read-only folder, full disk: keep them here
            LOG.info("run %s layer %s: index kept in memory (%s)", run_id, index, error)
            return
        entry.stored = len(entry.segments)

def linear_chains(layers: list[dict]) -> list[list[int]]:
    """Maximal runs of >= 2 consecutive Linear layers where each takes the previous one's
    outputs as its inputs: the MLP-shaped parts of a model, in layer order. `layers` are
    RunReader.layers entries (`kind`, `matrix` = [outputs, inputs], `heads`).

    An attention projection (a layer with a head layout) is in no chain: q, k, v and o are
    not composed one after the other, however their shapes line up (a LLaMA block's
    q→k→v→o→gate would otherwise count as a five-layer MLP)."""
    chains: list[list[int]] = []
    current: list[int] = []
    for index, meta in enumerate(layers):
        linear = meta.get("kind") == "linear" and not meta.get("heads")
        if linear and current and layers[current[-1]]["matrix"][0] == meta["matrix"][1]:
            current.append(index)
            continue
        if len(current) >= 2:
            chains.append(current)
        current = [index] if linear else []
    if len(current) >= 2:
        chains.append(current)
    return chains
