"""Churn of a recorded layer: how often each connection changed state, up to a rewire.

A connection *toggles* at rewire r when it is in r's net delta (net grown or net removed;
rewire 0 is the initial mask, rewires are numbered per layer as `/topology` numbers them).
Up to rewire r, a connection p that started in state M_0(p), was net grown g(p) times and is
now in state M_r(p) was net removed g(p) + M_0(p) − M_r(p) times (its states alternate), so

    toggles(p) = 2·g(p) + M_0(p) − M_r(p).

g comes from the cohort index (dst_core/store/cohorts.py), written as the run is recorded: each
segment's checkpoint holds every connection's growth count at its last rewire (format 4), and
the segment after it holds the rewires' net-grown connections, so a request is one checkpoint
plus at most SEGMENT_REWIRES cohorts (one bincount per block of 65,536 connections), at any
step of any run. For segments stored before format 4 the counts are summed from every earlier
cohort and kept at segment ends in a cache bounded in bytes (the first request pays for the
whole history once). The per-rewire flip rate needs no mask at all: the index keeps each
rewire's grown and active counts, and the removed follow from them.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import logging

import numpy as np

from backend.services.topology_reader import TopologyReader
from backend.services.views import MAX_PANEL, PixelMap
from dst_core.store.cohorts import IndexFormatError, LayerTimeline
from dst_core.store.masks import BytesLRU, StoredDataError, run_key

TOTALS_BYTES = 256 * 1024 * 1024  # growth totals at segment ends: 2 bytes a connection each
ANSWERS_BYTES = 32 * 1024 * 1024  # recent answers (scrubbing back and forth is free)
CACHED_EVERY = 8  # besides the one before the rewire asked for, every 8th segment end's total
BINCOUNT_CHUNK = 1 << 20  # connections histogrammed at a time: bounded temporaries
U4_MAX = 0xFFFFFFFF
LOG = logging.getLogger(__name__)


class ChurnReader:
    """Toggle counts and flip rates of one data folder's runs, from the topology reader's cohort
    index (one per server: it shares that reader's index cache and mask cache)."""

    def __init__(self, topology: TopologyReader, totals_bytes: int = TOTALS_BYTES):
        self.topology = topology
        self.reader = topology.reader
        self.totals = BytesLRU(totals_bytes)
        self.answers = BytesLRU(ANSWERS_BYTES)

    # ---- where an answer comes from ---------------------------------------------------------
    def locate(self, run: dict, layer: str, step: int | None) -> dict:
        """The layer and rewire a request at `step` (None: the newest) answers, and a tag that
        names the answer's content (an ETag). ValueError (a 404) for an unknown layer or a
        step before the layer's first frame; StoredDataError for frames that do not read."""
        run_id = run["id"]
        index = self.reader.layer_index(run_id, layer)
        name = self.reader.layers(run_id)[index].get("name", str(index))
        # The topology reader's own index entry (same package): synced with the store, its
        # lock held while its segments and indexer are read.
        entry = self.topology._synced(run_id, index)
        with entry.lock:
            timeline = self.topology._timeline(entry, name)
            rewire = self._rewire(entry, timeline, name, step)
            rewire_step = int(timeline.steps[rewire])
        return {"index": index, "name": name, "rewire": rewire, "step": rewire_step,
                "tag": self.tag(run, index, rewire, rewire_step)}

    @staticmethod
    def tag(run: dict, index: int, rewire: int, step: int) -> str:
        """Names an answer's content: a rewire's toggles never change as a run grows."""
        return f"{run_key(run)}|{index}|{rewire}|{step}"

    @staticmethod
    def etag(tag: str, rows: int, cols: int) -> str:
        text = f"churn|{tag}|{rows}x{cols}"
        return '"' + hashlib.sha1(text.encode()).hexdigest()[:24] + '"'

    @staticmethod
    def _rewire(entry, timeline: LayerTimeline, name: str, step: int | None) -> int:
        if entry.error_step is not None and (step is None or int(step) >= entry.error_step):
            raise StoredDataError(entry.error)
        rewire = timeline.rewires if step is None else \
            bisect.bisect_right(timeline.steps, int(step)) - 1
        if rewire < 0:
            raise ValueError(f"step: no topology frame of layer {name!r} at or before step "
                             f"{step}")
        return rewire

    # ---- the answer -------------------------------------------------------------------------
    def churn(self, run: dict, layer: str, step: int | None, rows: int, cols: int) -> dict:
        """Toggle distribution, flip rates and the panel view of toggles (see the module
        docstring) of `layer` at the newest rewire at or before `step` (None: the newest)."""
        for name, value in (("rows", rows), ("cols", cols)):
            if not 1 <= value <= MAX_PANEL:
                raise ValueError(f"{name}: must be from 1 to {MAX_PANEL}, got {value}")
        run_id = run["id"]
        index = self.reader.layer_index(run_id, layer)
        name = self.reader.layers(run_id)[index].get("name", str(index))
        for attempt in range(2):
            entry = self.topology._synced(run_id, index)
            with entry.lock:
                timeline = self.topology._timeline(entry, name)
                rewire = self._rewire(entry, timeline, name, step)
                key = (self.tag(run, index, rewire, int(timeline.steps[rewire])), rows, cols)
                answer = self.answers.get(key)
                if answer is None:
                    try:
                        answer = self._answer(run, index, name, entry, timeline, rewire,
                                              rows, cols)
                    except IndexFormatError as error:
                        if attempt or not entry.use_stored:
                            raise StoredDataError(f"layer {name!r}: {error}") from None
                        LOG.warning("run %s layer %s: stored index not used (%s)", run_id,
                                    name, error)
                        self.topology._reset(entry, use_stored=False)
                        continue
                    self.answers.put(key, answer, _answer_bytes(answer))
            return {**answer, "requested_step": None if step is None else int(step)}
        raise AssertionError("unreachable")

    def _answer(self, run: dict, index: int, name: str, entry, timeline: LayerTimeline,
                rewire: int, panel_rows: int, panel_cols: int) -> dict:
        rows, cols = timeline.shape
        numel = rows * cols
        mask = self._mask(run, index, name, timeline, rewire)  # (numel,) bool
        if int(np.count_nonzero(mask)) != timeline.active[rewire]:
            raise IndexFormatError(f"rewire {rewire}: the mask has {np.count_nonzero(mask)} "
                                   f"active connections, the index {timeline.active[rewire]}")
        grown = self._grown(run, index, entry, timeline, rewire)  # (numel,) uint16 / uint32
        initial = timeline.segments[0].initial() if timeline.segments else \
            timeline.indexer.initial
        toggles = grown * 2  # 2·g + M_0 − M_r, in the totals' dtype (it holds 2·rewires + 1)
        toggles += initial.view(np.uint8)
        if np.count_nonzero(mask & (toggles == 0)):
            raise IndexFormatError(f"rewire {rewire}: a connection active now that the index "
                                   "never saw grow")
        toggles -= mask.view(np.uint8)
        counts = _histogram(toggles)
        present = np.flatnonzero(counts)
        if present.size == 0 or present[0] != 0:
            present = np.r_[0, present]
        pairs = [[int(count), int(counts[count]) if count < counts.size else 0]
                 for count in present]
        active = np.asarray(timeline.active[:rewire + 1], dtype=np.int64)  # (r+1,)
        grown_per_rewire = timeline.grown[1:rewire + 1]  # (r,)
        flips = 2 * grown_per_rewire + active[:-1] - active[1:]  # net added + net removed
        flip_rate = [[r, None if before == 0 else flipped / before]
                     for r, flipped, before in zip(range(1, rewire + 1), flips.tolist(),
                                                   active[:-1].tolist(), strict=True)]
        return {"layer": name, "index": index, "shape": [rows, cols],
                "step": int(timeline.steps[rewire]), "rewire": rewire, "numel": numel,
                "active": int(timeline.active[rewire]),
                "toggles": pairs, "toggles_total": int(toggles.sum(dtype=np.int64)),
                "flip_rate": flip_rate,
                "flip_steps": [int(s) for s in timeline.steps[1:rewire + 1]],
                "view": _panel(toggles.reshape(rows, cols), panel_rows, panel_cols)}

    def _mask(self, run: dict, index: int, name: str, timeline: LayerTimeline,
              rewire: int) -> np.ndarray:
        """(numel,) bool: the layer's mask at `rewire`, from the index where it holds it whole
        (a segment's checkpoint, a live run's newest rewire), else sought from the frames."""
        mask = timeline.checkpoint_mask(rewire)
        if mask is None:
            found, _ = self.reader.mask_at(run["id"], index, timeline.steps[rewire])
            if tuple(found.shape) != tuple(timeline.shape):
                raise StoredDataError(f"layer {name!r} changes shape to {list(found.shape)}")
            mask = found.reshape(-1)
        return np.asarray(mask, dtype=bool).reshape(-1)

    def _grown(self, run: dict, index: int, entry, timeline: LayerTimeline,
               rewire: int) -> np.ndarray:
        """(numel,) how many times each connection was net grown in rewires 1..rewire: the
        nearest cached total at a segment end before the rewire's part, plus the cohorts of
        the segments after it up to the rewire."""
        segments = timeline.segments
        numel = timeline.shape[0] * timeline.shape[1]
        # 2·g + 1 must fit: g ≤ rewires
        dtype = np.dtype(np.uint16 if 2 * timeline.rewires + 1 <= 0xFFFF else np.uint32)
        part = (bisect.bisect_left([segment.last for segment in segments], rewire)
                if segments and rewire <= segments[-1].last else len(segments))
        prefix = (run_key(run), index, entry.use_stored, dtype.str)
        start, counts = -1, None
        for position in range(part - 1, -1, -1):
            segment = segments[position]
            cached = self.totals.get((*prefix, segment.last, segment.last_seq))
            if cached is None:
                cached = segment.grown_totals()  # stored with the checkpoint (format 4 on)
            if cached is not None:
                start, counts = position, cached.astype(dtype)
                break
        if counts is None:
            counts = np.zeros(numel, dtype=dtype)
        for position in range(start + 1, part):  # segments stored before format 4
            segment = segments[position]
            segment.cohorts().count_grown(counts, segment.last)
            if position == part - 1 or (position + 1) % CACHED_EVERY == 0:
                self.totals.put((*prefix, segment.last, segment.last_seq), counts.copy())
        if part < len(segments):
            segments[part].cohorts().count_grown(counts, rewire)
        elif timeline.indexer is not None:
            timeline.indexer.open_cohorts().count_grown(counts, rewire)
        return counts


def _histogram(values: np.ndarray) -> np.ndarray:
    """np.bincount of a large unsigned array, a chunk at a time (its int64 copy stays small)."""
    counts = np.zeros(1, dtype=np.int64)
    for start in range(0, values.size, BINCOUNT_CHUNK):
        found = np.bincount(values[start:start + BINCOUNT_CHUNK])
        if found.size > counts.size:
            found[:counts.size] += counts
            counts = found
        else:
            counts[:found.size] += found
    return counts


def _panel(toggles: np.ndarray, panel_rows: int, panel_cols: int) -> dict:
    """Per pixel of a grid of at most panel_rows × panel_cols (the pixels of `/view`), the sum
    of its connections' toggle counts and how many connections it covers."""
    rows, cols = toggles.shape
    grid_rows, grid_cols = min(panel_rows, rows), min(panel_cols, cols)
    pixels = PixelMap(rows, cols, grid_rows, grid_cols)
    sums = toggles
    if grid_cols < cols:  # along the contiguous axis first: the second pass is smaller
        sums = np.add.reduceat(sums, pixels.col_starts, axis=1, dtype=np.int64)
    if grid_rows < rows:
        sums = np.add.reduceat(sums, pixels.row_starts, axis=0, dtype=np.int64)
    sums = sums.astype(np.int64, copy=False)  # (gr, gc)
    possible = pixels.possible()  # (gr, gc)
    means = sums / possible
    return {"grid": [grid_rows, grid_cols], "exact": grid_rows == rows and grid_cols == cols,
            "dtype": "u4",
            # a pixel's sum past 2^32 − 1 (a billion toggles) is shown saturated
            "toggles": _u4(np.minimum(sums, U4_MAX)), "possible": _u4(possible),
            "max_mean": float(means.max()) if means.size else 0.0}


def _u4(counts: np.ndarray) -> str:
    return base64.b64encode(counts.astype("<u4").tobytes()).decode("ascii")


def _answer_bytes(answer: dict) -> int:
    view = answer["view"]
    return (len(view["toggles"]) + len(view["possible"])
            + 32 * (len(answer["toggles"]) + 2 * len(answer["flip_rate"])) + 512)

