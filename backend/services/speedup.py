"""What each layer's mask would buy as `dst_core.compact` runs it: interpolated from a cost table.

The table is measured once per machine (a few square layers × densities × batch 1/16 in every
format `compact` has on this device, about 3 s of one core plus torch's import, on a
background thread started by the first request that needs it) and kept in the user's cache
folder, keyed by what its figures depend on (torch, the CPU, the grid): a later server reads
it in a millisecond, so opening a run never pays for it again (measured at every server start
it took a core from the browser while a link or a notebook's views opened, and each start
learnt that moment's noise). A request only interpolates in it: a request never times
anything, so answering costs microseconds whatever the run, and a busy server is not made
busier by its viewers. The per-element cost is interpolated in log(size) and
log(density) (clamped at the grid's edges: past the largest layer the cost per element is the
largest layer's, as memory-bound products are) and multiplied by the layer's size.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import math
import os
import platform
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

SIZES = (256, 1024, 2048)  # square layers: size × size
DENSITIES = (0.01, 0.05, 0.2, 0.5)
BATCHES = (1, 16)
FORMATS = ("dense", "csr", "condensed")
WAIT_S = 20.0  # how long a request waits for the table being measured before a 503
MAX_SERIES_POINTS = 100  # rewires one series answer holds (each decodes every layer's mask)
DISTANCES_CACHED = 8192  # (run, layer, frame step) → distances: a mask never changes once stored
CACHE_FORMAT = 1  # the cached table's layout
MAX_CELL_MS = 1e6  # a cached figure above this (or not a positive number) is not a measurement
LOG = logging.getLogger(__name__)


def cache_folder() -> Path:
    """Where the measured table is kept: $SPARSESCOPE_CACHE_DIR, else $XDG_CACHE_HOME or
    ~/.cache, under sparsescope/ (the remote recorder's spool lives there too)."""
    named = os.environ.get("SPARSESCOPE_CACHE_DIR")
    if named:
        return Path(named)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsescope"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_key(sizes, densities, batches) -> dict:
    """What a measured table's figures depend on: a cached table is used only where all of
    it is the same (torch's version without importing it: its import costs a second)."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    return {"format": CACHE_FORMAT, "torch": torch_version, "machine": platform.machine(),
            "cpu": _cpu_model(), "cpus": os.cpu_count() or 1, "threads": 1,
            "sizes": list(sizes), "densities": list(densities), "batches": list(batches),
            "formats": list(FORMATS)}


def default_cache_file(sizes, densities, batches) -> Path:
    key = machine_key(sizes, densities, batches)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_folder() / f"cost-table-{digest}.json"


class CostTable:
    """ms per forward of a square Linear in each format (one thread), measured once, then
    interpolated."""

    def __init__(self, sizes=SIZES, densities=DENSITIES, batches=BATCHES,
                 measure: Callable[[int, float, int], dict[str, float]] | None = None,
                 cache_file: Path | None | bool = True) -> None:
        """`cache_file`: where the measured table is kept and read (True: the machine's file
        in cache_folder() when measuring for real, none with a `measure` of the caller's;
        None or False: never kept)."""
        self.sizes, self.densities, self.batches = tuple(sizes), tuple(densities), tuple(batches)
        self._measure = measure or measure_cell
        if cache_file is True:
            cache_file = default_cache_file(sizes, densities, batches) if measure is None else None
        self.cache_file: Path | None = cache_file or None
        self.cached = False  # whether the figures were read from cache_file
        self.ms: dict[tuple[int, float, int], dict[str, float]] = {}
        self.measured_s: float | None = None
        self.threads = 0
        self.error: str | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Measure on a background thread, once (later calls do nothing)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="speedup-cost-table",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        started = time.perf_counter()
        if self._read_cache():
            self.measured_s = time.perf_counter() - started
            self._ready.set()
            return
        import torch

        # One thread: on a busy machine a 2-thread product waits a scheduler quantum (~4 ms)
        # for its second thread every so often, and the table would learn that noise. The
        # server process does no tensor work of its own meanwhile (training runs in workers).
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        self.threads = 1
        try:
            for size in self.sizes:
                for density in self.densities:
                    for batch in self.batches:
                        self.ms[(size, density, batch)] = self._measure(size, density, batch)
        except Exception as failure:  # noqa: BLE001  (a request then says why: never a 500)
            self.error = f"{type(failure).__name__}: {failure}"
        finally:
            torch.set_num_threads(previous)
            _cell_layers.cache_clear()
        self.measured_s = time.perf_counter() - started
        if self.error is None:
            self._write_cache()
        self._ready.set()

    def _cells(self):
        return [(size, density, batch) for size in self.sizes for density in self.densities
                for batch in self.batches]

    def _read_cache(self) -> bool:
        """Take the figures from cache_file when it holds this machine's whole grid, each a
        positive finite number of ms (a file not ours, torn or edited is measured over)."""
        if self.cache_file is None or not self.cache_file.is_file():
            return False
        try:
            stored = json.loads(self.cache_file.read_text(encoding="utf-8"))
            if stored.get("key") != machine_key(self.sizes, self.densities, self.batches):
                return False
            found = {}
            for cell in stored["cells"]:
                key = (int(cell["size"]), float(cell["density"]), int(cell["batch"]))
                figures = {fmt: float(cell["ms"][fmt]) for fmt in FORMATS}
                if not all(math.isfinite(ms) and 0 < ms <= MAX_CELL_MS
                           for ms in figures.values()):
                    return False
                found[key] = figures
            if set(found) != set(self._cells()):
                return False
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return False
        self.ms.update(found)
        self.threads, self.cached = 1, True
        return True

    def _write_cache(self) -> None:
        if self.cache_file is None:
            return
        cells = [{"size": size, "density": density, "batch": batch,
                  "ms": self.ms[(size, density, batch)]}
                 for size, density, batch in self._cells() if (size, density, batch) in self.ms]
        text = json.dumps({"key": machine_key(self.sizes, self.densities, self.batches),
                           "measured_s": self.measured_s, "cells": cells})
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(text, encoding="utf-8")
            partial.replace(self.cache_file)  # whole or not at all, for a server reading it
        except OSError as error:  # a read-only home: measured again next time, nothing lost
            LOG.info("cost table not kept at %s (%s)", self.cache_file, error)

    def wait(self, timeout_s: float) -> bool:
        self.start()
        return self._ready.wait(timeout_s)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def estimate(self, rows: int, cols: int, density: float, batch: int) -> dict[str, float]:
        """ms per format for a (rows × cols) layer at `density` and `batch` (1 or 16)."""
        numel = rows * cols
        log_size = math.log(max(math.sqrt(numel), 1.0))
        log_density = math.log(min(max(density, 1e-6), 1.0))
        out: dict[str, float] = {}
        # Above the grid's densest cell a sparse format's cost grows with its active count
        # (clamping would show a dense layer's CSR as cheap as at the top density).
        denser = max(1.0, density / self.densities[-1])
        for fmt in FORMATS:
            per_element = self._interpolate(fmt, batch, log_size, log_density)
            if per_element is not None:
                out[fmt] = per_element * numel * (1.0 if fmt == "dense" else denser)
        return out

    def _interpolate(self, fmt: str, batch: int, log_size: float,
                     log_density: float) -> float | None:
        sizes = [math.log(size) for size in self.sizes]
        densities = [math.log(density) for density in self.densities]

        def per_element(i: int, j: int) -> float | None:
            cell = self.ms.get((self.sizes[i], self.densities[j], batch), {})
            value = cell.get(fmt)
            return None if value is None else value / self.sizes[i] ** 2

        i0, i1, wi = _bracket(sizes, log_size)
        j0, j1, wj = _bracket(densities, log_density)
        corners = [per_element(i, j) for i in (i0, i1) for j in (j0, j1)]
        if any(value is None for value in corners):
            return None
        a, b, c, d = corners  # (i0, j0), (i0, j1), (i1, j0), (i1, j1)
        return (1 - wi) * ((1 - wj) * a + wj * b) + wi * ((1 - wj) * c + wj * d)


def _bracket(points: list[float], value: float) -> tuple[int, int, float]:
    """The grid points around `value` and its weight toward the upper one (clamped)."""
    if value <= points[0]:
        return 0, 0, 0.0
    if value >= points[-1]:
        return len(points) - 1, len(points) - 1, 0.0
    upper = bisect.bisect_right(points, value)
    lower = upper - 1
    return lower, upper, (value - points[lower]) / (points[upper] - points[lower])


@functools.lru_cache(maxsize=1)
def _cell_layers(size: int, density: float) -> dict:
    """A size × size layer (constant fan-in mask) in each format: built once for both batches
    (building them was two thirds of the table's time)."""
    import torch

    from dst_core.compact import CompactLinear
    from dst_core.structure import constant_fan_in_mask

    generator = torch.Generator().manual_seed(size)
    mask = constant_fan_in_mask((size, size), max(1, round(density * size)), generator)
    weight = torch.randn(size, size, generator=generator)
    return {fmt: CompactLinear(weight, mask, fmt, None) for fmt in FORMATS}


def measure_cell(size: int, density: float, batch: int) -> dict[str, float]:
    """ms of one forward of a size × size layer in each format (constant fan-in mask)."""
    import torch

    from dst_core.compact import measure_ms

    x = torch.randn(batch, size, generator=torch.Generator().manual_seed(size + batch))
    return {fmt: measure_ms(lambda layer=layer: layer(x), repeats=3, min_time_s=0.002)
            for fmt, layer in _cell_layers(size, density).items()}


_shared: CostTable | None = None
_shared_lock = threading.Lock()


def shared_table() -> CostTable:
    """The process's one table: the machine's costs do not depend on the data folder."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = CostTable()
        return _shared


def set_shared_table(table: CostTable | None) -> None:
    """Replace the process's table (tests measure a tiny one)."""
    global _shared
    with _shared_lock:
        _shared = table


def layer_speedups(layers: list[dict], table: CostTable, batch: int,
                   condensed: bool) -> list[dict]:
    """Per layer {layer, shape, density, formats: {dense_ms, csr_ms, condensed_ms?}, best,
    speedup}, as `compact` would choose (dense unless another format takes ≤ 95% of its time).
    `condensed` only where every output has the same fan-in (SRigL, N:M runs)."""
    answered = []
    for entry in layers:
        rows, cols = entry["shape"]
        density = entry["density"]
        if density is None:
            continue
        chosen = best_format(table, rows, cols, density, batch, condensed)
        if chosen is None:
            continue
        estimate, best = chosen
        answered.append({
            "layer": entry["name"], "shape": [rows, cols], "density": density,
            "formats": {f"{name}_ms": round(ms, 6) for name, ms in estimate.items()},
            "best": best, "speedup": estimate["dense"] / estimate[best]})
    return answered


def best_format(table: CostTable, rows: int, cols: int, density: float, batch: int,
                condensed: bool) -> tuple[dict[str, float], str] | None:
    """(estimated ms per format, the format `compact` would choose) for one layer at one
    batch; None when the table has no dense figure to compare with. `condensed` only where
    every output has the same fan-in."""
    from dst_core.compact import choose_format  # torch: loaded when first asked, as measuring is

    estimate = table.estimate(rows, cols, density, batch)
    if not condensed:
        estimate.pop("condensed", None)
    if "dense" not in estimate:
        return None
    return estimate, choose_format(estimate)


def layers_at(views, run: dict, step: int) -> list[dict]:
    """Each layer's name, (rows, cols) as drawn and density of its newest stored frame at or
    before `step` (None where it has none by then). One indexed query per layer."""
    answered = []
    for index, entry in enumerate(views.reader.layers(run["id"])):
        rows, cols = entry["matrix"]
        row = views.store.db.execute(
            "SELECT CASE WHEN json_valid(payload) THEN json_extract(payload, '$.active') END "
            "FROM events WHERE run_id = ? AND layer = ? AND step <= ? "
            "ORDER BY step DESC, seq DESC LIMIT 1", (run["id"], index, step)).fetchone()
        active = None if row is None else row[0]
        if isinstance(active, bool) or not isinstance(active, (int, float)) or \
                not math.isfinite(active) or not 0 <= active <= rows * cols or rows * cols == 0:
            density = None  # no frame yet, or a stored count that does not read
        else:
            density = active / (rows * cols)
        answered.append({"name": entry["name"], "shape": [rows, cols], "density": density})
    return answered


def constant_fan_in(run: dict) -> bool:
    """Whether the run's masks keep every output's fan-in equal (what `condensed` needs):
    SRigL's do; an N:M run's only where every group is full, which its settings do not say."""
    used = run.get("settings") or run.get("config") or {}
    return used.get("method") == "srigl"


# ---- distance to structure ----------------------------------------------------------------------
def structure_distances(mask: np.ndarray) -> dict:
    """How far a (rows = outputs, cols = inputs) mask is from the two structures the fast formats
    want, as the share of its active connections that would have to move:

    - `to_constant_fan_in`: to the nearest mask with the same active count A whose every output
      has ⌊A/rows⌋ or ⌈A/rows⌉ inputs (constant fan-in up to the remainder, which `condensed`
      pads with at most one zero per row). The (A mod rows) fullest rows may keep ⌈A/rows⌉,
      the others ⌊A/rows⌋; what a row holds beyond its target moves to a row short of its own.
    - `to_2_4`: to a mask with at most 2 active in every 4 consecutive inputs of a row (2:4):
      Σ over groups of max(0, active in the group − 2). They fit into other groups when the
      density is at most 0.5 (above it some must be dropped instead). A layer whose inputs are
      not a multiple of 4 is counted as if padded with inactive inputs (`note` says so).

    Vectorised: one count per row and one per group of 4 (a 4096 × 11008 mask in ~0.1 s)."""
    rows, cols = mask.shape
    fan_in = np.count_nonzero(mask, axis=1)  # (rows,)
    active = int(fan_in.sum())
    note = None
    if cols % 4:
        note = (f"{cols} inputs: fewer than 4, " if cols < 4 else f"{cols} inputs: not a multiple of 4, ") + \
            "2:4 counted as if padded with inactive inputs"
    if active == 0:
        return {"active": 0, "to_constant_fan_in": 0.0, "to_2_4": 0.0, "note": note}
    whole, remainder = divmod(active, rows)
    ordered = np.sort(fan_in)[::-1]
    target = np.full(rows, whole, dtype=np.int64)
    target[:remainder] += 1  # the fullest rows keep the one extra
    moved_fan_in = int(np.maximum(ordered - target, 0).sum())
    bytes_ = np.ascontiguousarray(mask, dtype=np.bool_).view(np.uint8)
    if cols % 4:
        bytes_ = np.pad(bytes_, ((0, 0), (0, (-cols) % 4)))
    words = bytes_.view(np.uint32)  # (rows, ⌈cols/4⌉): one group of 4 inputs per word
    # The sum of a word's four 0/1 bytes lands in its top byte (no carries: at most 4).
    in_group = (words * np.uint32(0x01010101)) >> np.uint32(24)
    moved_2_4 = int(np.count_nonzero(in_group == 3)) + 2 * int(np.count_nonzero(in_group == 4))
    return {"active": active, "to_constant_fan_in": moved_fan_in / active,
            "to_2_4": moved_2_4 / active, "note": note}


class StructureCache:
    """Distances by (run, layer, frame step): a stored frame's mask never changes, so each is
    computed once, whoever asks (the column at every settled step, the series)."""

    def __init__(self, size: int = DISTANCES_CACHED) -> None:
        self.size = size
        self._answers: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, views, run: dict, index: int, step: int) -> tuple[dict, int] | None:
        """(distances, frame step) of layer `index`'s newest mask at or before `step`; None
        when it has none by then or its frames do not read."""
        from dst_core.store.masks import run_key

        row = views.store.db.execute(
            "SELECT step FROM events WHERE run_id = ? AND layer = ? AND step <= ? "
            "ORDER BY step DESC, seq DESC LIMIT 1", (run["id"], index, int(step))).fetchone()
        if row is None:
            return None
        key = (run_key(run), index, int(row[0]))
        with self._lock:
            found = self._answers.get(key)
            if found is not None:
                self._answers.move_to_end(key)
                return found, key[2]
        try:
            mask, frame_step = views.reader.mask_at(run["id"], index, int(step))
        except ValueError:  # no frame that reads (StoredDataError is a ValueError)
            return None
        found = structure_distances(mask)
        with self._lock:
            self._answers[(key[0], index, int(frame_step))] = found
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return found, int(frame_step)


structure_cache = StructureCache()


def speedups_by_batch(table: CostTable, rows: int, cols: int, density: float,
                      condensed: bool) -> dict[int, dict]:
    """{batch: {best, speedup}} for every batch of the table (what `compact` would choose)."""
    answered = {}
    for batch in table.batches:
        chosen = best_format(table, rows, cols, density, batch, condensed)
        if chosen is None:
            continue
        estimate, best = chosen
        answered[batch] = {"best": best, "speedup": estimate["dense"] / estimate[best],
                           "dense_ms": estimate["dense"], "best_ms": estimate[best]}
    return answered


def structure_at(views, run: dict, layers: list[dict], step: int) -> list[dict | None]:
    """Each layer's distances (with `frame_step`) at `step`, None where it has no readable mask."""
    answered = []
    for index, _ in enumerate(layers):
        found = structure_cache.get(views, run, index, step)
        answered.append(None if found is None else {**found[0], "frame_step": found[1]})
    return answered


def model_summary(per_layer: list[dict]) -> dict:
    """The whole model from its layers' figures: speedup = Σ dense ms / Σ best ms per batch,
    distances = Σ moved / Σ active (layers without a mask or an estimate left out)."""
    summary: dict = {}
    for batch in BATCHES:
        dense = sum(entry["by_batch"][batch]["dense_ms"] for entry in per_layer
                    if batch in entry.get("by_batch", {}))
        best = sum(entry["by_batch"][batch]["best_ms"] for entry in per_layer
                   if batch in entry.get("by_batch", {}))
        summary[f"speedup_b{batch}"] = dense / best if best > 0 else None
    for key in ("to_constant_fan_in", "to_2_4"):
        active = sum(entry["active"] for entry in per_layer if entry.get(key) is not None)
        moved = sum(entry[key] * entry["active"] for entry in per_layer if entry.get(key) is not None)
        summary[key] = moved / active if active else None
    return summary


def picked_rewires(count: int, points: int) -> list[int]:
    """Up to `points` of rewires 0 … count − 1: every stride-th (the stride the smallest power of
    two that fits) and the newest. As a live run grows the picks stay put (a doubled stride keeps
    a subset of them), so each refresh decodes only the new rewire's masks (StructureCache)."""
    stride = 1
    while -(-count // stride) + bool((count - 1) % stride) > points:
        stride *= 2
    return sorted(set(range(0, count, stride)) | {count - 1})


def speedup_series(views, run: dict, table: CostTable, points: int) -> dict:
    """Per layer and for the whole model, at up to `points` rewires (every stride-th, the first
    and the newest always in: picked_rewires): density, speedup at batch 1 and 16 and both
    distances to structure. ValueError when the run has no stored mask."""
    steps = views.rewire_steps(run)
    if not steps:
        raise ValueError("no stored mask in this run yet")
    chosen = [steps[i] for i in picked_rewires(len(steps), points)]
    meta = views.reader.layers(run["id"])
    condensed = constant_fan_in(run)
    fields = ("density", "speedup_b1", "best_b1", "speedup_b16", "best_b16",
              "to_constant_fan_in", "to_2_4")
    layers = [{"layer": entry["name"], "shape": list(entry["matrix"]), "note": None,
               **{field: [] for field in fields}} for entry in meta]
    model = {key: [] for key in ("speedup_b1", "speedup_b16", "to_constant_fan_in", "to_2_4")}
    for step in chosen:
        per_layer = []
        for entry, distances in zip(layers, structure_at(views, run, meta, step), strict=True):
            rows, cols = entry["shape"]
            figures: dict = {}
            if distances is not None:
                entry["note"] = distances["note"]
                density = distances["active"] / (rows * cols)
                figures = {"active": distances["active"], "density": density,
                           "to_constant_fan_in": distances["to_constant_fan_in"],
                           "to_2_4": distances["to_2_4"],
                           "by_batch": speedups_by_batch(table, rows, cols, density, condensed)}
                per_layer.append(figures)
            by_batch = figures.get("by_batch", {})
            entry["density"].append(figures.get("density"))
            entry["to_constant_fan_in"].append(figures.get("to_constant_fan_in"))
            entry["to_2_4"].append(figures.get("to_2_4"))
            for batch in BATCHES:
                found = by_batch.get(batch)
                entry[f"speedup_b{batch}"].append(None if found is None else found["speedup"])
                entry[f"best_b{batch}"].append(None if found is None else found["best"])
        summary = model_summary(per_layer)
        for key, values in model.items():
            values.append(summary[key])
    return {"rewires": len(steps) - 1, "step": chosen, "layers": layers, "model": model}
