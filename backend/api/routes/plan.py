"""The schedule a run config would train, before it is started (the form's preview)."""

from __future__ import annotations

from fastapi import APIRouter

from backend.schemas import BODY_RESPONSES, ErrorOut, ValidationErrorOut
from dst_core.store.config import RunConfig
from dst_core.store.plan import RunPlan, plan_run

router = APIRouter(prefix="/api/runs", tags=["runs"])


@router.post("/plan", response_model=RunPlan,
             responses={**BODY_RESPONSES,
                        401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
                        422: {"model": ValidationErrorOut, "description": "Bad config"}})
async def preview(config: RunConfig | None = None) -> RunPlan:
    """Steps, number of rewires, when rewiring stops, and `warnings` for settings that cannot
    show anything (zero rewires; a drop fraction that moves no connection). Starts nothing;
    `POST /api/runs` answers the same warnings with the run it queues."""
    return plan_run(config or RunConfig())
