"""`GET /api/runs/{id}/rewire-series`: the per-layer rewire history, downsampled
(`backend.services.rewire_series` computes it); `GET /api/runs/{id}/rewire-response`: how a
logged metric moved across each rewire (`backend.services.rewire_response`)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from backend.api.deps import RunDep, RunIdDep, StoreDep
from backend.services.rewire_response import rewire_response
from backend.services.rewire_series import rewire_series

router = APIRouter(prefix="/api/runs", tags=["frames"])
METRIC_NAME = r"^[A-Za-z0-9_.:-]+$"  # quoted into a JSON path: no quotes, no brackets


class RewireChange(BaseModel):
    """One rewire with a full window of the metric on both sides."""

    rewire: int = Field(description="Its number: the r-th stored rewire event, from 1")
    step: int = Field(description="The step it rewired at")
    before: float = Field(description="Mean of the metric over steps step-window+1..step")
    after: float = Field(description="Mean of the metric over steps step+1..step+window")
    change: float = Field(description="after - before")


class RewireResponse(BaseModel):
    window: int
    metric: str
    rewires: list[RewireChange] = Field(description="In stored order; rewires without a logged "
                                                    "value on both sides, or whose windows "
                                                    "reach past the metric's first or last "
                                                    "logged step, are left out")


@router.get("/{run_id}/rewire-series")
async def get_rewire_series(run_id: RunIdDep, run: RunDep, store: StoreDep,
                            buckets: int = Query(240, ge=1, le=10_000,
                                                 description="Ranges of consecutive rewires")) -> dict:
    """Per layer and per rewire range: active count (last), added and removed (sums)."""
    return await asyncio.to_thread(rewire_series, store, run_id, buckets)


@router.get("/{run_id}/rewire-response", response_model=RewireResponse)
async def get_rewire_response(run_id: RunIdDep, run: RunDep, store: StoreDep,
                              window: int = Query(10, ge=1, le=10_000,
                                                  description="Steps on each side of a rewire"),
                              metric: str = Query("loss", min_length=1, max_length=64,
                                                  pattern=METRIC_NAME,
                                                  description="A field of the run's `metrics` "
                                                              "events (an unknown one answers "
                                                              "no rewires)")) -> dict:
    """Per rewire: the metric's mean over the `window` steps before it (its own step
    included) and after it, from every stored value (not downsampled)."""
    return await asyncio.to_thread(rewire_response, store, run_id, window, metric)
