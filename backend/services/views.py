"""Panel views of a recorded layer: what R×C pixels show of one layer at one rewire.

The browser never receives a mask larger than its panel: for one layer at one rewire the
server bins the mask into a grid of at most R×C pixels and sends, per pixel, how many of the
connections it covers are kept, added, removed at this rewire, and how many there are. Pixel
(i, j) of a gr×gc grid covers matrix rows [⌊i·rows/gr⌋, ⌊(i+1)·rows/gr⌋) and columns
[⌊j·cols/gc⌋, ⌊(j+1)·cols/gc⌋), so a layer no larger than its panel is shown exactly.

Rewire r of a run is the r-th distinct step at which any topology frame is stored (rewire 0:
the initial masks). Counting is vectorised: two lookup tables give each matrix row's and
column's pixel; the active mask is binned with two `np.add.reduceat`s (columns, then rows)
or, when pixels hold few connections, one `np.bincount` of its active indices' pixels, the
added and removed connections with one bincount each; masks come from masks.py's cache.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import math
import threading

import numpy as np

from dst_core.heads import check_layout
from dst_core.store.masks import BytesLRU, FrameChains, NoFittingFrame, run_key
from dst_core.store.reader import RunReader
from dst_core.store.run_store import RunStore

MAX_PANEL = 2048  # pixels per side of one panel: more than any screen shows
MAX_INDEXED_RUNS = 1024  # runs whose rewire steps are kept in memory
ANSWERS_BYTES = 64 * 1024 * 1024  # recent answers: every viewer of a live run asks for the
#                                   same new rewire, and a page scrubbing back asks again
COUNT_DTYPES = (("u1", 0xFF), ("u2", 0xFFFF), ("u4", 0xFFFFFFFF))
COUNT_FIELDS = ("kept", "added", "removed", "possible")


class UnknownError(LookupError):
    """No such layer, or no rewire at or before the step asked for (a 404)."""


class _FrameIndex:
    """The ascending distinct steps of a run's topology frames and each layer's newest
    `active`, extended as a live run grows (only frames past the last seq scanned are read)."""

    def __init__(self) -> None:
        self.scanned_seq = -1
        self.steps: list[int] = []
        self.active: dict[int, object] = {}  # layer index → `active` of its newest frame
        self.lock = threading.Lock()


class LayerViews:
    """Rewire lists and panel views of a data folder's runs (one per server: it owns the
    mask cache)."""

    def __init__(self, store: RunStore, cache: BytesLRU | None = None):
        self.store = store
        self.chains = FrameChains(store, cache)
        self.reader = RunReader(store, self.chains)
        self.answers = BytesLRU(ANSWERS_BYTES)
        self._indices: dict[str, _FrameIndex] = {}
        self._lock = threading.Lock()

    # ---- rewires ------------------------------------------------------------------------------
    def rewire_steps(self, run: dict) -> list[int]:
        """Ascending distinct steps of stored topology frames: rewire r is steps[r]."""
        return self._index(run)[0]

    def _index(self, run: dict) -> tuple[list[int], dict[int, object]]:
        key = run_key(run)
        with self._lock:
            index = self._indices.get(key)
            if index is None:
                if len(self._indices) >= MAX_INDEXED_RUNS:
                    self._indices.pop(next(iter(self._indices)))
                index = self._indices[key] = _FrameIndex()
        with index.lock:
            rows = self.store.db.execute(
                "SELECT seq, step, layer, CASE WHEN json_valid(payload) THEN "
                "json_extract(payload, '$.active') END FROM events WHERE run_id = ? AND seq > ? "
                "AND layer IS NOT NULL ORDER BY seq", (run["id"], index.scanned_seq)).fetchall()
            if rows:
                fresh = sorted({int(row[1]) for row in rows})
                if index.steps and fresh[0] <= index.steps[-1]:  # a step stored late, or again
                    index.steps = sorted(set(index.steps) | set(fresh))
                else:
                    index.steps.extend(fresh)
                index.active.update((int(row[2]), row[3]) for row in rows)  # newest wins
                index.scanned_seq = int(rows[-1][0])
            return list(index.steps), dict(index.active)

    def rewires(self, run: dict) -> dict:
        """The answer of GET /rewires: steps, the newest seq and one entry per layer (its
        density and active count at its newest stored frame, else as planned in the meta)."""
        run_id = run["id"]
        last = self.store.db.execute("SELECT MAX(seq) FROM events WHERE run_id = ?",
                                     (run_id,)).fetchone()[0]
        steps, newest_active = self._index(run)
        layers = []
        for index, entry in enumerate(self.reader.layers(run_id)):
            rows, cols = entry["matrix"]
            active = newest_active.get(index)
            if isinstance(active, bool) or not isinstance(active, (int, float)) \
                    or not math.isfinite(active) or not 0 <= active <= rows * cols:
                active = None
            active = None if active is None else int(active)
            density = active / (rows * cols) if active is not None else entry["density"]
            layers.append({"index": index, "name": entry["name"], "shape": [rows, cols],
                           "weight_shape": entry["weight_shape"], "kind": entry["kind"],
                           "output_axis": entry["output_axis"], "layer_type": entry["layer_type"],
                           "heads": _has_heads(entry), "density": density, "active": active})
        return {"steps": steps, "last_seq": -1 if last is None else int(last), "layers": layers}

    # ---- one panel ----------------------------------------------------------------------------
    def locate(self, run: dict, layer: str, step: int | None) -> dict:
        """Which layer, rewire and frames a view at `step` (None: the newest) shows, without
        reading any blob (enough for an ETag). UnknownError for an unknown layer or a step
        before the first rewire."""
        run_id = run["id"]
        try:
            index = self.reader.layer_index(run_id, layer)
        except ValueError as error:
            raise UnknownError(str(error)) from None
        entry = self.reader.layers(run_id)[index]
        steps = self.rewire_steps(run)
        rewire = len(steps) - 1 if step is None else bisect.bisect_right(steps, step) - 1
        if rewire < 0:
            where = "" if step is None else f" at or before step {step}"
            raise UnknownError(f"step: no rewire in this run{where}")
        rewire_step = steps[rewire]
        chain = self.chains.chain(run_id, index, rewire_step)
        if not chain:
            raise UnknownError(f"step: no topology frame of layer {entry['name']!r} at or before "
                               f"step {rewire_step}")
        changed = [frame for frame in chain if frame.step == rewire_step] if rewire > 0 else []
        before = None  # the frame before the first one stored at this rewire
        if changed:
            first = chain.index(changed[0])
            before = chain[first - 1] if first > 0 else \
                self.chains.frame_before(run_id, index, changed[0].seq)
        tag = (f"{run_key(run)}|{index}|{rewire_step}|{chain[-1].seq}|"
               f"{before.seq if before else -1}|{len(changed)}")
        return {"index": index, "entry": entry, "rewire": rewire, "step": rewire_step,
                "chain": chain, "changed": changed, "before": before, "tag": tag}

    @staticmethod
    def etag(located: dict, panel_rows: int, panel_cols: int) -> str:
        """Names the answer's content: the frames it is made of and the panel size."""
        text = f"{located['tag']}|{panel_rows}x{panel_cols}"
        return '"' + hashlib.sha1(text.encode()).hexdigest()[:24] + '"'

    def view(self, run: dict, located: dict, panel_rows: int, panel_cols: int) -> dict:
        """Per-pixel kept/added/removed/possible counts of the located layer and rewire
        (an answer is made once and kept while it is asked for; callers must not edit it)."""
        for name, value in (("rows", panel_rows), ("cols", panel_cols)):
            if not 1 <= value <= MAX_PANEL:
                raise ValueError(f"{name}: must be from 1 to {MAX_PANEL}, got {value}")
        key = (located["tag"], panel_rows, panel_cols)
        answer = self.answers.get(key)
        if answer is None:
            answer = self._view(run, located, panel_rows, panel_cols)
            self.answers.put(key, answer, sum(len(answer[field]) for field in COUNT_FIELDS))
        return answer

    def _view(self, run: dict, located: dict, panel_rows: int, panel_cols: int) -> dict:
        index, entry = located["index"], located["entry"]
        rows, cols = entry["matrix"]
        mask = self.chains.mask(run, index, located["chain"], rows * cols,
                                (rows, cols))  # (rows*cols,)
        added, removed = self._changes(run, located, mask)
        grid_rows, grid_cols = min(panel_rows, rows), min(panel_cols, cols)
        pixels = PixelMap(rows, cols, grid_rows, grid_cols)
        active_counts = pixels.count_dense(mask.reshape(rows, cols))  # (gr, gc)
        added_counts = pixels.count_sparse(added)
        removed_counts = pixels.count_sparse(removed)
        possible = pixels.possible()
        dtype = next(name for name, top in COUNT_DTYPES if int(possible.max()) <= top)

        def encoded(counts: np.ndarray) -> str:
            return base64.b64encode(counts.astype("<" + dtype).tobytes()).decode("ascii")

        return {"layer": entry["name"], "index": index, "step": located["step"],
                "rewire": located["rewire"], "shape": [rows, cols],
                "weight_shape": entry["weight_shape"], "grid": [grid_rows, grid_cols],
                "exact": grid_rows == rows and grid_cols == cols,
                "active": int(active_counts.sum()), "added_total": int(added.size),
                "removed_total": int(removed.size), "dtype": dtype,
                "kept": encoded(active_counts - added_counts), "added": encoded(added_counts),
                "removed": encoded(removed_counts), "possible": encoded(possible)}

    def _changes(self, run: dict, located: dict,
                 mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted flat indices net added and net removed at the located rewire: the stored
        delta, or (a keyframe, or several frames at one step) the difference to the mask
        before this rewire."""
        changed, before, index = located["changed"], located["before"], located["index"]
        numel, shape = mask.size, tuple(located["entry"]["matrix"])
        if len(changed) == 1 and not changed[0].keyframe:  # (nothing, if it was skipped)
            return self.chains.taken(run, index, changed[0], numel, shape)
        if not changed or before is None:  # unchanged, or the layer's first frame
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        try:
            previous = self.chains.mask(
                run, index, self.chains.chain_to(run["id"], index, before), numel, shape)
        except NoFittingFrame:  # every frame before it was skipped: the layer's first one
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        return np.flatnonzero(mask & ~previous), np.flatnonzero(previous & ~mask)


class PixelMap:
    """Which pixel each matrix row and column falls in, for a grid over a (rows, cols) matrix:
    the pixel rule of the module docstring as two lookup tables."""

    def __init__(self, rows: int, cols: int, grid_rows: int, grid_cols: int):
        self.shape, self.grid = (rows, cols), (grid_rows, grid_cols)
        self.row_starts = (np.arange(grid_rows, dtype=np.int64) * rows) // grid_rows  # (gr,)
        self.col_starts = (np.arange(grid_cols, dtype=np.int64) * cols) // grid_cols  # (gc,)
        self.row_widths = np.diff(np.r_[self.row_starts, rows])  # (gr,)
        self.col_widths = np.diff(np.r_[self.col_starts, cols])  # (gc,)
        self.row_pixel = np.repeat(np.arange(grid_rows, dtype=np.int64), self.row_widths)
        self.col_pixel = np.repeat(np.arange(grid_cols, dtype=np.int64), self.col_widths)

    def possible(self) -> np.ndarray:
        return np.outer(self.row_widths, self.col_widths)  # (gr, gc)

    def count_sparse(self, indices: np.ndarray) -> np.ndarray:
        """(gr, gc) int64 counts of the flat `indices` per pixel: one bincount."""
        grid_rows, grid_cols = self.grid
        if indices.size == 0:
            return np.zeros(self.grid, dtype=np.int64)
        rows, cols = np.divmod(indices, self.shape[1])  # (N,), (N,)
        pixels = self.row_pixel[rows] * grid_cols + self.col_pixel[cols]
        return np.bincount(pixels, minlength=grid_rows * grid_cols).reshape(self.grid)

    def count_dense(self, mask: np.ndarray) -> np.ndarray:
        """(gr, gc) int64 counts of the true entries of a (rows, cols) bool mask per pixel.

        `np.add.reduceat` pays per group: with few connections per pixel (a big panel of a
        wide layer) counting the active indices' pixels is several times faster."""
        rows, cols = self.shape
        grid_rows, grid_cols = self.grid
        if self.grid == self.shape:
            return mask.astype(np.int64)
        if rows * grid_cols > mask.size // 32:  # fewer than ~32 entries per first-pass group
            return self.count_sparse(np.flatnonzero(mask))
        counts = mask.view(np.uint8)
        if grid_cols < cols:  # along the contiguous axis first: the second pass is smaller
            counts = np.add.reduceat(counts, self.col_starts, axis=1, dtype=np.int32)
        if grid_rows < rows:
            counts = np.add.reduceat(counts, self.row_starts, axis=0, dtype=np.int64)
        return counts.astype(np.int64)


def _has_heads(entry: dict) -> bool:
    """Whether `/topology` answers `heads` for this layer: its stored head layout is a dict
    that tiles the layer's matrix (one that does not is ignored there, so it is here too)."""
    layout = entry.get("heads")
    if not isinstance(layout, dict):
        return False
    try:
        check_layout(layout, tuple(entry["matrix"]))
    except (ValueError, TypeError):
        return False
    return True
