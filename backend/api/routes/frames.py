"""Reading into a recorded run without streaming it: a layer's mask at a step, metric ranges."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from fastapi import APIRouter, HTTPException, Query

from backend.api.deps import RunDep, RunIdDep, StoreDep
from dst_core.recording import RunReader

router = APIRouter(prefix="/api/runs", tags=["frames"])
MAX_STEP = 2**62  # SQLite integers are 64-bit: a larger step is a 422, not an OverflowError


@router.get("/{run_id}/mask")
async def get_mask(run_id: RunIdDep, run: RunDep, store: StoreDep,
                   layer: str = Query(..., max_length=200, description="Layer name or index"),
                   step: int = Query(..., ge=0, le=MAX_STEP, description="Training step")) -> dict:
    """One layer's mask at `step` (newest keyframe + deltas), as the wire's packed bits."""

    def read() -> dict:
        reader = RunReader(store)
        try:
            mask, frame_step = reader.mask_at(run_id, layer, step)
        except ValueError as error:
            raise HTTPException(404, detail=str(error)) from None
        bits = np.packbits(mask.reshape(-1), bitorder="little").tobytes()
        return {"layer": reader.layers(run_id)[reader.layer_index(run_id, layer)]["name"],
                "step": step, "frame_step": frame_step, "shape": list(mask.shape),
                "active": int(mask.sum()), "bits": base64.b64encode(bits).decode("ascii")}

    return await asyncio.to_thread(read)


@router.get("/{run_id}/metrics")
async def get_metrics(run_id: RunIdDep, run: RunDep, store: StoreDep,
                      buckets: int = Query(500, ge=1, le=100_000,
                                           description="Step ranges; each keeps min/max/last")) -> dict:
    """Every numeric metric and eval field, downsampled server-side to at most `buckets` points."""

    def read() -> dict:
        return RunReader(store).metrics(run_id, buckets)

    return await asyncio.to_thread(read)
