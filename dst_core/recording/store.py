"""The run store: SQLite in WAL mode, one writer per run and any number of readers.

Every event of a run gets the next sequence number inside the same write transaction that
stores it, so the server (queued/stopped/failed) and the worker (running/metrics/frames)
can both append to one run without ever reusing a `seq`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

SCHEMA_VERSION = 1
DB_NAME = "runs.sqlite3"
ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("completed", "stopped", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    error TEXT,
    summary TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step INTEGER NOT NULL,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_type ON events (run_id, type, seq);
"""


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def finite_json(value):
    """JSON-safe copy: NaN and ±inf become null (a NaN breaks the browser's JSON parser)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def dumps(value) -> str:
    return json.dumps(finite_json(value), separators=(",", ":"), allow_nan=False)


class RunStore:
    """Thread-safe handle on a data folder's run database (one connection per thread)."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / DB_NAME
        self._local = threading.local()
        self.db.executescript(_SCHEMA)  # executescript commits by itself: no BEGIN around it
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))

    # ---- connections ----------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def _write(self):
        return _Transaction(self.db)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---- runs -------------------------------------------------------------------------------
    def create_run(self, config: dict, name: str, status: str = "queued") -> dict:
        run_id = new_run_id()
        now = time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (id, name, config, status, created_at) VALUES (?, ?, ?, ?, ?)",
                (run_id, name, dumps(config), status, now))
            self._append(db, run_id, [("status", 0, {"status": status})])
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _run_row(row) if row else None

    def list_runs(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC").fetchall()
        return [_run_row(row) for row in rows]

    def runs_with_status(self, statuses: Iterable[str]) -> list[dict]:
        statuses = list(statuses)
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(
            f"SELECT * FROM runs WHERE status IN ({marks}) ORDER BY created_at", statuses
        ).fetchall()
        return [_run_row(row) for row in rows]

    def set_status(self, run_id: str, status: str, error: str | None = None, step: int = 0,
                   only_if_active: bool = True) -> bool:
        """Move a run to `status` and store the status event; False if it already ended."""
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or (only_if_active and row["status"] in FINAL_STATUSES):
                return False
            if row["status"] == status:
                return False
            fields = {"status": status}
            if status == "running":
                fields["started_at"] = now
            if status in FINAL_STATUSES:
                fields["ended_at"] = now
            if error is not None:
                fields["error"] = error
            assignments = ", ".join(f"{key} = ?" for key in fields)
            db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*fields.values(), run_id])
            payload = {"status": status}
            if error is not None:
                payload["error"] = error
            self._append(db, run_id, [("status", step, payload)])
        return True

    def update_summary(self, run_id: str, summary: dict) -> None:
        with self._write() as db:
            db.execute("UPDATE runs SET summary = ? WHERE id = ?", (dumps(summary), run_id))

    def delete_run(self, run_id: str) -> bool:
        with self._write() as db:
            db.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            return db.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount > 0

    # ---- events -----------------------------------------------------------------------------
    def append_events(self, run_id: str, events: list[tuple[str, int, dict]]) -> int:
        """Store (type, step, payload) events in order; returns the last seq written."""
        with self._write() as db:
            return self._append(db, run_id, events)

    def _append(self, db: sqlite3.Connection, run_id: str, events) -> int:
        last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?",
                          (run_id,)).fetchone()[0]
        rows = []
        for offset, (event_type, step, payload) in enumerate(events, start=1):
            rows.append((run_id, last + offset, int(step), event_type, dumps(payload)))
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
        return last + len(rows)

    def read_events(self, run_id: str, from_seq: int = 0, limit: int = 500) -> list[dict]:
        rows = self.db.execute(
            "SELECT seq, step, type, payload FROM events WHERE run_id = ? AND seq >= ? "
            "ORDER BY seq LIMIT ?", (run_id, from_seq, limit)).fetchall()
        return [event_dict(row) for row in rows]

    def read_event_texts(self, run_id: str, from_seq: int = 0,
                         limit: int = 500) -> list[tuple[int, str]]:
        """(seq, JSON text) of stored events, built without a decode/encode round trip."""
        rows = self.db.execute(
            "SELECT seq, step, type, payload FROM events WHERE run_id = ? AND seq >= ? "
            "ORDER BY seq LIMIT ?", (run_id, from_seq, limit)).fetchall()
        return [(row["seq"], _event_text(row)) for row in rows]

    def last_seq(self, run_id: str) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?",
                               (run_id,)).fetchone()[0]


def event_dict(row) -> dict:
    event = json.loads(row["payload"])
    event.update(seq=row["seq"], step=row["step"], type=row["type"])
    return event


def _event_text(row) -> str:
    head = f'{{"seq":{row["seq"]},"step":{row["step"]},"type":{json.dumps(row["type"])}'
    payload = row["payload"]
    return head + ("}" if payload == "{}" else "," + payload[1:])


def _run_row(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"], "name": row["name"], "config": json.loads(row["config"]),
        "status": row["status"], "created_at": row["created_at"],
        "started_at": row["started_at"], "ended_at": row["ended_at"], "error": row["error"],
        "summary": json.loads(row["summary"] or "{}"),
    }


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT: takes the write lock up front so seq allocation is atomic."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
