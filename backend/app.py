"""The app factory: one isolated app per Settings (tests build theirs on temporary folders)."""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from pathlib import Path

import plotly
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from backend.api import api_router, ws_router
from backend.manager import RunManager
from backend.settings import Settings
from dst_core import __version__
from dst_core.recording import RunStore

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
OPEN_PATHS = ("/api/health",)

log = logging.getLogger("sparsescope")


def _token_ok(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.check()
    store = RunStore(settings.data_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await app.state.manager.start()
        try:
            yield
        finally:
            await app.state.manager.shutdown()

    app = FastAPI(title="sparsescope", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.manager = RunManager(store, settings)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        path = request.url.path
        if settings.token and path.startswith("/api/") and path not in OPEN_PATHS:
            header = request.headers.get("authorization", "")
            presented = header[7:] if header.lower().startswith("bearer ") else None
            if not _token_ok(presented, settings.token):
                return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)
        return await call_next(request)

    app.include_router(api_router)
    app.include_router(ws_router)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(FRONTEND_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(FRONTEND_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=FRONTEND_DIR), name="static")
    return app
