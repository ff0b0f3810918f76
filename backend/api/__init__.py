"""All routers, collected in one place."""

from fastapi import APIRouter

from backend.api.routes import frames, health, ingest, runs, stream, transfer

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(transfer.router)  # before runs: /api/runs/import is not a run id
api_router.include_router(frames.router)
api_router.include_router(runs.router)
api_router.include_router(ingest.router)
ws_router = stream.router
