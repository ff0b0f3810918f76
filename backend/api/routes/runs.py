"""REST for runs: start, list, read, stop, delete."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.exceptions import RequestValidationError

from backend.api.deps import ManagerDep, RunDep, RunIdDep, SettingsDep, StoreDep
from backend.manager import NotOwned, QueueFull
from backend.schemas import BODY_RESPONSES, ERROR_RESPONSES, ErrorOut, RunOut, ValidationErrorOut
from backend.settings import Settings
from dst_core.store.config import RunConfig
from dst_core.store.plan import plan_run

router = APIRouter(prefix="/api/runs", tags=["runs"], responses=ERROR_RESPONSES)


def _found(run: dict | None, run_id: str) -> dict:
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return run


def machine_errors(config: RunConfig, settings: Settings) -> list[tuple[str, str]]:
    """(field, message) for what this server cannot run: no GPU, an algorithm this build
    lacks, a run beyond the limits in Settings. The schema itself checks the rest."""
    import torch

    from dst_core.rewire import REGISTRY

    errors: list[tuple[str, str]] = []
    if config.device == "cuda" and not torch.cuda.is_available():
        errors.append(("device", "'cuda' requested but this server has no CUDA GPU"))
    if config.method not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        errors.append(("method", f"{config.method!r} is not available in this build; "
                                 f"available: {known}"))
    return errors + settings.run_limit_errors(config)


@router.post("", response_model=RunOut, status_code=status.HTTP_201_CREATED,
             responses={**BODY_RESPONSES,
                        422: {"model": ValidationErrorOut, "description": "Bad config"},
                        429: {"model": ErrorOut, "description": "The queue is full"}})
async def start_run(settings: SettingsDep, manager: ManagerDep,
                    config: RunConfig | None = None) -> dict:
    """Queue a run (every field optional: `{}` or no body is a valid run); a worker process
    starts it as soon as a slot is free. `warnings` says which settings cannot show anything
    (no rewire, a drop fraction that moves no connection); `POST /api/runs/plan` previews them."""
    config = config or RunConfig()
    errors = machine_errors(config, settings)
    if errors:
        raise RequestValidationError([
            {"loc": ("body", field), "msg": message, "type": "value_error"}
            for field, message in errors])
    warnings = plan_run(config).warnings  # said with the run: it starts anyway
    try:
        return {**manager.submit(config), "warnings": warnings}
    except QueueFull as error:
        raise HTTPException(429, detail=f"queue full: {error}") from None


@router.get("", response_model=list[RunOut])
async def list_runs(store: StoreDep) -> list[dict]:
    """Every run, newest first."""
    return await asyncio.to_thread(store.list_runs)


@router.get("/{run_id}", response_model=RunOut)
async def get_run(run: RunDep) -> dict:
    """Config, status, timestamps, error and summary of one run."""
    return run


@router.post("/{run_id}/stop", response_model=RunOut,
             responses={409: {"model": ErrorOut, "description": "Written by another process"}})
async def stop_run(run_id: RunIdDep, manager: ManagerDep) -> dict:
    """Cooperative stop within one step, killed after the grace period; answers once the run
    has ended (`stopped`), or with its current state if it had already ended."""
    try:
        return _found(await manager.stop(run_id), run_id)
    except NotOwned as error:
        raise HTTPException(409, detail=str(error)) from None


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_run(run_id: RunIdDep, manager: ManagerDep) -> Response:
    """Stop the run if it is active and delete everything recorded about it."""
    if not await manager.delete(run_id):
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
