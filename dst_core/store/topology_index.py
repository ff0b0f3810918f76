"""The stored cohort index (dst_core.store.cohorts): its table, the writer's side and the frames
replayed into it.

Whoever stores a run's topology frames indexes them in the same transaction: the store keeps
one LayerIndexer per layer of each run it writes and inserts a segment every SEGMENT_REWIRES
rewires, and the rest when the run ends. So the index never runs ahead of the frames, and a
reader finds at most SEGMENT_REWIRES - 1 frames of a layer beyond it (a live run), or all of
them (a run recorded before the index existed, an imported one): those it replays itself.

The indexers are also what the store checks a frame against where it enters: the layer's
current mask is the indexer's state, so no frame is decoded twice. A frame that does not fit
its layer's history (schema.frame_misfit: a delta removing an inactive connection, another
shape, a delta before any keyframe, a count that disagrees with the bits, a layer the run's
meta does not declare) is refused, and nothing of its batch is stored. One that an older
version stored anyway is skipped, here as by every other reader (masks.py), so the index and
mask seek agree. A frame that does not decode, or whose step goes back, stops that layer's
index where it is; readers then answer that error for later steps. A writer that restarts
(the server while a remote run is ingested, a resumed script) resumes from the last stored
segment's checkpoint and the frames after it.
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
from dst_core.store.schema import InvalidValue, frame_misfit, packed_count, parse_layers

LOG = logging.getLogger(__name__)
FRAME_BATCH = 64  # stored frames read per fetch while replaying: bounded memory
TABLE_SQL = ("CREATE TABLE IF NOT EXISTS topology_index (run_id TEXT NOT NULL, "
             "layer INTEGER NOT NULL, first_rewire INTEGER NOT NULL, "
             "last_rewire INTEGER NOT NULL, last_seq INTEGER NOT NULL, header TEXT NOT NULL, "
             "blob BLOB NOT NULL, PRIMARY KEY (run_id, layer, first_rewire))")
COLUMNS = {"run_id", "layer", "first_rewire", "last_rewire", "last_seq", "header", "blob"}
_STOPPED = object()  # a layer whose index stopped at a frame that did not decode
NO_LIMIT = 2**63 - 1  # SQLite's largest integer: no seq is above it


class Misfit(ValueError):
    """A frame that does not fit its layer's history (schema.frame_misfit): refused where it
    enters, skipped by a reader (nothing of it is taken)."""


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
def newest_frame_seq(db: sqlite3.Connection, run_id: str, layer: int) -> int | None:
    """The seq of the layer's newest stored frame (None: none), from the frames index alone:
    a reader whose index already holds it need not scan the events after it (a whole-model
    answer asks this of every layer)."""
    row = db.execute("SELECT MAX(seq) FROM events INDEXED BY events_frames WHERE run_id = ? "
                     "AND layer = ?", (run_id, layer)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def stored_frames(db: sqlite3.Connection, run_id: str, layer: int, after_seq: int,
                  before_seq: int | None = None) -> Iterator[sqlite3.Row]:
    """The layer's stored topology frames with after_seq < seq (< before_seq), in order."""
    limit = before_seq if before_seq is not None else NO_LIMIT
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
         active: int, checked: bool = False, *, layer_shape: tuple[int, int] | None = None,
         bits_active: int | None = None) -> LayerIndexer:
    """One frame into a layer's indexer (the first fitting keyframe starts it): a keyframe's
    `mask`, or (mask None) a delta's net changes, or a keyframe's changes with `bits_active`,
    the count of its bits (a recorder's keyframe at a rewire: no mask diff). Misfit, nothing
    taken, when the frame does not fit the layer's history (`layer_shape`: the meta's matrix,
    else the first keyframe's); ValueError when it cannot be taken otherwise (a step that
    goes back). `checked`: the lists are known ascending and distinct (the store checked them
    on the way in)."""
    expected = layer_shape if layer_shape is not None else \
        (indexer.shape if indexer is not None else None)
    if mask is not None:  # a keyframe's whole mask: its changes are the difference
        misfit = frame_misfit(expected, shape, active, bits_active=int(np.count_nonzero(mask)))
        if misfit is not None:
            raise Misfit(misfit)
        if indexer is None:
            return LayerIndexer(mask, shape, step, seq)
        indexer.take_mask(step, seq, mask)
        return indexer
    if bits_active is not None:  # a keyframe's own count first, then its changes
        misfit = frame_misfit(expected, shape, active, bits_active=bits_active)
        if misfit is not None:
            raise Misfit(misfit)
    # Looked up as intp (numpy gathers fastest with it); the indexer keeps the frame's own.
    lookup = [np.asarray(indices).reshape(-1).astype(np.intp, copy=False)
              for indices in (added, removed)]
    if indexer is not None and not checked:  # in-process lists: in range before looking up
        for name, indices in zip(("added", "removed"), lookup, strict=True):
            if indices.size and (indices.min() < 0 or indices.max() >= indexer.numel):
                raise Misfit(f"{name}: an index outside a layer of {indexer.numel} connections")
    misfit = frame_misfit(
        expected, shape, active, added=lookup[0], removed=lookup[1],
        active_at=(lambda indices: indexer.born[indices] >= 0) if indexer is not None else None,
        active_now=indexer.active if indexer is not None else 0)
    if misfit is not None:
        raise Misfit(misfit if bits_active is None else f"its changes: {misfit}")
    indexer.take_changes(step, seq, added, removed, active, checked=checked)
    return indexer


def take_stored(indexer: LayerIndexer | None, row,
                layer_shape: tuple[int, int] | None = None) -> LayerIndexer:
    """A stored frame row (seq, step, payload, blob) into the indexer; Misfit when a reader
    skips it (see `take`), FrameError when it does not decode."""
    header = json.loads(row[2])
    shape = (int(header["shape"][0]), int(header["shape"][1]))
    mask, added, removed = codec.stored_changes(header, row[3])
    return take(indexer, int(row[0]), int(row[1]), shape, mask, added, removed,
                int(header["active"]), layer_shape=layer_shape)


def resumed(db_of, run_id: str, layer: int) -> tuple[list[Segment], LayerIndexer | None]:
    """The stored segments and an indexer at the newest one's checkpoint (None: no segment)."""
    segments = stored_segments(db_of, run_id, layer)
    if not segments:
        return [], None
    return segments, LayerIndexer.resume(segments[0], segments[-1], segments)


# ---- the writer's side --------------------------------------------------------------------------
class IndexWriter:
    """A store's indexers of the runs it writes, one per (run, layer), and each run's declared
    layers; called inside the store's write transaction with each topology frame it inserts,
    which it checks against the layer's history before taking it in."""

    def __init__(self, db_of):
        self._db_of = db_of  # the calling thread's connection (the transaction's)
        self._layers: dict[tuple[str, int], object] = {}
        self._declared: dict[str, list[dict]] = {}  # run -> its first meta event's layers

    def take(self, db: sqlite3.Connection, run_id: str, seq: int, step: int,
             payload: dict, field: str = "events") -> None:
        """Check one inserted frame (its header already checked by the store) against its
        layer and index it. InvalidValue naming the frame (`field`, its seq and layer) and
        what is wrong when it does not fit: the store's transaction then stores nothing."""
        layer, name = int(payload["index"]), payload["layer"]
        where = f"topology frame at seq {seq} (layer {name!r}, index {layer})"
        declared = self._declared_layers(db, run_id)
        if layer >= len(declared):
            raise InvalidValue(f"{field}.index", f"{where}: the run's meta event declares "
                               f"{len(declared)} layers" + ("" if declared else
                               " (a meta event listing the layers comes before their frames)"))
        if declared[layer]["name"] != name:
            raise InvalidValue(f"{field}.layer", f"{where}: layer {layer} of the run's meta "
                               f"event is {declared[layer]['name']!r}")
        layer_shape = (int(declared[layer]["matrix"][0]), int(declared[layer]["matrix"][1]))
        key = (run_id, layer)
        indexer = self._layers.get(key)
        if indexer is None and key not in self._layers:
            indexer = self._resume(db, run_id, layer, seq, layer_shape)
        if indexer is not None and indexer is not _STOPPED and seq <= indexer.last_seq:
            return
        shape = (int(payload["shape"][0]), int(payload["shape"][1]))
        keyframe, active = bool(payload["keyframe"]), int(payload["active"])
        try:
            if indexer is _STOPPED:
                # The layer's stored frames could not be replayed (one does not decode, or its
                # steps go back): its mask is unknown, so only what the frame shows alone is
                # checked, and it is not indexed.
                self._check_alone(layer_shape, shape, active, keyframe, payload)
                return
            changes = payload.get(LOCAL_CHANGES) if indexer is not None and keyframe else None
            if changes is not None:  # a recorder's keyframe at a rewire: its changes, no diff
                bits = codec.keyframe_bits(payload)
                indexer = take(indexer, seq, step, shape, None, changes[0], changes[1], active,
                               layer_shape=layer_shape,
                               bits_active=packed_count(bits, shape[0] * shape[1]))
            else:
                mask, added, removed = codec.payload_changes(payload)
                indexer = take(indexer, seq, step, shape, mask, added, removed, active,
                               checked=True, layer_shape=layer_shape)
        except Misfit as error:
            raise InvalidValue(field, f"{where}: {error}") from None
        except (ValueError, KeyError, TypeError) as error:
            LOG.info("run %s layer %s: index stops at seq %s (%s)", run_id, layer, seq, error)
            self._layers[key] = _STOPPED
            return
        self._layers[key] = indexer
        if indexer.due:
            insert_segment(db, run_id, layer, indexer.cut())

    @staticmethod
    def _check_alone(layer_shape, shape, active: int, keyframe: bool, payload: dict) -> None:
        # A delta's count cannot be checked without the mask: its shape alone is.
        bits_active = packed_count(codec.keyframe_bits(payload), shape[0] * shape[1]) \
            if keyframe else active
        misfit = frame_misfit(layer_shape, shape, active, bits_active=bits_active)
        if misfit is not None:
            raise Misfit(misfit)

    def _declared_layers(self, db: sqlite3.Connection, run_id: str) -> list[dict]:
        """The layers the run's first meta event declares (a batch's own meta event counts: it
        is inserted before its frames are taken); kept once there are some."""
        layers = self._declared.get(run_id)
        if layers is None:
            row = db.execute("SELECT payload FROM events WHERE run_id = ? AND type = 'meta' "
                             "ORDER BY seq LIMIT 1", (run_id,)).fetchone()
            layers = parse_layers(row[0] if row else None)
            if layers:
                self._declared[run_id] = layers
        return layers

    def _resume(self, db: sqlite3.Connection, run_id: str, layer: int, before_seq: int,
                layer_shape: tuple[int, int]):
        """This run's layer as stored so far: its segments' checkpoint, then the frames after
        (one that does not fit is skipped, as every reader skips it)."""
        try:
            segments, indexer = resumed(self._db_of, run_id, layer)
            after = segments[-1].last_seq if segments else 0
            for row in stored_frames(db, run_id, layer, after, before_seq):
                try:
                    indexer = take_stored(indexer, row, layer_shape)
                except Misfit:
                    continue
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
        self._declared.pop(run_id, None)

    def forget(self, run_id: str) -> None:
        """Drop the run's indexers and layers (its transaction failed, or it was deleted): the
        next frame resumes them from what the store holds."""
        for key in [key for key in list(self._layers) if key[0] == run_id]:
            self._layers.pop(key, None)
        self._declared.pop(run_id, None)
