"""Readiness: the one route that needs no token."""

import sqlite3

from fastapi import APIRouter, HTTPException

from backend.api.deps import StoreDep
from backend.schemas import ErrorOut, Health
from dst_core import __version__
from dst_core.store import SCHEMA_VERSION

router = APIRouter(tags=["health"])


@router.get("/api/health", response_model=Health, responses={
    503: {"model": ErrorOut, "description": "Not ready: the run store cannot be read (why)"}})
def health(store: StoreDep) -> Health:
    """Readiness probe; needs no token (docker-compose's healthcheck calls it).

    Ready means the app's run store answers one read: its schema version, a one-row primary
    key lookup on this thread's already open connection, so polling costs next to nothing.
    A store that cannot be read, or holds a layout this build does not read, is a 503 with
    the reason (no path in it: this route answers without a token).
    """
    try:
        version = store.stored_schema_version()
    except sqlite3.Error as error:
        raise HTTPException(503, detail=f"not ready: the run store cannot be read: "
                                        f"{error}") from None
    except OSError as error:
        raise HTTPException(503, detail=f"not ready: the run store cannot be read: "
                                        f"{error.strerror or type(error).__name__}") from None
    if version != str(SCHEMA_VERSION):
        raise HTTPException(503, detail=f"not ready: the run store has schema version "
                                        f"{version!r}; this server reads {SCHEMA_VERSION}")
    return Health(version=__version__)
