"""`GET /api/runs/{id}/rewire-series`: the per-layer rewire history, downsampled
(`backend.services.rewire_series` computes it)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query

from backend.api.deps import RunDep, RunIdDep, StoreDep
from backend.services.rewire_series import rewire_series

router = APIRouter(prefix="/api/runs", tags=["frames"])


@router.get("/{run_id}/rewire-series")
async def get_rewire_series(run_id: RunIdDep, run: RunDep, store: StoreDep,
                            buckets: int = Query(240, ge=1, le=10_000,
                                                 description="Ranges of consecutive rewires")) -> dict:
    """Per layer and per rewire range: active count (last), added and removed (sums)."""
    return await asyncio.to_thread(rewire_series, store, run_id, buckets)
