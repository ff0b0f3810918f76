"""REST for runs: start, list, read, stop, delete."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from backend.api.deps import ManagerDep, RunDep, RunIdDep, SettingsDep, StoreDep
from backend.manager import BeingWritten, NotOwned, QueueFull
from backend.schemas import (
    BODY_RESPONSES,
    ERROR_RESPONSES,
    ErrorOut,
    RunLabels,
    RunListOut,
    RunOut,
    RunStatus,
    ValidationErrorOut,
)
from backend.settings import Settings
from dst_core.store.config import RunConfig
from dst_core.store.plan import plan_run
from dst_core.store.run_store import MAX_LISTED_COLUMNS, checked_list_columns
from dst_core.store.schema import MAX_TAG_CHARS, InvalidValue

router = APIRouter(prefix="/api/runs", tags=["runs"], responses=ERROR_RESPONSES)
DEFAULT_PAGE = 200  # runs per page of the list
MAX_PAGE = 500
MAX_QUERY_CHARS = 100
MAX_CURSOR_CHARS = 300


def _found(run: dict | None, run_id: str) -> dict:
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return run


def machine_errors(config: RunConfig, settings: Settings) -> list[tuple[str, str]]:
    """(field, message) for what this server cannot run: no GPU, an algorithm this build
    lacks, a run beyond the limits in Settings. The schema itself checks the rest."""
    import torch

    from dst_core.rewire import REGISTRY

    errors: list[tuple[str, str]] = []
    if config.device == "cuda" and not torch.cuda.is_available():
        errors.append(("device", "'cuda' requested but this server has no CUDA GPU"))
    if config.method not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        errors.append(("method", f"{config.method!r} is not available in this build; "
                                 f"available: {known}"))
    return errors + settings.run_limit_errors(config)


@router.post("", response_model=RunOut, status_code=status.HTTP_201_CREATED,
             responses={**BODY_RESPONSES,
                        422: {"model": ValidationErrorOut, "description": "Bad config"},
                        429: {"model": ErrorOut, "description": "The queue is full"}})
async def start_run(settings: SettingsDep, manager: ManagerDep,
                    config: RunConfig | None = None) -> dict:
    """Queue a run (every field optional: `{}` or no body is a valid run); a worker process
    starts it as soon as a slot is free. `warnings` says which settings cannot show anything
    (no rewire, a drop fraction that moves no connection); `POST /api/runs/plan` previews them."""
    config = config or RunConfig()
    errors = machine_errors(config, settings)
    if errors:
        raise RequestValidationError([
            {"loc": ("body", field), "msg": message, "type": "value_error"}
            for field, message in errors])
    warnings = plan_run(config).warnings  # said with the run: it starts anyway
    try:
        return {**manager.submit(config), "warnings": warnings}
    except QueueFull as error:
        raise HTTPException(429, detail=f"queue full: {error}") from None


@router.get("", response_model=list[RunListOut],
            responses={304: {"description": "Not modified (If-None-Match matched the ETag)"}})
async def list_runs(request: Request, store: StoreDep,
                    limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE,
                                       description="Runs per page"),
                    cursor: str | None = Query(None, max_length=MAX_CURSOR_CHARS,
                                               description="Where the page starts: the `cursor` "
                                                           "of the previous page's Link header"),
                    status: RunStatus | None = Query(None, description="Only runs in this status"),
                    q: str | None = Query(None, max_length=MAX_QUERY_CHARS,
                                          description="A substring of the name, id, task, "
                                                      "model, method, a tag or the note "
                                                      "(case-insensitive)"),
                    tag: str | None = Query(None, max_length=MAX_TAG_CHARS,
                                            description="Only runs with this tag "
                                                        "(case-insensitive)"),
                    columns: str | None = Query(
                        None, max_length=MAX_LISTED_COLUMNS * 72,
                        description=f"Comma-separated keys shown as columns, each "
                                    f"`config.<key>` or `summary.<key>` (at most "
                                    f"{MAX_LISTED_COLUMNS}); answered in each run's "
                                    "`columns`")) -> Response:
    """Runs newest first, a page at a time, each as a fixed projection (RunListOut; the whole
    run is `GET /{id}`). `Link: <…>; rel="next"` names the next page (the filters kept; pages
    stay put while runs are added), `X-Total-Count` the runs matching the filters. The
    answer carries an ETag: a poll that sends it back in If-None-Match gets 304 while nothing
    it shows has changed."""
    after = _decoded_cursor(cursor)
    query = (q or "").strip() or None
    tag = (tag or "").strip() or None
    chosen = [name.strip() for name in (columns or "").split(",") if name.strip()]
    try:
        checked_list_columns(chosen)
    except ValueError as error:
        raise RequestValidationError([{"loc": ("query", "columns"), "type": "value_error",
                                       "msg": str(error)}]) from None
    page = await asyncio.to_thread(store.list_page, limit, after, status, query, tag, chosen)
    headers = {"X-Total-Count": str(page.total), "Cache-Control": "no-cache"}
    if page.next_after is not None:
        params = {"limit": limit, **({"status": status} if status else {}),
                  **({"q": query} if query else {}), **({"tag": tag} if tag else {}),
                  **({"columns": ",".join(chosen)} if chosen else {}),
                  "cursor": _encoded_cursor(page.next_after)}
        headers["Link"] = f'<{request.url.path}?{urlencode(params)}>; rel="next"'
    body = json.dumps(page.runs, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False).encode()
    digest = hashlib.blake2b(body, digest_size=16)
    digest.update(f"{headers['X-Total-Count']} {headers.get('Link', '')}".encode())
    headers["ETag"] = f'"{digest.hexdigest()}"'
    sent = [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]
    if headers["ETag"] in sent:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _encoded_cursor(after: tuple) -> str:
    """Opaque to clients: the (created_at, id) the next page starts after."""
    created, run_id = after
    text = json.dumps([created, str(run_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decoded_cursor(cursor: str | None) -> tuple | None:
    if cursor is None:
        return None
    try:
        created, run_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(run_id, str) or isinstance(created, bool) or not (
                created is None or isinstance(created, (int, float, str))):
            raise ValueError
    except (ValueError, TypeError):  # binascii.Error and JSONDecodeError are ValueErrors
        raise RequestValidationError([{
            "loc": ("query", "cursor"), "type": "value_error",
            "msg": "not a cursor of this list (take it from the Link header)"}]) from None
    return created, run_id


@router.get("/{run_id}", response_model=RunOut)
async def get_run(run: RunDep) -> dict:
    """Config, status, timestamps, error and summary of one run."""
    return run


@router.patch("/{run_id}", response_model=RunOut,
              responses={**BODY_RESPONSES, 422: {"model": ValidationErrorOut,
                                                 "description": "A bad name, tag or note"}})
async def label_run(run_id: RunIdDep, store: StoreDep, labels: RunLabels) -> dict:
    """Rename a run, set its tags and its note (the fields sent; the others stay). Any run,
    live or ended, whoever writes it: these are a person's, the writer never changes them."""
    try:
        run = await asyncio.to_thread(store.set_labels, run_id, name=labels.name,
                                      tags=labels.tags, note=labels.note)
    except InvalidValue as error:
        raise RequestValidationError([{"loc": ("body", *error.field.split(".")),
                                       "type": "value_error", "msg": str(error)}]) from None
    return _found(run, run_id)


@router.post("/{run_id}/stop", response_model=RunOut,
             responses={409: {"model": ErrorOut, "description": "Written by another process"}})
async def stop_run(run_id: RunIdDep, manager: ManagerDep) -> dict:
    """Cooperative stop within one step, killed after the grace period; answers once the run
    has ended (`stopped`), or with its current state if it had already ended."""
    try:
        return _found(await manager.stop(run_id), run_id)
    except NotOwned as error:
        raise HTTPException(409, detail=str(error)) from None


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               responses={409: {"model": ErrorOut,
                                "description": "Another live process writes it (use force)"}})
async def delete_run(run_id: RunIdDep, manager: ManagerDep,
                     force: bool = Query(False, description="Delete a run another live process "
                                                            "(CLI, script, remote job) is "
                                                            "writing; that writer then stops")
                     ) -> Response:
    """Stop the run if it is active and delete everything recorded about it. A run the CLI, a
    script or a remote job is writing is refused (409 naming the writer) unless `force`."""
    try:
        deleted = await manager.delete(run_id, force=force)
    except BeingWritten as error:
        raise HTTPException(409, detail=str(error)) from None
    if not deleted:
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
