"""How much the masks of several runs share: Jaccard of one layer across runs, at a step and
over time.

Each run's mask is the one `/mask` answers (its newest frame of the layer at or before the
step: keyframe + deltas, masks.py), held as packed bits (one uint64 per 64 connections: a
4096 × 4096 layer is 2 MB a run, not 16.7 MB), and every pair's shared count is the popcount
of their AND (`np.bitwise_count`), taken over slices of the words that stay in cache, a run
against all later ones in one pass per slice. The union follows: |A ∪ B| = |A| + |B| − |A ∩ B|,
so the answer is exact. Over time, the grid is the union of the runs' rewire steps of the
layer, evenly thinned; each run's packed mask walks forward through its stored frames once (a
delta sets and clears its bits in place), taking or skipping each frame by the same rule as
mask seek (schema.frame_misfit), so every grid step shows the mask `/mask` answers there, and
at each step only the pairs of the runs whose mask changed are counted again.

The random reference: two independent uniformly random masks of densities d₁ and d₂ share
d₁d₂ of the positions and cover d₁ + d₂ − d₁d₂ of them, so their expected Jaccard is (for
large layers) d₁d₂ / (d₁ + d₂ − d₁d₂).
"""

from __future__ import annotations

import hashlib

import numpy as np

from dst_core.store.masks import (
    BytesLRU,
    Frame,
    FrameChains,
    NoFittingFrame,
    StoredDataError,
    run_key,
)
from dst_core.store.reader import RunReader
from dst_core.store.schema import MAX_STEP, frame_misfit
from dst_core.store.topology_index import Misfit

MAX_RUNS = 16
WORDS_PER_SLICE = 1 << 14  # uint64 words of every run at a time: 128 kB a run, in cache
ANSWERS_BYTES = 16 * 1024 * 1024  # recent answers (N × N lists, or pairs × points)
# The series reads frames through chains of its own whose cache keeps header claims only: a
# series walks every delta of up to 16 runs once, which would flush the shared mask cache.
WALK_CACHE_BYTES = 1 << 20


class OverlapError(ValueError):
    """A request the stored runs cannot answer, naming the query field (a 422)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class StoredRunError(StoredDataError):
    """A run's stored frame that does not read (a 422 naming the run and the frame)."""


def packed(mask: np.ndarray) -> np.ndarray:
    """(ceil(numel / 64),) little-endian uint64 words of a bool mask: position p is bit p % 64
    of word p // 64."""
    bits = np.packbits(np.asarray(mask, dtype=bool).reshape(-1), bitorder="little")
    padding = -bits.size % 8
    if padding:
        bits = np.concatenate([bits, np.zeros(padding, np.uint8)])
    return bits.view("<u8")


def _word_slices(masks: list[np.ndarray]):
    """Each slice of at most WORDS_PER_SLICE words of the packed masks (one length), as
    (block, both, bits, width): the masks' words side by side in `block[:, :width]`, and two
    scratch arrays of its shape; the arrays are reused, so memory stays at one slice whatever
    the layer's size."""
    words = masks[0].size
    block = np.empty((len(masks), min(WORDS_PER_SLICE, max(words, 1))), dtype=np.uint64)
    both = np.empty_like(block)
    bits = np.empty(block.shape, dtype=np.uint8)
    for start in range(0, words, WORDS_PER_SLICE):
        width = min(WORDS_PER_SLICE, words - start)
        for row, mask in enumerate(masks):
            block[row, :width] = mask[start:start + width]
        yield block, both, bits, width


def _and_counts(block, both, bits, width: int, row: int, first: int = 0) -> np.ndarray:
    """|A_row ∩ A_j| within the slice for every j ≥ `first`, one pass."""
    rest = block.shape[0] - first
    np.bitwise_and(block[first:, :width], block[row, :width], out=both[:rest, :width])
    np.bitwise_count(both[:rest, :width], out=bits[:rest, :width])
    return bits[:rest, :width].sum(axis=1, dtype=np.int64)


def shared_counts(masks: list[np.ndarray]) -> np.ndarray:
    """(N, N) int64: |A_i ∩ A_j| of packed masks of one length (the diagonal: |A_i|)."""
    count = len(masks)
    shared = np.zeros((count, count), dtype=np.int64)
    if not count:
        return shared
    for block, both, bits, width in _word_slices(masks):
        for row in range(count):  # row with itself and every later run
            shared[row, row:] += _and_counts(block, both, bits, width, row, first=row)
    upper = np.triu_indices(count, 1)
    shared[upper[1], upper[0]] = shared[upper]
    return shared


def shared_rows(masks: list[np.ndarray], rows: list[int]) -> np.ndarray:
    """(len(rows), N) int64: |A_i ∩ A_j| of each listed mask i with every mask j: what a
    series recounts at a step where only some runs' masks changed."""
    found = np.zeros((len(rows), len(masks)), dtype=np.int64)
    if not masks or not rows:
        return found
    for block, both, bits, width in _word_slices(masks):
        for position, row in enumerate(rows):
            found[position] += _and_counts(block, both, bits, width, row)
    return found


def jaccard(shared: np.ndarray) -> np.ndarray:
    """(N, N) float: |A ∩ B| / |A ∪ B| from the shared counts; an empty union is 1.0."""
    active = np.diag(shared).astype(np.float64)
    union = active[:, None] + active[None, :] - shared
    with np.errstate(invalid="ignore", divide="ignore"):
        found = np.where(union > 0, shared / np.where(union > 0, union, 1), 1.0)
    np.fill_diagonal(found, 1.0)
    return found


def random_jaccard(densities: np.ndarray) -> np.ndarray:
    """(N, N) float: the expected Jaccard of two independent uniformly random masks of each
    pair's densities, d₁d₂ / (d₁ + d₂ − d₁d₂); 1.0 on the diagonal and for two empty masks."""
    first, second = densities[:, None], densities[None, :]
    union = first + second - first * second
    with np.errstate(invalid="ignore", divide="ignore"):
        found = np.where(union > 0, first * second / np.where(union > 0, union, 1), 1.0)
    np.fill_diagonal(found, 1.0)
    return found


class Overlap:
    """Overlap of one layer across runs of one data folder (shares the views' mask cache)."""

    def __init__(self, reader: RunReader):
        self.reader = reader
        self.store = reader.store
        self.chains = reader.chains
        self._walk_chains = FrameChains(self.store, BytesLRU(WALK_CACHE_BYTES))
        # Masks too many or too large for the shared cache (16 runs of 4096 × 4096: 268 MB)
        # are sought from their keyframes without it, one at a time: they would only flush it.
        self._seek_chains = FrameChains(self.store, BytesLRU(WALK_CACHE_BYTES))
        self.answers = BytesLRU(ANSWERS_BYTES)

    # ---- which layer and frames -----------------------------------------------------------------
    def locate(self, runs: list[dict], layer: str, step: int | None,
               required: bool = True) -> dict:
        """Each run's layer (matched by name or index, one shape for all) and the chain of
        frames its mask at `step` (None: its newest) is made of, without reading any blob;
        `tag` names the answer. OverlapError naming `layer`, or `step` for a run with no frame
        of the layer by then (unless not `required`: its chain is then [])."""
        located = self._layers(runs, layer)
        until = MAX_STEP if step is None else int(step)
        chains = []
        for run, index in zip(runs, located["indices"], strict=True):
            chain = self.chains.chain(run["id"], index, until)
            if not chain and required:
                where = "" if step is None else f" at or before step {step}"
                raise OverlapError("step", f"run {run['id']}: no stored mask of layer "
                                           f"{located['names'][0]!r}{where}")
            chains.append(chain)
        located["chains"] = chains
        located["step"] = None if step is None else int(step)
        located["tag"] = "|".join([f"{run_key(run)}:{index}:{chain[-1].seq if chain else -1}"
                                   for run, index, chain
                                   in zip(runs, located["indices"], chains, strict=True)]
                                  + [str(step)])
        return located

    def _layers(self, runs: list[dict], layer: str) -> dict:
        indices, names, shapes = [], [], []
        for run in runs:
            try:
                index = self.reader.layer_index(run["id"], layer)
            except ValueError:
                raise OverlapError("layer", f"run {run['id']}: no layer {layer!r}") from None
            entry = self.reader.layers(run["id"])[index]
            indices.append(index)
            names.append(entry["name"])
            shapes.append([int(side) for side in entry["matrix"]])
        if any(shape != shapes[0] for shape in shapes):
            listed = ", ".join(f"run {run['id']}: {shape[0]}×{shape[1]}"
                               for run, shape in zip(runs, shapes, strict=True))
            raise OverlapError("layer", f"layer {layer!r} has different shapes in these runs "
                                        f"({listed})")
        numel = shapes[0][0] * shapes[0][1]
        if numel > self.store.max_frame_elements:  # a legacy row: bounded before decoding
            raise OverlapError("layer", f"layer {layer!r}: {shapes[0][0]}×{shapes[0][1]} is "
                                        f"larger than this server's frame limit")
        return {"indices": indices, "names": names, "shape": shapes[0], "numel": numel}

    @staticmethod
    def etag(located: dict, extra: str = "") -> str:
        text = f"overlap|{located['tag']}|{extra}"
        return '"' + hashlib.sha1(text.encode()).hexdigest()[:24] + '"'

    # ---- at one step ----------------------------------------------------------------------------
    def at(self, runs: list[dict], located: dict) -> dict:
        """Jaccard, shared counts and the random reference of the located masks."""
        key = ("at", located["tag"])
        answer = self.answers.get(key)
        if answer is not None:
            return answer
        words, steps, rewires = [], [], []
        chains = self.chains if len(runs) * located["numel"] <= \
            self.chains.cache.limit_bytes // 4 else self._seek_chains
        for run, index, chain in zip(runs, located["indices"], located["chains"], strict=True):
            words.append(packed(self._mask(chains, run, index, chain, located)))
            steps.append(int(chain[-1].step))
            rewires.append(self._rewire_number(run["id"], index, chain[-1].step))
        shared = shared_counts(words)
        active = np.diag(shared).copy()
        numel = located["numel"]
        answer = {"layer": located["names"][0], "index": located["indices"][0],
                  "layers": located["names"], "indices": located["indices"],
                  "shape": located["shape"], "step": located["step"],
                  "runs": [run["id"] for run in runs], "steps": steps, "rewires": rewires,
                  "active": active.tolist(), "numel": numel,
                  "jaccard": jaccard(shared).tolist(), "shared": shared.tolist(),
                  "random_jaccard": random_jaccard(active / numel).tolist()}
        self._keep(key, answer)
        return answer

    @staticmethod
    def _mask(chains: FrameChains, run: dict, index: int, chain, located: dict) -> np.ndarray:
        """(numel,) bool: the run's mask at the chain's end, as `/mask` rebuilds it."""
        rows, cols = located["shape"]
        try:
            return chains.mask(run, index, chain, rows * cols, (rows, cols))
        except NoFittingFrame:
            raise OverlapError("step", f"run {run['id']}: no stored mask of layer "
                                       f"{located['names'][0]!r} that fits its history at or "
                                       f"before step {chain[-1].step}") from None
        except StoredDataError as error:
            raise StoredRunError(f"run {run['id']}: {error}") from None

    def _rewire_number(self, run_id: str, index: int, step: int) -> int:
        """The rewire at `step` of the layer: how many distinct steps its frames have before
        it (rewire 0 is its first frame, the initial mask)."""
        row = self.store.db.execute(
            "SELECT COUNT(DISTINCT step) FROM events INDEXED BY events_frames WHERE run_id = ?"
            " AND layer = ? AND keyframe IN (0, 1) AND step < ?", (run_id, index, int(step))
        ).fetchone()
        return int(row[0])

    # ---- over time ------------------------------------------------------------------------------
    def series(self, runs: list[dict], located: dict, points: int) -> dict:
        """Every pair's Jaccard (and the random reference) at each step of a grid: the union
        of the runs' rewire steps of the layer, at most `points` of them evenly picked (the
        first and the last always in); null where either run has no mask yet."""
        if not 2 <= points:
            raise ValueError("points: must be at least 2")
        key = ("series", located["tag"], points)
        answer = self.answers.get(key)
        if answer is not None:
            return answer
        indices, numel = located["indices"], located["numel"]
        steps = sorted(set().union(*(self.store.frame_steps(run["id"], index)
                                     for run, index in zip(runs, indices, strict=True))))
        newest = max((int(chain[-1].step) for chain in located["chains"] if chain), default=-1)
        steps = [step for step in steps if step <= newest]  # as located: no frame stored since
        if len(steps) > points:
            picked = np.unique(np.linspace(0, len(steps) - 1, points).round().astype(np.int64))
            steps = [steps[position] for position in picked]
        count = len(runs)
        pairs = [[i, j] for i in range(count) for j in range(i + 1, count)]
        found = np.full((len(pairs), len(steps)), np.nan)
        expected = np.full((len(pairs), len(steps)), np.nan)
        actives: list[list[int | None]] = [[None] * len(steps) for _ in runs]
        walkers = [_Walker(self._walk_chains, run, index, tuple(located["shape"]))
                   for run, index in zip(runs, indices, strict=True)]
        # Every pair's shared count, kept from step to step: at a step, only the pairs of the
        # runs whose mask changed since are counted again (with different rewire steps, one
        # run at a time: N - 1 pairs, not N(N - 1)/2).
        shared_all = np.zeros((count, count), dtype=np.int64)
        counted = [-1] * count  # the walker version each run's row was counted at
        for column, step in enumerate(steps):
            for walker in walkers:
                try:
                    walker.advance(step)
                except StoredDataError as error:
                    raise StoredRunError(f"run {walker.run['id']}: {error}") from None
            present = [position for position, walker in enumerate(walkers)
                       if walker.words is not None]
            for position in present:
                actives[position][column] = walkers[position].active
            if len(present) < 2:
                continue
            changed = [slot for slot, position in enumerate(present)
                       if walkers[position].version != counted[position]]
            if changed:
                rows = shared_rows([walkers[position].words for position in present], changed)
                for slot, row in zip(changed, rows, strict=True):
                    shared_all[present[slot], present] = row
                    shared_all[present, present[slot]] = row
                    counted[present[slot]] = walkers[present[slot]].version
            shared = shared_all[np.ix_(present, present)]
            active = np.diag(shared)
            scores, reference = jaccard(shared), random_jaccard(active / numel)
            where = {run: slot for slot, run in enumerate(present)}
            for pair, (i, j) in enumerate(pairs):
                if i in where and j in where:
                    found[pair, column] = scores[where[i], where[j]]
                    expected[pair, column] = reference[where[i], where[j]]

        def listed(values: np.ndarray) -> list[list[float | None]]:
            return [[None if np.isnan(value) else float(value) for value in row]
                    for row in values]

        answer = {"layer": located["names"][0], "index": indices[0], "layers": located["names"],
                  "indices": indices, "shape": located["shape"], "numel": numel,
                  "runs": [run["id"] for run in runs], "pairs": pairs, "steps": steps,
                  "active": actives, "jaccard": listed(found),
                  "random_jaccard": listed(expected)}
        self._keep(key, answer)
        return answer

    def _keep(self, key: tuple, answer: dict) -> None:
        """Keep an answer (callers must not edit it), counted by its numbers."""
        numbers = sum(len(answer[field]) * max(1, len(answer[field][0]) if answer[field] else 1)
                      for field in ("jaccard", "random_jaccard"))
        self.answers.put(key, answer, 64 * numbers + 1024)


class _Walker:
    """One run's mask of a layer as packed words, moved forward through its stored frames in
    seq order: a keyframe that fits replaces it, a delta that fits (removes only active
    connections, adds only inactive ones, says the count after it) sets and clears its bits;
    a frame that does not fit is skipped, as mask seek skips it."""

    def __init__(self, chains: FrameChains, run: dict, index: int, shape: tuple[int, int]):
        self.chains, self.run, self.index, self.shape = chains, run, index, shape
        self.numel = shape[0] * shape[1]
        rows = chains.store.db.execute(
            "SELECT seq, step, keyframe FROM events INDEXED BY events_frames WHERE run_id = ?"
            " AND layer = ? AND keyframe IN (0, 1) ORDER BY seq", (run["id"], index)).fetchall()
        self.frames = [Frame(int(row[0]), int(row[1]), bool(row[2])) for row in rows]
        self.position = 0  # the next frame to take
        self.words: np.ndarray | None = None  # None until a keyframe that fits
        self.active = 0
        self.version = 0  # frames taken: the mask may have changed when it moves

    def advance(self, step: int) -> None:
        """Take every frame up to `step`."""
        while self.position < len(self.frames) and self.frames[self.position].step <= step:
            self._take(self.frames[self.position])
            self.position += 1

    def _take(self, frame: Frame) -> None:
        run_id = self.run["id"]
        try:
            if frame.keyframe:
                mask = self.chains.keyframe(run_id, frame, self.numel, self.shape)
                self.words, self.active = packed(mask), int(np.count_nonzero(mask))
                self.version += 1
                return
            if self.words is None:
                return  # a delta before any keyframe that fits
            added, removed = self.chains.delta(run_id, frame, self.numel, self.shape)
        except Misfit:
            return
        frame_shape, claimed = self.chains._claims(run_id, frame)  # kept from its decoding
        if frame_misfit(self.shape, frame_shape, claimed, added=added, removed=removed,
                        active_at=self._bits, active_now=self.active) is not None:
            return
        _apply_delta(self.words, added, removed)
        self.active = int(claimed)
        self.version += 1

    def _bits(self, indices: np.ndarray) -> np.ndarray:
        """(n,) bool: whether each flat index is active (position p: bit p % 8 of byte p // 8,
        as np.packbits(bitorder="little") lays them out)."""
        data = self.words.view(np.uint8)
        return ((data[indices >> 3] >> (indices & 7).astype(np.uint8)) & 1).astype(bool)


def _apply_delta(words: np.ndarray, added: np.ndarray, removed: np.ndarray) -> None:
    """Set the bits of `added` and clear those of `removed` (flat indices) in packed `words`,
    in place. A delta of many connections (a SET rewire of a big layer: ~1 M) costs less as
    one unpack, two scatters and one pack of the whole layer (~8 ms at 16.7 M connections)
    than bit by bit; a small one is OR-ed and AND-ed into its bytes (`ufunc.at`: indices may
    share a byte)."""
    data = words.view(np.uint8)
    if added.size + removed.size > data.size // 8:
        bits = np.unpackbits(data, bitorder="little")
        bits[removed] = 0
        bits[added] = 1
        data[:] = np.packbits(bits, bitorder="little")
        return
    for indices, value in ((removed, False), (added, True)):
        if indices.size:
            positions = (indices >> 3).astype(np.intp)
            bit = np.left_shift(np.uint8(1), (indices & 7).astype(np.uint8))
            if value:
                np.bitwise_or.at(data, positions, bit)
            else:
                np.bitwise_and.at(data, positions, ~bit)
