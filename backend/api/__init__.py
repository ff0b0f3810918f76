"""All routers, collected in one place."""

from fastapi import APIRouter

from backend.api.routes import health, runs, stream

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(runs.router)
ws_router = stream.router
