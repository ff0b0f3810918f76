"""Readiness: the one route that needs no token."""

from fastapi import APIRouter

from backend.schemas import Health
from dst_core import __version__

router = APIRouter(tags=["health"])


@router.get("/api/health", response_model=Health)
def health() -> Health:
    """Readiness probe; needs no token (docker-compose's healthcheck calls it)."""
    return Health(version=__version__)
