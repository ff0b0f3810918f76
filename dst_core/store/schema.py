"""The one validation place of the run store: every value a writer hands it, and every row a
read returns, passes the schemas of this module.

Why one place: a run's row is read by every client (the runs list, the dashboard, exports),
so one bad value stored by one writer (a remote job, an imported file, a script) used to fail
the reads of everyone. The store calls `checked_*` on every write path (create, events,
summary, info, ingest, import) and `stored_run` on every read, so what can be stored is
exactly what the reads accept, and a legacy row that no longer fits is returned as an
*unreadable* record (its id and why) that can still be listed and deleted.

The rules are deliberately simple and bounded:
- JSON documents (a payload, a config, a summary, the run info) nest at most
  `MAX_JSON_DEPTH` deep and serialise to at most `MAX_JSON_BYTES`;
- non-finite floats become null (a diverged loss is a fact worth keeping, NaN is not JSON),
  integers stay within ±2**64 (a float holds them; 10**400 it cannot);
- the few event types that reads interpret (`status`, `meta`, `topology`) have their fields
  checked; a topology frame's declared shape is bounded *before* anything is decoded.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dst_core.events import wire_value
from dst_core.store import codec

# A run's statuses, declared once: the store, the server, the CLI and the dashboard
# (frontend/js/statuses.js, kept equal by tests/test_js_statuses.py) read these.
ACTIVE_STATUSES: tuple[str, ...] = ("queued", "running")
FINAL_STATUSES: tuple[str, ...] = ("completed", "stopped", "failed")
STATUSES: tuple[str, ...] = ACTIVE_STATUSES + FINAL_STATUSES
RunStatus = Literal["queued", "running", "completed", "stopped", "failed"]
assert RunStatus.__args__ == STATUSES  # the pydantic type names the same statuses
WRITERS = ("worker", "cli", "script", "remote")
MAX_JSON_DEPTH = 32  # far above any payload we write (≤ 4), far below Python's recursion limit
MAX_JSON_BYTES = 4 * 1024 * 1024  # one non-frame payload / config / summary / info document
MAX_NAME_CHARS = 1000
MAX_INTEGER = 2**64  # a uint64 seed (torch.initial_seed) fits; 10**400 would overflow a float
# The one range of seqs and steps a writer (ingest, import, a Recorder) may store: 0 … MAX_SEQ.
# SQLite integers end at 2**63 - 1; the room above MAX_SEQ is for the events the store appends
# itself after a writer's last seq (a final status: stopped, failed, an imported snapshot's end),
# so no append can overflow, whatever seq a writer used last.
MAX_SEQ = 2**62
MAX_STEP = MAX_SEQ


# What a person adds to a run to organise runs: tags and a note (the name is the run's own).
MAX_TAGS = 16
MAX_TAG_CHARS = 40
MAX_NOTE_CHARS = 4000


class InvalidValue(ValueError):
    """A value refused at the store's entry; `field` names where (e.g. "summary.steps")."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


# ---- plain JSON ---------------------------------------------------------------------------------
def clean_json(value: Any, field: str, depth: int = 0) -> Any:
    """A JSON-safe copy of `value`: non-finite floats → None, numpy arrays → base64 text of
    their bytes (the wire format), numpy scalars → Python numbers, tuples → lists.

    Raises InvalidValue naming the field for what JSON (or our readers) cannot hold: nesting
    deeper than MAX_JSON_DEPTH, integers beyond ±2**64, non-string keys, other objects. The
    field's path is spelled out only when something is refused: a recorder cleans every
    step's metrics, and building the name of every value it passes cost more than the rest."""
    try:
        return _clean(value, depth)
    except _Unclean as error:
        raise InvalidValue(field + "".join(reversed(error.path)), error.reason) from None


class _Unclean(Exception):
    """What clean_json refuses; the path to it is collected on the way out."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _clean(value: Any, depth: int) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise _Unclean(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, float):
            return value if math.isfinite(value) else None
    if isinstance(value, int):
        if not -MAX_INTEGER <= value <= MAX_INTEGER:
            raise _Unclean("integer outside ±2**64")
        return value
    if isinstance(value, np.ndarray):
        return wire_value(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unclean(f"key {key!r} is not text")
            try:
                out[key] = _clean(item, depth + 1)
            except _Unclean as error:
                error.path.append(f".{key}")
                raise
        return out
    if isinstance(value, (list, tuple)):
        out_list = []
        for index, item in enumerate(value):
            try:
                out_list.append(_clean(item, depth + 1))
            except _Unclean as error:
                error.path.append(f"[{index}]")
                raise
        return out_list
    raise _Unclean(f"{type(value).__name__} is not a JSON value")


def dumps_checked(value: Any, field: str, max_bytes: int = MAX_JSON_BYTES) -> str:
    """`clean_json` then compact JSON text, refused past `max_bytes`."""
    return compact_json(clean_json(value, field), field, max_bytes)


def compact_json(clean: Any, field: str, max_bytes: int = MAX_JSON_BYTES) -> str:
    """Compact JSON text of an already clean value, refused past `max_bytes`."""
    text = json.dumps(clean, separators=(",", ":"), allow_nan=False)
    if len(text) > max_bytes:
        raise InvalidValue(field, f"{len(text)} bytes of JSON; at most {max_bytes}")
    return text


def _object(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidValue(field, f"must be a JSON object, got {type(value).__name__}")
    return value


def _first_error(error: ValidationError, field: str) -> InvalidValue:
    item = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in item.get("loc", ()))
    return InvalidValue(f"{field}.{where}" if where else field,
                        str(item.get("msg", "invalid")).removeprefix("Value error, "))


# ---- run rows -----------------------------------------------------------------------------------
class RunSummary(BaseModel):
    """What a run has reached so far, kept current by its writer (the Recorder)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    steps: int = Field(0, ge=0, le=MAX_STEP, description="Last training step recorded")
    final_loss: float | None = Field(None, description="Latest training loss")
    final_test_accuracy: float | None = Field(None, description="Latest held-out accuracy")
    best_test_accuracy: float | None = Field(None, description="Best held-out accuracy so far")
    density: dict[str, float | None] = Field({}, description="Per-layer density, latest")
    itop_rate: float | None = Field(None, description="Share of connections ever active")


class RunInfo(BaseModel):
    """Who wrote the run. Only the keys the server acts on are typed; the rest is free."""

    model_config = ConfigDict(extra="allow")

    writer: Literal["worker", "cli", "script", "remote"] | None = None
    pid: int | None = None
    host: str | None = None


class StoredRun(BaseModel):
    """One run as every read returns it (REST's RunOut builds on it)."""

    id: str = Field(description="16 hex digits")
    name: str
    # Returned exactly as stored: a run config of the dashboard or the CLI (every field), or a
    # script's own dict. Never completed with RunConfig's defaults, which would name settings
    # (a method, a model) the run did not use.
    config: dict[str, Any] = Field(
        description="What the run was started with: the RunConfig of a dashboard or CLI run "
                    "(every field), or the config dict a script passed to its Recorder ({} "
                    "when none)")
    settings: dict[str, Any] | None = Field(
        None, description="The settings the run actually used, every method default resolved: "
                          "method, density, distribution, drop_fraction, schedule, "
                          "interval_steps, end_fraction, total_steps, temperature, l1, model "
                          "(e.g. 'mlp [64, 64]', 'custom: Net (12.3 k params)'), task, layers "
                          "[{name, shape, density}]; null until the writer stored them (and for "
                          "runs recorded before settings were)")
    has_model: bool = Field(False, description="Whether a trained model is stored "
                                               "(GET /api/runs/{id}/model)")
    status: RunStatus
    created_at: float = Field(description="Unix time")
    started_at: float | None = Field(None, description="Unix time the worker began training")
    ended_at: float | None = Field(None, description="Unix time of the final status")
    error: str | None = Field(None, description="Why the run failed (failed runs)")
    summary: RunSummary
    info: dict[str, Any] = Field(
        default_factory=dict,
        description="Who wrote the run and with what: writer (worker, cli, script, remote), "
                    "torch and sparsescope versions, git commit when known, seed; an imported "
                    "copy adds imported_at and imported_from (the original's id)")
    heartbeat_at: float | None = Field(None, description="Unix time the writer was last heard")
    tags: list[str] = Field(default_factory=list,
                            description="Set by people (PATCH /api/runs/{id}); searched by the "
                                        "list's `q`")
    note: str = Field("", description="Set by people (PATCH /api/runs/{id}); searched by `q`")
    unreadable: str | None = Field(
        None, description="Set when the stored row no longer fits this schema (a legacy or "
                          "damaged row): why. The run can still be deleted.")


def checked_name(name: Any) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise InvalidValue("name", f"must be text of at most {MAX_NAME_CHARS} characters")
    return name


def checked_status(status: Any, error: Any = None) -> tuple[str, str | None]:
    if status not in STATUSES:
        raise InvalidValue("status", f"{status!r} is not one of {', '.join(STATUSES)}")
    if error is not None and not isinstance(error, str):
        raise InvalidValue("error", f"must be text, got {type(error).__name__}")
    return status, error


def _checked_object(value: Any, field: str, schema: type[BaseModel]) -> str:
    """`value` as stored JSON text, validated by `schema` (the read schema of `field`)."""
    text = dumps_checked(_object(value, field), field)
    try:
        schema.model_validate_json(text)
    except ValidationError as error:
        raise _first_error(error, field) from None
    return text


def checked_summary(summary: Any) -> str:
    return _checked_object(summary, "summary", RunSummary)


def checked_tags(tags: Any) -> list[str]:
    """Tags as stored: trimmed, non-empty, no comma (the list filter and the form split on
    it), each once (first spelling kept, compared case-insensitively), at most MAX_TAGS."""
    if not isinstance(tags, list):
        raise InvalidValue("tags", "must be a list of texts")
    out: list[str] = []
    for index, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise InvalidValue(f"tags.{index}", "must be text")
        tag = " ".join(tag.split())
        if not tag or len(tag) > MAX_TAG_CHARS or "," in tag or not tag.isprintable():
            raise InvalidValue(f"tags.{index}", f"must be 1 to {MAX_TAG_CHARS} printable "
                                                "characters, without a comma")
        if tag.casefold() not in {kept.casefold() for kept in out}:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise InvalidValue("tags", f"at most {MAX_TAGS} tags")
    return out


def checked_note(note: Any) -> str:
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise InvalidValue("note", f"must be text of at most {MAX_NOTE_CHARS} characters")
    if any(not char.isprintable() and char not in "\n\t" for char in note):
        raise InvalidValue("note", "must hold printable characters, line breaks and tabs only")
    return note


def checked_labels(labels: Any) -> str:
    """The `labels` column's JSON text ({"tags": [...], "note": "..."}), checked."""
    if not isinstance(labels, dict) or set(labels) - {"tags", "note"}:
        raise InvalidValue("labels", 'must be an object with "tags" and "note" only')
    return json.dumps({"tags": checked_tags(labels.get("tags", [])),
                       "note": checked_note(labels.get("note", ""))}, ensure_ascii=False)


def stored_labels(text: Any) -> tuple[list[str], str]:
    """(tags, note) of a stored `labels` column, whatever it holds: what does not fit is left
    out (labels are a person's annotations; a damaged one must not hide the run)."""
    try:
        labels = json.loads(text) if isinstance(text, str) else {}
    except (ValueError, RecursionError):
        return [], ""
    if not isinstance(labels, dict):
        return [], ""
    tags = labels.get("tags")
    tags = [tag[:MAX_TAG_CHARS] for tag in tags[:MAX_TAGS] if isinstance(tag, str)] \
        if isinstance(tags, list) else []
    note = labels.get("note")
    return tags, note[:MAX_NOTE_CHARS] if isinstance(note, str) else ""


def checked_info(info: Any) -> str:
    return _checked_object(info, "info", RunInfo)


def checked_config(config: Any) -> str:
    return dumps_checked(_object(config, "config"), "config")


def stored_run(columns: dict[str, Any]) -> dict:
    """A `runs` row (column → stored value) as the record reads return; never raises.

    A row that does not fit StoredRun (a legacy file, a hand-edited database) comes back
    with safe placeholders and `unreadable` saying why, so listing it, showing it and
    deleting it still work."""
    record = dict(columns)
    record["tags"], record["note"] = stored_labels(record.pop("labels", None))
    try:
        for key in ("config", "summary", "info"):
            text = record.get(key)
            record[key] = json.loads(text) if isinstance(text, str) and text else {}
        # The settings a meta event stored live in the info column; reads show them apart.
        settings = record["info"].pop("settings", None) if isinstance(record["info"], dict) \
            else None
        record["settings"] = settings if isinstance(settings, dict) else None
        return StoredRun.model_validate(record).model_dump()
    except (ValidationError, ValueError, TypeError, RecursionError) as error:
        reason = (str(_first_error(error, "run")) if isinstance(error, ValidationError)
                  else f"run: {type(error).__name__}: {error}")
    status = columns.get("status")
    name = columns.get("name")
    return StoredRun(
        id=str(columns.get("id")), name=name if isinstance(name, str) else "(unreadable run)",
        config={}, status=status if status in STATUSES else "failed",
        created_at=_timestamp(columns.get("created_at")) or 0.0, summary=RunSummary(),
        error=columns.get("error") if isinstance(columns.get("error"), str) else None,
        tags=record["tags"], note=record["note"], unreadable=reason[:500]).model_dump()


class ListedSummary(BaseModel):
    """The numbers of a run's summary that the runs list shows."""

    steps: int = Field(0, description="Last training step recorded")
    final_loss: float | None = Field(None, description="Latest training loss")
    final_test_accuracy: float | None = Field(None, description="Latest held-out accuracy")
    best_test_accuracy: float | None = Field(None, description="Best held-out accuracy so far")
    itop_rate: float | None = Field(None, description="Share of connections ever active")


LIST_TEXT_CHARS = 120  # a listed text longer than this is cut, ending in "…"


class ListedRun(BaseModel):
    """One run as the runs list shows it: a fixed projection whose size does not depend on
    what a writer stored (texts cut to LIST_TEXT_CHARS, only the keys below). The whole
    config, info and summary are read one run at a time (StoredRun)."""

    id: str
    name: str = Field(description=f"Cut to {LIST_TEXT_CHARS} characters (ending in …)")
    status: RunStatus
    created_at: float = Field(description="Unix time")
    started_at: float | None = None
    ended_at: float | None = None
    heartbeat_at: float | None = Field(None, description="Unix time the writer was last heard")
    error: str | None = Field(None, description=f"Why it failed, cut to {LIST_TEXT_CHARS} "
                                                "characters")
    has_model: bool = False
    config: dict[str, Any] = Field(
        default_factory=dict, description="Of the config: task, model, hidden, method, density "
                                          "(those stored; texts cut, long lists as \"…\")")
    settings: dict[str, Any] | None = Field(
        None, description="Of the settings the run used: task, model, method, density; null "
                          "until the writer stored them")
    summary: ListedSummary = Field(default_factory=ListedSummary)
    info: dict[str, Any] = Field(default_factory=dict,
                                 description="Of the info: writer, imported_from, imported_at")
    tags: list[str] = Field(default_factory=list)
    note: str = Field("", description=f"Cut to {LIST_TEXT_CHARS} characters (ending in …)")
    columns: dict[str, Any] = Field(
        default_factory=dict, description="The values of the keys the list's `columns` asked "
                                          "for (e.g. config.lr, summary.final_loss): texts cut, "
                                          "long lists as \"…\", absent keys left out")
    unreadable: str | None = Field(None, description="Set when the stored row no longer fits "
                                                     "the schema: why")


def _listed_columns(text: Any) -> dict[str, Any]:
    """The chosen columns' values as {"config.lr": value}, from the {source: {key: value}}
    object built in SQL (values already cut); plain values only, {} when none were asked for."""
    if not isinstance(text, str):
        return {}
    try:
        values = clean_json(json.loads(text), "columns")
    except (ValueError, TypeError, RecursionError):
        return {}
    if not isinstance(values, dict):
        return {}
    return {f"{source}.{key}": value for source, found in values.items()
            if isinstance(found, dict) for key, value in found.items()
            if value is None or isinstance(value, (str, int, float, bool))}


def listed_run(columns: dict[str, Any]) -> dict:
    """A row of the store's list projection (its JSON parts already cut down in SQL, None
    where a column is not a JSON object) as the list answers it; never raises. A row that
    StoredRun would call unreadable is flagged here too, for the parts the list reads."""
    record = {key: columns.get(key) for key in (
        "id", "name", "status", "created_at", "started_at", "ended_at", "heartbeat_at", "error",
        "has_model")}
    tags, note = stored_labels(columns.get("labels"))
    note = note if len(note) <= LIST_TEXT_CHARS else note[:LIST_TEXT_CHARS - 1] + "…"
    chosen = _listed_columns(columns.get("columns"))
    try:
        parts = {}
        for key in ("config", "info", "summary"):
            text = columns.get(key)
            if not isinstance(text, str):
                raise ValueError(f"{key} is not a JSON object")
            parts[key] = clean_json(json.loads(text), key)
        settings = parts["info"].pop("settings", None)
        summary = RunSummary.model_validate(parts["summary"])  # the read schema's own checks
        record.update(config=parts["config"], info=parts["info"],
                      settings=settings if isinstance(settings, dict) else None,
                      summary=summary.model_dump(include=set(ListedSummary.model_fields)),
                      tags=tags, note=note, columns=chosen)
        return ListedRun.model_validate(record).model_dump()
    except (ValidationError, ValueError, TypeError, RecursionError) as error:
        reason = (str(_first_error(error, "run")) if isinstance(error, ValidationError)
                  else f"run: {error}")
    status, name = columns.get("status"), columns.get("name")
    return ListedRun(
        id=str(columns.get("id")), name=name if isinstance(name, str) else "(unreadable run)",
        status=status if status in STATUSES else "failed",
        created_at=_timestamp(columns.get("created_at")) or 0.0,
        error=columns.get("error") if isinstance(columns.get("error"), str) else None,
        tags=tags, note=note, columns=chosen, unreadable=reason[:300]).model_dump()


def stored_info(text: Any) -> dict:
    """A stored `info` column as a dict; {} when it is not a readable JSON object."""
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def checked_run_columns(run: dict) -> dict:
    """An imported `runs` row, every column checked by the same rules as a new run's."""
    from dst_core.store.config import RunConfig  # lazily: dst_core's package imports this module

    out = {"name": checked_name(run.get("name"))}
    if run.get("labels") is not None:  # an export from before labels has none
        try:
            labels = json.loads(run["labels"])
        except (TypeError, ValueError, RecursionError):
            raise InvalidValue("labels", "not valid JSON text") from None
        out["labels"] = checked_labels(labels)
    out["status"], out["error"] = checked_status(run.get("status"), run.get("error"))
    for key, check in (("config", checked_config), ("summary", checked_summary),
                       ("info", checked_info)):
        text = run.get(key)
        try:
            value = json.loads(text) if text is not None else {}
        except (TypeError, ValueError, RecursionError):
            raise InvalidValue(key, "not valid JSON text") from None
        out[key] = check(value)
    # A script's (or a remote job's) config is its own dict, checked above to be a JSON
    # object; every other run was started from a RunConfig.
    if stored_info(out["info"]).get("writer") not in ("script", "remote"):
        try:
            RunConfig.model_validate_json(out["config"])
        except ValidationError as error:
            raise _first_error(error, "config") from None
    created = _timestamp(run.get("created_at"))
    if created is None:
        raise InvalidValue("created_at", "missing or not a timestamp")
    out["created_at"] = created
    for key in ("started_at", "ended_at", "heartbeat_at"):
        value = run.get(key)
        if value is not None and _timestamp(value) is None:
            raise InvalidValue(key, "not a timestamp")
        out[key] = _timestamp(value)
    return out


# ---- events -------------------------------------------------------------------------------------
class LayerEntry(BaseModel):
    """One layer of a meta event, as the reads (mask lookup, the dashboard) use it."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=MAX_NAME_CHARS)


class MetaPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    layers: list[LayerEntry] = Field(default_factory=list)


FRAME_KEYS = ("layer", "index", "shape", "keyframe", "active")


def check_frame_header(payload: dict, max_elements: int, field: str = "payload") -> int:
    """A topology payload's header fields, checked before any of its data is decoded;
    returns the frame's element count (rows × cols ≤ `max_elements`)."""
    if not isinstance(payload, dict):
        raise InvalidValue(field, "a topology frame must be a JSON object")
    for key in FRAME_KEYS:
        if key not in payload:
            raise InvalidValue(f"{field}.{key}", "missing from a topology frame")
    if not isinstance(payload["layer"], str) or len(payload["layer"]) > MAX_NAME_CHARS:
        raise InvalidValue(f"{field}.layer", "must be text")
    index, shape, active = payload["index"], payload["shape"], payload["active"]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 2**31:
        raise InvalidValue(f"{field}.index", "must be a layer index from 0")
    if not isinstance(payload["keyframe"], bool):
        raise InvalidValue(f"{field}.keyframe", "must be true or false")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(side, int) and not isinstance(side, bool) and side >= 1
                       for side in shape)):
        raise InvalidValue(f"{field}.shape", "must be [rows, cols] of positive integers")
    numel = shape[0] * shape[1]
    if numel > max_elements:
        raise InvalidValue(f"{field}.shape", f"{shape[0]}×{shape[1]} = {numel:,} connections; "
                           f"at most {max_elements:,} on this server (SPARSESCOPE_MAX_PARAMETERS)")
    if not isinstance(active, int) or isinstance(active, bool) or not 0 <= active <= numel:
        raise InvalidValue(f"{field}.active", f"must be a count from 0 to {numel}")
    return numel


def checked_payload(event_type: str, payload: Any, field: str = "payload") -> dict:
    """A non-topology event's payload, JSON-clean, with the fields reads interpret checked."""
    payload = clean_json(_object(payload, field), field)
    if event_type == "status":
        checked_status(payload.get("status"), payload.get("error"))
    elif event_type == "meta":
        try:
            MetaPayload.model_validate(payload)
        except ValidationError as error:
            raise _first_error(error, field) from None
    return payload


# ---- a run's layers (its meta event), as every reader and the frame checks see them ------------
def parse_layers(payload: str | None) -> list[dict]:
    """The layers of a stored meta payload (JSON text), each normalised by `layer_entry`; []
    when it is missing or not a list of layers (a stored payload never breaks a read)."""
    try:
        entries = json.loads(payload).get("layers") if payload else None
    except (AttributeError, TypeError, ValueError, RecursionError):
        return []
    if not isinstance(entries, list):
        return []
    layers = [layer_entry(entry) for entry in entries]
    return layers if all(layers) else []


def _positive_ints(value) -> list[int] | None:
    if not isinstance(value, list) or not value or len(value) > 8:
        return None
    if not all(isinstance(item, int) and not isinstance(item, bool) and item > 0
               for item in value):
        return None
    return list(value)


def layer_entry(entry) -> dict | None:
    """One meta layer, normalised (`matrix`, `weight_shape`, `kind`, `density`, `output_axis`,
    `layer_type`); None when it is not a layer at all.

    Older runs stored only `shape` (the weight's own shape) and `matrix`; older still, only a
    2-D `shape`, which then is the matrix and the weight shape is unknown."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None
    shape = _positive_ints(entry.get("shape"))
    matrix = _positive_ints(entry.get("matrix"))
    if matrix is None or len(matrix) != 2:
        if shape is None:
            return None
        if len(shape) == 2:  # older still: the 2-D shape is the matrix, the weight unknown
            matrix, weight_shape = shape, None
        else:  # a writer that sent only the weight's shape: drawn as out × (in · kernel)
            matrix, weight_shape = [shape[0], math.prod(shape[1:])] if len(shape) > 1 \
                else [1, shape[0]], shape
    else:
        weight_shape = _positive_ints(entry.get("weight_shape")) or shape
    try:
        codec.frame_numel(matrix)
    except codec.FrameError:
        return None
    kind = entry.get("kind")
    if kind not in codec.LAYER_KINDS:
        kind = codec.layer_kind(weight_shape)
    density = entry.get("density")
    density = float(density) if isinstance(density, (int, float)) and not isinstance(
        density, bool) and math.isfinite(density) else None
    # Which axis of the weight holds its outputs (1: HF Conv1D's (in, out)); frames are stored
    # outputs first either way, so this only says how the parameter itself is laid out.
    axis = entry.get("output_axis", 0)
    axis = axis if isinstance(axis, int) and not isinstance(axis, bool) and weight_shape \
        and 0 <= axis < len(weight_shape) else 0
    layer_type = entry.get("layer_type")
    layer_type = layer_type if isinstance(layer_type, str) and len(layer_type) <= 40 else None
    return {**entry, "matrix": matrix, "weight_shape": weight_shape, "kind": kind,
            "density": density, "output_axis": axis, "layer_type": layer_type}


# ---- a topology frame against its layer's history ----------------------------------------------
def frame_misfit(layer_shape, frame_shape, claimed_active: int, *,
                 bits_active: int | None = None, added: np.ndarray | None = None,
                 removed: np.ndarray | None = None, active_at=None,
                 active_now: int = 0) -> str | None:
    """Why a topology frame does not fit its layer's history, or None when it does.

    The one rule by which the store refuses a frame where it enters (ingest 422, import 400,
    a Recorder's flush) and by which every reader skips a stored one that an older version let
    in (mask seek, views, /mask, /topology, the cohort index), so they all see the same mask:
    - a frame has its layer's matrix shape (`layer_shape`: the meta's, which its keyframes
      have);
    - a keyframe (`bits_active` = how many of its bits are set) says as much in `active`;
    - a delta follows a keyframe of its layer (`active_at` looks connections up in the
      current mask, None before the first keyframe), removes only active connections, adds
      only inactive ones, and its `active` is the count after it (`active_now` before it).
    Each check costs O(frame): a keyframe's bits are counted, a delta's indices gathered."""
    if layer_shape is not None and [int(side) for side in frame_shape] != \
            [int(side) for side in layer_shape]:
        return (f"shape {list(frame_shape)} is not its layer's {list(layer_shape)} "
                "(the shape of the layer's keyframes)")
    if bits_active is not None:
        if int(claimed_active) != int(bits_active):
            return f"active is {claimed_active} but its bits hold {bits_active} connections"
        return None
    if active_at is None:
        return "a delta before any keyframe of its layer"
    if removed.size and not active_at(removed).all():
        return "removes a connection that is not active"
    if added.size and active_at(added).any():
        return "adds a connection that is already active"
    after = int(active_now) + int(added.size) - int(removed.size)
    if int(claimed_active) != after:
        return f"active is {claimed_active} but the layer holds {after} connections after it"
    return None


def packed_count(packed: np.ndarray, numel: int) -> int:
    """How many of the first `numel` bits of packed little-endian bytes (a keyframe's `bits`)
    are set: O(bytes), nothing unpacked; bits past `numel` in the last byte are not counted,
    as no reader unpacks them."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    whole, rest = divmod(int(numel), 8)
    count = int(np.bitwise_count(packed[:whole]).sum(dtype=np.int64))
    if rest:
        count += int(np.bitwise_count(packed[whole] & np.uint8((1 << rest) - 1)))
    return count
