"""Response schemas of the REST API (the run config itself is dst_core.store.config.RunConfig)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dst_core.store.schema import (
    MAX_NAME_CHARS,
    MAX_NOTE_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    ListedRun,
    RunStatus,
    RunSummary,
    StoredRun,
)

__all__ = ["RunOut", "RunListOut", "RunLabels", "RunStatus", "RunSummary", "Health", "ErrorOut",
           "ValidationErrorOut"]


class RunOut(StoredRun):
    """One run as REST returns it (the same row in the list and by id): the store's own read
    schema, so every row the store can hold is a valid response (a damaged legacy row comes
    with `unreadable` set instead of failing the list)."""

    warnings: list[str] = Field(
        default_factory=list,
        description="Why these settings may show nothing (no rewire, a drop fraction that "
                    "moves no connection); answered by POST /api/runs, empty elsewhere")


class RunListOut(ListedRun):
    """One run in `GET /api/runs`: a fixed projection of the row (the fields the runs list
    and the CLI show, texts cut), a few hundred bytes whatever the run stored. The whole
    config, info and summary are `GET /api/runs/{id}`'s."""


class RunLabels(BaseModel):
    """What a person sets on a run (PATCH /api/runs/{id}); a field left out stays as it is.
    The store checks each (dst_core.store.schema: checked_name, checked_tags, checked_note)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)
    tags: list[str] | None = Field(None, max_length=MAX_TAGS,
                                   description=f"The whole list (at most {MAX_TAGS}, each 1 to "
                                               f"{MAX_TAG_CHARS} characters, no comma)")
    note: str | None = Field(None, max_length=MAX_NOTE_CHARS)


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class ErrorOut(BaseModel):
    """Every 4xx other than 422: one human-readable reason."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='Where, e.g. ["body", "hidden", 0]')
    msg: str = Field(description="What is wrong, starting with the field's name")
    type: str


class ValidationErrorOut(BaseModel):
    """422: one entry per bad field."""

    detail: list[FieldError]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    404: {"model": ErrorOut, "description": "No such run (or a malformed run id)"},
}
# Routes that read a request body: one that cannot be decoded, or is over its limit.
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A body that cannot be read (not UTF-8 JSON, not "
                                            "a run file)"},
    413: {"model": ErrorOut, "description": "Body over the server's limit for this path"},
}
WRITER_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "The run has ended, or another writer owns it"},
}
# Every route: a request the server refuses before routing, and a disk that refuses.
GUARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "A foreign Origin (a page on another site)"},
    421: {"model": ErrorOut, "description": "A Host that is not this server's name"},
    431: {"model": ErrorOut, "description": "Request headers over the server's limit"},
    503: {"model": ErrorOut, "description": "The data folder refuses reads or writes"},
    507: {"model": ErrorOut, "description": "The data folder's disk is full"},
}
