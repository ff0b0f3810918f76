"""Remote writers: a training job elsewhere records into this server (dst_core remote Recorder).

Events arrive in the websocket's JSON wire format, each with the writer's own `seq`; a seq
already stored is dropped, so a batch resent after a lost reply is stored once. Every request
counts as the writer's heartbeat. This router's lifespan also runs the stale-writer watcher:
a running run whose writer (remote job, CLI, script or worker) has been silent for
`stale_after_s` is marked failed ("stale: writer went silent").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.api.deps import RunIdDep, SettingsDep, StoreDep
from dst_core.recording import FINAL_STATUSES, RunStore
from dst_core.recording.codec import FrameError
from dst_core.recording.transfer import ARTIFACT_NAMES

log = logging.getLogger("sparsescope.ingest")
MAX_INTEGER = 2**62  # SQLite integers are 64-bit: larger seqs and steps are refused with a 422


async def _watch_stale(app: FastAPI) -> None:
    settings = app.state.settings
    period_s = min(5.0, settings.stale_after_s / 4)
    while True:
        await asyncio.sleep(period_s)
        try:
            manager = getattr(app.state, "manager", None)
            supervised = list(getattr(manager, "workers", {}) or {})  # the manager reaps these
            failed = await asyncio.to_thread(app.state.store.mark_stale, settings.stale_after_s,
                                             supervised)
            for run_id in failed:
                log.warning("run=%s marked failed: writer silent for %.0f s", run_id,
                            settings.stale_after_s)
        except Exception:  # the watcher must outlive any single bad read
            log.exception("stale-writer watcher error")


@asynccontextmanager
async def lifespan(app: FastAPI):
    watcher = asyncio.create_task(_watch_stale(app), name="stale-writer-watcher")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


router = APIRouter(prefix="/api/ingest/runs", tags=["ingest"], lifespan=lifespan)


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

    seq: int = Field(..., ge=1, le=MAX_INTEGER)
    step: int = Field(..., ge=0, le=MAX_INTEGER)
    type: str = Field(..., pattern=r"^[a-z_]{1,32}$")


class IngestBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[IngestEvent] = Field(..., max_length=100_000)
    summary: dict | None = None


class Created(BaseModel):
    id: str
    next_seq: int


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, detail=f"request larger than max_ingest_bytes ({limit})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, detail=f"request larger than max_ingest_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


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
    return {**item, "loc": ("body", position)}


def _writable(store: RunStore, run_id: str) -> None:
    run = store.get_run(run_id)
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id!r}")
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
async def events(run_id: RunIdDep, request: Request, store: StoreDep,
                 settings: SettingsDep) -> dict:
    """A batch of events with the writer's seqs (IngestBatch); seqs already stored are dropped."""
    raw = await _read_limited(request, settings.max_ingest_bytes)
    try:
        body = IngestBatch.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError([_as_body_error(item, raw)
                                      for item in error.errors(include_url=False)]) from None

    def write() -> int:
        _writable(store, run_id)
        try:
            return store.ingest_events(run_id, [event.model_dump() for event in body.events],
                                       body.summary)
        except (FrameError, KeyError, TypeError, ValueError, OverflowError) as error:
            raise HTTPException(422, detail=f"events: {error}") from None

    return {"last_seq": await asyncio.to_thread(write)}


@router.post("/{run_id}/heartbeat", status_code=status.HTTP_204_NO_CONTENT)
async def heartbeat(run_id: RunIdDep, store: StoreDep) -> Response:
    def beat() -> None:
        _writable(store, run_id)
        store.heartbeat(run_id)

    await asyncio.to_thread(beat)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{run_id}/artifacts/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def artifact(run_id: RunIdDep, name: str, request: Request, store: StoreDep,
                   settings: SettingsDep) -> Response:
    """The trained model of a remote run (raw bytes of the .pt file)."""
    if name not in ARTIFACT_NAMES:
        raise HTTPException(404, detail=f"artifact name must be one of {', '.join(ARTIFACT_NAMES)}")
    data = await _read_limited(request, settings.max_ingest_bytes)

    def put() -> None:
        _writable(store, run_id)
        store.put_artifact(run_id, name, data)

    await asyncio.to_thread(put)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
