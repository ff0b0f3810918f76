"""Topology analytics of a recorded run: one layer at a step, its series over time, the model.

Every stored run answers, older and imported ones included (derived from its masks). As
/mask and /view do, a stored frame that cannot be read is a 422 naming it ("stored data: …"),
an unknown layer or a step before the first frame a 404; never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from backend.api.deps import ChurnDep, RunDep, RunIdDep, TopologyDep
from backend.services.views import MAX_PANEL
from dst_core.store import FINAL_STATUSES
from dst_core.store.codec import FrameError
from dst_core.store.masks import StoredDataError
from dst_core.store.schema import MAX_STEP  # the store's range: larger is a 422, not an overflow

router = APIRouter(prefix="/api/runs", tags=["topology"])
ENDED_MAX_AGE_S = 7 * 24 * 3600  # an ended run's rewires never change
LayerQuery = Query(..., max_length=200, description="Layer name or index, as /mask accepts")
StepQuery = Query(..., ge=0, le=MAX_STEP, description="Training step: the newest rewire at or "
                                                     "before it answers")


class DegreeStats(BaseModel):
    mean: float
    std: float = Field(description="Population standard deviation")
    max: int


class MagnitudeQuantiles(BaseModel):
    count: int = Field(description="Connections of this kind at the rewire")
    quantiles: list[float] | None = Field(description="|w| at `levels`; null when count is 0")


class RewireWeights(BaseModel):
    """|w| of kept, dropped and grown connections at the rewire, as the driver recorded them."""

    levels: list[float]
    kept: MagnitudeQuantiles
    dropped: MagnitudeQuantiles
    grown: MagnitudeQuantiles


class HeadCount(BaseModel):
    """One attention head of a projection: its active connections at the rewire."""

    part: Literal["q", "k", "v"] | str | None = Field(
        description="q, k or v of a fused projection (GPT-2's c_attn, packed in_proj); null "
                    "where the layer is not fused")
    head: int
    active: int
    density: float = Field(description="active / the connections the head can have")


class LayerTopology(BaseModel):
    """One layer at the newest rewire at or before the requested step (rewire 0 = initial)."""

    layer: str
    index: int
    step: int = Field(description="Step of the rewire answered")
    requested_step: int
    rewire: int = Field(description="Rewires are numbered from 1; the initial mask is 0")
    shape: list[int] = Field(description="[outputs, inputs]; a conv kernel is in the inputs")
    active: int
    fan_in: list[tuple[int, int]] = Field(description="[degree, output units], every degree "
                                                      "present (0 included), ascending")
    fan_in_stats: DegreeStats
    fan_out: list[tuple[int, int]] = Field(description="[degree, input units], as fan_in")
    fan_out_stats: DegreeStats
    dead_in: int = Field(description="Input units with fan-out 0")
    dead_out: int = Field(description="Output units with fan-in 0")
    age: list[tuple[int, int]] = Field(description="[age in rewires, active connections]")
    survival: list[tuple[int, float]] = Field(
        description="[rewires ago, share of that rewire's net-grown connections active now], "
                    "one per earlier rewire with growth, newest first")
    repruned_next: list[tuple[int, float]] = Field(
        description="[rewire, share of its net-grown connections removed at the next rewire]")
    distance_initial: float = Field(description="Share of active connections not active at "
                                                "rewire 0")
    distance_previous: float = Field(description="Share of active connections not active at "
                                                 "the previous rewire")
    weights: RewireWeights | None = Field(description="null where the run did not record them")
    heads: list[HeadCount] | None = Field(
        None, description="Per attention head (a layer whose run stored its head layout), "
                          "`active` summing to the layer's; null otherwise")


class LayerSeries(BaseModel):
    """Per-rewire summaries of one layer, at most `points` rewires evenly picked."""

    layer: str
    index: int
    shape: list[int]
    rewires: int
    rewire: list[int]
    step: list[int]
    active: list[int]
    fan_in_counts: list[list[int]] = Field(description="Per picked rewire: units with fan-in "
                                                       "0, 1, 2, … (the degree heatmap)")
    fan_in_mean: list[float]
    fan_in_max: list[int]
    fan_out_mean: list[float]
    fan_out_max: list[int]
    dead_in: list[int]
    dead_out: list[int]
    distance_initial: list[float]
    distance_previous: list[float]
    repruned_next: list[tuple[int, float]]


class LayerSummary(BaseModel):
    layer: str
    index: int
    step: int | None = None
    shape: list[int] | None = None
    active: int | None = None
    density: float | None = None
    fan_in_stats: DegreeStats | None = None
    fan_out_stats: DegreeStats | None = None
    dead_in: int | None = None
    dead_out: int | None = None
    error: str | None = Field(None, description="Why this layer has no answer at this step")


class ChainLayer(BaseModel):
    active: int
    effective: int = Field(description="Connections on at least one input→output path")
    cut_from_input: int = Field(description="Output units no input of the chain reaches")
    cut_from_output: int = Field(description="Output units that reach no output of the chain")


class LinearChain(BaseModel):
    """An MLP-shaped run of Linear layers, each fed by the one before."""

    layers: list[str]
    inputs_unused: int = Field(description="Chain inputs on no path to its outputs")
    active_params: int
    effective_params: int = Field(description="Effective (compressed) parameter count")
    per_layer: list[ChainLayer] = Field(description="In the order of `layers`")


class ToggleView(BaseModel):
    """Toggle counts binned like /view's pixels: which rows and columns churn."""

    grid: list[int] = Field(description="[gr, gc]: pixels used, min(rows, R) × min(cols, C)")
    exact: bool = Field(description="One connection per pixel")
    dtype: Literal["u4"] = Field(description="Little-endian unsigned 32-bit counts")
    toggles: str = Field(description="base64 of gr×gc sums of the toggle counts of the "
                                     "connections each pixel covers, row-major (saturated at "
                                     "2³² − 1)")
    possible: str = Field(description="base64 of gr×gc connections per pixel")
    max_mean: float = Field(description="Max over pixels of toggles / possible")


class LayerChurn(BaseModel):
    """How often each connection of a layer changed state, up to the newest rewire at or
    before the requested step (rewire 0 = initial; numbered per layer as /topology does)."""

    layer: str
    index: int
    shape: list[int] = Field(description="[outputs, inputs]; a conv kernel is in the inputs")
    step: int = Field(description="Step of the rewire answered")
    requested_step: int | None = Field(description="null: the newest rewire was asked for")
    rewire: int
    numel: int
    active: int = Field(description="Active connections at the rewire")
    toggles: list[tuple[int, int]] = Field(
        description="[toggle count, connections], ascending, count 0 always in; the "
                    "connections sum to numel. A connection toggles at a rewire when it is in "
                    "its net delta (net grown or net removed)")
    toggles_total: int = Field(description="Sum of every connection's toggle count")
    flip_rate: list[tuple[int, float | None]] = Field(
        description="[rewire r, connections whose state differs from rewire r−1 / active at "
                    "r−1] for r = 1..rewire (null where nothing was active at r−1)")
    flip_steps: list[int] = Field(description="The step of each rewire of flip_rate")
    view: ToggleView


class ModelTopology(BaseModel):
    requested_step: int
    layers: list[LayerSummary]
    chains: list[LinearChain]


async def _answer(read):
    """Run a reader call off the event loop, its errors as 4xx answers."""
    try:
        return await asyncio.to_thread(read)
    except (StoredDataError, FrameError, KeyError, TypeError, IndexError, json.JSONDecodeError,
            sqlite3.DatabaseError) as error:
        raise HTTPException(422, detail=f"stored data: {error or type(error).__name__}") \
            from None
    except ValueError as error:  # unknown layer, no frame at or before the step
        raise HTTPException(404, detail=str(error)) from None


@router.get("/{run_id}/topology", response_model=LayerTopology)
async def get_topology(reader: TopologyDep, run_id: RunIdDep, run: RunDep,
                       layer: str = LayerQuery, step: int = StepQuery) -> dict:
    """Degrees, dead units, ages, cohort survival, distances and |w| quantiles of one layer."""
    return await _answer(lambda: reader.layer(run_id, layer, step))


@router.get("/{run_id}/topology/series", response_model=LayerSeries)
async def get_topology_series(reader: TopologyDep, run_id: RunIdDep, run: RunDep,
                              layer: str = LayerQuery,
                              points: int = Query(200, ge=2, le=10_000,
                                                  description="Rewires answered at most")
                              ) -> dict:
    """One layer's degree histogram, dead units and distances over its rewires."""
    return await _answer(lambda: reader.series(run_id, layer, points))


@router.get("/{run_id}/topology/model", response_model=ModelTopology)
async def get_model_topology(reader: TopologyDep, run_id: RunIdDep, run: RunDep,
                             step: int = StepQuery) -> dict:
    """Every layer's degree summary at `step`, and each Linear chain's cut-off units and
    effective parameter count."""
    return await _answer(lambda: reader.model(run_id, step))


@router.get("/{run_id}/churn", response_model=LayerChurn,
            responses={304: {"description": "Not modified (If-None-Match matched the ETag)"}})
async def get_churn(request: Request, response: Response, churn: ChurnDep, run: RunDep,
                    layer: str = LayerQuery,
                    step: int | None = Query(None, ge=0, le=MAX_STEP,
                                             description="Newest rewire at or before this step "
                                                         "(omitted: the newest)"),
                    rows: int = Query(64, ge=1, le=MAX_PANEL, description="Panel height, pixels"),
                    cols: int = Query(64, ge=1, le=MAX_PANEL, description="Panel width, pixels"),
                    ) -> dict | Response:
    """How often each connection of one layer toggled up to a rewire: the distribution of
    toggle counts, the flip rate of every rewire, and the toggles binned into panel pixels."""
    located = await _answer(lambda: churn.locate(run, layer, step))
    cache_control = (f"private, max-age={ENDED_MAX_AGE_S}" if run["status"] in FINAL_STATUSES
                     else "no-cache")
    etag = churn.etag(located["tag"], rows, cols)
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})
    answer = await _answer(lambda: churn.churn(run, layer, step, rows, cols))
    # of the rewire answered (a live run's newest may have moved on since it was located)
    response.headers["ETag"] = churn.etag(
        churn.tag(run, answer["index"], answer["rewire"], answer["step"]), rows, cols)
    response.headers["Cache-Control"] = cache_control
    return answer
