"""The schedule a run config would train, before it is started (the form's preview)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import replace

from fastapi import APIRouter

from backend.api.deps import StoreDep
from backend.schemas import BODY_RESPONSES, ErrorOut, ValidationErrorOut
from backend.services.estimate import estimate_duration
from dst_core.store.config import RunConfig
from dst_core.store.plan import RunPlan, plan_run

router = APIRouter(prefix="/api/runs", tags=["runs"])


@router.post("/plan", response_model=RunPlan,
             responses={**BODY_RESPONSES,
                        401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
                        422: {"model": ValidationErrorOut, "description": "Bad config"}})
async def preview(store: StoreDep, config: RunConfig | None = None) -> RunPlan:
    """Steps, number of rewires, when rewiring stops, and `warnings` for settings that cannot
    show anything (zero rewires; a drop fraction that moves no connection), and `estimate`,
    how long it would train from the steps/s of earlier finished runs of the same task and
    model here. Starts nothing; `POST /api/runs` answers the same warnings with the run it
    queues."""
    config = config or RunConfig()
    plan = plan_run(config)
    try:
        estimate = await asyncio.to_thread(estimate_duration, store, config, plan.total_steps)
    except sqlite3.Error as error:  # a plan is still a plan without its estimate
        logging.getLogger("sparsescope").warning("no duration estimate: %s", error)
        estimate = {"seconds": None, "steps_per_s": None, "runs": 0,
                    "basis": "the run store could not be read"}
    return replace(plan, estimate=estimate)
