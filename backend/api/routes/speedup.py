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
    MAX_SERIES_POINTS,
    WAIT_S,
    constant_fan_in,
    layer_speedups,
    layers_at,
    model_summary,
    shared_table,
    speedup_series,
    speedups_by_batch,
    structure_at,
)
from dst_core.store.schema import MAX_STEP

router = APIRouter(prefix="/api/runs", tags=["speedup"])


class BatchSpeedup(BaseModel):
    best: str
    speedup: float


class ModelSpeedup(BaseModel):
    speedup_b1: float | None = Field(description="Σ dense ms / Σ best ms over the layers, batch 1")
    speedup_b16: float | None = Field(description="… at batch 16")
    to_constant_fan_in: float | None = Field(description="Σ moved / Σ active over the layers")
    to_2_4: float | None = Field(description="Σ moved / Σ active over the layers")


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
    speedups: dict[str, BatchSpeedup] = Field(
        description="Best format and speedup at each batch the cost table holds (\"1\", "
                    "\"16\"), whatever `batch` asked")
    to_constant_fan_in: float | None = Field(
        description="Share of the mask's active connections that would have to move so every "
                    "output has ⌊A/rows⌋ or ⌈A/rows⌉ inputs (None: its mask does not read)")
    to_2_4: float | None = Field(description="Share of active connections that would have to "
                                             "move so no 4 consecutive inputs of a row hold "
                                             "more than 2 (2:4)")
    structure_note: str | None = Field(description="Why the 2:4 figure is approximate (inputs "
                                                   "not a multiple of 4: counted as padded)")


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
    model: ModelSpeedup | None = Field(None, description="The whole model (None while pending)")


class LayerSpeedupSeries(BaseModel):
    layer: str
    shape: list[int]
    note: str | None = Field(description="As structure_note")
    density: list[float | None] = Field(description="Per picked rewire (None: no mask yet)")
    speedup_b1: list[float | None]
    best_b1: list[str | None]
    speedup_b16: list[float | None]
    best_b16: list[str | None]
    to_constant_fan_in: list[float | None]
    to_2_4: list[float | None]


class SpeedupSeries(BaseModel):
    rewires: int = Field(description="Rewires the run has (0: only the initial masks)")
    step: list[int] = Field(description="The picked rewires' steps (first and newest always in)")
    pending: bool = Field(description="As in /speedup: no layers yet, retry after Retry-After")
    error: str | None
    layers: list[LayerSpeedupSeries]
    model: dict[str, list[float | None]] = Field(
        description="The whole model per picked rewire: speedup_b1, speedup_b16 (Σ dense ms / "
                    "Σ best ms), to_constant_fan_in, to_2_4 (Σ moved / Σ active)")


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
    structure = await asyncio.to_thread(structure_at, views, run, layers, step)
    condensed = constant_fan_in(run)
    answered, per_layer = [], []
    by_name = {entry["name"]: found for entry, found in zip(layers, structure, strict=True)}
    for layer in layer_speedups(layers, table, batch, condensed):
        found = by_name.get(layer["layer"])
        by_batch = speedups_by_batch(table, *layer["shape"], layer["density"], condensed)
        answered.append({**layer, "speedups": {str(size): {"best": figures["best"],
                                                           "speedup": figures["speedup"]}
                                               for size, figures in by_batch.items()},
                         "to_constant_fan_in": None if found is None else found["to_constant_fan_in"],
                         "to_2_4": None if found is None else found["to_2_4"],
                         "structure_note": None if found is None else found["note"]})
        per_layer.append({"by_batch": by_batch,
                          "active": round(layer["density"] * layer["shape"][0] * layer["shape"][1]),
                          "to_constant_fan_in": answered[-1]["to_constant_fan_in"],
                          "to_2_4": answered[-1]["to_2_4"]})
    return {"step": step, "batch": batch, "device": "cpu", "threads": table.threads,
            "measured_s": round(table.measured_s or 0.0, 3), "pending": False, "error": None,
            "layers": answered, "model": model_summary(per_layer)}


@router.get("/{run_id}/speedup/series", response_model=SpeedupSeries)
async def get_speedup_series(views: ViewsDep, run: RunDep, response: Response,
                             points: int = Query(20, ge=2, le=MAX_SERIES_POINTS,
                                                 description="At most this many rewires, evenly "
                                                             "picked")) -> dict:
    """Per layer and for the whole model, over the run: density, predicted speedup at batch 1
    and 16 (from the cost table, as /speedup) and the distances to constant fan-in and 2:4."""
    table = shared_table()
    if not await asyncio.to_thread(table.wait, WAIT_S) or table.error:
        response.headers["Retry-After"] = "5"
        return {"rewires": 0, "step": [], "pending": table.error is None, "error": table.error,
                "layers": [], "model": {}}
    try:
        answer = await asyncio.to_thread(speedup_series, views, run, table, points)
    except ValueError as error:
        raise HTTPException(404, detail=str(error)) from None
    return {**answer, "pending": False, "error": None}
