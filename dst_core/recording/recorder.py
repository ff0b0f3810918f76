"""Recorder: writes one run's events, from any training loop, into the store or to a server.

    with Recorder("./sparsescope-data", name="my-model") as rec:
        rec.attach(driver)              # the driver's settings; topology frames at every rewire
        ...; rec.log(step, loss=...)    # training metrics whenever you like
        rec.eval(step, test_accuracy=...)  # held-out metrics

`Recorder(url="http://host:8000", token=...)` sends the same events to a running server
instead (see remote.py). Events are batched and committed every `flush_interval_s`, so
recording costs a small share of a training step and readers see each batch as it commits.
A heartbeat thread tells the server the writer is alive; a run whose writer goes silent is
marked failed ("stale") by the server.

Under `torch.distributed` (a DDP job) a job is one run: only rank 0 records, every other
rank's Recorder is inert (its calls return at once), so a script needs no `if rank == 0`
around them; the run's info says how the job was laid out (`distributed`). `all_ranks=True`
records one run per rank instead (each rank's info names its rank).
"""

from __future__ import annotations

import io
import os
import platform
import subprocess
import threading
import time
import traceback
from numbers import Real
from pathlib import Path

from dst_core.heads import head_layouts
from dst_core.recording.remote import RemoteWriter
from dst_core.run_labels import run_settings
from dst_core.sharded import recording_view
from dst_core.store.frames import FrameEmitter
from dst_core.store.run_store import DEFAULT_DATA_DIR, MODEL_ARTIFACT, RunGone, RunStore


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the git checkout the run was started from, when there is one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def run_info(writer: str, seed: int | None) -> dict:
    """Provenance every run stores: versions, commit, seed, who wrote it, and the layout of
    the job when it is one rank of a process group."""
    import torch

    from dst_core import __version__
    from dst_core.distributed import process_info

    info = {"writer": writer, "torch": torch.__version__, "sparsescope": __version__,
            "python": platform.python_version(), "git_commit": git_commit(), "seed": seed,
            "host": platform.node(), "pid": os.getpid()}
    layout = process_info()
    if layout is not None:
        info["distributed"] = layout
    return info


class LocalWriter:
    """Writes straight into a data folder's SQLite store (worker, CLI, a script on this host)."""

    def __init__(self, data_dir: str | Path, background_checkpoints: bool = False):
        # With a heartbeat thread, the WAL is checkpointed there, at each beat, not by the
        # training thread's commits (a checkpoint fsyncs: ~1% of training time measured).
        self.store = RunStore(data_dir, autocheckpoint=not background_checkpoints)
        self.run_id = ""

    def create(self, name: str, config: dict, info: dict) -> str:
        # Created running, never queued: a server on the same folder launches queued runs.
        self.run_id = self.store.create_run(config, name, status="running", info=info)["id"]
        return self.run_id

    def open(self, run_id: str) -> dict | None:
        self.run_id = run_id
        return self.store.get_run(run_id)

    def write(self, events: list, summary: dict) -> None:
        self.store.append_events(self.run_id, events, summary)

    def status(self, status: str, error: str | None, step: int) -> None:
        self.store.set_status(self.run_id, status, error=error, step=step)

    def heartbeat(self) -> None:
        self.store.heartbeat(self.run_id)
        if not self.store.autocheckpoint:
            self.store.checkpoint()

    def put_artifact(self, name: str, data: bytes) -> None:
        self.store.put_artifact(self.run_id, name, data)

    def close(self) -> None:
        if not self.store.autocheckpoint:  # once per run: the file is whole when it ends
            self.store.checkpoint()
        self.store.close()


class InertWriter:
    """The writer of a rank that does not record (a DDP job's ranks other than 0): accepts
    everything and stores nothing, so the script's calls stay the same on every rank."""

    def create(self, name: str, config: dict, info: dict) -> None:
        return None

    def write(self, events: list, summary: dict) -> None:
        pass

    def status(self, status: str, error: str | None, step: int) -> None:
        pass

    def heartbeat(self) -> None:
        pass

    def put_artifact(self, name: str, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def records_here(all_ranks: bool) -> bool:
    """Whether this process writes the run: always outside a process group; under one, rank 0
    only unless every rank records its own run."""
    from dst_core.distributed import rank

    return all_ranks or rank() == 0


class Recorder:
    """The single writer of one run (the worker, the CLI, or a user's script).

    On a DDP rank other than 0 it is inert (`active` is False, `run_id` None): the job's run
    is rank 0's."""

    def __init__(
        self,
        data_dir: str | Path = DEFAULT_DATA_DIR,
        *,
        url: str | None = None,
        token: str | None = None,
        name: str = "",
        config: dict | None = None,
        run_id: str | None = None,
        seed: int | None = None,
        writer: str = "script",
        flush_interval_s: float = 0.25,  # readers see events within this (the heartbeat thread
        # flushes what a paused loop left buffered); commits stay few
        keyframe_every: int = 10,  # a full mask every K rewires bounds seek work to K frames
        heartbeat_s: float = 2.0,  # well under the server's stale timeout
        all_ranks: bool = False,  # under torch.distributed: one run per rank, not rank 0's only
        **remote_options,
    ) -> None:
        self.flush_interval_s = flush_interval_s
        self.keyframe_every = keyframe_every
        self.heartbeat_s = heartbeat_s
        self._buffer: list[tuple[str, int, dict]] = []
        self._last_flush = time.monotonic()
        self._last_emit = self._last_flush
        self._lock = threading.Lock()
        self._stop_beat = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.summary: dict = {"steps": 0}
        self.meta: dict = {}
        self.last_step = 0
        self._driver = None
        self._driver_metrics: dict = {}
        self._layer_density: dict[str, float] = {}  # the latest, and whether it is still to log
        self._layer_density_due: dict[str, float] | None = None
        self._active: dict[str, int] = {}  # the attached driver's active connections per layer
        self._numel: dict[str, int] = {}
        self._masks: dict[str, object] = {}  # the mask tensor each count was taken from
        self._emitter = None
        self._gone: RunGone | None = None  # the run was deleted while recording: nothing more
        if url is None and remote_options:
            raise ValueError(f"{next(iter(remote_options))}: only a remote Recorder (url=...) "
                             "takes this option")
        self.active = records_here(all_ranks)
        if not self.active:
            self.writer, self.config, self.run_id, self._created = InertWriter(), {}, None, True
            return
        if url is not None:
            self.writer = RemoteWriter(url, token=token, **remote_options)
            writer = "remote"
        else:
            self.writer = LocalWriter(data_dir, background_checkpoints=heartbeat_s > 0)
        if run_id is None:
            # Stored as given: a script's config is its own (its optimizer, its data); what
            # the run used comes from the driver (`attach`), never from a form's defaults.
            self.config = dict(config or {})
            if seed is None:
                import torch

                seed = self.config.get("seed")
                seed = seed if isinstance(seed, int) else torch.initial_seed()
            self.run_id = self.writer.create(name or self.config.get("name") or "script run",
                                             self.config, run_info(writer, seed))
            self._created = True
        else:
            run = self.writer.open(run_id)
            if run is None:
                raise ValueError(f"run_id: no run {run_id!r} in {data_dir}")
            self.run_id = run_id
            self.config = run["config"]
            self._created = False
        if self.heartbeat_s > 0:  # from now on: setup before training must not look stale
            self._beat_thread = threading.Thread(target=self._beat, daemon=True,
                                                 name="recorder-heartbeat")
            self._beat_thread.start()

    @property
    def data_dir(self) -> Path | None:
        """The folder this run is stored in; None for a remote run or an inert rank."""
        store = getattr(self.writer, "store", None)
        return Path(store.data_dir) if store is not None else None

    @property
    def server_url(self) -> str | None:
        """The server this run is recorded to; None for a local run."""
        return getattr(self.writer, "url", None)

    @property
    def store(self) -> RunStore:
        """The local store (not available to a remote recorder)."""
        return self.writer.store

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Mark a run created elsewhere (a worker's queued run) running."""
        if not self._created:
            self.writer.status("running", None, self.last_step)

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish("completed")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("stopped")
        else:
            text = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            self.finish("failed", error=text)
        return False

    def show(self, **options):
        """Moved: the writer starts no server. `sparsescope.show(rec.run_id,
        data_dir=rec.data_dir)` (or `server=rec.server_url` for a remote run) shows it."""
        raise AttributeError("Recorder.show() moved to sparsescope.show: call "
                             "sparsescope.show(rec.run_id, data_dir=rec.data_dir), or "
                             "server=rec.server_url for a run recorded to a server")

    def finish(self, status: str, error: str | None = None) -> None:
        """Store everything buffered, the final status, then release the writer (a run
        deleted meanwhile gets nothing more: its writer is released)."""
        self._stop_beat.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=5)
            self._beat_thread = None
        if self._gone is None:
            try:
                self.flush()
                self.writer.status(status, error, self.last_step)
            except RunGone:
                pass  # deleted before it ended: said by the call that found it (flush, emit)
        self.writer.close()

    def _beat(self) -> None:
        """Heartbeats, and the flush of events a loop left buffered: a script that logs an
        eval and then pauses (a long validation, a checkpoint, waiting for data) emits nothing
        that would flush it, and its viewers would not see it until the next emit. Only a
        quiet loop is flushed from here: while the loop emits, it flushes itself, because this
        thread would compete with training for the cores and the GIL, and cost more."""
        tick = min(self.heartbeat_s, max(self.flush_interval_s, 0.05))
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._stop_beat.wait(tick):
            if self._buffer and time.monotonic() - self._last_emit >= self.flush_interval_s:
                try:
                    self.flush()
                except Exception:  # the next emit or finish() flushes again, and raises there
                    pass
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.heartbeat_s
                try:
                    self.writer.heartbeat()
                except Exception:  # a missed beat is harmless; the next one retries
                    pass
        if isinstance(self.writer, LocalWriter):
            self.writer.store.close()  # this thread's own SQLite connection

    # ---- events -------------------------------------------------------------------------------
    def emit(self, type: str, step: int, payload: dict) -> None:
        if not self.active:
            return
        if self._gone is not None:  # every later call says it, until the loop stops
            raise self._gone
        with self._lock:  # the heartbeat thread may be flushing the buffer and summary
            self._buffer.append((type, int(step), payload))
            self._last_emit = time.monotonic()
            self.last_step = max(self.last_step, int(step))
            self._update_summary(type, int(step), payload)
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def log(self, step: int, **metrics) -> None:
        """Record training metrics of a user's own loop (loss, accuracy, any other number).

        With a driver attached, density and the ITOP rate are added (as of the latest rewire,
        so logging stays cheap), and per-layer density too when a rewire changed it since it
        was last logged: a 54-layer model would otherwise store 54 unchanged numbers a step."""
        if self._driver is not None:
            self._follow_replaced_masks()
        payload = {**self._driver_metrics}
        if self._layer_density_due is not None:
            payload["layer_density"], self._layer_density_due = self._layer_density_due, None
        payload.update(_numbers("log", metrics))
        self.emit("metrics", _step("log", step), payload)

    def eval(self, step: int, **metrics) -> None:
        """Record held-out metrics (test_loss, test_accuracy, …): the same `eval` event the
        built-in loop sends once per epoch, so the dashboard charts them as test curves."""
        if not metrics:
            raise ValueError("metrics: eval() needs at least one metric, e.g. test_accuracy=0.9")
        self.emit("eval", _step("eval", step), _numbers("eval", metrics))

    def attach(self, driver, *, model_label: str | None = None, task: str | None = None,
               heads: dict[str, dict] | None = None) -> None:
        """Follow a SparseDriver: its layers now, a topology frame at each rewire, and the
        settings it resolved as the run's settings.

        `model_label`/`task` name a built-in model and task (the built-in loop's); a script's
        own model is labelled `custom: <ClassName> (<parameter count>)`. Attention layers'
        head layouts are detected from the model (dst_core.heads); `heads` declares others:
        `{layer name or pattern: {"axis": "out"|"in", "count": heads, "size": head_dim,
        "parts": ["q", "k", "v"] or None}}`."""
        layouts = head_layouts(driver.model, driver.plan.layers, heads)  # raises naming heads
        if not self.active:  # no frames to build on a rank that does not record
            return
        driver = recording_view(driver)  # FSDP2: rank 0's whole masks, not its shards
        self._driver = driver
        emitter = FrameEmitter(driver, self, self.keyframe_every)
        meta = {"task": task, "input_shape": None, "image_shape": None, "num_classes": None,
                "steps_per_epoch": None, **emitter.meta(layouts),
                "settings": run_settings(driver, model=driver.model, label=model_label,
                                         task=task)}
        self.emit("meta", driver.step_count, meta)
        emitter.keyframes(driver.step_count)
        driver.listeners.append(emitter)
        driver.listeners.append(self._refresh_driver_metrics)
        self._emitter = emitter
        self._active = {layer.name: layer.active_count for layer in driver.layers}
        self._numel = {layer.name: layer.mask.numel() for layer in driver.layers}
        self._masks = {layer.name: layer.mask for layer in driver.layers}
        self._refresh_driver_metrics([])
        self.flush()  # a viewer sees the layers at once, not a flush interval later

    def _refresh_driver_metrics(self, changes: list) -> None:
        """Densities from the rewire's own counts (a layer it left out keeps its count) and
        the ITOP rate the emitter just took: no second pass over every mask per rewire."""
        masks = {layer.name: layer.mask for layer in self._driver.layers}
        for change in changes:
            self._active[change.layer] = change.active_count
            self._masks[change.layer] = masks[change.layer]
        active, numel = self._active, self._numel
        self._driver_metrics = {"density": sum(active.values()) / max(1, sum(numel.values())),
                                "itop_rate": self._emitter.itop_rate}
        layer_density = {name: active[name] / numel[name] for name in active}
        if layer_density != self._layer_density:
            self._layer_density = self._layer_density_due = layer_density

    def _follow_replaced_masks(self) -> None:
        """A mask replaced outside a rewire (`driver.load_state_dict` after `attach`, a mask
        set by hand) is recounted, with the ITOP rate, and stored as a keyframe: the per-rewire
        counts and deltas would not see it. Checked by identity at each log, so it costs
        nothing while masks stay put (a rewire before the next log still finds the old chain:
        log once after replacing masks)."""
        replaced = [layer for layer in self._driver.layers
                    if layer.mask is not self._masks.get(layer.name)]
        if not replaced:
            return
        for layer in replaced:
            self._active[layer.name] = layer.active_count
            self._masks[layer.name] = layer.mask
        # Their stored chain ends at the old mask: a keyframe restarts it from the new one, so
        # the next rewire's delta applies (the store refuses a delta that does not).
        self._emitter.keyframes(self._driver.step_count, only={layer.name for layer in replaced})
        self._emitter.itop_rate = self._driver.itop_rate()
        self._refresh_driver_metrics([])

    def flush(self) -> None:
        """Store the buffered events. RunGone once the run was deleted (`sparsescope runs
        delete --force`, `DELETE /api/runs/{id}?force=true`): the recorder stops there."""
        with self._lock:
            if self._gone is not None:
                raise self._gone
            if self._buffer:
                events, self._buffer = self._buffer, []
                try:
                    self.writer.write(events, dict(self.summary))
                except RunGone as gone:
                    self._gone = gone
                    raise
            self._last_flush = time.monotonic()

    def save_model(self, model, driver=None) -> None:
        """Store the trained weights and masks with the run (`GET /api/runs/{id}/model`)."""
        import torch

        if not self.active:
            return
        state = {
            "format": "sparsescope-model", "version": 1,
            "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
            "masks": {layer.name: layer.mask.cpu() for layer in driver.layers} if driver else {},
            "config": self.config,
            "architecture": {key: self.meta.get(key) for key in ("input_shape", "num_classes")},
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.flush()
        self.writer.put_artifact(MODEL_ARTIFACT, buffer.getvalue())

    def _update_summary(self, type: str, step: int, payload: dict) -> None:
        summary = self.summary
        summary["steps"] = max(summary.get("steps", 0), step)
        if type == "meta" and not self.meta:
            self.meta = payload
        if type == "metrics":
            if "loss" in payload:
                summary["final_loss"] = payload["loss"]
            if "layer_density" in payload:
                summary["density"] = payload["layer_density"]
            if "itop_rate" in payload:
                summary["itop_rate"] = payload["itop_rate"]
        accuracy = payload.get("test_accuracy") if type in ("eval", "metrics") else None
        if accuracy is not None:
            summary["final_test_accuracy"] = accuracy
            best = summary.get("best_test_accuracy")
            summary["best_test_accuracy"] = accuracy if best is None else max(best, accuracy)


def _step(call: str, step) -> int:
    if isinstance(step, bool) or not isinstance(step, Real) or step != int(step) or step < 0:
        raise ValueError(f"step: {call}() needs a step >= 0 (an int), got {step!r}")
    return int(step)


def _numbers(call: str, metrics: dict) -> dict[str, float]:
    """The metrics as floats; a value that is not a number is refused, naming it."""
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: {call}() takes numbers, got {type(value).__name__} "
                             f"{value!r}") from None
    return out
