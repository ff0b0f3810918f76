"""A layer's cohort index: what connection ages, cohort survival and the per-rewire topology
summaries need, cut into segments a writer stores while it records, so that a reader answers
any rewire of a long run in one pass over compact arrays instead of replaying its frames.

Rewires are numbered from 1 in each run; the initial mask is rewire 0. The *cohort* of rewire
c is its net-grown connections A_c. At rewire r a connection's *age* is r minus the rewire it
last became active at (0 for one active since the start), and the survival of cohort c is
|A_c ∩ M_r| / |A_c|: the share active now, whether or not it was dropped and regrown in
between (the issue's definition). These questions come from the DST papers: degree
distributions moving away from Erdős–Rényi (Mocanu et al. 2018, SET), dead units (Evci et al.
2020, RigL), mask distance and settling (Liu et al. 2021, ITOP).

Why segments of this shape. Survival at rewire r needs every earlier cohort intersected with
M_r: the whole growth history (a 1 M-connection layer replacing 30% of 100 k active ones for
1,000 rewires grew 30 M connections). Rebuilding that from compressed frames costs seconds;
transposing it per connection (a CSR) costs the writer a sort of every growth event. A
segment stores each cohort's connections as it comes, grouped by blocks of BLOCK connections
as uint16 offsets (2 bytes per grown connection, no sort), so a reader counts |A_c ∩ M_r| with
one gather per block from a 64 kB slice of M_r that stays in cache. A segment also stores the
mask and, per active connection, the rewire it became active at (its *born*), at its last
rewire: the checkpoint from which ages at any rewire of the next segment follow by applying
that segment's growth alone, and from which a writer resumes. The per-rewire summaries
(degrees, dead units, distance to the start, re-pruning) are a few numbers per rewire, kept in
the segment's header (fan-in histograms too), so charts over time read no blob at all.

The writer's state is two bytes per weight (born, int16 until a run passes 32,767 rewires)
plus the initial mask (one byte per weight). Nothing here imports the run store, pydantic or
web code (the engine stays pure).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dst_core.analytics import count_pairs, degree_stats

BLOCK = 1 << 16  # connections per block: offsets fit uint16, a block's mask slice fits cache
SEGMENT_REWIRES = 32  # rewires per stored segment: a reader applies at most this many cohorts
# Every 4th full segment's checkpoint holds each connection's growth count: a
# churn request adds at most 4 segments of cohorts to one (~0.6 bytes a connection deflated,
# every 128 rewires: at every segment they made a SET run's index 1.6× as large).
GROWN_EVERY = 4
FORMAT = 4  # the segment header's layout version (4: the checkpoint holds each connection's
# growth count; 3: cohort offsets as deflated gaps; 2: checkpoint parts deflated; all read)
FORMATS = (1, 2, 3, 4)
# Parts stored deflated: the mask (packed bits, runs of zeros), born (a few distinct rewire
# numbers) and the cohorts' block offsets as gaps (`gaps`: each cohort's sorted offsets within
# a block as differences, low bytes then high bytes; the high bytes are mostly 0). Raw they
# made a layer's index 1.2-3× its frames (a LLaMA-style run: 64 MB of index beside 52 MB of
# frames, 44 MB of it offsets at 2 bytes per grown connection; as gaps 18 MB). Inflated once
# per segment a reader loads.
DEFLATED = {"mask": zlib.Z_RLE, "initial": zlib.Z_RLE, "born": zlib.Z_DEFAULT_STRATEGY,
            "gaps": zlib.Z_RLE, "grown": zlib.Z_DEFAULT_STRATEGY}
_ALIGN = 8  # blob parts start at multiples of this (numpy views of aligned data are faster)
_DTYPES = {"<i4", "<u4", "<u2", "<u1", "<i2"}
_GROWN_DTYPES = (np.uint8, np.uint16, np.uint32)  # a growth count widens when it must
# One entry per rewire: fan-in mean/std/max, fan-out mean/std/max, dead inputs, dead outputs.
_STATS = ("in_mean", "in_std", "in_max", "out_mean", "out_std", "out_max", "dead_in", "dead_out")


class IndexFormatError(ValueError):
    """A stored segment that does not hold what its header says (the reader rebuilds it)."""


@dataclass
class Rewires:
    """Per-rewire numbers of rewires first..last: plain lists, one entry per rewire."""

    first: int
    steps: list[int] = field(default_factory=list)
    grown: list[int] = field(default_factory=list)  # |A_c|
    removed: list[int] = field(default_factory=list)  # |R_c|
    active: list[int] = field(default_factory=list)  # |M_c|
    repruned: list[int] = field(default_factory=list)  # |A_{c-1} ∩ R_c| (0 at c <= 1)
    new: list[int] = field(default_factory=list)  # |M_c \ M_0|
    stats: list[list] = field(default_factory=list)  # _STATS per rewire
    # units per fan-in degree (a stored header's [start, counts] until first asked for)
    fan_in_counts: list = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.first + len(self.steps) - 1

    def summary(self, position: int) -> dict:
        """What charts over time need of one rewire (position counted from `first`)."""
        stats = dict(zip(_STATS, self.stats[position], strict=True))
        active, rewire = self.active[position], self.first + position
        counts = self.fan_in_counts[position]
        if not isinstance(counts, np.ndarray):  # a stored header's [start, counts], read now
            counts = self.fan_in_counts[position] = _fan_counts(counts)
        return {"fan_in_counts": counts,
                "fan_in_stats": {"mean": stats["in_mean"], "std": stats["in_std"],
                                 "max": int(stats["in_max"])},
                "fan_out_stats": {"mean": stats["out_mean"], "std": stats["out_std"],
                                  "max": int(stats["out_max"])},
                "dead_in": int(stats["dead_in"]), "dead_out": int(stats["dead_out"]),
                "distance_initial": self.new[position] / active if active else 0.0,
                "distance_previous": (self.grown[position] / active
                                      if active and rewire else 0.0)}


class _Cohorts:
    """Cohorts of some consecutive rewires: count their members active in a mask, mark born."""

    rewires: list[int]  # the cohorts' rewire numbers, ascending

    def alive(self, mask: np.ndarray) -> np.ndarray:
        """(cohorts,) int64: how many of each cohort's connections `mask` (flat bool) holds."""
        raise NotImplementedError

    def mark_born(self, born: np.ndarray, upto: int) -> None:
        """born[A_c] = c for the cohorts c <= upto, in rewire order (the newest wins)."""
        raise NotImplementedError

    def count_grown(self, counts: np.ndarray, upto: int) -> None:
        """counts[p] += how many of the cohorts c <= upto hold connection p (in place; the
        caller's dtype must hold the totals): the growth half of a connection's toggles."""
        raise NotImplementedError


class _ListCohorts(_Cohorts):
    """The open part of a layer: each cohort as its sorted flat indices."""

    def __init__(self, cohorts: list[tuple[int, np.ndarray]]):
        self.rewires = [rewire for rewire, _ in cohorts]
        self.members = [members for _, members in cohorts]

    def alive(self, mask: np.ndarray) -> np.ndarray:
        return np.array([np.count_nonzero(mask[members]) for members in self.members],
                        dtype=np.int64)

    def mark_born(self, born: np.ndarray, upto: int) -> None:
        for rewire, members in zip(self.rewires, self.members, strict=True):
            if rewire <= upto:
                born[members] = rewire

    def count_grown(self, counts: np.ndarray, upto: int) -> None:
        for rewire, members in zip(self.rewires, self.members, strict=True):
            if rewire <= upto:
                counts[members] += 1  # a cohort's members are distinct


class _BlockCohorts(_Cohorts):
    """A stored segment's cohorts: per block of BLOCK connections, every cohort's members in
    that block as uint16 offsets, cohort after cohort (`counts[c, b]` of them)."""

    def __init__(self, rewires: list[int], counts: np.ndarray, lows: np.ndarray, numel: int):
        self.rewires = rewires
        self.numel = numel
        per_block = counts.sum(axis=0, dtype=np.int64)  # (blocks,)
        self.block_start = np.zeros(counts.shape[1] + 1, dtype=np.int64)
        np.cumsum(per_block, out=self.block_start[1:])
        self.within = np.zeros((counts.shape[0] + 1, counts.shape[1]), dtype=np.int64)
        np.cumsum(counts, axis=0, out=self.within[1:])  # (cohorts + 1, blocks) start in block
        self.lows = lows
        self.counts = counts

    def alive(self, mask: np.ndarray) -> np.ndarray:
        alive = np.zeros(len(self.rewires), dtype=np.int64)
        for block in range(self.within.shape[1]):
            low, high = self.block_start[block], self.block_start[block + 1]
            if low == high:
                continue
            base = block * BLOCK
            hits = mask[base:base + BLOCK][self.lows[low:high]]  # (members in block,) bool
            present = self.counts[:, block] > 0  # reduceat needs non-empty slices
            alive[present] += np.add.reduceat(hits, self.within[:-1, block][present],
                                              dtype=np.int64)
        return alive

    def mark_born(self, born: np.ndarray, upto: int) -> None:
        for position, rewire in enumerate(self.rewires):
            if rewire > upto:
                return
            for block in range(self.within.shape[1]):
                start = self.block_start[block]
                part = self.lows[start + self.within[position, block]:
                                 start + self.within[position + 1, block]]
                if part.size:
                    born[part.astype(np.intp) + block * BLOCK] = rewire

    def count_grown(self, counts: np.ndarray, upto: int) -> None:
        # A block's members are stored cohort after cohort: those of cohorts <= upto are one
        # leading slice of it, counted with one bincount per block.
        taken = int(np.searchsorted(np.asarray(self.rewires), upto, side="right"))
        if taken == 0:
            return
        for block in range(self.within.shape[1]):
            start = self.block_start[block]
            part = self.lows[start:start + self.within[taken, block]]
            if part.size:
                base = block * BLOCK
                width = min(BLOCK, self.numel - base)
                found = np.bincount(part, minlength=width)
                if found.size > width:
                    raise IndexFormatError("segment: a cohort offset beyond its layer")
                counts[base:base + width] += found.astype(counts.dtype, copy=False)


@dataclass
class Segment:
    """Rewires first..last of one layer: their per-rewire numbers (header), their cohorts and
    the checkpoint at `last` (blob, loaded on first use)."""

    shape: tuple[int, int]
    rewires: Rewires
    last_seq: int  # the newest stored frame it took in (where a resumed writer continues)
    parts: dict[str, tuple[int, int, str]]  # blob part -> (byte offset, items, dtype)
    born_dtype: str
    load_blob: Callable[[], bytes] | None = None
    _blob: bytes | None = None
    _cohorts: _BlockCohorts | None = None
    _inflated: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def first(self) -> int:
        return self.rewires.first

    @property
    def last(self) -> int:
        return self.rewires.last

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def loaded(self) -> bool:
        return self._blob is not None

    @property
    def nbytes(self) -> int:
        return (len(self._blob) if self._blob is not None else 0) + \
            sum(array.nbytes for array in self._inflated.values())

    def unload(self) -> None:
        """Drop the blob (a cache evicts it); it is read again from the store when needed."""
        if self.load_blob is not None:
            self._blob, self._cohorts = None, None
            self._inflated = {}

    def _part(self, name: str) -> np.ndarray:
        if self._blob is None:
            if self.load_blob is None:
                raise IndexFormatError("segment: its blob is gone")
            self._blob = self.load_blob()
        offset, items, dtype, *deflated = self.parts[name]
        if deflated:  # (offset, items, dtype, stored bytes): inflate once, bounded
            array = self._inflated.get(name)
            if array is None:
                expected = items * np.dtype(dtype).itemsize
                stream = zlib.decompressobj()
                try:
                    raw = stream.decompress(self._blob[offset:offset + deflated[0]], expected + 1)
                except zlib.error as error:
                    raise IndexFormatError(f"segment part {name}: {error}") from None
                if len(raw) != expected or not stream.eof:
                    raise IndexFormatError(f"segment part {name}: inflates to {len(raw)} bytes, "
                                           f"not {expected}")
                array = self._inflated[name] = np.frombuffer(raw, dtype=dtype)
            return array
        try:
            return np.frombuffer(self._blob, dtype=dtype, count=items, offset=offset)
        except ValueError as error:
            raise IndexFormatError(f"segment part {name}: {error}") from None

    def cohorts(self) -> _BlockCohorts:
        if self._cohorts is None:
            cohort_rewires = list(range(max(self.first, 1), self.last + 1))
            blocks = -(-self.numel // BLOCK)
            counts = self._part("counts").reshape(len(cohort_rewires), blocks)
            lows = self._part("lows") if "lows" in self.parts else _offsets_of(
                self._part("gaps"), counts)
            if (counts < 0).any() or int(counts.sum(dtype=np.int64)) != lows.size:
                raise IndexFormatError("segment: cohort counts do not match its members")
            if [int(n) for n in counts.sum(axis=1)] != \
                    self.rewires.grown[len(self.rewires.grown) - len(cohort_rewires):]:
                raise IndexFormatError("segment: cohort sizes differ from its header")
            self._cohorts = _BlockCohorts(cohort_rewires, counts, lows, self.numel)
        return self._cohorts

    def checkpoint_mask(self) -> np.ndarray:
        """The flat mask at `last` alone (its born part is not inflated)."""
        mask = unpack_mask(self._part("mask"), self.numel)
        if np.count_nonzero(mask) != self.rewires.active[-1]:
            raise IndexFormatError("segment: checkpoint counts differ from its mask")
        return mask

    def checkpoint(self) -> tuple[np.ndarray, np.ndarray]:
        """(mask, born): the flat mask at `last` and, per active connection in flat order, the
        rewire it became active at."""
        mask = unpack_mask(self._part("mask"), self.numel)
        born = self._part("born")
        if born.size != np.count_nonzero(mask) or born.size != self.rewires.active[-1]:
            raise IndexFormatError("segment: checkpoint counts differ from its mask")
        if born.size and (born.min() < 0 or born.max() > self.last):
            raise IndexFormatError("segment: a connection born outside its rewires")
        return mask, born

    def checkpoint_born(self) -> np.ndarray:
        """The born part of the checkpoint alone, per active connection in flat order: what
        `checkpoint` gives without unpacking the mask again for a caller that holds it."""
        born = self._part("born")
        if born.size != self.rewires.active[-1]:
            raise IndexFormatError("segment: checkpoint counts differ from its mask")
        if born.size and (born.min() < 0 or born.max() > self.last):
            raise IndexFormatError("segment: a connection born outside its rewires")
        return born

    def grown_totals(self) -> np.ndarray | None:
        """(numel,) how many of the rewires 1..last net grew each connection (its toggles up
        to `last` are twice that, plus its initial state, minus its state at `last`); None in
        a segment stored before format 4."""
        if "grown" not in self.parts:
            return None
        totals = self._part("grown")
        if totals.size != self.numel:
            raise IndexFormatError(f"segment: {totals.size} growth counts for {self.numel} "
                                   "connections")
        if totals.size and int(totals.max()) > self.last:
            raise IndexFormatError("segment: a connection grown more often than it rewired")
        return totals

    def initial(self) -> np.ndarray:
        """The flat mask of rewire 0 (stored in the first segment only)."""
        if self.first != 0:
            raise IndexFormatError("segment: only the first segment holds the initial mask")
        return unpack_mask(self._part("initial"), self.numel)

    # ---- rows ------------------------------------------------------------------------------
    @classmethod
    def from_row(cls, header_text: str, last_seq: int,
                 load_blob: Callable[[], bytes]) -> Segment:
        """A stored segment from its header; the blob is read on first use. Raises
        IndexFormatError for a header that is not what this version writes."""
        try:
            header = json.loads(header_text)
            if header.get("format") not in FORMATS:
                raise IndexFormatError(f"segment: format {header.get('format')!r}")
            shape = (int(header["shape"][0]), int(header["shape"][1]))
            rewires = Rewires(first=int(header["first"]),
                              **{name: [int(v) for v in header[name]]
                                 for name in ("steps", "grown", "removed", "active",
                                              "repruned", "new")},
                              stats=[[float(v) for v in row] for row in header["stats"]])
            parts = {name: (int(offset), int(items), str(dtype), *(int(n) for n in stored))
                     for name, (offset, items, dtype, *stored) in header["parts"].items()}
            if any(len(part) > 4 or (len(part) == 4 and header["format"] < 2)
                   for part in parts.values()):
                raise IndexFormatError("segment: a part entry this format does not have")
            rewires.fan_in_counts = list(header["fan"])  # decoded when a chart asks
            if not all(isinstance(entry, list) and len(entry) == 2 for entry in header["fan"]):
                raise IndexFormatError("segment: a fan-in histogram is not [start, counts]")
            born_dtype = str(header["born_dtype"])
        except (ValueError, KeyError, TypeError, IndexError) as error:
            if isinstance(error, IndexFormatError):
                raise
            raise IndexFormatError(f"segment header: {error!r}") from None
        count = len(rewires.steps)
        if shape[0] < 1 or shape[1] < 1 or count < 1 or rewires.first < 0:
            raise IndexFormatError("segment: empty or negative shape or rewires")
        if any(len(values) != count for values in (
                rewires.grown, rewires.removed, rewires.active, rewires.repruned, rewires.new,
                rewires.stats, rewires.fan_in_counts)) or any(len(row) != len(_STATS)
                                                              for row in rewires.stats):
            raise IndexFormatError("segment: per-rewire lists of different lengths")
        if any(part[2] not in _DTYPES for part in parts.values()) or \
                born_dtype not in ("<i2", "<i4"):
            raise IndexFormatError("segment: unknown part type")
        return cls(shape=shape, rewires=rewires, last_seq=int(last_seq), parts=parts,
                   born_dtype=born_dtype, load_blob=load_blob)

    def to_row(self) -> tuple[str, bytes]:
        """(header JSON, blob) as the store keeps them."""
        rewires = self.rewires
        parts = {name: list(value) for name, value in self.parts.items()}
        header = {"format": FORMAT, "shape": list(self.shape), "first": rewires.first,
                  "steps": rewires.steps, "grown": rewires.grown, "removed": rewires.removed,
                  "active": rewires.active, "repruned": rewires.repruned, "new": rewires.new,
                  "stats": rewires.stats,
                  "fan": [_fan_entry(counts) if isinstance(counts, np.ndarray) else counts
                          for counts in rewires.fan_in_counts],
                  "born_dtype": self.born_dtype, "parts": parts}
        return json.dumps(header, separators=(",", ":")), self._blob or b""


def _fan_entry(counts: np.ndarray) -> list:
    """A fan-in histogram as [first degree present, counts from there]: a conv layer's
    fan-ins sit far from 0, so its leading zeros are left out."""
    present = np.flatnonzero(counts)
    start = int(present[0]) if present.size else 0
    return [start, counts[start:].tolist()]


def _fan_counts(entry) -> np.ndarray:
    start, counts = int(entry[0]), [int(n) for n in entry[1]]
    if start < 0 or min(counts, default=0) < 0:
        raise IndexFormatError("segment: a negative fan-in count")
    return np.concatenate([np.zeros(start, np.int32), np.asarray(counts, np.int32)])


def unpack_mask(bits: np.ndarray, numel: int) -> np.ndarray:
    if bits.size != math.ceil(numel / 8):
        raise IndexFormatError(f"segment: {bits.size} mask bytes for {numel} connections")
    return np.unpackbits(bits, bitorder="little", count=numel).astype(bool)


def _offsets_of(planes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The cohorts' block offsets (uint16, block-major, cohort-minor, each run ascending) from
    their stored gaps (`planes`: the gaps' low bytes, then their high bytes) and the
    (cohorts, blocks) member counts. IndexFormatError for gaps that do not add up.

    Summed in uint16, wrapping: every true offset is below 2^16, so the wrapped running sum
    minus the wrapped sum before each run is exact; a run whose gaps add up past its block
    (which wrapping would hide) is found by its total, summed wide."""
    if planes.size % 2:
        raise IndexFormatError("segment: an odd number of gap bytes")
    half = planes.size // 2
    gaps = planes[:half].astype(np.uint16)
    gaps |= planes[half:].astype(np.uint16) << 8
    lengths = counts.T.reshape(-1).astype(np.int64)  # (blocks × cohorts,) in stored order
    if (lengths < 0).any() or int(lengths.sum()) != half:
        raise IndexFormatError("segment: cohort counts do not match its members")
    if not half:
        return np.zeros(0, np.uint16)
    present = lengths > 0
    starts = (np.cumsum(lengths) - lengths)[present]  # each run's first member
    if int(np.add.reduceat(gaps, starts, dtype=np.uint64).max()) >= BLOCK:
        raise IndexFormatError("segment: a cohort offset beyond its block")
    totals = np.cumsum(gaps, dtype=np.uint16)  # wraps: exact modulo 2^16
    before = np.zeros(starts.size, np.uint16)
    before[starts > 0] = totals[starts[starts > 0] - 1]
    totals -= np.repeat(before, lengths[present])
    return totals


def _pack_parts(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """One blob of the arrays, each at an aligned offset: (blob, name -> (offset, items, dtype)),
    and (offset, items, dtype, stored bytes) for a part stored deflated (DEFLATED)."""
    chunks, parts, offset = [], {}, 0
    for name, array in arrays.items():
        data = np.ascontiguousarray(array)
        dtype = data.dtype.newbyteorder("<").str if data.dtype.itemsize > 1 else data.dtype.str
        data = data.astype(dtype, copy=False)
        parts[name] = (offset, int(data.size), "<u1" if dtype == "|u1" else dtype)
        raw = data.tobytes()
        if name in DEFLATED:
            packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, DEFLATED[name])
            raw = packer.compress(raw) + packer.flush()
            parts[name] = (*parts[name], len(raw))
        padding = -len(raw) % _ALIGN
        chunks.append(raw + b"\0" * padding)
        offset += len(raw) + padding
    return b"".join(chunks), parts


def _grown_at(last: Segment, segments: list[Segment] | None) -> np.ndarray | None:
    """(numel,) writable growth counts at `last`'s checkpoint, in the smallest of
    _GROWN_DTYPES that holds them; None where they cannot be known without the frames."""
    totals = last.grown_totals()
    if totals is not None:
        return totals.copy()
    if not segments or segments[-1] is not last:
        return None
    start, counts = 0, np.zeros(last.numel, dtype=np.uint32)
    for position in range(len(segments) - 2, -1, -1):
        stored = segments[position].grown_totals()
        if stored is not None:
            start, counts = position + 1, stored.astype(np.uint32)
            break
    for segment in segments[start:]:  # cohorts hold every net growth from rewire 1 on
        segment.cohorts().count_grown(counts, segment.last)
    top = int(counts.max()) if counts.size else 0
    return counts.astype(next(dtype for dtype in _GROWN_DTYPES if top < np.iinfo(dtype).max))


def _sorted_distinct(indices: np.ndarray, name: str) -> np.ndarray:
    """`indices` ascending (stored deltas and keyframe differences already are: checked in
    one pass), ValueError naming `name` if one is listed twice."""
    if indices.size < 2:
        return indices
    if not (np.diff(indices) > 0).all():
        indices = np.sort(indices)
        if not (np.diff(indices) > 0).all():
            raise ValueError(f"{name}: a connection listed twice")
    return indices


class LayerIndexer:
    """Takes one layer's rewires in order (net changes or whole masks) and cuts them into
    Segments. The writer keeps one per layer while it records; a reader keeps one for frames
    no stored segment covers yet (a live run's newest rewires, a run recorded without an index).

    The state is the newest rewire's: `born` (-1 where inactive), each connection's growth
    count (`grown_total`: uint8, widened when a count would pass it; None when resumed from a
    segment stored before format 4, whose checkpoint lacks it), the degrees, the counts, and
    the rewires since the last cut (their numbers and their cohorts as sorted indices)."""

    def __init__(self, initial_mask: np.ndarray, shape: tuple[int, int], step: int, seq: int):
        self.shape = (int(shape[0]), int(shape[1]))
        numel = self.shape[0] * self.shape[1]
        initial = np.asarray(initial_mask, dtype=bool).reshape(-1)
        if initial.size != numel:
            raise ValueError(f"initial_mask: {initial.size} entries for a {shape} layer")
        self.initial = initial.copy()  # (numel,) M_0
        # 0 where active, -1 elsewhere, without np.where's int64 temporary (8 bytes a
        # connection: a GPT-2's attach spent 0.5 s there).
        self.born = initial.astype(np.int16)  # (numel,)
        self.born -= 1
        self.grown_total: np.ndarray | None = np.zeros(numel, dtype=np.uint8)  # (numel,)
        self.rewire = 0
        self.last_seq = int(seq)
        self.active = int(np.count_nonzero(initial))
        self.new_since_start = 0
        grid = initial.reshape(self.shape)
        self.fan_in = np.count_nonzero(grid, axis=1).astype(np.int64)  # (rows,)
        self.fan_out = np.count_nonzero(grid, axis=0).astype(np.int64)  # (cols,)
        self._row_bounds = np.arange(self.shape[0] + 1, dtype=np.int64) * self.shape[1]
        self.pending = Rewires(first=0)
        self.cohorts: list[tuple[int, np.ndarray]] = []  # (rewire, sorted uint32) since the cut
        self._record(int(step), grown=0, removed=0, repruned=0)

    @classmethod
    def resume(cls, first: Segment, last: Segment,
               segments: list[Segment] | None = None) -> LayerIndexer:
        """The state at `last`'s checkpoint (first: the layer's first segment, for M_0). The
        growth counts: `last`'s own, else (given the layer's `segments` up to `last`) the
        newest stored ones plus the cohorts after them, else unknown (None)."""
        mask, born_active = last.checkpoint()
        self = cls.__new__(cls)
        self.shape = last.shape
        self.initial = first.initial()
        dtype = np.int16 if last.last < np.iinfo(np.int16).max else np.int32
        self.born = np.full(last.numel, -1, dtype=dtype)
        self.born[mask] = born_active
        self.grown_total = _grown_at(last, segments)
        self.rewire = last.last
        self.last_seq = last.last_seq
        self.active = int(born_active.size)
        self.new_since_start = int(np.count_nonzero(mask & ~self.initial))
        grid = mask.reshape(self.shape)
        self.fan_in = np.count_nonzero(grid, axis=1).astype(np.int64)
        self.fan_out = np.count_nonzero(grid, axis=0).astype(np.int64)
        self._row_bounds = np.arange(self.shape[0] + 1, dtype=np.int64) * self.shape[1]
        self.pending = Rewires(first=last.last + 1)
        self.cohorts = []
        return self

    @property
    def numel(self) -> int:
        return self.born.size

    @property
    def nbytes(self) -> int:
        return int(self.initial.nbytes + self.born.nbytes
                   + (self.grown_total.nbytes if self.grown_total is not None else 0)
                   + sum(members.nbytes for _, members in self.cohorts))

    def mask(self) -> np.ndarray:
        return self.born >= 0

    def _holds_counts(self, pending: Rewires) -> bool:
        """Whether the segment cut now keeps the growth counts: every GROWN_EVERY-th full one.
        A run's last (short) segment does not: a reader at its end adds its cohorts and at
        most three full segments' to the newest counts held, within the GROWN_EVERY bound,
        and a recorder's finish does not deflate a byte per connection (0.4 s of a GPT-2's
        finish)."""
        return self.grown_total is not None and len(pending.steps) == SEGMENT_REWIRES and \
            (pending.last + 1) % (SEGMENT_REWIRES * GROWN_EVERY) == 0

    # ---- taking rewires ----------------------------------------------------------------------
    def take_changes(self, step: int, seq: int, added: np.ndarray, removed: np.ndarray,
                     active: int | None = None, checked: bool = False) -> None:
        """The next rewire's net changes (flat indices; each list distinct). Nothing changes
        when they do not fit the layer (a ValueError names the list). `active`, the frame's
        own count of active connections, stands in for checking that every added connection
        was inactive when it agrees (an added one already active leaves the count short): a
        writer pays for one gather fewer per rewire. `checked`: the lists are known ascending
        and distinct (the store checked them), so they are not checked again."""
        if self.pending.steps and step < self.pending.steps[-1] or step < 0:
            raise ValueError(f"step: {step} goes back before "
                             f"{self.pending.steps[-1] if self.pending.steps else 0}")
        given = np.asarray(added).reshape(-1)
        added = given.astype(np.int64, copy=False)  # numpy gathers fastest with intp indices
        removed = np.asarray(removed).reshape(-1).astype(np.int64, copy=False)
        if not checked:
            added = _sorted_distinct(added, "added")
            removed = _sorted_distinct(removed, "removed")
        numel = self.numel
        for name, indices in (("added", added), ("removed", removed)):
            if indices.size and (indices[0] < 0 or indices[-1] >= numel):
                raise ValueError(f"{name}: index outside a layer of {numel} connections")
        born_removed = self.born[removed]
        if removed.size and born_removed.min() < 0:
            raise ValueError("removed: a connection that was not active")
        active_after = self.active + int(added.size) - int(removed.size)
        # A frame whose count disagrees is checked connection by connection (its count may
        # just be wrong: the store cannot check a delta's count against the mask).
        if (active is None or int(active) != active_after) and added.size and \
                (self.born[added] >= 0).any():
            raise ValueError("added: a connection that was already active")
        rewire = self.rewire + 1
        if rewire >= np.iinfo(self.born.dtype).max:
            self.born = self.born.astype(np.int32)
        repruned = int(np.count_nonzero(born_removed == rewire - 1)) if rewire > 1 else 0
        self.born[removed] = -1
        self.born[added] = rewire
        if self.grown_total is not None and added.size:
            top = np.iinfo(self.grown_total.dtype).max  # no count can reach it sooner
            if rewire >= top and int(self.grown_total[added].max()) == top:
                wider = _GROWN_DTYPES[_GROWN_DTYPES.index(self.grown_total.dtype.type) + 1]
                self.grown_total = self.grown_total.astype(wider)
            self.grown_total[added] += 1  # a rewire's added connections are distinct
        self.rewire, self.last_seq = rewire, int(seq)
        self.active = active_after
        self.new_since_start += (int(added.size) - int(np.count_nonzero(self.initial[added]))
                                 - int(removed.size) + int(np.count_nonzero(self.initial[removed])))
        # Sorted flat indices: per row by searching the row starts, then each index's column
        # as itself minus its row's start (cheaper than a division).
        cols, starts = self.shape[1], self._row_bounds[:-1]
        for indices, sign in ((added, 1), (removed, -1)):
            per_row = np.diff(np.searchsorted(indices, self._row_bounds))  # (rows,)
            columns = indices - np.repeat(starts, per_row)  # (n,)
            if sign > 0:
                self.fan_in += per_row
                self.fan_out += np.bincount(columns, minlength=cols)
            else:
                self.fan_in -= per_row
                self.fan_out -= np.bincount(columns, minlength=cols)
        if added.size:
            # Kept until the cut as uint32 (a layer has < 2**31 connections): the frame's own
            # array when it is one, so a writer neither allocates nor fills 8 bytes a
            # connection that it holds for SEGMENT_REWIRES rewires.
            reusable = checked and given.dtype == np.uint32
            self.cohorts.append((rewire, given if reusable else added.astype(np.uint32)))
        self._record(int(step), grown=int(added.size), removed=int(removed.size),
                     repruned=repruned)

    def take_mask(self, step: int, seq: int, mask: np.ndarray) -> None:
        """The next rewire as a whole mask (a keyframe): its net changes are the difference."""
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.size != self.numel:
            raise ValueError(f"mask: {mask.size} entries for a layer of {self.numel}")
        changed = np.flatnonzero(mask != (self.born >= 0))  # (changes,) ascending
        now_active = mask[changed]
        self.take_changes(step, seq, changed[now_active], changed[~now_active],
                          active=int(np.count_nonzero(mask)))

    def _record(self, step: int, grown: int, removed: int, repruned: int) -> None:
        pending = self.pending
        pending.steps.append(step)
        pending.grown.append(grown)
        pending.removed.append(removed)
        pending.active.append(self.active)
        pending.repruned.append(repruned)
        pending.new.append(self.new_since_start)
        fan_in, fan_out = degree_stats(self.fan_in), degree_stats(self.fan_out)
        pending.stats.append([fan_in["mean"], fan_in["std"], fan_in["max"], fan_out["mean"],
                              fan_out["std"], fan_out["max"],
                              int(np.count_nonzero(self.fan_out == 0)),
                              int(np.count_nonzero(self.fan_in == 0))])
        pending.fan_in_counts.append(np.bincount(self.fan_in).astype(np.int32))

    # ---- cutting -------------------------------------------------------------------------------
    @property
    def due(self) -> bool:
        return len(self.pending.steps) >= SEGMENT_REWIRES

    def cut(self) -> Segment | None:
        """The rewires since the last cut as one Segment (None if there are none)."""
        pending = self.pending
        if not pending.steps:
            return None
        blocks = -(-self.numel // BLOCK)
        bounds = np.arange(blocks + 1, dtype=np.uint32) * BLOCK  # the members' own dtype
        cohort_rewires = list(range(max(pending.first, 1), pending.last + 1))
        members = dict(self.cohorts)
        counts = np.zeros((len(cohort_rewires), blocks), dtype=np.int32)
        cuts = []
        for position, rewire in enumerate(cohort_rewires):
            found = members.get(rewire)
            cut = (np.searchsorted(found, bounds) if found is not None
                   else np.zeros(blocks + 1, dtype=np.int64))
            counts[position] = np.diff(cut)
            cuts.append(cut)
        # Each (block, cohort) run's offsets within the block, ascending, as gaps (the first
        # from 0): small numbers where a layer grows many connections, which deflate shrinks.
        gaps = [np.diff((members[rewire][cut[block]:cut[block + 1]] - block * BLOCK)
                        .astype(np.uint16), prepend=np.uint16(0))
                for block in range(blocks)
                for rewire, cut in zip(cohort_rewires, cuts, strict=True)
                if cut[block + 1] > cut[block]]
        gaps = np.concatenate(gaps) if gaps else np.zeros(0, np.uint16)
        mask = self.mask()
        arrays = {"counts": counts,
                  "gaps": gaps.astype("<u2").view(np.uint8).reshape(-1, 2).T.ravel(),
                  "mask": np.packbits(mask, bitorder="little"),
                  "born": self.born[mask]}
        if pending.first == 0:
            arrays["initial"] = np.packbits(self.initial, bitorder="little")
        if self._holds_counts(pending):
            arrays["grown"] = self.grown_total
        blob, parts = _pack_parts(arrays)
        segment = Segment(shape=self.shape, rewires=pending, last_seq=self.last_seq,
                          parts=parts, born_dtype=parts["born"][2], _blob=blob)
        self.pending = Rewires(first=pending.last + 1)
        self.cohorts = []
        return segment

    def open_cohorts(self) -> _ListCohorts:
        return _ListCohorts(self.cohorts)


# ---- answering ------------------------------------------------------------------------------
class LayerTimeline:
    """A layer's whole index as a reader holds it: stored (or just cut) segments from rewire 0
    on, then the indexer's rewires since (None when the segments end at the newest frame)."""

    def __init__(self, segments: list[Segment], indexer: LayerIndexer | None):
        if not segments and indexer is None:
            raise ValueError("segments: a layer index needs a segment or an indexer")
        self.segments = segments
        self.indexer = indexer
        parts = [segment.rewires for segment in segments]
        if indexer is not None and indexer.pending.steps:
            parts.append(indexer.pending)
        self._parts = parts
        self.steps = [step for part in parts for step in part.steps]
        self.grown = np.array([n for part in parts for n in part.grown], dtype=np.int64)
        self.active = [n for part in parts for n in part.active]
        self.repruned = np.array([n for part in parts for n in part.repruned], dtype=np.int64)
        self.shape = segments[0].shape if segments else indexer.shape

    @property
    def rewires(self) -> int:
        """The newest rewire's number."""
        return len(self.steps) - 1

    def summary(self, rewire: int) -> dict:
        for part in self._parts:
            if part.first <= rewire <= part.last:
                return part.summary(rewire - part.first)
        raise ValueError(f"rewire: {rewire} outside 0..{self.rewires}")

    def checkpoint_mask(self, rewire: int) -> np.ndarray | None:
        """The flat mask at `rewire` where the index holds it whole (the rewire a segment
        ends at, or the indexer's current one); None elsewhere (frames must be replayed)."""
        if self.indexer is not None and rewire == self.indexer.rewire:
            return self.indexer.mask()
        for segment in self.segments:
            if segment.last == rewire:
                return segment.checkpoint_mask()
        return None

    def _initial(self) -> np.ndarray:
        if self.segments:
            return self.segments[0].initial()
        return self.indexer.initial

    def repruned_series(self, rewire: int) -> list[list]:
        """[c, |A_c ∩ R_{c+1}| / |A_c|] for rewires 1..rewire-1 with net growth."""
        grown = self.grown[1:rewire]
        cohorts = np.flatnonzero(grown > 0)
        shares = self.repruned[2:rewire + 1][cohorts] / grown[cohorts]
        return [[c, share] for c, share in zip((cohorts + 1).tolist(), shares.tolist(),
                                                strict=True)]

    def born_at(self, rewire: int, active_index: np.ndarray) -> np.ndarray:
        """(k,) the rewire each connection of `active_index` (active at `rewire`) last became
        active at: the checkpoint before `rewire`'s part, then that part's cohorts."""
        indexer = self.indexer
        if indexer is not None and rewire == indexer.rewire:
            born = indexer.born[active_index].astype(np.int64)
        else:
            position = next(i for i, segment in enumerate(self.segments)
                            if segment.first <= rewire <= segment.last) \
                if self.segments and rewire <= self.segments[-1].last else len(self.segments)
            if position < len(self.segments) and self.segments[position].last == rewire:
                # The segment's own checkpoint is this rewire, and `active_index` its mask's
                # (the reader takes the mask from it there): its born part is the answer, no
                # cohort replayed (a 45 M-connection layer's newest rewire: 0.3 s saved).
                born = self.segments[position].checkpoint_born()
                if born.size != active_index.size:
                    raise IndexFormatError(f"rewire {rewire}: the mask has {active_index.size} "
                                           f"active connections, its checkpoint {born.size}")
                born = born.astype(np.int64)
            else:
                full = np.full(self._numel(), -1, dtype=np.int32)
                if position == 0:
                    full[self._initial()] = 0
                else:
                    mask, born = self.segments[position - 1].checkpoint()
                    full[mask] = born
                cohorts = (self.segments[position].cohorts() if position < len(self.segments)
                           else indexer.open_cohorts())
                cohorts.mark_born(full, rewire)
                born = full[active_index].astype(np.int64)
        if born.size and born.min() < 0:
            raise IndexFormatError(f"rewire {rewire}: the mask holds connections the index "
                                   "never saw grow")
        return born

    def _numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def alive(self, rewire: int, mask: np.ndarray, mapper=map) -> np.ndarray:
        """(rewire,) |A_c ∩ M| for every cohort c < rewire (index c; 0 at c = 0). `mapper`
        (a thread pool's map) may count the segments in parallel: numpy lets go of the
        interpreter lock while it gathers, and each segment's blob is read in its thread."""
        alive = np.zeros(max(rewire, 1), dtype=np.int64)
        groups = [segment.cohorts for segment in self.segments
                  if segment.first < rewire and segment.last >= 1]
        if self.indexer is not None and self.indexer.pending.steps \
                and self.indexer.pending.first < rewire:
            groups.append(self.indexer.open_cohorts)

        def count(cohorts_of) -> tuple[list[int], np.ndarray]:
            cohorts = cohorts_of()
            return cohorts.rewires, (cohorts.alive(mask) if cohorts.rewires
                                     else np.zeros(0, np.int64))

        for cohort_rewires, counts in mapper(count, groups):
            rewires = np.asarray(cohort_rewires, dtype=np.int64)
            keep = rewires < rewire
            alive[rewires[keep]] = counts[keep]
        return alive

    def at(self, rewire: int, mask: np.ndarray, mapper=map) -> dict:
        """Ages, cohort survival, re-pruning and distances at `rewire`, whose flat mask is
        `mask` (the caller seeks it from the stored frames)."""
        if not 0 <= rewire <= self.rewires:
            raise ValueError(f"rewire: {rewire} outside 0..{self.rewires}")
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.size != self._numel():
            raise ValueError(f"mask: {mask.size} entries for a layer of {self._numel()}")
        if int(np.count_nonzero(mask)) != self.active[rewire]:
            raise IndexFormatError(f"rewire {rewire}: the mask has {np.count_nonzero(mask)} "
                                   f"active connections, the index {self.active[rewire]}")
        active_index = np.flatnonzero(mask)  # (k,) ascending
        born = self.born_at(rewire, active_index)
        alive = self.alive(rewire, mask, mapper)
        grown = self.grown[:rewire]
        earlier = np.flatnonzero(grown > 0)  # rewires 1..r-1 with net growth
        newest_first = earlier[::-1]
        shares = alive[newest_first] / grown[newest_first]
        active_count = int(active_index.size)
        new_since_start = int(np.count_nonzero(~self._initial()[active_index]))
        return {
            "rewire": rewire, "active": active_count,
            "age": count_pairs(rewire - born),
            "survival": [[age, share] for age, share in zip(
                (rewire - newest_first).tolist(), shares.tolist(), strict=True)],
            "repruned_next": self.repruned_series(rewire),
            "distance_initial": new_since_start / active_count if active_count else 0.0,
            "distance_previous": (int(self.grown[rewire]) / active_count
                                  if active_count and rewire else 0.0),
        }
