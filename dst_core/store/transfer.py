"""Moving runs between data folders: one self-contained export file, and a careful import.

An export is a small SQLite file in the store's own layout holding exactly one run (its row,
every event, its artifacts; not its cohort index, which is derived from the frames), so it
opens with the same reader and migrates with the same MIGRATIONS. An import treats the file
as hostile until proven otherwise:
- its schema is read first: only our tables and indexes, with our columns, may be in it. A
  view, a trigger or any other object is refused before a single row is read, because SQL
  in views and triggers runs even with untrusted schema code disabled (a view of zeroblobs
  or a recursive CTE expands a 78 KB file into gigabytes; a trigger runs during an upgrade);
- it is opened read-only and integrity-checked; a version-1 file's frames are bounded
  before our own migration (the only code an upgrade runs) touches them;
- every column passes the store's own schemas (dst_core.store.schema), seqs and steps the
  store's one range (0 … MAX_SEQ: room is left above for the status the import appends),
  frames are bounded by the store's frame limit before they are decoded, each frame is
  checked against its layer's history as ingest checks it (schema.frame_misfit; one layer's
  mask held at a time), and only then is the run copied, under a new id, in one
  transaction, so a bad file changes nothing.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dst_core.store import codec, topology_index
from dst_core.store.run_store import (
    SCHEMA_VERSION,
    RunStore,
    _Transaction,
    checked_event,
    connect,
    dumps,
    migrate,
    new_run_id,
    schema_version,
)
from dst_core.store.schema import (
    ACTIVE_STATUSES,
    MAX_SEQ,
    InvalidValue,
    check_frame_header,
    checked_run_columns,
    frame_misfit,
    parse_layers,
)

SQLITE_MAGIC = b"SQLite format 3\x00"
FILE_SUFFIX = ".sparsescope"
ARTIFACT_NAMES = ("model.pt",)  # artifacts are looked up by name: nothing else is accepted
MAX_EVENTS = 10_000_000
MAX_TEXT = 10_000_000  # one event's JSON payload
# What a file of ours may hold: these tables with (at most) these columns, these indexes
# (and the automatic ones of primary keys). Anything else is refused before it is read.
TABLE_COLUMNS = {
    "meta": {"key", "value"},
    "runs": {"id", "name", "config", "status", "created_at", "started_at", "ended_at", "error",
             "summary", "heartbeat_at", "info", "labels"},
    "events": {"run_id", "seq", "step", "type", "payload", "layer", "keyframe", "blob"},
    "artifacts": {"run_id", "name", "data"},
    # Derived data, never read from an export: an imported run is indexed from its own frames
    # (topology_index.py). Allowed, because an export written by the store's layout has it.
    "topology_index": topology_index.COLUMNS,
}
REQUIRED_TABLES = ("meta", "runs", "events")  # a version-1 file has no artifacts table
INDEXES = {"events_type", "events_frames", "runs_newest", "runs_status"}
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


def _check_objects(db: sqlite3.Connection) -> None:
    """Only our tables, columns and indexes: no view, trigger or foreign object."""
    objects = db.execute("SELECT type, name, tbl_name FROM sqlite_master").fetchall()
    for kind, name, table in objects:
        if kind == "table" and name in TABLE_COLUMNS:
            continue
        if kind == "index" and (name in INDEXES or name.startswith("sqlite_autoindex_")) \
                and table in TABLE_COLUMNS:
            continue
        _fail(f"not a sparsescope export: unexpected {kind} {name!r} (an export holds only "
              f"the tables {', '.join(TABLE_COLUMNS)})")
    tables = {name for kind, name, _ in objects if kind == "table"}
    for table in REQUIRED_TABLES:
        if table not in tables:
            _fail(f"not a sparsescope export: no {table} table")
    for table in tables:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        unexpected = columns - TABLE_COLUMNS[table]
        if unexpected:
            _fail(f"not a sparsescope export: table {table} has unexpected columns "
                  f"{', '.join(sorted(unexpected))}")


def _check_v1_frames(db: sqlite3.Connection, max_elements: int) -> None:
    """A version-1 file keeps frames as JSON: bound their shapes before the migration
    decodes them."""
    for seq, payload in db.execute("SELECT seq, payload FROM events WHERE type = 'topology'"):
        try:
            header = json.loads(payload) if isinstance(payload, str) else None
            if not isinstance(header, dict):
                raise InvalidValue("payload", "not a JSON object")
            check_frame_header(header, max_elements, "payload")
        except (InvalidValue, ValueError, RecursionError) as error:
            _fail(f"events: seq {seq}: {error}")


def _read_validated(path: Path, max_elements: int) -> tuple[dict, list[tuple], list[tuple]]:
    """(run columns, events, artifacts) of an export file, each checked and normalised;
    BadExportError otherwise."""
    try:
        db = connect(path, read_only=True)
        _check_objects(db)
        check = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        _fail(f"not a sparsescope export: {error}")
    if check != "ok":
        _fail(f"corrupted file: {check}")
    version = schema_version(db)
    if not 1 <= version <= SCHEMA_VERSION:
        _fail(f"schema_version: {version} is not a version this sparsescope reads "
              f"(1..{SCHEMA_VERSION})")
    if version < SCHEMA_VERSION:
        try:
            _check_v1_frames(db, max_elements)
        except sqlite3.DatabaseError as error:
            _fail(f"corrupted file: {error}")
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
        run_id = run.get("id")
        try:
            run = {**checked_run_columns(run), "id": run_id}  # the original's, for imported_from
        except InvalidValue as error:
            _fail(str(error))
        count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        if count > MAX_EVENTS:
            _fail(f"absurd size: {count} events (at most {MAX_EVENTS})")
        events = _checked_events(db.execute(
            "SELECT seq, step, type, payload, layer, keyframe, blob FROM events WHERE run_id = ? "
            "ORDER BY seq", (run_id,)), max_elements)
        _check_layer_histories(events)
        artifacts = []
        for name, data in db.execute("SELECT name, data FROM artifacts WHERE run_id = ?",
                                     (run_id,)):
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


def _checked_events(rows, max_elements: int) -> list[tuple]:
    """Every event row through the store's rules, normalised (payload JSON re-written, NaN as
    null): (seq, step, type, payload, layer, keyframe, blob)."""
    events, previous = [], 0
    for seq, step, event_type, payload, layer, keyframe, blob in rows:
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
            _fail(f"events: seq {seq!r} is outside 1 … {MAX_SEQ} (2**62: the store's range of "
                  "seqs, which leaves room for the events it appends itself)")
        if seq <= previous:
            _fail(f"events: seq {seq!r} out of order")
        previous = seq
        if not isinstance(payload, str) or len(payload) > MAX_TEXT:
            _fail(f"events: seq {seq} payload is not text or absurdly large")
        try:
            header = json.loads(payload)
        except (ValueError, RecursionError):
            _fail(f"events: seq {seq} payload is not valid JSON")
        try:
            if event_type != "topology":
                if layer is not None or keyframe is not None or blob is not None:
                    raise InvalidValue("frame", f"a {event_type!r} event carries frame columns")
                event_type, step, stored, _ = checked_event(event_type, step, header, "payload",
                                                      max_elements)
                events.append((seq, step, event_type, *stored))
                continue
            if not isinstance(header, dict):
                raise InvalidValue("payload", "not a JSON object")
            check_frame_header(header, max_elements, "payload")
            if not isinstance(blob, bytes) or header["index"] != layer or \
                    header["keyframe"] != bool(keyframe):
                raise codec.FrameError("frame: header and index columns disagree")
            if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_SEQ:
                raise InvalidValue("step", f"must be an integer from 0 to {MAX_SEQ}")
            # Decoded (bounded by the checked shape) when its layer's history is checked.
            header = {key: header[key] for key in (*codec.HEADER_KEYS, "n_added", "n_removed")
                      if key in header}
            events.append((seq, step, event_type, dumps(header), layer, int(bool(keyframe)),
                           blob))
        except (InvalidValue, codec.FrameError, KeyError, TypeError) as error:
            _fail(f"events: seq {seq}: {error}")
    return events


def _check_layer_histories(events: list[tuple]) -> None:
    """Every frame against its layer, as ingest checks it: it names a layer of the run's (first)
    meta event, by index and name, and fits that layer's history (schema.frame_misfit).
    Layer after layer, so one layer's mask is held at a time; each blob is decoded here once,
    bounded by its checked shape. BadExportError naming the first frame that does not fit."""
    declared = None
    by_layer: dict[int, list[tuple]] = {}
    for event in events:
        seq, _, event_type, payload = event[:4]
        if event_type == "meta" and declared is None:
            declared = parse_layers(payload)
        if event_type != "topology":
            continue
        header = json.loads(payload)
        where = f"events: seq {seq}: topology frame (layer {header['layer']!r}, index " \
                f"{header['index']})"
        layers = declared or []
        if header["index"] >= len(layers):
            _fail(f"{where}: the run's meta event declares {len(layers)} layers")
        if layers[header["index"]]["name"] != header["layer"]:
            _fail(f"{where}: layer {header['index']} of the run's meta event is "
                  f"{layers[header['index']]['name']!r}")
        by_layer.setdefault(header["index"], []).append((seq, header, event[6]))
    for index, frames in by_layer.items():
        layer_shape = declared[index]["matrix"]
        mask, count = None, 0
        for seq, header, blob in frames:
            where = f"events: seq {seq}: topology frame (layer {header['layer']!r}, index {index})"
            try:
                keyframe_mask, added, removed = codec.stored_changes(header, blob)
            except (codec.FrameError, KeyError, TypeError) as error:
                _fail(f"events: seq {seq}: {error}")
            if keyframe_mask is not None:
                misfit = frame_misfit(layer_shape, header["shape"], header["active"],
                                      bits_active=int(np.count_nonzero(keyframe_mask)))
            else:
                misfit = frame_misfit(
                    layer_shape, header["shape"], header["active"], added=added,
                    removed=removed, active_now=count,
                    active_at=(lambda indices, mask=mask: mask[indices]) if mask is not None
                    else None)
            if misfit is not None:
                _fail(f"{where}: {misfit}")
            if keyframe_mask is not None:
                mask = keyframe_mask
            else:
                mask[removed] = False
                mask[added] = True
            count = int(header["active"])


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
        run, events, artifacts = _read_validated(path, store.max_frame_elements)
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
    # The runs here that already hold the same recording (its original, earlier imports of it)
    # are named too: importing a file twice says so instead of leaving two identical rows.
    same = [row[0] for row in store.db.execute(
        "SELECT id FROM (SELECT id, CASE WHEN json_valid(info) THEN json_extract(info, "
        "'$.imported_from') END AS source, CASE WHEN json_valid(info) THEN json_extract(info, "
        "'$.imported_at') END AS imported FROM runs) WHERE id = ?1 OR source = ?1 "
        "ORDER BY id != ?1, imported, id LIMIT 100", (run["id"],))]  # the original, then by age
    info = json.loads(run.get("info") or "{}")
    info.update(imported_at=time.time(), imported_from=run["id"])
    info.pop("same_as", None)  # an export of an import: what matters is this store's copies
    if same:
        info["same_as"] = same
    run["info"] = json.dumps(info)
    run["name"] = imported_name(run["name"])
    run["id"] = run_id
    with store._write() as db:
        columns = list(run)
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
