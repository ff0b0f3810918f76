"""Dependency aliases shared by the routers."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from backend.manager import RunManager
from backend.settings import Settings
from dst_core.recording import RunStore

RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")


def get_store(request: Request) -> RunStore:
    return request.app.state.store


def get_manager(request: Request) -> RunManager:
    return request.app.state.manager


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def valid_run_id(run_id: Annotated[str, Path(max_length=64)]) -> str:
    """Ids are 16 hex digits: anything else (paths, dots, slashes) never reaches the store."""
    if not RUN_ID_PATTERN.match(run_id):
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return run_id


StoreDep = Annotated[RunStore, Depends(get_store)]
ManagerDep = Annotated[RunManager, Depends(get_manager)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RunIdDep = Annotated[str, Depends(valid_run_id)]
