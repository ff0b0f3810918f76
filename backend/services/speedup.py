"""What each layer's mask would buy as `dst_core.compact` runs it: interpolated from a cost table.

The table is measured once per server process (a few square layers × densities × batch 1/16
in every format `compact` has on this device, a few seconds on one background thread, started
by the first request that needs it) and a request only interpolates in it: a request never
times anything, so answering costs microseconds whatever the run, and a busy server is not
made busier by its viewers. The per-element cost is interpolated in log(size) and
log(density) (clamped at the grid's edges: past the largest layer the cost per element is the
largest layer's, as memory-bound products are) and multiplied by the layer's size.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable

SIZES = (256, 1024, 2048)  # square layers: size × size
DENSITIES = (0.01, 0.05, 0.2, 0.5)
BATCHES = (1, 16)
FORMATS = ("dense", "csr", "condensed")
WAIT_S = 20.0  # how long a request waits for the table being measured before a 503


class CostTable:
    """ms per forward of a square Linear in each format (one thread), measured once, then
    interpolated."""

    def __init__(self, sizes=SIZES, densities=DENSITIES, batches=BATCHES,
                 measure: Callable[[int, float, int], dict[str, float]] | None = None) -> None:
        self.sizes, self.densities, self.batches = tuple(sizes), tuple(densities), tuple(batches)
        self._measure = measure or measure_cell
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
        import torch

        started = time.perf_counter()
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
        self.measured_s = time.perf_counter() - started
        self._ready.set()

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
        for fmt in FORMATS:
            per_element = self._interpolate(fmt, batch, log_size, log_density)
            if per_element is not None:
                out[fmt] = per_element * numel
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


def measure_cell(size: int, density: float, batch: int) -> dict[str, float]:
    """ms of one forward of a size × size layer in each format (constant fan-in mask)."""
    import torch

    from dst_core.compact import CompactLinear, measure_ms
    from dst_core.structure import constant_fan_in_mask

    generator = torch.Generator().manual_seed(size)
    mask = constant_fan_in_mask((size, size), max(1, round(density * size)), generator)
    weight = torch.randn(size, size, generator=generator)
    x = torch.randn(batch, size, generator=generator)
    timings = {}
    for fmt in FORMATS:
        layer = CompactLinear(weight, mask, fmt, None)
        timings[fmt] = measure_ms(lambda layer=layer: layer(x), repeats=3, min_time_s=0.002)
    return timings


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
    from dst_core.compact import choose_format

    answered = []
    for entry in layers:
        rows, cols = entry["shape"]
        density = entry["density"]
        if density is None:
            continue
        estimate = table.estimate(rows, cols, density, batch)
        if not condensed:
            estimate.pop("condensed", None)
        if "dense" not in estimate:
            continue
        best = choose_format(estimate)
        answered.append({
            "layer": entry["name"], "shape": [rows, cols], "density": density,
            "formats": {f"{name}_ms": round(ms, 6) for name, ms in estimate.items()},
            "best": best, "speedup": estimate["dense"] / estimate[best]})
    return answered


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
