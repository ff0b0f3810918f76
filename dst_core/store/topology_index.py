"""The stored cohort index (dst_core.store.cohorts): its table, the writer's side and the frames
replayed into it.

Whoever stores a run's topology frames indexes them in the same transaction: the store keeps
one LayerIndexer per layer of each run it writes and inserts a segment every SEGMENT_REWIRES
rewires, and the rest when the run ends. So the index never runs ahead of the frames, and a
reader finds at most SEGMENT_REWIRES - 1 frames of a layer beyond it (a live run), or all of
them (a run recorded before the index existed, an imported one): those it replays itself.

Indexing never refuses a frame the store accepts. A frame that does not fit the layer's
history (a delta removing an inactive connection, a different shape) stops that layer's
index where it is; readers then replay from there and answer the same error as before.
A writer that restarts (the server while a remote run is ingested, a resumed script) resumes
from the last stored segment's checkpoint and the frames after it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator

import numpy as np

from dst_core.events import LOCAL_CHANGES
from dst_core.store import codec
from dst_core.store.cohorts import IndexFormatError, LayerIndexer, Segment

LOG = logging.getLogger(__name__)
FRAME_BATCH = 64  # stored frames read per fetch while replaying: bounded memory
TABLE_SQL = ("CREATE TABLE IF NOT EXISTS topology_index (run_id TEXT NOT NULL, "
             "layer INTEGER NOT NULL, first_rewire INTEGER NOT NULL, "
             "last_rewire INTEGER NOT NULL, last_seq INTEGER NOT NULL, header TEXT NOT NULL, "
             "blob BLOB NOT NULL, PRIMARY KEY (run_id, layer, first_rewire))")
COLUMNS = {"run_id", "layer", "first_rewire", "last_rewire", "last_seq", "header", "blob"}
_STOPPED = object()  # a layer whose index stopped at a frame that did not fit


# ---- rows ---------------------------------------------------------------------------------------
def stored_segments(db_of, run_id: str, layer: int, after_rewire: int = -1) -> list[Segment]:
    """The layer's stored segments after `after_rewire`, as long as they follow each other
    (the first one starting at after_rewire + 1) and read; their blobs load on first use
    through `db_of()`, the calling thread's connection."""
    rows = db_of().execute(
        "SELECT first_rewire, last_rewire, last_seq, header FROM topology_index "
        "WHERE run_id = ? AND layer = ? AND first_rewire > ? ORDER BY first_rewire",
        (run_id, layer, after_rewire)).fetchall()
    segments: list[Segment] = []
    expected = after_rewire + 1
    for first, last, last_seq, header in rows:
        def load(first=first) -> bytes:
            row = db_of().execute(
                "SELECT blob FROM topology_index WHERE run_id = ? AND layer = ? "
                "AND first_rewire = ?", (run_id, layer, first)).fetchone()
            if row is None or not isinstance(row[0], bytes):
                raise IndexFormatError(f"segment from rewire {first}: its row is gone")
            return row[0]
        try:
            segment = Segment.from_row(header, last_seq, load)
        except IndexFormatError as error:
            LOG.info("run %s layer %s: index stops at rewire %s (%s)", run_id, layer, first,
                     error)
            break
        if (segment.first, segment.last) != (first, last) or first != expected or \
                (segments and segment.shape != segments[0].shape):
            break
        segments.append(segment)
        expected = last + 1
    return segments


def insert_segment(db: sqlite3.Connection, run_id: str, layer: int, segment: Segment) -> None:
    header, blob = segment.to_row()
    db.execute("INSERT OR IGNORE INTO topology_index VALUES (?, ?, ?, ?, ?, ?, ?)",
               (run_id, layer, segment.first, segment.last, segment.last_seq, header, blob))


# ---- frames -------------------------------------------------------------------------------------
def stored_frames(db: sqlite3.Connection, run_id: str, layer: int, after_seq: int,
                  before_seq: int | None = None) -> Iterator[sqlite3.Row]:
    """The layer's stored topology frames with after_seq < seq (< before_seq), in order."""
    limit = before_seq if before_seq is not None else 2**62
    while True:
        rows = db.execute(
            "SELECT seq, step, payload, blob FROM events WHERE run_id = ? AND layer = ? "
            "AND type = 'topology' AND seq > ? AND seq < ? ORDER BY seq LIMIT ?",
            (run_id, layer, after_seq, limit, FRAME_BATCH)).fetchall()
        yield from rows
        if len(rows) < FRAME_BATCH:
            return
        after_seq = int(rows[-1][0])


def take(indexer: LayerIndexer | None, seq: int, step: int, shape: tuple[int, int],
         mask: np.ndarray | None, added: np.ndarray, removed: np.ndarray,
         active: int | None = None, checked: bool = False) -> LayerIndexer:
    """One frame into a layer's indexer (the first frame, a keyframe, starts it). ValueError
    when the frame does not fit the history. `checked`: the lists are known ascending and
    distinct (the store checked them on the way in)."""
    if indexer is None:
        if mask is None:
            raise codec.FrameError("the layer's first frame is a delta, not a keyframe")
        return LayerIndexer(mask, shape, step, seq)
    if shape != indexer.shape:
        raise codec.FrameError(f"shape {list(shape)} differs from {list(indexer.shape)}")
    if mask is not None:
        indexer.take_mask(step, seq, mask)
    else:
        indexer.take_changes(step, seq, added, removed, active, checked=checked)
    return indexer


def take_stored(indexer: LayerIndexer | None, row) -> LayerIndexer:
    """A stored frame row (seq, step, payload, blob) into the indexer."""
    header = json.loads(row[2])
    shape = (int(header["shape"][0]), int(header["shape"][1]))
    mask, added, removed = codec.stored_changes(header, row[3])
    return take(indexer, int(row[0]), int(row[1]), shape, mask, added, removed,
                int(header["active"]))


def resumed(db_of, run_id: str, layer: int) -> tuple[list[Segment], LayerIndexer | None]:
    """The stored segments and an indexer at the newest one's checkpoint (None: no segment)."""
    segments = stored_segments(db_of, run_id, layer)
    if not segments:
        return [], None
    return segments, LayerIndexer.resume(segments[0], segments[-1])


# ---- the writer's side --------------------------------------------------------------------------
class IndexWriter:
    """A store's indexers of the runs it writes, one per (run, layer); called inside the
    store's write transaction with each topology frame it inserts."""

    def __init__(self, db_of):
        self._db_of = db_of  # the calling thread's connection (the transaction's)
        self._layers: dict[tuple[str, int], object] = {}

    def take(self, db: sqlite3.Connection, run_id: str, seq: int, step: int,
             payload: dict) -> None:
        """Index one inserted frame (already checked by the store)."""
        layer = int(payload["index"])
        key = (run_id, layer)
        indexer = self._layers.get(key)
        if indexer is None and key not in self._layers:
            indexer = self._resume(db, run_id, layer, before_seq=seq)
        if indexer is _STOPPED or (indexer is not None and seq <= indexer.last_seq):
            return
        shape = (int(payload["shape"][0]), int(payload["shape"][1]))
        try:
            changes = payload.get(LOCAL_CHANGES) if indexer is not None else None
            if changes is not None:  # a keyframe of a rewire: its changes, not a mask diff
                mask, (added, removed), checked = None, changes, False
            else:
                (mask, added, removed), checked = codec.payload_changes(payload), True
            indexer = take(indexer, seq, step, shape, mask, added, removed,
                           int(payload["active"]), checked)
        except (ValueError, KeyError, TypeError) as error:
            LOG.info("run %s layer %s: index stops at seq %s (%s)", run_id, layer, seq, error)
            self._layers[key] = _STOPPED
            return
        self._layers[key] = indexer
        if indexer.due:
            insert_segment(db, run_id, layer, indexer.cut())

    def _resume(self, db: sqlite3.Connection, run_id: str, layer: int, before_seq: int):
        """This run's layer as stored so far: its segments' checkpoint, then the frames after."""
        try:
            segments, indexer = resumed(self._db_of, run_id, layer)
            after = segments[-1].last_seq if segments else 0
            for row in stored_frames(db, run_id, layer, after, before_seq):
                indexer = take_stored(indexer, row)
                if indexer.due:
                    insert_segment(db, run_id, layer, indexer.cut())
            return indexer
        except (ValueError, KeyError, TypeError) as error:
            LOG.info("run %s layer %s: index not resumed (%s)", run_id, layer, error)
            return _STOPPED

    def finish(self, db: sqlite3.Connection, run_id: str) -> None:
        """The run ended: store every layer's rewires since its last segment."""
        for key in [key for key in list(self._layers) if key[0] == run_id]:
            indexer = self._layers.pop(key)
            if isinstance(indexer, LayerIndexer):
                segment = indexer.cut()
                if segment is not None:
                    insert_segment(db, run_id, key[1], segment)

    def forget(self, run_id: str) -> None:
        """Drop the run's indexers (its transaction failed, or it was deleted): the next frame
        resumes them from what the store holds."""
        for key in [key for key in list(self._layers) if key[0] == run_id]:
            self._layers.pop(key, None)
