"""What each layer's mask would buy at inference (`dst_core.compact`'s formats), per step.

Answered from the server's cost table (backend/services/speedup.py): measured once per server
start on a background thread, interpolated here; a request never times a kernel.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from backend.api.deps import RunDep, ViewsDep
from backend.services.speedup import (
    BATCHES,
    WAIT_S,
    constant_fan_in,
    layer_speedups,
    layers_at,
    shared_table,
)
from dst_core.store.schema import MAX_STEP

router = APIRouter(prefix="/api/runs", tags=["speedup"])


class LayerSpeedup(BaseModel):
    layer: str
    shape: list[int] = Field(description="[rows, cols] of the weight as a matrix (a conv's "
                                         "kernel flattened into its inputs)")
    density: float = Field(description="Of the newest stored mask at or before the step")
    formats: dict[str, float] = Field(description="Estimated ms of one forward per format: "
                                                  "dense_ms, csr_ms, condensed_ms (SRigL runs)")
    best: str = Field(description="What dst_core.compact would choose: dense unless another "
                                  "format takes at most 95% of its time")
    speedup: float = Field(description="dense_ms / the best format's ms (1 when dense)")


class Speedup(BaseModel):
    step: int
    batch: int
    device: str = Field(description="Where the cost table was measured")
    threads: int = Field(description="torch threads the cost table was measured with")
    measured_s: float | None = Field(description="Seconds the cost table took, once per "
                                                 "server start")
    pending: bool = Field(description="The cost table is still being measured (the first "
                                      "request after a start waits up to 20 s for it): no "
                                      "layers yet, retry after Retry-After seconds")
    error: str | None = Field(description="Why the cost table could not be measured")
    layers: list[LayerSpeedup]


@router.get("/{run_id}/speedup", response_model=Speedup)
async def get_speedup(views: ViewsDep, run: RunDep, response: Response,
                      step: int = Query(..., ge=0, le=MAX_STEP,
                                        description="Training step: each layer's newest mask "
                                                    "at or before it"),
                      batch: int = Query(1, description="Inputs per forward: 1 or 16")) -> dict:
    """Per layer, estimated inference ms in each format `dst_core.compact` has on this server's
    device, the one it would choose and its speedup over the masked dense layer."""
    if batch not in BATCHES:
        raise HTTPException(422, detail=f"batch: one of {', '.join(map(str, BATCHES))}, got {batch}")
    table = shared_table()
    if not await asyncio.to_thread(table.wait, WAIT_S) or table.error:
        # Not a 5xx: nothing is wrong with the run; the answer says why it has no layers yet.
        response.headers["Retry-After"] = "5"
        return {"step": step, "batch": batch, "device": "cpu", "threads": table.threads,
                "measured_s": None, "pending": table.error is None, "error": table.error,
                "layers": []}
    layers = await asyncio.to_thread(layers_at, views, run, step)
    if not any(layer["density"] is not None for layer in layers):
        raise HTTPException(404, detail=f"step: no stored mask at or before step {step}")
    return {"step": step, "batch": batch, "device": "cpu", "threads": table.threads,
            "measured_s": round(table.measured_s or 0.0, 3), "pending": False, "error": None,
            "layers": layer_speedups(layers, table, batch, constant_fan_in(run))}
