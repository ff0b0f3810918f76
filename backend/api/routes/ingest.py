"""Remote writers: a training job elsewhere records into this server (dst_core remote Recorder).

Events arrive in the websocket's JSON wire format, each with the writer's own `seq`; a seq
already stored is dropped, so a batch resent after a lost reply is stored once. Every request
counts as the writer's heartbeat (the stale-writer watcher lives with the run manager).

A run has one writer: a remote writer writes only runs it created here (`info.writer` is
`remote`); a run the server's own worker trains, or that the CLI or a script in the data
folder records, answers 409. What an event may hold is checked by the store
(dst_core.store.schema), the same rules for every writer; this router only maps them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.api.deps import RunIdDep, StoreDep
from dst_core.store import FINAL_STATUSES, RunStore
from dst_core.store.run_store import RunGone
from dst_core.store.schema import MAX_SEQ
from dst_core.store.transfer import ARTIFACT_NAMES

WRITER_NAMES = {"worker": "this server's own worker", "cli": "the sparsescope CLI",
                "script": "a script (its own Recorder) in the data folder"}

router = APIRouter(prefix="/api/ingest/runs", tags=["ingest"])


class IngestRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("remote run", max_length=200)
    # The writer's own config, stored as given (a CLI sends a whole RunConfig, a script its
    # own dict): what the run used arrives with its meta event as `settings`.
    config: dict[str, Any] = Field(default_factory=dict)
    info: dict = Field(default_factory=dict, description="Versions, git commit, seed, host")


class IngestEvent(BaseModel):
    """One event in the wire format; its payload fields sit beside seq/step/type."""

    model_config = ConfigDict(extra="allow")

    seq: int = Field(..., ge=1, le=MAX_SEQ)  # the store's one range (a larger one is a 422)
    step: int = Field(..., ge=0, le=MAX_SEQ)
    type: str = Field(..., pattern=r"^[a-z_]{1,32}$")


class IngestBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[IngestEvent] = Field(..., max_length=100_000)
    summary: dict | None = None


class Created(BaseModel):
    id: str
    next_seq: int


def _as_body_error(item: dict, raw: bytes) -> dict:
    """A pydantic error of the parsed body in FastAPI's own shape: located under `body`, and
    malformed JSON at its character position (as FastAPI reports it for a declared body)."""
    if item["type"] != "json_invalid":
        return {**item, "loc": ("body", *item["loc"])}
    try:
        json.loads(raw)
        position = 0
    except ValueError as error:
        position = getattr(error, "pos", 0)
    except RecursionError:  # nested past Python's own parser too: no position to give
        position = 0
    return {**item, "loc": ("body", position)}


GONE = "no run {!r} on this server: it was deleted (or never created here); nothing is stored for it"


def _writable(store: RunStore, run_id: str) -> None:
    """404 for no run (deleted: the remote writer gives up), 409 for a run that has ended or
    that another writer owns."""
    run = store.get_run(run_id)
    if run is None:
        raise HTTPException(404, detail=GONE.format(run_id))
    writer = run["info"].get("writer", "worker")
    if writer != "remote":
        raise HTTPException(409, detail=f"run {run_id} is written by "
                            f"{WRITER_NAMES.get(writer, 'another process')}: a remote writer "
                            "writes only the runs it created with POST /api/ingest/runs")
    if run["status"] in FINAL_STATUSES:
        raise HTTPException(409, detail=f"run {run_id} has ended ({run['status']}"
                                        f"{': ' + run['error'] if run['error'] else ''})")


@router.post("", response_model=Created, status_code=status.HTTP_201_CREATED)
async def create(body: IngestRun, store: StoreDep) -> Created:
    """A new run for a remote writer; it numbers its events from `next_seq`."""
    info = {**body.info, "writer": "remote"}
    run = await asyncio.to_thread(store.create_run, body.config, body.name,
                                  "running", info)  # never queued: the manager would launch it
    return Created(id=run["id"], next_seq=store.last_seq(run["id"]) + 1)


@router.post("/{run_id}/events", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": IngestBatch.model_json_schema()}}}})
async def events(run_id: RunIdDep, request: Request, store: StoreDep) -> dict:
    """A batch of events with the writer's seqs (IngestBatch); seqs already stored are dropped.

    Its size is bounded by the body limit of every /api/ingest/ route (one middleware)."""
    raw = await request.body()
    try:
        body = IngestBatch.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError([_as_body_error(item, raw)
                                      for item in error.errors(include_url=False)]) from None

    def write() -> int:
        _writable(store, run_id)
        try:  # deleted since _writable looked: the store checks again in its transaction
            return store.ingest_events(run_id, [event.model_dump() for event in body.events],
                                       body.summary)
        except RunGone:
            raise HTTPException(404, detail=GONE.format(run_id)) from None

    return {"last_seq": await asyncio.to_thread(write)}


@router.post("/{run_id}/heartbeat", status_code=status.HTTP_204_NO_CONTENT)
async def heartbeat(run_id: RunIdDep, store: StoreDep) -> Response:
    def beat() -> None:
        _writable(store, run_id)
        store.heartbeat(run_id)

    await asyncio.to_thread(beat)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{run_id}/artifacts/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def artifact(run_id: RunIdDep, name: str, request: Request, store: StoreDep) -> Response:
    """The trained model of a remote run (raw bytes of the .pt file)."""
    if name not in ARTIFACT_NAMES:
        raise HTTPException(404, detail=f"artifact name must be one of {', '.join(ARTIFACT_NAMES)}")
    data = await request.body()

    def put() -> None:
        _writable(store, run_id)
        try:
            store.put_artifact(run_id, name, data)
        except RunGone:
            raise HTTPException(404, detail=GONE.format(run_id)) from None

    await asyncio.to_thread(put)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
