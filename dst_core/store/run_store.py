"""The run store: SQLite in WAL mode, one writer per run and any number of readers.

Every event of a run gets the next sequence number inside the same write transaction that
stores it, so the server (queued/stopped/failed) and the writer (running/metrics/frames) can
both append to one run without ever reusing a `seq`. A remote writer assigns its own `seq`s
(it may resend a batch after a lost reply); the store keeps the first copy of each.

Topology events are stored as a small JSON header plus a compressed blob (see codec.py) and
indexed by (layer, keyframe, step), so any layer's mask at any step is one keyframe plus at
most K-1 deltas away. The file's layout is versioned in `meta.schema_version`; opening an
older file applies the MIGRATIONS in order, each in one transaction.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from dst_core.events import LOCAL_CHANGES
from dst_core.store import codec
from dst_core.store.schema import (
    FINAL_STATUSES,
    LIST_TEXT_CHARS,
    MAX_SEQ,
    InvalidValue,
    check_frame_header,
    checked_config,
    checked_info,
    checked_labels,
    checked_name,
    checked_payload,
    checked_status,
    checked_summary,
    clean_json,
    compact_json,
    listed_run,
    stored_info,
    stored_labels,
    stored_run,
)
from dst_core.store.topology_index import TABLE_SQL as TOPOLOGY_INDEX_TABLE
from dst_core.store.topology_index import IndexWriter, insert_segment

SCHEMA_VERSION = 5
DB_NAME = "runs.sqlite3"
DEFAULT_DATA_DIR = "./sparsescope-data"  # the one default folder: Recorder, CLI, server, notebook
EVENT_TYPE = re.compile(r"[a-z_]{1,32}")
MODEL_ARTIFACT = "model.pt"
# A run row as readers see it: `has_model` tells the dashboard whether to offer the download.
_RUN_SELECT = ("SELECT runs.*, EXISTS(SELECT 1 FROM artifacts WHERE artifacts.run_id = runs.id "
               f"AND artifacts.name = '{MODEL_ARTIFACT}') AS has_model FROM runs")

MAX_METRIC_NAMES = 1000  # distinct field names of a run's metrics/eval events (the server's
# SPARSESCOPE_MAX_METRIC_NAMES): a writer that logs a new name per step is refused, not stored
METRIC_NAMES_LIMIT_RANGE = (1, 100_000)  # what the setting may be (backend/settings.py)
MAX_METRIC_NAME_CHARS = 200


def checked_metric_names_limit(limit: int) -> int:
    """`limit` if it is an int within METRIC_NAMES_LIMIT_RANGE, else ValueError naming it."""
    low, high = METRIC_NAMES_LIMIT_RANGE
    if isinstance(limit, bool) or not isinstance(limit, int) or not low <= limit <= high:
        raise ValueError(f"max_metric_names: {limit!r} is not an integer in [{low}, {high}]")
    return limit

METRIC_TYPES = ("metrics", "eval")
_NAMED_RUNS = 256  # runs whose metric names a store keeps in memory (reloaded when dropped)

# The runs list's projection, cut down in SQL: whatever a row holds (a 4 MiB config, a
# 1000-character name), a listed run is a few hundred bytes. Each JSON column is read and
# parsed once (json_each; a 4 MiB column costs milliseconds per read), and a root that is not
# an object comes back NULL, so listed_run flags the row unreadable. JSON that does not even
# parse (a damaged legacy row) fails that query: it is asked again `guarded`, each column
# checked with json_valid first.
_LIST_JSON_CHARS = 200  # a listed list/object value (config.hidden) longer than this is "…"


def _cut(expr: str, chars: int = LIST_TEXT_CHARS) -> str:
    return (f"CASE typeof({expr}) WHEN 'text' THEN CASE WHEN length({expr}) > {chars} THEN "
            f"substr({expr}, 1, {chars - 1}) || '…' ELSE {expr} END "
            f"WHEN 'blob' THEN NULL ELSE {expr} END")


def _listed_value(alias: str) -> str:
    """A json_each row's value, bounded: texts cut, non-finite numbers null, lists and
    objects kept only when short."""
    value = f"{alias}.value"
    return (f"CASE {alias}.type WHEN 'text' THEN {_cut(value)} "
            f"WHEN 'true' THEN json('true') WHEN 'false' THEN json('false') "
            f"WHEN 'real' THEN CASE WHEN abs({value}) < 1e308 THEN "
            f"json(printf('%!.17g', {value})) END "  # 17 digits: the stored double, exactly
            f"WHEN 'integer' THEN {value} WHEN 'null' THEN NULL "
            f"ELSE CASE WHEN length({value}) <= {_LIST_JSON_CHARS} THEN json({value}) "
            f"ELSE '…' END END")


def _keys(keys: Iterable[str]) -> str:
    return ", ".join(f"'{key}'" for key in keys)


def _listed_object(source: str, keys: Iterable[str], alias: str, value: str | None = None,
                   guarded: bool = False) -> str:
    """The object `source` (JSON text) cut down to `keys`; NULL when its root is not an
    object (an array's keys are numbers, a scalar's NULL)."""
    found = (f"(SELECT CASE WHEN count(*) FILTER (WHERE typeof({alias}.key) <> 'text') THEN "
             f"NULL ELSE json_group_object({alias}.key, {value or _listed_value(alias)}) "
             f"FILTER (WHERE {alias}.key IN ({_keys(keys)})) END FROM json_each({source}) "
             f"AS {alias})")
    return f"CASE WHEN json_valid({source}) THEN {found} END" if guarded else found


# The list's order, newest first, is the runs_newest index read backwards (NULL times last).
_ORDER = "runs.created_at DESC, runs.id DESC"


class ListPage(NamedTuple):
    runs: list[dict]  # schema.ListedRun
    total: int  # runs matching the filters
    next_after: tuple | None  # where the next page starts (None: this is the last)


LISTED_CONFIG = ("task", "model", "hidden", "method", "density")
LISTED_SETTINGS = ("task", "model", "method", "density")
LISTED_INFO = ("writer", "imported_from", "imported_at")
LISTED_SUMMARY = ("steps", "final_loss", "final_test_accuracy", "best_test_accuracy", "itop_rate")
SEARCHED_KEYS = ("task", "model", "method")  # `query` matches these, the name and the id


LISTED_COLUMN_SOURCES = ("config", "summary")  # where the list's chosen columns come from
MAX_LISTED_COLUMNS = 8
_COLUMN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
LABELS_LISTED_CHARS = 8000  # far above what set_labels stores; a hostile row is left out


def checked_list_columns(columns: Iterable[str]) -> list[tuple[str, str]]:
    """`config.lr`, `summary.final_loss`… as (source, key) pairs; ValueError naming `columns`
    otherwise. The keys are put in the SQL text, so only identifiers pass."""
    pairs: list[tuple[str, str]] = []
    for column in columns:
        source, _, key = column.partition(".")
        if source not in LISTED_COLUMN_SOURCES or not _COLUMN_KEY.fullmatch(key):
            raise ValueError(f"columns: {column[:80]!r} is not one of "
                             f"{', '.join(f'{name}.<key>' for name in LISTED_COLUMN_SOURCES)} "
                             "with a key of letters, digits and _")
        if (source, key) not in pairs:
            pairs.append((source, key))
    if len(pairs) > MAX_LISTED_COLUMNS:
        raise ValueError(f"columns: at most {MAX_LISTED_COLUMNS}")
    return pairs


def _chosen_columns(pairs: list[tuple[str, str]], guarded: bool) -> str:
    """A JSON object {source: {key: value}} of the chosen columns (values cut as the list's)."""
    if not pairs:
        return "NULL"
    parts = []
    for source in LISTED_COLUMN_SOURCES:
        keys = [key for of, key in pairs if of == source]
        if keys:
            found = _listed_object(f"runs.{source}", keys, f"k{source}", guarded=guarded)
            parts.append(f"'{source}', json({found})")
    return f"json_object({', '.join(parts)})"


def _list_select(guarded: bool, columns: list[tuple[str, str]] = ()) -> str:
    # info's `settings` is an object of its own, cut down the same way (NULL when it is not
    # an object, which listed_run shows as no settings).
    settings = _listed_object("i.value", LISTED_SETTINGS, "s", guarded=guarded)
    info_value = (f"CASE WHEN i.key = 'settings' THEN CASE WHEN i.type = 'object' THEN "
                  f"json({settings}) END ELSE {_listed_value('i')} END")
    return (
        f"SELECT {_cut('runs.id', 64)} AS id, {_cut('runs.name')} AS name, "
        f"{_cut('runs.status', 32)} AS status, created_at, started_at, ended_at, heartbeat_at, "
        f"{_cut('runs.error')} AS error, EXISTS(SELECT 1 FROM artifacts WHERE "
        f"artifacts.run_id = runs.id AND artifacts.name = '{MODEL_ARTIFACT}') AS has_model, "
        f"{_listed_object('runs.config', LISTED_CONFIG, 'c', guarded=guarded)} AS config, "
        f"{_listed_object('runs.summary', LISTED_SUMMARY, 'm', guarded=guarded)} AS summary, "
        f"{_listed_object('runs.info', (*LISTED_INFO, 'settings'), 'i', info_value, guarded)}"
        f" AS info, CASE WHEN length(runs.labels) <= {LABELS_LISTED_CHARS} THEN runs.labels END"
        f" AS labels, {_chosen_columns(list(columns), guarded)} AS columns,"
        f" runs.created_at AS sort_created, runs.id AS sort_id FROM runs")


def _search(query: str, guarded: bool = False) -> str:
    """Case-insensitive (ASCII) substring of the name, the id, or the task, model or method
    of the config or of the stored settings. A query that JSON writes as itself (ASCII, no
    quote, backslash or control character) is first looked for in the raw JSON text: only
    the runs whose text holds it are parsed."""
    literal = query.isascii() and query.isprintable() and not set(query) & {'"', "\\"}

    def keys_of(column: str, path: str = "") -> str:
        checks = [f"instr(lower({column}), lower(:query)) > 0"] if literal else []
        checks += [f"json_valid({column})"] if guarded else []
        found = (f"EXISTS(SELECT 1 FROM json_each({column}{path}) AS f WHERE f.key IN "
                 f"({_keys(SEARCHED_KEYS)}) AND f.type = 'text' AND instr(lower(f.value), "
                 "lower(:query)) > 0)")
        return f"CASE WHEN {' AND '.join(checks)} THEN {found} ELSE 0 END" if checks else found

    settings = keys_of("runs.info", ", '$.settings'")
    # A person's tags and note: the note as text, each tag; a tag written `tag:x` is that
    # tag exactly (case-insensitive), not a substring of anything.
    valid = "json_valid(runs.labels) AND " if guarded else ""
    labels = (f"CASE WHEN {valid}1 THEN (instr(lower(COALESCE(runs.labels ->> '$.note', '')), "
              "lower(:query)) > 0 OR EXISTS(SELECT 1 FROM json_each(runs.labels, '$.tags') AS t "
              "WHERE t.type = 'text' AND instr(lower(t.value), lower(:query)) > 0)) ELSE 0 END")
    return ("(instr(lower(runs.name), lower(:query)) > 0 OR instr(runs.id, lower(:query)) > 0 "
            f"OR {keys_of('runs.config')} OR {settings} OR {labels})")


def _tag_filter(guarded: bool) -> str:
    valid = "json_valid(runs.labels) AND " if guarded else ""
    return (f"CASE WHEN {valid}1 THEN EXISTS(SELECT 1 FROM json_each(runs.labels, '$.tags') AS t "
            "WHERE t.type = 'text' AND lower(t.value) = lower(:tag)) ELSE 0 END")


# Version 1: the foundation's layout (JSON payloads only). Every file starts from it and is
# migrated forward, so a fresh file and an upgraded old file follow the same path.
_SCHEMA_V1 = """
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


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Compressed topology blobs, a frame index, writer heartbeats, run info, artifacts."""
    db.execute("ALTER TABLE runs ADD COLUMN heartbeat_at REAL")
    db.execute("ALTER TABLE runs ADD COLUMN info TEXT NOT NULL DEFAULT '{}'")
    db.execute("ALTER TABLE events ADD COLUMN layer INTEGER")
    db.execute("ALTER TABLE events ADD COLUMN keyframe INTEGER")
    db.execute("ALTER TABLE events ADD COLUMN blob BLOB")
    db.execute("CREATE INDEX IF NOT EXISTS events_frames ON events (run_id, layer, keyframe, step)"
               " WHERE layer IS NOT NULL")
    db.execute("CREATE TABLE IF NOT EXISTS artifacts (run_id TEXT NOT NULL, name TEXT NOT NULL,"
               " data BLOB NOT NULL, PRIMARY KEY (run_id, name)) WITHOUT ROWID")
    rows = db.execute("SELECT run_id, seq, payload FROM events WHERE type = 'topology'").fetchall()
    for row in rows:
        header, blob = codec.payload_to_stored(json.loads(row[2]))
        db.execute("UPDATE events SET payload = ?, layer = ?, keyframe = ?, blob = ? "
                   "WHERE run_id = ? AND seq = ?",
                   (dumps(header), int(header["index"]), int(header["keyframe"]), blob,
                    row[0], row[1]))


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """The cohort index (topology_index.py): runs stored before it are indexed from their
    frames when first asked about."""
    db.execute(TOPOLOGY_INDEX_TABLE)


def _migrate_3_to_4(db: sqlite3.Connection) -> None:
    """The runs list's indexes: a page newest first (of one status, or all) is found in an
    index, without reading the rows, however large they are."""
    db.execute("CREATE INDEX IF NOT EXISTS runs_newest ON runs (created_at, id)")
    db.execute("CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created_at, id)")


def _migrate_4_to_5(db: sqlite3.Connection) -> None:
    """Tags and a note per run, set by people (RunStore.set_labels), kept apart from what the
    writer stores (info), which a writer replaces whole."""
    db.execute("ALTER TABLE runs ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'")


MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (2, _migrate_1_to_2),
    (3, _migrate_2_to_3),
    (4, _migrate_3_to_4),
    (5, _migrate_4_to_5),
]


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def dumps(value) -> str:
    """Compact JSON of a value the store built itself (a frame header); NaN becomes null."""
    return json.dumps(clean_json(value, "value"), separators=(",", ":"), allow_nan=False)


LOCKED_RETRY_S = 30.0  # as long as the busy timeout: a writer waits, it never fails


def retry_locked(action: Callable[[], object], timeout_s: float = LOCKED_RETRY_S):
    """Run `action`, retrying with a growing pause while SQLite answers "database is locked"
    or "busy". The busy timeout covers ordinary writes, but SQLite returns SQLITE_BUSY at
    once, without calling the busy handler, where waiting could deadlock: switching a fresh
    file to WAL and creating the schema while another process does the same, or a WAL
    recovery. Those are exactly the first moments of concurrent writers on a new folder."""
    deadline = time.monotonic() + timeout_s
    pause_s = 0.005
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            text = str(error)
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(pause_s)
        pause_s = min(0.25, pause_s * 2)


def connect(path: str | Path, *, read_only: bool = False,
            autocheckpoint: bool = True) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA trusted_schema=OFF")  # a foreign file's views/triggers run nothing
    else:
        conn = sqlite3.connect(path, timeout=LOCKED_RETRY_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(LOCKED_RETRY_S * 1000)}")  # before anything
        retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
        conn.execute("PRAGMA synchronous=NORMAL")
        if not autocheckpoint:  # RunStore.checkpoint() is called from elsewhere instead
            conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.row_factory = sqlite3.Row
    return conn


def schema_version(db: sqlite3.Connection) -> int:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError:
        return 0
    try:
        return int(row[0]) if row else 0
    except (TypeError, ValueError):
        return -1


def migrate(db: sqlite3.Connection) -> int:
    """Bring a file to SCHEMA_VERSION; each step commits alone, so a crash leaves a valid file."""
    def create_schema() -> None:  # one transaction: a concurrent creator waits, then no-ops
        with _Transaction(db):
            for statement in _SCHEMA_V1.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', '1')")

    retry_locked(create_schema)
    for target, step in MIGRATIONS:
        with _Transaction(db):
            current = schema_version(db)  # re-read under the write lock: another process may
            if current < 1 or current > SCHEMA_VERSION:  # have migrated meanwhile
                raise ValueError(f"schema_version: {current} is not a version this sparsescope "
                                 f"reads (1..{SCHEMA_VERSION})")
            if current >= target:
                continue
            step(db)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))
    return schema_version(db)


class RunStore:
    """Thread-safe handle on a data folder's run database (one connection per thread)."""

    def __init__(self, data_dir: str | Path, *, file_name: str = DB_NAME,
                 max_frame_elements: int = codec.MAX_FRAME_ELEMENTS,
                 autocheckpoint: bool = True, max_metric_names: int | None = None):
        self.data_dir = Path(data_dir)
        # False: a commit never copies the WAL into the file (and fsyncs both) on the
        # committing thread; the owner calls checkpoint() from a thread that can wait (the
        # recorder's heartbeat), so a training step does not stall on the disk.
        self.autocheckpoint = autocheckpoint
        # A topology frame's rows × cols is refused above this before anything is decoded
        # (the server passes SPARSESCOPE_MAX_PARAMETERS: no frame is larger than a model).
        self.max_frame_elements = max_frame_elements
        # Distinct metrics/eval field names a run may have; refused past it, naming the limit.
        # Set below: given, else the folder's own (see set_max_metric_names).
        self.max_metric_names = MAX_METRIC_NAMES
        # The metric names of runs this store writes, by run (the writer is the only one
        # adding to them): each batch is checked against the limit without reading events.
        self._metric_names: dict[str, set[str]] = {}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / file_name
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        version = retry_locked(lambda: schema_version(self.db))
        if version > SCHEMA_VERSION:
            raise ValueError(f"schema_version: {self.path} has version {version}; this sparsescope "
                             f"reads up to {SCHEMA_VERSION} (upgrade sparsescope)")
        migrate(self.db)
        # Frames this store inserts are indexed in the same transaction (topology_index.py).
        self.index = IndexWriter(lambda: self.db)
        self.max_metric_names = (self.folder_metric_names_limit() if max_metric_names is None
                                 else checked_metric_names_limit(max_metric_names))

    def folder_metric_names_limit(self) -> int:
        """The limit the folder's server was started with (stored by set_max_metric_names), so
        every writer of the folder (its workers, a script's Recorder, the CLI) refuses at the
        same count; MAX_METRIC_NAMES where no server said, or what is stored is not a limit."""
        row = retry_locked(lambda: self.db.execute(
            "SELECT value FROM meta WHERE key = 'max_metric_names'").fetchone())
        try:
            return checked_metric_names_limit(int(row[0])) if row else MAX_METRIC_NAMES
        except (TypeError, ValueError):
            return MAX_METRIC_NAMES

    def set_max_metric_names(self, limit: int) -> None:
        """This store's limit, also stored as the folder's for every other writer of it."""
        self.max_metric_names = checked_metric_names_limit(limit)
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('max_metric_names', ?)",
                       (str(self.max_metric_names),))

    # ---- connections ----------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, autocheckpoint=self.autocheckpoint)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _write(self):
        return _Transaction(self.db)

    def checkpoint(self) -> None:
        """Copy the committed WAL into the database file; PASSIVE never waits for a reader
        or a writer (what it cannot copy now, the next call does)."""
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)

    # ---- runs -------------------------------------------------------------------------------
    def stored_schema_version(self) -> str | None:
        """The schema version the file says it holds, read on this thread's open connection
        (a one-row lookup: a readiness probe may poll it). sqlite3.Error when unreadable."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return row[0] if row else None

    def create_run(self, config: dict, name: str, status: str = "queued",
                   info: dict | None = None, run_id: str | None = None,
                   status_event: bool = True) -> dict:
        run_id = run_id or new_run_id()
        now = time.time()
        row = (run_id, checked_name(name), checked_config(config), checked_status(status)[0], now,
               now if status == "running" else None, now, checked_info(info or {}))
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (id, name, config, status, created_at, started_at, heartbeat_at,"
                " info) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            if status_event:
                self._append(db, run_id, [("status", 0, {"status": status})])
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> dict | None:
        row = self.db.execute(f"{_RUN_SELECT} WHERE id = ?", (run_id,)).fetchone()
        return _run_row(row) if row else None

    def list_runs(self) -> list[dict]:
        rows = self.db.execute(f"{_RUN_SELECT} ORDER BY created_at DESC, id DESC").fetchall()
        return [_run_row(row) for row in rows]

    def list_page(self, limit: int, after: tuple | None = None, status: str | None = None,
                  query: str | None = None, tag: str | None = None,
                  columns: Iterable[str] = ()) -> ListPage:
        """Up to `limit` runs newest first as the runs list shows them (a bounded projection,
        schema.ListedRun), those after `after` (a previous page's `next_after`), with the
        count of runs matching `status`, `query` (a substring of the name, id, task, model,
        method, a tag or the note; ASCII case-insensitive) and `tag` (one of the run's tags,
        case-insensitive). `columns` (`config.lr`, `summary.final_loss`…) adds those values
        to each row. Page and count read one snapshot."""
        pairs = checked_list_columns(columns)
        try:
            rows, total = self._list_rows(limit, after, status, query, tag, pairs, guarded=False)
        except sqlite3.OperationalError as error:
            if "JSON" not in str(error):
                raise
            rows, total = self._list_rows(limit, after, status, query, tag, pairs, guarded=True)
        shown = rows[:limit]
        next_after = None
        if len(rows) > limit:  # a time that is not a number (a damaged row) sorts as stored
            created, run_id = shown[-1]["sort_created"], shown[-1]["sort_id"]
            next_after = (created if isinstance(created, (int, float, str)) else None,
                          run_id if isinstance(run_id, str) else str(run_id))
        return ListPage([listed_run({key: row[key] for key in row.keys()}) for row in shown],
                        total, next_after)

    def _list_rows(self, limit: int, after: tuple | None, status: str | None,
                   query: str | None, tag: str | None, columns: list[tuple[str, str]],
                   guarded: bool) -> tuple[list, int]:
        """The page's rows (one more than `limit`) and the count, as list_page asks."""
        clauses, params = [], {"limit": int(limit) + 1}  # one more: is there a next page?
        if status is not None:
            clauses.append("runs.status = :status")
            params["status"] = status
        if query:
            clauses.append(_search(query, guarded))
            params["query"] = query
        if tag:
            clauses.append(_tag_filter(guarded))
            params["tag"] = tag
        filters = " AND ".join(clauses) or "1"
        page = filters
        if after is not None:
            params["after_created"], params["after_id"] = after
            # The next page is what sorts after the cursor (runs without a time last),
            # however many runs were added meanwhile.
            page += (" AND runs.created_at IS NULL AND runs.id < :after_id" if after[0] is None
                     else " AND ((runs.created_at, runs.id) < (:after_created, :after_id) "
                          "OR runs.created_at IS NULL)")
        db = self.db
        db.execute("BEGIN")  # deferred: the page and the count read one snapshot (WAL)
        try:
            # The page's rows are found on bare columns first: projecting while sorting
            # would parse every run's JSON, not only the page's.
            rows = db.execute(f"{_list_select(guarded, columns)} WHERE runs.rowid IN (SELECT runs.rowid "
                              f"FROM runs WHERE {page} ORDER BY {_ORDER} LIMIT :limit) "
                              f"ORDER BY {_ORDER}", params).fetchall()
            total = db.execute(f"SELECT COUNT(*) FROM runs WHERE {filters}", params).fetchone()[0]
        finally:
            db.execute("ROLLBACK")
        return rows, total

    def runs_with_status(self, statuses: Iterable[str]) -> list[dict]:
        statuses = list(statuses)
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(
            f"{_RUN_SELECT} WHERE status IN ({marks}) ORDER BY created_at", statuses
        ).fetchall()
        return [_run_row(row) for row in rows]

    def set_status(self, run_id: str, status: str, error: str | None = None, step: int = 0,
                   only_if_active: bool = True) -> bool:
        """Move a run to `status` and store the status event; False if it already ended."""
        checked_status(status, error)
        with self._write() as db:
            if not _status_change(db, run_id, status, error, only_if_active):
                return False
            payload = {"status": status}
            if error is not None:
                payload["error"] = error
            self._append(db, run_id, [("status", step, payload)])
        return True

    def update_summary(self, run_id: str, summary: dict) -> None:
        text = checked_summary(summary)
        with self._write() as db:
            db.execute("UPDATE runs SET summary = ?, heartbeat_at = ? WHERE id = ?",
                       (text, time.time(), run_id))

    def heartbeat(self, run_id: str) -> None:
        """The writer is alive (the run manager's stale watcher reads it)."""
        with self._write() as db:
            db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (time.time(), run_id))

    def running_beats(self) -> list[tuple[str, float, dict]]:
        """(id, last sign of life, info) of every running run: what liveness is judged on."""
        rows = self.db.execute(
            "SELECT id, info, COALESCE(heartbeat_at, started_at, created_at) AS beat FROM runs "
            "WHERE status = 'running'").fetchall()
        return [(row["id"], float(row["beat"] or 0.0), stored_info(row["info"])) for row in rows]

    def fail_if_silent(self, run_id: str, error: str, beat_before: float | None = None) -> bool:
        """Fail a running run, in one transaction, unless a heartbeat at or after
        `beat_before` has landed meanwhile (None: fail it whatever its heartbeat)."""
        checked_status("failed", error)
        with self._write() as db:
            fresh = db.execute("SELECT COALESCE(heartbeat_at, started_at, created_at) FROM runs "
                               "WHERE id = ? AND status = 'running'", (run_id,)).fetchone()
            if fresh is None or (beat_before is not None and (fresh[0] or 0.0) >= beat_before):
                return False
            _status_change(db, run_id, "failed", error, True)
            self._append(db, run_id, [("status", self._last_step(db, run_id),
                                       {"status": "failed", "error": error})])
        return True

    def set_labels(self, run_id: str, *, name: str | None = None, tags: list[str] | None = None,
                   note: str | None = None) -> dict | None:
        """Rename a run and set its tags and note (each left as it is when None); the run as
        stored afterwards, None when there is no such run. Checked here, where they enter."""
        name = None if name is None else checked_name(name)
        if name is not None and not name.strip():
            raise InvalidValue("name", "must not be empty")
        with self._write() as db:
            row = db.execute("SELECT labels FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            stored_tags, stored_note = stored_labels(row[0])
            labels = checked_labels({"tags": stored_tags if tags is None else tags,
                                     "note": stored_note if note is None else note})
            db.execute("UPDATE runs SET labels = ?, name = COALESCE(?, name) WHERE id = ?",
                       (labels, name, run_id))
        return self.get_run(run_id)

    def set_info(self, run_id: str, info: dict) -> None:
        """Replace the run's info; the settings its meta event stored stay (they are not part
        of the `info` readers get back, so a read-modify-write must not drop them)."""
        text = checked_info(info)
        with self._write() as db:
            db.execute("UPDATE runs SET info = CASE WHEN json_extract(info, '$.settings') IS NULL "
                       "THEN ?1 ELSE json_set(?1, '$.settings', json(info -> '$.settings')) "
                       "END WHERE id = ?2", (text, run_id))

    def delete_run(self, run_id: str) -> bool:
        with self._write() as db:
            db.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM artifacts WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM topology_index WHERE run_id = ?", (run_id,))
            self.index.forget(run_id)
            self._metric_names.pop(run_id, None)
            return db.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount > 0

    def store_index_segments(self, run_id: str, layer: int, segments: list) -> bool:
        """Store index segments a reader cut from an ended run's frames (topology_index.py),
        if they continue the layer's stored ones; False when they no longer do."""
        if not segments:
            return True
        with self._write() as db:
            row = db.execute("SELECT MAX(last_rewire) FROM topology_index WHERE run_id = ? "
                             "AND layer = ?", (run_id, layer)).fetchone()
            if (row[0] if row[0] is not None else -1) != segments[0].first - 1:
                return False
            for segment in segments:
                insert_segment(db, run_id, layer, segment)
            return True

    # ---- artifacts (the trained model) ---------------------------------------------------------
    def put_artifact(self, run_id: str, name: str, data: bytes) -> None:
        with self._write() as db:
            _require_run(db, run_id)
            db.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?)", (run_id, name, data))

    def get_artifact(self, run_id: str, name: str) -> bytes | None:
        row = self.db.execute("SELECT data FROM artifacts WHERE run_id = ? AND name = ?",
                              (run_id, name)).fetchone()
        return bytes(row[0]) if row else None

    # ---- events -----------------------------------------------------------------------------
    def append_events(self, run_id: str, events: list[tuple[str, int, dict]],
                      summary: dict | None = None) -> int:
        """Store (type, step, payload) events in order (and the summary, in the same commit,
        which also counts as the writer's heartbeat); returns the last seq written."""
        text = None if summary is None else checked_summary(summary)
        rows = [self._checked(event_type, step, payload, f"events[{position}]")
                for position, (event_type, step, payload) in enumerate(events)]
        with self._indexing(run_id) as db:
            _require_run(db, run_id)
            self._admit_metric_names(db, run_id, [(event_type, payload)
                                                  for event_type, _, payload in events])
            last = self._append_checked(db, run_id, rows, [payload for _, _, payload in events])
            if text is not None:
                db.execute("UPDATE runs SET summary = ?, heartbeat_at = ? WHERE id = ?",
                           (text, time.time(), run_id))
            return last

    def ingest_events(self, run_id: str, events: list[dict], summary: dict | None = None) -> int:
        """Store events that carry their writer's own `seq`; a seq seen before is dropped.

        Status events also move the run's status, exactly as set_status would. Returns the
        run's last stored seq.
        """
        text = None if summary is None else checked_summary(summary)
        # A batch past the metric-name limit is refused before each of its events is checked
        # (a million names cost seconds and hundreds of MB to validate); again below, in the
        # transaction, for what is really inserted.
        self._new_metric_names(run_id, self._known_metric_names(self.db, run_id), (
            (event.get("type"), event) for event in events if isinstance(event, dict)),
            ignored=("seq", "step", "type"))
        checked = []
        for position, event in enumerate(events):
            field = f"events[{position}]"
            seq, step = event.get("seq"), event.get("step")
            for key, value in (("seq", seq), ("step", step)):
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEQ:
                    raise InvalidValue(f"{field}.{key}", f"must be an integer from 0 to {MAX_SEQ}")
            # A keyframe's in-process changes are never taken from a request: they would
            # stand in for its bits when the store checks the frame against its layer.
            payload = {k: v for k, v in event.items()
                       if k not in ("seq", "step", "type", LOCAL_CHANGES)}
            checked.append(((seq, self._checked(event.get("type"), step, payload, field)),
                            payload))
        checked.sort(key=lambda item: item[0][0])
        with self._indexing(run_id) as db:
            _require_run(db, run_id)
            last = self._last_seq(db, run_id)
            rows, inserted = [], []
            for (seq, (event_type, step, stored, status)), payload in checked:
                if seq <= last:
                    continue  # a resent batch: the first copy is kept
                if status is not None:
                    _status_change(db, run_id, status[0], status[1], True)
                rows.append((run_id, seq, step, event_type, *stored))
                inserted.append((seq, event_type, step, payload, status))
                last = seq
            self._admit_metric_names(db, run_id, [(event_type, payload)
                                                  for _, event_type, _, payload, _ in inserted])
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            _keep_settings(db, run_id, ((row[3], row[4]) for row in rows))
            self._index_inserted(db, run_id, inserted)
            db.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (time.time(), run_id))
            if text is not None:
                db.execute("UPDATE runs SET summary = ? WHERE id = ?", (text, run_id))
            return last

    def _admit_metric_names(self, db: sqlite3.Connection, run_id: str,
                            events: list[tuple[str, dict]]) -> None:
        """Refuse a batch that would give the run more than `max_metric_names` distinct
        metrics/eval field names, or a name longer than MAX_METRIC_NAME_CHARS (InvalidValue
        naming the limit). Inside the batch's transaction: its names join the run's known
        ones at once, and a batch that does not commit makes the store forget them all."""
        names = self._known_metric_names(db, run_id)
        new = self._new_metric_names(run_id, names, events)
        if new:
            names |= new

    def _known_metric_names(self, db: sqlite3.Connection, run_id: str) -> set[str]:
        names = self._metric_names.get(run_id)
        if names is None:
            names = self._stored_metric_names(db, run_id)
            while len(self._metric_names) >= _NAMED_RUNS:
                self._metric_names.pop(next(iter(self._metric_names)))
            self._metric_names[run_id] = names
        return names

    def _new_metric_names(self, run_id: str, names: set[str],
                          events: Iterable[tuple[str, dict]], ignored=()) -> set[str]:
        """The names `events` add to `names` (keys in `ignored` are not names); InvalidValue
        past the limits."""
        new = {key for event_type, payload in events if event_type in METRIC_TYPES
               for key in payload if key not in names and key not in ignored}
        if not new:
            return new
        longest = max(new, key=len)
        if len(longest) > MAX_METRIC_NAME_CHARS:
            raise InvalidValue("metrics", f"a metric name of {len(longest)} characters "
                               f"({longest[:40]!r}…); at most {MAX_METRIC_NAME_CHARS}")
        if len(names) + len(new) > self.max_metric_names:
            shown = ", ".join(repr(name[:40]) for name in sorted(new)[:3])
            raise InvalidValue("max_metric_names", (
                f"run {run_id} has {len(names)} distinct metric names and this batch adds "
                f"{len(new)} ({shown}{', …' if len(new) > 3 else ''}); at most "
                f"{self.max_metric_names} per run (SPARSESCOPE_MAX_METRIC_NAMES)"))
        return new

    @staticmethod
    def _stored_metric_names(db: sqlite3.Connection, run_id: str) -> set[str]:
        """Every field name of the run's stored metrics/eval events (once per run a store
        writes; a new run has none)."""
        marks = ", ".join("?" * len(METRIC_TYPES))
        try:
            rows = db.execute("SELECT DISTINCT field.key FROM events, json_each(events.payload) "
                              f"AS field WHERE events.run_id = ? AND events.type IN ({marks})",
                              (run_id, *METRIC_TYPES)).fetchall()
            return {row[0] for row in rows if isinstance(row[0], str)}
        except sqlite3.OperationalError:  # a damaged legacy payload: the readable ones
            names: set[str] = set()
            for (payload,) in db.execute(f"SELECT payload FROM events WHERE run_id = ? AND "
                                         f"type IN ({marks})", (run_id, *METRIC_TYPES)):
                try:
                    value = json.loads(payload)
                except (TypeError, ValueError, RecursionError):
                    continue
                if isinstance(value, dict):
                    names.update(value)
            return names

    def _checked(self, event_type, step, payload, field: str) -> tuple:
        return checked_event(event_type, step, payload, field, self.max_frame_elements)

    def _append(self, db: sqlite3.Connection, run_id: str, events) -> int:
        """Events the store itself writes (status changes): validated like any writer's."""
        return self._append_checked(db, run_id, [
            self._checked(event_type, int(step), payload, "event")
            for event_type, step, payload in events])

    def _append_checked(self, db: sqlite3.Connection, run_id: str, checked: list[tuple],
                        payloads: list[dict] | None = None) -> int:
        last = self._last_seq(db, run_id)
        rows = [(run_id, last + offset, step, event_type, *stored)
                for offset, (event_type, step, stored, _) in enumerate(checked, start=1)]
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        _keep_settings(db, run_id, ((row[3], row[4]) for row in rows))
        self._index_inserted(db, run_id, [
            (last + offset, event_type, step, payloads[offset - 1] if payloads else None, status)
            for offset, (event_type, step, _, status) in enumerate(checked, start=1)])
        return last + len(rows)

    def _index_inserted(self, db: sqlite3.Connection, run_id: str, inserted: list[tuple]) -> None:
        """Index the topology frames just inserted; a run that ended stores the rest of its
        index (one segment per layer) in the same transaction."""
        for seq, event_type, step, payload, status in inserted:
            if event_type == "topology" and payload is not None:
                self.index.take(db, run_id, seq, step, payload)
            elif status is not None and status[0] in FINAL_STATUSES:
                self.index.finish(db, run_id)
                self._metric_names.pop(run_id, None)  # reloaded if the writer goes on

    @contextmanager
    def _indexing(self, run_id: str):
        """A write transaction that may advance the run's indexers: if it does not commit,
        they are dropped (the next frame resumes them from what the store holds)."""
        try:
            with self._write() as db:
                yield db
        except BaseException:
            self.index.forget(run_id)
            self._metric_names.pop(run_id, None)  # it may hold the names of the batch
            raise

    @staticmethod
    def _last_seq(db: sqlite3.Connection, run_id: str) -> int:
        return db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?",
                          (run_id,)).fetchone()[0]

    @staticmethod
    def _last_step(db: sqlite3.Connection, run_id: str) -> int:
        row = db.execute("SELECT step FROM events WHERE run_id = ? ORDER BY seq DESC LIMIT 1",
                         (run_id,)).fetchone()
        return int(row[0]) if row else 0

    def _rows(self, run_id: str, from_seq: int, limit: int) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT seq, step, type, payload, blob FROM events WHERE run_id = ? AND seq >= ? "
            "ORDER BY seq LIMIT ?", (run_id, from_seq, limit)).fetchall()

    def read_events(self, run_id: str, from_seq: int = 0, limit: int = 500) -> list[dict]:
        """Stored events as dicts in the JSON wire format."""
        return [event_dict(row) for row in self._rows(run_id, from_seq, limit)]

    def read_event_texts(self, run_id: str, from_seq: int = 0,
                         limit: int = 500) -> list[tuple[int, str]]:
        """(seq, JSON text) of stored events, in the websocket's JSON wire format."""
        return [(row["seq"], event_text(row)) for row in self._rows(run_id, from_seq, limit)]

    def last_seq(self, run_id: str) -> int:
        return self._last_seq(self.db, run_id)

    def latest_keyframe_seq(self, run_id: str, after_seq: int = 0) -> int | None:
        """First seq of the newest stored full set of keyframes (where a slow viewer resumes)."""
        row = self.db.execute(
            "SELECT MAX(seq) FROM events WHERE run_id = ? AND layer = 0 AND keyframe = 1",
            (run_id,)).fetchone()
        return row[0] if row and row[0] is not None and row[0] > after_seq else None

    def frame_steps(self, run_id: str, layer_index: int = 0) -> list[int]:
        """The steps at which a layer has a stored frame (the tutorial walks them)."""
        rows = self.db.execute("SELECT DISTINCT step FROM events INDEXED BY events_frames"
                               " WHERE run_id = ? AND layer = ? ORDER BY step",
                               (run_id, layer_index)).fetchall()
        return [row[0] for row in rows]


def checked_event(event_type, step, payload, field: str, max_elements: int) -> tuple:
    """(type, step, (payload text, layer, keyframe, blob), (status, error) or None): one
    event through the store's validation, ready to be inserted under any seq."""
    if not isinstance(event_type, str) or not EVENT_TYPE.fullmatch(event_type):
        raise InvalidValue(f"{field}.type", "must be 1-32 lowercase letters or underscores")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_SEQ:
        raise InvalidValue(f"{field}.step", f"must be an integer from 0 to {MAX_SEQ}")
    if not isinstance(payload, dict):
        raise InvalidValue(f"{field}", "payload must be an object")
    if event_type == "topology":
        check_frame_header(payload, max_elements, field)
        try:
            header, blob = codec.payload_to_stored(payload)
        except (KeyError, TypeError, ValueError) as error:  # FrameError is a ValueError
            raise InvalidValue(field, str(error)) from None
        return (event_type, step, (dumps(header), int(header["index"]),
                                   int(bool(header["keyframe"])), blob), None)
    payload = checked_payload(event_type, payload, field)
    text = compact_json(payload, field)
    status = (payload["status"], payload.get("error")) if event_type == "status" else None
    return event_type, step, (text, None, None, None), status


class RunGone(LookupError):
    """A write for a run that is not in the store (deleted while its writer was recording):
    nothing is stored for it, and the writer is told why."""

    def __init__(self, run_id: str):
        super().__init__(f"run {run_id} is not in this data folder: it was deleted (sparsescope "
                         "runs delete, or DELETE /api/runs/{id}) while it was being recorded; "
                         "nothing more is stored for it")
        self.run_id = run_id


def _require_run(db: sqlite3.Connection, run_id: str) -> None:
    """RunGone unless the run exists, read in the write's own transaction: a run deleted a
    moment earlier gets no event, summary or artifact."""
    if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
        raise RunGone(run_id)


def _status_change(db: sqlite3.Connection, run_id: str, status: str, error: str | None,
                   only_if_active: bool) -> bool:
    checked_status(status, error)
    row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None or (only_if_active and row["status"] in FINAL_STATUSES):
        return False
    if row["status"] == status:
        return False
    now = time.time()
    fields: dict = {"status": status, "heartbeat_at": now}
    if status == "running":
        fields["started_at"] = now
    if status in FINAL_STATUSES:
        fields["ended_at"] = now
    if error is not None:
        fields["error"] = error
    assignments = ", ".join(f"{key} = ?" for key in fields)
    db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*fields.values(), run_id])
    return True


def _keep_settings(db: sqlite3.Connection, run_id: str, events: Iterable[tuple[str, str]]) -> None:
    """Copy the settings a meta event carries into the run's info, in the same transaction:
    the run object (`GET /api/runs/{id}`) shows what the run used without reading its events,
    whichever writer (worker, CLI, script, remote) stored the meta event."""
    for event_type, payload_text in events:
        if event_type != "meta":
            continue
        settings = json.loads(payload_text).get("settings")
        if isinstance(settings, dict):
            db.execute("UPDATE runs SET info = json_set(COALESCE(info, '{}'), '$.settings', "
                       "json(?)) WHERE id = ?", (dumps(settings), run_id))


def event_dict(row) -> dict:
    event = json.loads(row["payload"])
    if row["type"] == "topology":
        event = codec.stored_to_payload(event, row["blob"])
    event.update(seq=row["seq"], step=row["step"], type=row["type"])
    return event


def event_text(row) -> str:
    head = f'{{"seq":{row["seq"]},"step":{row["step"]},"type":{json.dumps(row["type"])}'
    payload = row["payload"]
    if row["type"] == "topology":
        payload = dumps(codec.stored_to_payload(json.loads(payload), row["blob"]))
    return head + ("}" if payload == "{}" else "," + payload[1:])


def _run_row(row: sqlite3.Row) -> dict:
    """A stored run as reads return it (schema.stored_run: never raises, flags a bad row)."""
    return stored_run({key: row[key] for key in row.keys()})


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT: takes the write lock up front so seq allocation is atomic."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        retry_locked(lambda: self.db.execute("BEGIN IMMEDIATE"))
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        # SQLite has already rolled back on some errors (SQLITE_FULL, IOERR, NOMEM): a second
        # ROLLBACK would raise "no transaction is active" and hide the real cause.
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
