"""All routers, collected in one place."""

from fastapi import APIRouter

from backend.api.routes import (
    compare,
    frames,
    health,
    ingest,
    plan,
    rewire_series,
    runs,
    speedup,
    stream,
    topology,
    transfer,
)
from backend.schemas import BODY_RESPONSES, ERROR_RESPONSES, GUARD_RESPONSES, WRITER_RESPONSES

api_router = APIRouter(responses=GUARD_RESPONSES)
api_router.include_router(health.router)
# The 4xx every route of a router can answer are documented here, once, for OpenAPI (/docs).
api_router.include_router(transfer.router,  # before runs: /api/runs/import is not a run id
                          responses={**ERROR_RESPONSES, **BODY_RESPONSES})
api_router.include_router(frames.router, responses=ERROR_RESPONSES)
api_router.include_router(rewire_series.router, responses=ERROR_RESPONSES)
api_router.include_router(topology.router, responses=ERROR_RESPONSES)
api_router.include_router(compare.router, responses=ERROR_RESPONSES)
api_router.include_router(speedup.router, responses=ERROR_RESPONSES)
api_router.include_router(plan.router)  # before runs: /api/runs/plan is not a run id
api_router.include_router(runs.router)
api_router.include_router(ingest.router,
                          responses={**ERROR_RESPONSES, **BODY_RESPONSES, **WRITER_RESPONSES})
ws_router = stream.router
