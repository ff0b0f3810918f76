"""Recorder: writes one run's events, from any training loop, into the store or to a server.

    with Recorder("./sparsescope-data", name="my-model", config={...}) as rec:
        rec.attach(driver)              # topology frames at every rewire
        ...; rec.log(step, loss=...)    # metrics whenever you like

`Recorder(url="http://host:8000", token=...)` sends the same events to a running server
instead (see remote.py). Events are batched and committed every `flush_interval_s`, so
recording costs a small share of a training step and readers see each batch as it commits.
A heartbeat thread tells the server the writer is alive; a run whose writer goes silent is
marked failed ("stale") by the server.
"""

from __future__ import annotations

import io
import os
import platform
import subprocess
import threading
import time
import traceback
from pathlib import Path

from dst_core.recording.store import RunStore

DEFAULT_DATA_DIR = "./sparsescope-data"
MODEL_ARTIFACT = "model.pt"


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the git checkout the run was started from, when there is one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def run_info(writer: str, seed: int | None, user_config: dict | None = None) -> dict:
    """Provenance every run stores: versions, commit, seed, who wrote it."""
    import torch

    from dst_core import __version__

    info = {"writer": writer, "torch": torch.__version__, "sparsescope": __version__,
            "python": platform.python_version(), "git_commit": git_commit(), "seed": seed,
            "host": platform.node(), "pid": os.getpid()}
    if user_config is not None:
        info["user_config"] = user_config
    return info


def normalize_config(config: dict | None) -> tuple[dict, dict | None]:
    """(a valid RunConfig dict, the caller's own dict when it held more than RunConfig knows).

    The runs list shows every run through one schema; a script's own settings (its optimizer,
    its data) are kept in the run's info instead of breaking that schema.
    """
    from pydantic import ValidationError

    from dst_core.config import RunConfig

    config = dict(config or {})
    known = {key: value for key, value in config.items() if key in RunConfig.model_fields}
    while True:
        try:
            valid = RunConfig.model_validate(known).model_dump()
            break
        except ValidationError as error:
            bad = {str(item["loc"][0]) for item in error.errors() if item["loc"]}
            if not bad & set(known):
                known = {}
            else:
                known = {key: value for key, value in known.items() if key not in bad}
    kept_whole = all(key in valid and valid[key] == value for key, value in config.items())
    return valid, None if kept_whole else config


class LocalWriter:
    """Writes straight into a data folder's SQLite store (worker, CLI, a script on this host)."""

    def __init__(self, data_dir: str | Path):
        self.store = RunStore(data_dir)
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

    def put_artifact(self, name: str, data: bytes) -> None:
        self.store.put_artifact(self.run_id, name, data)

    def close(self) -> None:
        self.store.close()


class Recorder:
    """The single writer of one run (the worker, the CLI, or a user's script)."""

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
        flush_interval_s: float = 0.25,  # readers see events within this; commits stay few
        keyframe_every: int = 10,  # a full mask every K rewires bounds seek work to K frames
        heartbeat_s: float = 2.0,  # well under the server's stale timeout
        **remote_options,
    ) -> None:
        self.flush_interval_s = flush_interval_s
        self.keyframe_every = keyframe_every
        self.heartbeat_s = heartbeat_s
        self._buffer: list[tuple[str, int, dict]] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._stop_beat = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.summary: dict = {"steps": 0}
        self.meta: dict = {}
        self.last_step = 0
        self._driver = None
        self._driver_metrics: dict = {}
        if url is not None:
            from dst_core.recording.remote import RemoteWriter

            self.writer = RemoteWriter(url, token=token, **remote_options)
            writer = "remote"
        else:
            if remote_options:
                raise ValueError(f"{next(iter(remote_options))}: only a remote Recorder (url=...) "
                                 "takes this option")
            self.writer = LocalWriter(data_dir)
        if run_id is None:
            valid, user_config = normalize_config(config)
            self.config = valid
            if seed is None:
                import torch

                seed = int(valid["seed"]) if config and "seed" in config else torch.initial_seed()
            self.run_id = self.writer.create(name or valid.get("name") or "script run", valid,
                                             run_info(writer, seed, user_config))
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
        """This run's live view inline in a notebook; options as `dst_core.recording.notebook.show`."""
        from dst_core.recording.notebook import show

        return show(self, **options)

    def finish(self, status: str, error: str | None = None) -> None:
        """Store everything buffered, the final status, then release the writer."""
        self._stop_beat.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=5)
            self._beat_thread = None
        self.flush()
        self.writer.status(status, error, self.last_step)
        self.writer.close()

    def _beat(self) -> None:
        while not self._stop_beat.wait(self.heartbeat_s):
            try:
                self.writer.heartbeat()
            except Exception:  # a missed beat is harmless; the next one retries
                pass
        if isinstance(self.writer, LocalWriter):
            self.writer.store.close()  # this thread's own SQLite connection

    # ---- events -------------------------------------------------------------------------------
    def emit(self, type: str, step: int, payload: dict) -> None:
        self._buffer.append((type, int(step), payload))
        self.last_step = max(self.last_step, int(step))
        self._update_summary(type, int(step), payload)
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def log(self, step: int, **metrics) -> None:
        """Record metrics of a user's own loop (loss, accuracy, test_accuracy, …).

        With a driver attached, density, per-layer density and the ITOP rate are added (as
        of the latest rewire, so logging stays cheap)."""
        payload = {**self._driver_metrics}
        payload.update({key: float(value) for key, value in metrics.items()})
        self.emit("metrics", step, payload)

    def attach(self, driver) -> None:
        """Follow a SparseDriver: its layers now, a topology frame at each rewire."""
        from dst_core.topology import TopologyEmitter

        self._driver = driver
        emitter = TopologyEmitter(driver, self, self.keyframe_every)
        meta = {"task": None, "input_shape": None, "image_shape": None, "num_classes": None,
                "steps_per_epoch": None, **emitter.meta()}
        self.emit("meta", driver.step_count, meta)
        emitter.keyframes(driver.step_count)
        driver.listeners.append(emitter)
        driver.listeners.append(lambda changes: self._refresh_driver_metrics())
        self._refresh_driver_metrics()

    def _refresh_driver_metrics(self) -> None:
        driver = self._driver
        self._driver_metrics = {"density": driver.global_density(),
                                "layer_density": driver.densities(),
                                "itop_rate": driver.itop_rate()}

    def flush(self) -> None:
        with self._lock:
            if self._buffer:
                events, self._buffer = self._buffer, []
                self.writer.write(events, dict(self.summary))
            self._last_flush = time.monotonic()

    def save_model(self, model, driver=None) -> None:
        """Store the trained weights and masks with the run (`GET /api/runs/{id}/model`)."""
        import torch

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


def default_spool_dir() -> Path:
    return Path(os.environ.get("SPARSESCOPE_SPOOL_DIR", Path.home() / ".cache" / "sparsescope"))
