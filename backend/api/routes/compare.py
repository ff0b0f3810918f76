"""Comparing runs: how much one layer's masks share across runs, at a step and over time
(`backend.services.overlap` computes it). Reads never answer 5xx: a stored frame that cannot be
read is a 422 naming the run and the frame, as /mask and /view do."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from backend.api.deps import RUN_ID_PATTERN, OverlapDep, StoreDep
from backend.services.overlap import MAX_RUNS, Overlap, OverlapError
from dst_core.store import FINAL_STATUSES
from dst_core.store.masks import StoredDataError
from dst_core.store.schema import MAX_STEP

router = APIRouter(prefix="/api/compare", tags=["compare"])
ENDED_MAX_AGE_S = 7 * 24 * 3600  # the masks of ended runs never change
RunsQuery = Query(..., max_length=MAX_RUNS * 24,
                  description=f"Comma-separated run ids, 2 to {MAX_RUNS} distinct ones")
LayerQuery = Query(..., max_length=200, description="Layer name or index, as /mask accepts; "
                                                    "one shape in every run")


class Overlap2D(BaseModel):
    """One layer's masks across runs at the newest frame at or before `step` of each."""

    layer: str = Field(description="The layer's name in the first run")
    index: int = Field(description="Its index in the first run")
    layers: list[str] = Field(description="The layer's name in each run")
    indices: list[int] = Field(description="Its index in each run")
    shape: list[int] = Field(description="[rows, cols], the same in every run")
    step: int | None = Field(description="The step asked for (null: each run's newest)")
    runs: list[str]
    steps: list[int] = Field(description="Per run: the step of the rewire used")
    rewires: list[int] = Field(description="Per run: its number among the layer's stored "
                                           "rewires (0: the initial mask)")
    active: list[int] = Field(description="Per run: active connections")
    numel: int
    jaccard: list[list[float]] = Field(description="N × N: |A ∩ B| / |A ∪ B| (diagonal 1.0; "
                                                   "an empty union 1.0)")
    shared: list[list[int]] = Field(description="N × N: |A ∩ B| (diagonal: active)")
    random_jaccard: list[list[float]] = Field(
        description="N × N: expected Jaccard of two independent uniformly random masks of "
                    "the two runs' densities, d₁d₂ / (d₁ + d₂ − d₁d₂) (diagonal 1.0)")


class OverlapSeries(BaseModel):
    """Every pair's Jaccard over a grid of steps."""

    layer: str
    index: int
    layers: list[str]
    indices: list[int]
    shape: list[int]
    numel: int
    runs: list[str]
    pairs: list[tuple[int, int]] = Field(description="[i, j], i < j: positions in `runs`")
    steps: list[int] = Field(description="The union of the runs' rewire steps of the layer, "
                                         "evenly thinned to at most `points` (first and last "
                                         "kept)")
    active: list[list[int | None]] = Field(description="Per run, per step: active "
                                                       "connections (null: no mask yet)")
    jaccard: list[list[float | None]] = Field(description="Per pair, per step; null where "
                                                          "either run has no mask yet")
    random_jaccard: list[list[float | None]] = Field(description="Per pair, per step: the "
                                                                 "random-mask reference")


def _invalid(field: str, message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", field), "type": kind, "msg": message}])


async def _runs(store, runs: str) -> list[dict]:
    """The stored runs `runs` names, in order: a 422 naming `runs` for fewer than 2, more
    than MAX_RUNS or repeated ids, a 404 for an id that is no run."""
    ids = [part.strip() for part in runs.split(",") if part.strip()]
    repeated = sorted({run_id for run_id in ids if ids.count(run_id) > 1})
    if repeated:
        raise _invalid("runs", f"run {repeated[0]!r} is listed more than once")
    if not 2 <= len(ids) <= MAX_RUNS:
        raise _invalid("runs", f"{len(ids)} runs; compare 2 to {MAX_RUNS}")
    found = []
    for run_id in ids:
        if not RUN_ID_PATTERN.fullmatch(run_id):
            shown = run_id if len(run_id) <= 40 else run_id[:40] + "…"
            raise HTTPException(404, detail=f"no run {shown!r}: run ids are 16 hex digits")
        run = await asyncio.to_thread(store.get_run, run_id)
        if run is None:
            raise HTTPException(404, detail=f"no run {run_id!r}")
        found.append(run)
    return found


async def _answer(read):
    """Run a service call off the event loop, its refusals as 422s."""
    try:
        return await asyncio.to_thread(read)
    except OverlapError as error:
        raise _invalid(error.field, str(error)) from None
    except StoredDataError as error:
        raise HTTPException(422, detail=f"stored data: {error}") from None


def _cached(request: Request, response: Response, runs: list[dict], etag: str) -> bool:
    """Set the caching headers; True when the client's copy is current (answer 304)."""
    ended = all(run["status"] in FINAL_STATUSES for run in runs)
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = (f"private, max-age={ENDED_MAX_AGE_S}" if ended
                                         else "no-cache")
    sent = [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]
    return etag in sent


NOT_MODIFIED = {304: {"description": "Not modified (If-None-Match matched the ETag)"},
                422: {"description": "Fewer than 2 or more than 16 runs, a repeated run, a "
                                     "layer missing in a run or of another shape, no mask at or "
                                     "before the step, or stored data that does not read"}}


@router.get("/overlap", response_model=Overlap2D, responses=NOT_MODIFIED)
async def get_overlap(request: Request, response: Response, overlap: OverlapDep,
                      store: StoreDep, runs: str = RunsQuery, layer: str = LayerQuery,
                      step: int | None = Query(None, ge=0, le=MAX_STEP,
                                               description="Each run's newest rewire at or "
                                                           "before it (omitted: its newest)")):
    """How much one layer's masks share across runs: Jaccard and shared counts of every pair,
    against two random masks of the same densities."""
    found = await _runs(store, runs)
    located = await _answer(lambda: overlap.locate(found, layer, step))
    if _cached(request, response, found, Overlap.etag(located)):
        return Response(status_code=304, headers=dict(response.headers))
    return await _answer(lambda: overlap.at(found, located))


@router.get("/overlap/series", response_model=OverlapSeries, responses=NOT_MODIFIED)
async def get_overlap_series(request: Request, response: Response, overlap: OverlapDep,
                             store: StoreDep, runs: str = RunsQuery, layer: str = LayerQuery,
                             points: int = Query(64, ge=2, le=512,
                                                 description="Steps answered at most")):
    """Every pair's Jaccard over the runs' rewire steps, evenly thinned to `points`."""
    found = await _runs(store, runs)
    located = await _answer(lambda: overlap.locate(found, layer, None, required=False))
    if _cached(request, response, found, Overlap.etag(located, f"series|{points}")):
        return Response(status_code=304, headers=dict(response.headers))
    return await _answer(lambda: overlap.series(found, located, points))
