"""Rebuilding a layer's mask at a stored frame, from the nearest mask already rebuilt.

A mask is the newest keyframe at or before the frame plus the deltas after it (at most K-1
of them), so seeking costs the same at step 10 and at step 10 million. Scrubbing asks for
neighbouring rewires, so rebuilt masks are kept in a cache bounded by bytes: the next
request starts from the nearest cached mask, forward through later deltas or backward
through earlier ones (net deltas are disjoint, so undoing one is exact), instead of from the
keyframe. Stored frames never change, so a cached mask stays valid while a run is live.

A stored frame that does not fit its layer's history (schema.frame_misfit: stored by an older
version, which did not check) is skipped, as the cohort index skips it: the mask stays what
it was. Whether each delta was taken is kept with the masks, so undoing one is exact too.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from dst_core.store import codec
from dst_core.store.codec import FrameError
from dst_core.store.run_store import RunStore
from dst_core.store.schema import frame_misfit
from dst_core.store.topology_index import Misfit

CACHE_BYTES = 256 * 1024 * 1024  # rebuilt masks, 1 byte per connection (a ResNet-50: ~25 MB)


class StoredDataError(ValueError):
    """A stored frame or header that cannot be read: a clear answer instead of a traceback."""


class NoFittingFrame(StoredDataError):
    """Every keyframe of the layer at or before the frame asked for was skipped (none fits)."""


FIT_BYTES = 16  # what the cache counts for one delta's verdict (taken or skipped)


@dataclass(frozen=True)
class Frame:
    """A stored topology frame's place in its layer's chain (its blob is read only if needed)."""

    seq: int
    step: int
    keyframe: bool


class BytesLRU:
    """Least-recently-used values bounded by their bytes; thread-safe. Holds rebuilt masks
    and decoded deltas (read-only arrays, or tuples of them: callers copy to edit) and the
    views' answers (their size given)."""

    def __init__(self, limit_bytes: int = CACHE_BYTES):
        self.limit_bytes = limit_bytes
        self.size = 0
        self._items: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: tuple, value, nbytes: int | None = None) -> None:
        """Keep `value`; arrays (alone or in a tuple) are made read-only and counted by
        their bytes, anything else by the `nbytes` given."""
        if nbytes is None:
            arrays = value if isinstance(value, tuple) else (value,)
            nbytes = sum(array.nbytes for array in arrays)
            for array in arrays:
                array.flags.writeable = False
        if nbytes > self.limit_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= old[1]
            self._items[key] = (value, nbytes)
            self.size += nbytes
            while self.size > self.limit_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self.size -= evicted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0

    def __len__(self) -> int:
        return len(self._items)


def run_key(run: dict) -> str:
    """A run's identity for caches: its id and creation time (a run deleted and another one
    imported under the same id must not see the old run's masks)."""
    return f"{run['id']}@{run.get('created_at')}"


class FrameChains:
    """A layer's stored frames as chains from a keyframe, and masks rebuilt along them."""

    def __init__(self, store: RunStore, cache: BytesLRU | None = None):
        self.store = store
        self.cache = cache if cache is not None else BytesLRU()

    def chain(self, run_id: str, index: int, step: int) -> list[Frame]:
        """The layer's newest keyframe at or before `step` and every frame after it up to
        `step`, in seq order ([] when the layer has no keyframe by then)."""
        keyframe = self.store.db.execute(
            "SELECT seq, step FROM events WHERE run_id = ? AND layer = ? AND keyframe = 1"
            " AND step <= ? ORDER BY step DESC, seq DESC LIMIT 1", (run_id, index, step)).fetchone()
        if keyframe is None:
            return []
        # Read from the frames index alone (a layer's steps never go back, so its chain is the
        # frames from the keyframe's step to `step`): a range over the primary key instead
        # (by seq) walks every event of every layer in between, blobs included, ~50 ms for a
        # ResNet-50's 54 layers against ~0.1 ms here.
        rows = self.store.db.execute(
            "SELECT seq, step, keyframe FROM events INDEXED BY events_frames WHERE run_id = ?"
            " AND layer = ? AND keyframe IN (0, 1) AND step BETWEEN ? AND ? AND seq >= ?"
            " ORDER BY seq", (run_id, index, keyframe[1], step, keyframe[0])).fetchall()
        return [Frame(int(row[0]), int(row[1]), bool(row[2])) for row in rows]

    def chain_to(self, run_id: str, index: int, frame: Frame) -> list[Frame]:
        """The chain that ends exactly at `frame`."""
        chain = self.chain(run_id, index, frame.step)
        return chain[:next(i for i, item in enumerate(chain) if item.seq == frame.seq) + 1]

    # Both read the frames index alone, like `chain`: by the primary key (by seq) they walked
    # every other layer's rows in between, blobs included (9 ms a view on a ResNet-50 run).
    def frame_before(self, run_id: str, index: int, seq: int) -> Frame | None:
        row = self.store.db.execute(
            "SELECT seq, step, keyframe FROM events INDEXED BY events_frames WHERE run_id = ?"
            " AND layer = ? AND keyframe IN (0, 1) AND seq < ? ORDER BY seq DESC LIMIT 1",
            (run_id, index, seq)).fetchone()
        return Frame(int(row[0]), int(row[1]), bool(row[2])) if row else None

    def _frames_after(self, run_id: str, index: int, seq: int, limit: int) -> list[Frame]:
        rows = self.store.db.execute(
            "SELECT seq, step, keyframe FROM events INDEXED BY events_frames WHERE run_id = ?"
            " AND layer = ? AND keyframe IN (0, 1) AND seq > ? ORDER BY seq LIMIT ?",
            (run_id, index, seq, max(0, limit))).fetchall()
        return [Frame(int(row[0]), int(row[1]), bool(row[2])) for row in rows]

    def mask(self, run: dict, index: int, chain: list[Frame], numel: int,
             shape: tuple[int, int] | None = None) -> np.ndarray:
        """(numel,) read-only bool: the layer's mask at the chain's last frame, frames that do
        not fit the layer's history (`shape`: its matrix) skipped. NoFittingFrame when no
        keyframe at or before it fits."""
        key, target = run_key(run), chain[-1]
        cached = self.cache.get((key, index, target.seq))
        if cached is not None:
            return cached
        start, nearest = None, None
        for position in range(len(chain) - 1, -1, -1):
            nearest = self.cache.get((key, index, chain[position].seq))
            if nearest is not None:
                start = position
                break
        forward_cost = len(chain) - (start if start is not None else 0)
        mask = self._undo_from_later(run, index, target, numel, forward_cost - 1)
        if mask is None:
            if start is None:
                chain, mask = self._first_fitting(run, index, chain, numel, shape)
                start = 0
            else:
                mask = nearest.copy()
            count = int(np.count_nonzero(mask))
            for frame in chain[start + 1:]:
                count = self._apply(run, index, frame, mask, count, numel, shape)
        mask.flags.writeable = False
        self.cache.put((key, index, target.seq), mask)
        return mask

    def _first_fitting(self, run: dict, index: int, chain: list[Frame], numel: int,
                       shape) -> tuple[list[Frame], np.ndarray]:
        """(the chain from the newest keyframe that fits, its mask): the chain's own first
        keyframe, or (one that does not fit) the one before it, from which the frames up to
        the chain's end follow."""
        while True:
            try:
                return chain, self.keyframe(run["id"], chain[0], numel, shape)
            except Misfit:
                pass
            row = self.store.db.execute(
                "SELECT seq FROM events INDEXED BY events_frames WHERE run_id = ? AND layer = ?"
                " AND keyframe = 1 AND seq < ? ORDER BY seq DESC LIMIT 1",
                (run["id"], index, chain[0].seq)).fetchone()
            if row is None:
                raise NoFittingFrame(f"layer {index}: no keyframe that fits its layer at or "
                                     f"before step {chain[-1].step}")
            rows = self.store.db.execute(
                "SELECT seq, step, keyframe FROM events INDEXED BY events_frames WHERE run_id = ?"
                " AND layer = ? AND keyframe IN (0, 1) AND seq BETWEEN ? AND ? ORDER BY seq",
                (run["id"], index, int(row[0]), chain[-1].seq)).fetchall()
            chain = [Frame(int(item[0]), int(item[1]), bool(item[2])) for item in rows]

    def _apply(self, run: dict, index: int, frame: Frame, mask: np.ndarray, count: int,
               numel: int, shape) -> int:
        """Take one frame into `mask` (in place) unless it does not fit; the new count."""
        if frame.keyframe:
            try:
                mask[:] = self.keyframe(run["id"], frame, numel, shape)
            except Misfit:
                return count
            return int(np.count_nonzero(mask))
        try:
            changes = self.delta(run["id"], frame, numel, shape)
        except Misfit as error:
            self.cache.put((run_key(run), index, frame.seq, "fits"), str(error), FIT_BYTES)
            return count
        if self._verdict(run, index, frame, mask, count, numel, shape, changes) is not True:
            return count
        added, removed = changes
        mask[removed] = False
        mask[added] = True
        return self._claims(run["id"], frame)[1]  # fitting, its count is the mask's

    def _verdict(self, run: dict, index: int, frame: Frame, mask: np.ndarray, count: int,
                 numel: int, shape, changes: tuple | None = None) -> bool | str:
        """Whether a stored delta (its `changes` when already read) fits `mask`, its layer's
        mask before it (`count` active): True, else why not; kept in the cache (the stream
        says why: misfit())."""
        try:
            added, removed = changes if changes is not None else self.delta(run["id"], frame,
                                                                            numel, shape)
            frame_shape, claimed = self._claims(run["id"], frame)
            verdict = frame_misfit(shape, frame_shape, claimed, added=added, removed=removed,
                                   active_at=lambda indices: mask[indices],
                                   active_now=count) or True
        except Misfit as error:
            verdict = str(error)
        self.cache.put((run_key(run), index, frame.seq, "fits"), verdict, FIT_BYTES)
        return verdict

    def taken(self, run: dict, index: int, frame: Frame, numel: int,
              shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A stored delta's (added, removed) as its layer took them: empty when it was skipped
        (it does not fit the mask before it)."""
        if self._delta_misfit(run, index, frame, numel, shape) is not None:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        return self.delta(run["id"], frame, numel, shape)

    def misfit(self, run: dict, index: int, frame: Frame, numel: int,
               shape: tuple[int, int] | None = None) -> str | None:
        """Why every reader skips this stored frame (it does not fit its layer's history:
        schema.frame_misfit), None when it fits. The stream asks it before sending a frame,
        so its clients skip what /mask, /view and /topology skip."""
        if frame.keyframe:
            try:
                self.keyframe(run["id"], frame, numel, shape)
            except Misfit as error:
                return str(error)
            return None
        return self._delta_misfit(run, index, frame, numel, shape)

    def _delta_misfit(self, run: dict, index: int, frame: Frame, numel: int,
                      shape: tuple[int, int] | None) -> str | None:
        key = (run_key(run), index, frame.seq, "fits")
        verdict = self.cache.get(key)
        if verdict is None:
            before = self.frame_before(run["id"], index, frame.seq)
            try:
                if before is None:
                    raise Misfit("a delta before any keyframe of its layer")
                previous = self.mask(run, index, self.chain_to(run["id"], index, before),
                                     numel, shape)
                verdict = self._verdict(run, index, frame, previous,
                                        int(np.count_nonzero(previous)), numel, shape)
            except (Misfit, NoFittingFrame) as error:
                verdict = str(error)
                self.cache.put(key, verdict, FIT_BYTES)
        return None if verdict is True else str(verdict)

    def _undo_from_later(self, run: dict, index: int, target: Frame, numel: int,
                         max_deltas: int) -> np.ndarray | None:
        """A cached mask at most `max_deltas` deltas after `target`, those deltas undone;
        None when there is none (a keyframe in between cannot be undone, nor a delta whose
        verdict is no longer kept)."""
        key = run_key(run)
        after = self._frames_after(run["id"], index, target.seq, max_deltas)
        for position, frame in enumerate(after):
            if frame.keyframe:
                return None
            later = self.cache.get((key, index, frame.seq))
            if later is None:
                continue
            mask = later.copy()
            for undone in reversed(after[:position + 1]):
                fits = self.cache.get((key, index, undone.seq, "fits"))
                if fits is None:
                    return None
                if fits is True:  # a skipped delta changed nothing: nothing to undo
                    added, removed = self.delta(run["id"], undone, numel)
                    mask[added] = False
                    mask[removed] = True
            return mask
        return None

    # ---- one frame's data ------------------------------------------------------------------
    def _stored(self, run_id: str, frame: Frame, numel: int, shape=None) -> tuple[dict, bytes]:
        """(header, blob) of a stored frame; Misfit when its shape is not the layer's."""
        row = self.store.db.execute("SELECT payload, blob FROM events WHERE run_id = ? AND seq = ?",
                                    (run_id, frame.seq)).fetchone()
        where = f"stored frame at seq {frame.seq}"
        try:
            header = json.loads(row[0])
        except (TypeError, ValueError):
            raise StoredDataError(f"{where}: unreadable header") from None
        if not isinstance(header, dict) or row[1] is None:
            raise StoredDataError(f"{where}: no frame data")
        try:
            frame_numel = codec.frame_numel(header.get("shape"))
        except FrameError as error:
            raise StoredDataError(f"{where}: {error}") from None
        if frame_numel != numel or (shape is not None and [int(side) for side in header["shape"]]
                                    != [int(side) for side in shape]):
            raise Misfit(f"shape {header['shape']} is not its layer's")
        self.cache.put((run_id, frame.seq, "claims"), self._header_claims(header, where), 64)
        return header, bytes(row[1])

    @staticmethod
    def _header_claims(header: dict, where: str) -> tuple[list[int], int]:
        active = header.get("active")
        if not isinstance(active, int) or isinstance(active, bool):
            raise StoredDataError(f"{where}: its header has no count of active connections")
        return [int(side) for side in header["shape"]], active

    def _claims(self, run_id: str, frame: Frame) -> tuple[list[int], int]:
        """(shape, active) a stored frame's header claims (kept from its decoding)."""
        claims = self.cache.get((run_id, frame.seq, "claims"))
        if claims is None:
            row = self.store.db.execute("SELECT payload FROM events WHERE run_id = ? AND seq = ?",
                                        (run_id, frame.seq)).fetchone()
            where = f"stored frame at seq {frame.seq}"
            try:
                header = json.loads(row[0])
                claims = self._header_claims(header, where)
            except (TypeError, ValueError, AttributeError, KeyError):
                raise StoredDataError(f"{where}: unreadable header") from None
        return claims

    def keyframe(self, run_id: str, frame: Frame, numel: int, shape=None) -> np.ndarray:
        """(numel,) writable bool mask of a stored keyframe; Misfit when it does not fit (its
        shape is not the layer's, its `active` is not the number of its bits)."""
        header, blob = self._stored(run_id, frame, numel, shape)
        try:
            packed = np.frombuffer(codec.decode_keyframe(blob, numel), dtype=np.uint8)
        except FrameError as error:
            raise StoredDataError(f"stored frame at seq {frame.seq}: {error}") from None
        mask = np.unpackbits(packed, bitorder="little", count=numel).astype(bool)
        _, claimed = self._header_claims(header, f"stored frame at seq {frame.seq}")
        misfit = frame_misfit(None, header["shape"], claimed,
                              bits_active=int(np.count_nonzero(mask)))
        if misfit is not None:
            raise Misfit(misfit)
        return mask

    def delta(self, run_id: str, frame: Frame, numel: int,
              shape=None) -> tuple[np.ndarray, np.ndarray]:
        """(added, removed) read-only sorted int64 flat indices of a stored delta (cached: a
        view applies a delta to rebuild its mask and bins the same delta's changes); Misfit
        when its shape is not the layer's."""
        key = (run_id, frame.seq, "delta")
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        _, blob = self._stored(run_id, frame, numel, shape)
        try:
            added, removed = codec.decode_delta(blob, numel)
        except FrameError as error:
            raise StoredDataError(f"stored frame at seq {frame.seq}: {error}") from None
        value = (added.astype(np.int64), removed.astype(np.int64))
        self.cache.put(key, value)
        return value
