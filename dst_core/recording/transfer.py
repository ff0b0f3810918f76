"""Moving runs between data folders: one self-contained export file, and a careful import.

An export is a small SQLite file in the store's own layout holding exactly one run (its row,
every event, its artifacts), so it opens with the same reader and migrates with the same
MIGRATIONS. An import treats the file as hostile until proven otherwise: it is opened
read-only with untrusted schema code disabled, integrity-checked, every field and every frame
is validated (versions, sizes, names), and only then is the run copied, under a new id, in
one transaction, so a bad file changes nothing.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import tempfile
import time
from pathlib import Path

import torch

from dst_core.recording import codec
from dst_core.recording.store import (
    ACTIVE_STATUSES,
    SCHEMA_VERSION,
    STATUSES,
    RunStore,
    _Transaction,
    connect,
    migrate,
    new_run_id,
    schema_version,
)

SQLITE_MAGIC = b"SQLite format 3\x00"
FILE_SUFFIX = ".sparsescope"
ARTIFACT_NAMES = ("model.pt",)  # artifacts are looked up by name: nothing else is accepted
EVENT_TYPE = re.compile(r"^[a-z_]{1,32}$")
MAX_EVENTS = 10_000_000
MAX_TEXT = 10_000_000  # one event's JSON payload
IMPORTED_SUFFIX = " (imported)"
SNAPSHOT_NOTE = "exported while it was running: this copy ends at the export"


class BadExportError(ValueError):
    """A file that is not a valid sparsescope export; the message says why."""


def export_run(store: RunStore, run_id: str, target: str | Path | None = None) -> bytes | Path:
    """The run as one self-contained file: written to `target` (returned), else as bytes.

    A run still being recorded is exported as a consistent snapshot: its row, events and
    artifacts are read in one read transaction, so the writer's later commits are not half in."""
    if store.get_run(run_id) is None:
        raise ValueError(f"run_id: no run {run_id!r}")
    if target is None:
        with tempfile.TemporaryDirectory(prefix="sparsescope-export-") as folder:
            return export_run(store, run_id, Path(folder) / "export.sqlite3").read_bytes()
    path = Path(target)
    path.unlink(missing_ok=True)
    out = connect(path)
    source = store.db
    source.execute("BEGIN")  # deferred: the first read fixes the snapshot (WAL)
    try:
        run = source.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if run is None:  # deleted between the two reads
            raise ValueError(f"run_id: no run {run_id!r}")
        migrate(out)
        with _Transaction(out):
            out.execute("INSERT INTO meta VALUES ('export_of', ?)", (run_id,))
            out.execute(f"INSERT INTO runs ({', '.join(run.keys())}) VALUES "
                        f"({', '.join('?' * len(run.keys()))})", tuple(run))
            cursor = source.execute(
                "SELECT run_id, seq, step, type, payload, layer, keyframe, blob FROM events "
                "WHERE run_id = ? ORDER BY seq", (run_id,))
            while rows := cursor.fetchmany(2000):
                out.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [tuple(row) for row in rows])
            for row in source.execute("SELECT run_id, name, data FROM artifacts WHERE run_id = ?",
                                      (run_id,)):
                out.execute("INSERT INTO artifacts VALUES (?, ?, ?)", tuple(row))
        out.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
        out.execute("VACUUM")
    finally:
        source.execute("ROLLBACK")
        out.close()
    return path


def _fail(reason: str):
    raise BadExportError(reason)


def _read_validated(path: Path) -> tuple[dict, list[tuple], list[tuple]]:
    """(run row, events, artifacts) of an export file, each checked; BadExportError otherwise."""
    try:
        db = connect(path, read_only=True)
        check = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        _fail(f"not a sparsescope export: {error}")
    if check != "ok":
        _fail(f"corrupted file: {check}")
    version = schema_version(db)
    if not 1 <= version <= SCHEMA_VERSION:
        _fail(f"schema_version: {version} is not a version this sparsescope reads "
              f"(1..{SCHEMA_VERSION})")
    db.close()
    if version < SCHEMA_VERSION:
        db = connect(path)  # our private copy of the upload: migrate it like any old file
        db.execute("PRAGMA trusted_schema=OFF")
        try:
            migrate(db)
        except Exception as error:
            _fail(f"cannot upgrade schema_version {version}: {error}")
        db.close()
    db = connect(path, read_only=True)
    try:
        runs = db.execute("SELECT * FROM runs").fetchall()
        if len(runs) != 1:
            _fail(f"an export holds exactly one run, this file has {len(runs)}")
        run = dict(runs[0])
        _check_run(run)
        count = db.execute("SELECT COUNT(*) FROM events WHERE run_id = ?", (run["id"],)).fetchone()[0]
        if count > MAX_EVENTS:
            _fail(f"absurd size: {count} events (at most {MAX_EVENTS})")
        events = [tuple(row) for row in db.execute(
            "SELECT seq, step, type, payload, layer, keyframe, blob FROM events WHERE run_id = ? "
            "ORDER BY seq", (run["id"],))]
        _check_events(events)
        artifacts = []
        for name, data in db.execute("SELECT name, data FROM artifacts WHERE run_id = ?",
                                     (run["id"],)):
            if name not in ARTIFACT_NAMES:
                _fail(f"artifact name {name!r} is not allowed (only {', '.join(ARTIFACT_NAMES)})")
            if not isinstance(data, bytes):
                _fail(f"artifact {name!r} is not binary data")
            artifacts.append((name, data))
    except sqlite3.DatabaseError as error:
        _fail(f"corrupted file: {error}")
    finally:
        db.close()
    return run, events, artifacts


def _check_run(run: dict) -> None:
    from pydantic import ValidationError

    from dst_core.config import RunConfig

    if not isinstance(run.get("name"), str) or len(run["name"]) > 1000:
        _fail("name: missing or longer than 1000 characters")
    if run.get("status") not in STATUSES:
        _fail(f"status: {run.get('status')!r} is not one of {', '.join(STATUSES)}")
    for key in ("config", "summary", "info"):
        try:
            value = json.loads(run.get(key) or "{}")
        except (TypeError, ValueError):
            _fail(f"{key}: not valid JSON")
        if not isinstance(value, dict):
            _fail(f"{key}: not a JSON object")
    # A script's (or a remote job's) config is its own dict, checked above to be a JSON
    # object; every other run was started from a RunConfig.
    if json.loads(run.get("info") or "{}").get("writer") not in ("script", "remote"):
        try:
            RunConfig.model_validate(json.loads(run["config"]))
        except ValidationError as error:
            _fail(f"config: {error.errors()[0]['loc']}: {error.errors()[0]['msg']}")
    if run.get("error") is not None and not isinstance(run["error"], str):
        _fail("error: not text")
    for key in ("created_at", "started_at", "ended_at", "heartbeat_at"):
        if run.get(key) is not None and not isinstance(run[key], (int, float)):
            _fail(f"{key}: not a timestamp")


def _check_events(events: list[tuple]) -> None:
    previous = 0
    for seq, step, event_type, payload, layer, keyframe, blob in events:
        if not isinstance(seq, int) or seq <= previous:
            _fail(f"events: seq {seq!r} out of order")
        previous = seq
        if not isinstance(step, int) or step < 0:
            _fail(f"events: seq {seq} has a bad step {step!r}")
        if not isinstance(event_type, str) or not EVENT_TYPE.match(event_type):
            _fail(f"events: seq {seq} has a bad type {event_type!r}")
        if not isinstance(payload, str) or len(payload) > MAX_TEXT:
            _fail(f"events: seq {seq} payload is not text or absurdly large")
        try:
            header = json.loads(payload)
        except ValueError:
            _fail(f"events: seq {seq} payload is not valid JSON")
        if not isinstance(header, dict):
            _fail(f"events: seq {seq} payload is not a JSON object")
        if event_type == "topology":
            try:
                if not isinstance(blob, bytes) or header.get("index") != layer or \
                        bool(header.get("keyframe")) != bool(keyframe):
                    raise codec.FrameError("frame: header and index columns disagree")
                codec.stored_to_raw(header, blob)  # decodes fully: sizes and indices checked
            except (codec.FrameError, KeyError, TypeError) as error:
                _fail(f"events: seq {seq}: {error}")


def import_run(store: RunStore, source: bytes | Path) -> dict:
    """Copy the run in an export file (bytes or a path) into `store` under a new id.

    Returns the new run; raises BadExportError naming the reason and changes nothing."""
    with tempfile.TemporaryDirectory(prefix="sparsescope-import-") as folder:
        path = Path(folder) / "import.sqlite3"
        if isinstance(source, (bytes, bytearray)):
            path.write_bytes(source)
        else:
            with open(source, "rb") as handle, open(path, "wb") as out:
                while chunk := handle.read(1 << 20):
                    out.write(chunk)
        with open(path, "rb") as handle:
            head = handle.read(100)
        if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
            _fail("not a sparsescope export (the file does not start with an SQLite header)")
        run, events, artifacts = _read_validated(path)
    run_id = new_run_id()
    if run["status"] in ACTIVE_STATUSES:
        # A snapshot of a live run: nobody writes this copy, so it ends here, and its stream
        # says so with a final status event like any other ended run.
        run["status"], run["error"] = "stopped", SNAPSHOT_NOTE
        run["ended_at"] = run.get("ended_at") or run.get("heartbeat_at") or run["created_at"]
        last_seq, last_step = (events[-1][0], events[-1][1]) if events else (0, 0)
        events.append((last_seq + 1, last_step, "status",
                       json.dumps({"status": "stopped", "error": SNAPSHOT_NOTE}), None, None, None))
    # Told apart from its original in every list: a name that says so, and where it came from.
    info = json.loads(run.get("info") or "{}")
    info.update(imported_at=time.time(), imported_from=run["id"])
    run["info"] = json.dumps(info)
    run["name"] = imported_name(run["name"])
    run["id"] = run_id
    with store._write() as db:
        columns = [key for key in run if key in _run_columns(db)]
        db.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                   [run[key] for key in columns])
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [(run_id, *event) for event in events])
        db.executemany("INSERT INTO artifacts VALUES (?, ?, ?)",
                       [(run_id, name, blob) for name, blob in artifacts])
    return store.get_run(run_id)


def imported_name(name: str) -> str:
    """`name (imported)`, once: a copy of a copy does not grow a second suffix."""
    return name if name.endswith(IMPORTED_SUFFIX) else name + IMPORTED_SUFFIX


def _run_columns(db: sqlite3.Connection) -> set[str]:
    return {row[1] for row in db.execute("PRAGMA table_info(runs)")}


def export_filename(name: str) -> str:
    """A safe download name: letters, digits, dot, dash, underscore."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "run"
    return stem + FILE_SUFFIX


# ---- trained models -------------------------------------------------------------------------------
def load_model(source, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """A run's trained model from its `.pt` download (path, bytes or file object).

    Without `model`, the architecture is rebuilt from the run's config (the built-in models);
    a script's own model is passed in and gets the trained weights. Masked weights are zero.
    """
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != "sparsescope-model":
        raise ValueError("source: not a sparsescope model file")
    if model is None:
        from dst_core.models import build_model

        config, arch = state["config"], state.get("architecture") or {}
        if not arch.get("input_shape") or not arch.get("num_classes"):
            raise ValueError("model: this file came from a custom loop; pass model=your_module")
        model = build_model(config["model"], arch["input_shape"], config["hidden"],
                            arch["num_classes"])
    model.load_state_dict(state["state_dict"])
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for name, mask in state.get("masks", {}).items():
            if name in parameters:
                parameters[name].mul_(mask.to(parameters[name].dtype))
    return model
