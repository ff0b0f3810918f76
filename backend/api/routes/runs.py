"""REST for runs: start, list, read, stop, delete."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Response, status

from backend.api.deps import ManagerDep, RunIdDep, StoreDep
from backend.schemas import RunOut
from dst_core.config import RunConfig

router = APIRouter(prefix="/api/runs", tags=["runs"])


def _found(run: dict | None, run_id: str) -> dict:
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return run


@router.post("", response_model=RunOut, status_code=status.HTTP_201_CREATED)
async def start_run(config: RunConfig | None = None, *, manager: ManagerDep) -> dict:
    """Queue a run; a worker process starts it as soon as a slot is free."""
    config = config or RunConfig()
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise HTTPException(422, detail=[{"loc": ["body", "device"], "type": "value_error",
                                              "msg": "device: no CUDA GPU on this server"}])
    return manager.submit(config.model_dump(), config.display_name())


@router.get("", response_model=list[RunOut])
async def list_runs(store: StoreDep) -> list[dict]:
    """Every run, newest first."""
    return await asyncio.to_thread(store.list_runs)


@router.get("/{run_id}", response_model=RunOut)
async def get_run(run_id: RunIdDep, store: StoreDep) -> dict:
    return _found(await asyncio.to_thread(store.get_run, run_id), run_id)


@router.post("/{run_id}/stop", response_model=RunOut)
async def stop_run(run_id: RunIdDep, manager: ManagerDep) -> dict:
    """Cooperative stop, then kill after the grace period; answers once the run has ended."""
    return _found(await manager.stop(run_id), run_id)


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_run(run_id: RunIdDep, manager: ManagerDep) -> Response:
    if not await manager.delete(run_id):
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
