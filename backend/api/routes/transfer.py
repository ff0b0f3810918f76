"""Runs in and out of the server: export file, import, and the trained model download."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from backend.api.deps import RunDep, RunIdDep, StoreDep
from backend.schemas import RunOut
from dst_core.recording.recorder import MODEL_ARTIFACT
from dst_core.store import BadExportError, export_run, import_run
from dst_core.store.transfer import export_filename

router = APIRouter(prefix="/api/runs", tags=["transfer"])


@router.get("/{run_id}/export", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def export(run_id: RunIdDep, run: RunDep, store: StoreDep) -> Response:
    """The run as one self-contained `.sparsescope` file (events, frames, model)."""
    folder = tempfile.mkdtemp(prefix="sparsescope-export-")  # streamed from disk, then removed
    path = await asyncio.to_thread(export_run, store, run_id, Path(folder) / "export.sqlite3")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=export_filename(run["name"]),
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


@router.post("/import", response_model=RunOut, status_code=status.HTTP_201_CREATED)
async def import_file(request: Request, store: StoreDep) -> dict:
    """Body = the raw bytes of an export file; 201 with the new run, 400 naming what is wrong.

    Its own size limit (`max_import_bytes`, far above any other request's: runs are big) is
    enforced by the body-limit middleware as the upload streams to disk."""
    with tempfile.TemporaryDirectory(prefix="sparsescope-upload-") as folder:
        path = Path(folder) / "upload.sparsescope"
        received = 0
        with open(path, "wb") as out:
            async for chunk in request.stream():
                received += len(chunk)
                out.write(chunk)
        if received == 0:
            raise HTTPException(400, detail="empty body: send the export file's bytes")
        try:
            return await asyncio.to_thread(import_run, store, path)
        except BadExportError as error:
            raise HTTPException(400, detail=str(error)) from None


@router.get("/{run_id}/model", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def model(run_id: RunIdDep, run: RunDep, store: StoreDep) -> Response:
    """The trained model of a completed run (state_dict + masks); `dst_core.recording.load_model`."""
    if run["status"] != "completed":
        raise HTTPException(404, detail=f"run {run_id} is {run['status']}: only a completed run "
                                        "has a trained model")
    data = await asyncio.to_thread(store.get_artifact, run_id, MODEL_ARTIFACT)
    if data is None:
        raise HTTPException(404, detail=f"run {run_id!r} stored no model")
    name = export_filename(run["name"]).removesuffix(".sparsescope") + ".pt"
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
