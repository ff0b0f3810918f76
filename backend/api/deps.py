"""Dependency aliases shared by the routers."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from backend.manager import RunManager
from backend.services.churn import ChurnReader
from backend.services.overlap import Overlap
from backend.services.topology_reader import TopologyReader
from backend.services.views import LayerViews
from backend.settings import Settings
from dst_core.store import RunStore

RUN_ID_PATTERN = re.compile(r"[0-9a-f]{16}")


def get_store(request: Request) -> RunStore:
    return request.app.state.store


def get_manager(request: Request) -> RunManager:
    return request.app.state.manager


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_layer_views(request: Request) -> LayerViews:
    return request.app.state.layer_views


def get_topology(request: Request) -> TopologyReader:
    return request.app.state.topology


def get_overlap(request: Request) -> Overlap:
    return request.app.state.overlap


def get_churn(request: Request) -> ChurnReader:
    return request.app.state.churn


def valid_run_id(run_id: str) -> str:
    """Ids are exactly 16 hex digits: anything else (dots, slashes, NULs, 10 kB of text) is
    answered 404 here and never reaches the store or a file name."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        shown = run_id if len(run_id) <= 40 else run_id[:40] + "…"
        raise HTTPException(404, detail=f"no run {shown!r}: run ids are 16 hex digits")
    return run_id


StoreDep = Annotated[RunStore, Depends(get_store)]
ManagerDep = Annotated[RunManager, Depends(get_manager)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ViewsDep = Annotated[LayerViews, Depends(get_layer_views)]
TopologyDep = Annotated[TopologyReader, Depends(get_topology)]
OverlapDep = Annotated[Overlap, Depends(get_overlap)]
ChurnDep = Annotated[ChurnReader, Depends(get_churn)]
RunIdDep = Annotated[str, Depends(valid_run_id)]


async def existing_run(run_id: RunIdDep, store: StoreDep) -> dict:
    """The stored run of a valid id, or the one 404 every route answers for a missing run."""
    run = await asyncio.to_thread(store.get_run, run_id)
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return run


RunDep = Annotated[dict, Depends(existing_run)]
