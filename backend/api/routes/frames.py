"""Reading into a recorded run without streaming it: a layer's mask at a step, metric ranges,
the run's rewires and what a panel of R×C pixels shows of a layer at one rewire (see
docs/protocol.md). Reads never answer 5xx: a stored frame that cannot be read is a 422 that
names it."""

from __future__ import annotations

import asyncio
import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from backend.api.deps import RunDep, RunIdDep, ViewsDep
from backend.services.views import MAX_PANEL, UnknownError
from dst_core.store import FINAL_STATUSES
from dst_core.store.masks import StoredDataError
from dst_core.store.reader import MAX_LISTED_NAMES, MAX_METRIC_SERIES
from dst_core.store.run_store import MAX_METRIC_NAME_CHARS
from dst_core.store.schema import MAX_STEP  # the store's range: larger is a 422, not an overflow

router = APIRouter(prefix="/api/runs", tags=["frames"])
ENDED_MAX_AGE_S = 7 * 24 * 3600  # a rewire of an ended run never changes


class LayerSummary(BaseModel):
    index: int
    name: str
    shape: list[int] = Field(description="Matrix shape as drawn: [out, in·kh·kw]")
    weight_shape: list[int] | None = Field(description="The parameter's own shape, null if "
                                                       "unknown (older runs)")
    kind: Literal["conv", "linear", "other"]
    output_axis: int = Field(0, description="The weight's axis of output units (1: Hugging "
                                            "Face Conv1D, stored (in, out)); `shape` is always "
                                            "outputs first")
    layer_type: str | None = Field(None, description="The module type where it differs from "
                                                     "`kind`: hf_conv1d, attention_in_proj, custom")
    heads: bool = Field(False, description="The run stored an attention head layout that fits "
                                           "this layer: `/topology` answers its `heads`")
    density: float | None = Field(description="At the newest stored frame (else as planned)")
    active: int | None = Field(description="Active connections at the newest stored frame")


class Rewires(BaseModel):
    steps: list[int] = Field(description="Ascending distinct steps of stored topology frames; "
                                         "rewire r is steps[r], rewire 0 the initial masks")
    last_seq: int = Field(description="The run's newest stored seq (-1 if none)")
    layers: list[LayerSummary]


class PanelView(BaseModel):
    layer: str
    index: int
    step: int = Field(description="Step of the rewire shown")
    rewire: int = Field(description="Its number: 0 = the initial masks")
    shape: list[int]
    weight_shape: list[int] | None
    grid: list[int] = Field(description="[gr, gc]: pixels used, min(rows, R) × min(cols, C)")
    exact: bool = Field(description="One connection per pixel")
    active: int
    added_total: int
    removed_total: int
    dtype: Literal["u1", "u2", "u4"] = Field(description="Little-endian unsigned count type")
    kept: str = Field(description="base64 of gr×gc counts, row-major")
    added: str
    removed: str
    possible: str


def _stored_data_error(error: StoredDataError) -> HTTPException:
    return HTTPException(422, detail=f"stored data: {error}")


@router.get("/{run_id}/mask")
async def get_mask(views: ViewsDep, run_id: RunIdDep, run: RunDep,
                   layer: str = Query(..., max_length=200, description="Layer name or index"),
                   step: int = Query(..., ge=0, le=MAX_STEP, description="Training step")) -> dict:
    """One layer's mask at `step` (newest keyframe + deltas), as the wire's packed bits."""
    reader = views.reader

    def read() -> dict:
        try:
            mask, frame_step = reader.mask_at(run_id, layer, step)
        except StoredDataError as error:
            raise _stored_data_error(error) from None
        except ValueError as error:
            raise HTTPException(404, detail=str(error)) from None
        bits = np.packbits(mask.reshape(-1), bitorder="little").tobytes()
        return {"layer": reader.layers(run_id)[reader.layer_index(run_id, layer)]["name"],
                "step": step, "frame_step": frame_step, "shape": list(mask.shape),
                "active": int(mask.sum()), "bits": base64.b64encode(bits).decode("ascii")}

    return await asyncio.to_thread(read)


MAX_BUCKETS = 10_000  # × MAX_METRIC_SERIES series: an answer stays under ~50 MB


class MetricNames(BaseModel):
    metrics: list[str] = Field(description="Numeric fields of `metrics` events, in the order "
                                           "first logged")
    eval: list[str] = Field(description="Numeric fields of `eval` events, likewise")
    total: int = Field(description=f"How many (type, field) pairs the run has; at most "
                                   f"{MAX_LISTED_NAMES} are listed")


def _field_list(fields: str | None) -> list[str] | None:
    """The names of `?fields=a,b`; a 422 naming `fields` past MAX_METRIC_SERIES names."""
    if fields is None:
        return None
    names = list(dict.fromkeys(name for name in fields.split(",") if name))
    if len(names) > MAX_METRIC_SERIES:
        raise RequestValidationError([{
            "loc": ("query", "fields"), "type": "too_long",
            "msg": f"{len(names)} names; at most {MAX_METRIC_SERIES} per request"}])
    return names


@router.get("/{run_id}/metrics")
async def get_metrics(run_id: RunIdDep, run: RunDep, views: ViewsDep, response: Response,
                      buckets: int = Query(500, ge=1, le=MAX_BUCKETS,
                                           description="Step ranges; each keeps min/max/last"),
                      fields: str | None = Query(
                          None, max_length=MAX_METRIC_SERIES * (MAX_METRIC_NAME_CHARS + 1),
                          description=f"Comma-separated field names (at most "
                                      f"{MAX_METRIC_SERIES}), answered from both event types; "
                                      f"omitted: the first {MAX_METRIC_SERIES} logged "
                                      "(/metrics/names lists them all)")) -> dict:
    """Numeric metric and eval fields as {type: {field: series}}, downsampled server-side to
    at most `buckets` points, at most 64 series; `X-Metric-Names-Total` says how many
    (type, field) pairs the run has, so a page knows whether to ask for others."""
    names = _field_list(fields)

    def read():
        return views.reader.metric_series(run_id, buckets, names)

    answer = await asyncio.to_thread(read)
    response.headers["X-Metric-Names-Total"] = str(answer.available)
    return answer.series


@router.get("/{run_id}/metrics/names", response_model=MetricNames)
async def get_metric_names(run_id: RunIdDep, run: RunDep, views: ViewsDep) -> dict:
    """Every numeric field name of the run's metrics and eval events (what `?fields=` may
    ask for), in the order first logged."""
    return await asyncio.to_thread(views.reader.metric_names, run_id)


@router.get("/{run_id}/rewires", response_model=Rewires)
async def get_rewires(views: ViewsDep, response: Response, run: RunDep) -> dict:
    """The steps at which topology frames are stored (rewire r is steps[r]), the run's newest
    seq (a live page subscribes from last_seq + 1) and its layers."""
    response.headers["Cache-Control"] = "no-cache"
    return await asyncio.to_thread(views.rewires, run)


@router.get("/{run_id}/view", response_model=PanelView,
            responses={304: {"description": "Not modified (If-None-Match matched the ETag)"}})
async def get_view(request: Request, views: ViewsDep, response: Response, run: RunDep,
                   layer: str = Query(..., max_length=200, description="Layer name or index"),
                   step: int | None = Query(None, ge=0, le=MAX_STEP,
                                            description="Newest rewire at or before this step "
                                                        "(omitted: the newest)"),
                   rows: int = Query(..., ge=1, le=MAX_PANEL, description="Panel height, pixels"),
                   cols: int = Query(..., ge=1, le=MAX_PANEL, description="Panel width, pixels"),
                   ) -> dict | Response:
    """What a panel of rows×cols pixels shows of `layer` at the newest rewire at or before
    `step`: per pixel the kept / added / removed / possible connections it covers."""

    def locate() -> dict:
        try:
            return views.locate(run, layer, step)
        except UnknownError as error:
            raise HTTPException(404, detail=str(error)) from None

    located = await asyncio.to_thread(locate)
    etag = views.etag(located, rows, cols)
    headers = {"ETag": etag, "Cache-Control": f"private, max-age={ENDED_MAX_AGE_S}"
               if run["status"] in FINAL_STATUSES else "no-cache"}
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)

    def read() -> dict:
        try:
            return views.view(run, located, rows, cols)
        except StoredDataError as error:
            raise _stored_data_error(error) from None

    answer = await asyncio.to_thread(read)
    response.headers.update(headers)
    return answer
