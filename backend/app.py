"""The app factory: one isolated app per Settings (tests build theirs on temporary folders)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.api import api_router, ws_router
from backend.folder_lock import FolderLock
from backend.logfmt import ConsoleOffTheLoop, log_event
from backend.manager import RunManager
from backend.middleware import (
    AccessLog,
    BodySizeLimit,
    HeaderLimit,
    RedactTokens,
    RequireToken,
    SameOrigin,
    SecurityHeaders,
)
from backend.services.churn import ChurnReader
from backend.services.overlap import Overlap
from backend.services.stream_hub import StreamHubs
from backend.services.topology_reader import IndexCache, TopologyReader
from backend.services.views import LayerViews
from backend.settings import Settings, parsed_settings
from backend.static_assets import PREFIX as ASSETS_PREFIX
from backend.static_assets import StaticAssets
from dst_core import __version__
from dst_core.store import RunStore
from dst_core.store.schema import InvalidValue

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"
OPEN_PATHS = ("/api/health",)
PAGE_PATHS = ("/", "/favicon.ico")
# sqlite3's words for a disk that is full, and for one that refuses (read-only, I/O error):
# the server answers 507 / 503 with the cause instead of a bare 500, and recovers with the disk.
DISK_FULL = ("database or disk is full", "disk is full")

log = logging.getLogger("sparsescope")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The whole server for one Settings: API, websocket, dashboard, workers' manager."""
    settings = settings or parsed_settings()  # a bad variable: one line naming it
    settings.check()
    _configure_logging(settings)
    from dst_core.plugins import load_plugins

    load_plugins()  # user methods named in $SPARSESCOPE_PLUGINS join the registry (and form)
    try:
        store = RunStore(settings.data_dir, max_frame_elements=settings.max_parameters)
        # The folder keeps it: the workers and any script writing this folder refuse alike.
        store.set_max_metric_names(settings.max_metric_names)
    except (OSError, sqlite3.Error) as error:
        # A ValueError is what the CLI reports as a one-line refusal instead of a traceback.
        raise ValueError(f"data_dir: cannot use {settings.data_dir}: {error}") from error

    folder_lock = FolderLock(settings.data_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Before anything reads the folder's runs: a second server must not fail the first's.
        folder_lock.acquire(settings.host, settings.port)
        console = ConsoleOffTheLoop()  # after uvicorn has set up its handlers
        console.start()
        await app.state.manager.start()
        log_event(log, "server_started", host=settings.host, port=settings.port,
                  data_dir=str(settings.data_dir), token=bool(settings.token),
                  workers=settings.max_concurrent_runs)
        try:
            yield
        finally:
            await app.state.manager.shutdown()
            log_event(log, "server_stopped", log_lines_dropped=console.dropped or None)
            console.stop()
            folder_lock.release()

    app = FastAPI(title="sparsescope", version=__version__, lifespan=lifespan,
                  description="Dynamic sparse training with a live view of the topology.")
    app.state.settings = settings
    app.state.store = store
    app.state.manager = RunManager(store, settings)
    # The read-models, one set per app (its store, its caches): two apps never share a cache.
    app.state.layer_views = LayerViews(store)
    app.state.topology = TopologyReader(store, IndexCache(settings.topology_cache_mb << 20),
                                        reader=app.state.layer_views.reader)
    app.state.overlap = Overlap(app.state.layer_views.reader)
    app.state.churn = ChurnReader(app.state.topology)
    app.state.stream_hubs = StreamHubs(store, reader=app.state.layer_views.reader)
    app.state.folder_lock = folder_lock
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(InvalidValue, _invalid_value)
    app.add_exception_handler(sqlite3.Error, _storage_error)

    # Added innermost first. A request meets AccessLog, the header limit, Host and Origin,
    # the security headers, CORS, the token, and last the body limit (the only one: every
    # route reads its body through it).
    app.add_middleware(BodySizeLimit, default_bytes=settings.max_body_bytes,
                       limits=settings.body_limits())
    if settings.token:
        app.add_middleware(RequireToken, token=settings.token, open_paths=OPEN_PATHS)
    if settings.cors_origins:
        # Off unless origins are named: the dashboard is served from this same origin.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "If-None-Match"],
                           # the runs list's paging and the metrics' name count, readable
                           expose_headers=["Link", "X-Total-Count", "ETag",
                                           "X-Metric-Names-Total"])
    app.add_middleware(SecurityHeaders, frame_ancestors=settings.frame_ancestors,
                       page_paths=PAGE_PATHS)
    app.add_middleware(SameOrigin, allowed_origins=settings.cors_origins,
                       allowed_hosts=settings.host_names())
    app.add_middleware(HeaderLimit, max_bytes=settings.max_header_bytes)
    app.add_middleware(AccessLog)

    app.include_router(api_router)
    app.include_router(ws_router)
    app.openapi = _openapi_with_resolvable_refs(app)

    assets = StaticAssets(FRONTEND_DIR)
    app.state.assets = assets

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return assets.page()

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(FRONTEND_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get(ASSETS_PREFIX + "/{build}/{name:path}", include_in_schema=False)
    def asset(request: Request, build: str, name: str) -> Response:
        return assets.serve(request, build, name)

    return app


def _openapi_with_resolvable_refs(app: FastAPI):
    """FastAPI's schema, with the `$defs` of a model schema given by hand (a route's
    `openapi_extra`) moved to components: `#/$defs/...` resolves nowhere in an OpenAPI file."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        components = spec.setdefault("components", {}).setdefault("schemas", {})

        def hoist(node):
            if isinstance(node, dict):
                for name, schema in node.pop("$defs", {}).items():
                    components.setdefault(name, hoist(schema))
                if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/$defs/"):
                    node["$ref"] = "#/components/schemas/" + node["$ref"].removeprefix("#/$defs/")
                for value in node.values():
                    hoist(value)
            elif isinstance(node, list):
                for value in node:
                    hoist(value)
            return node

        hoist(spec["paths"])
        app.openapi_schema = spec
        return spec

    return openapi


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with one `{loc, msg, type}` per problem, each message starting with the field's
    name; the offending input is never echoed back (it may be megabytes, or a secret)."""
    detail = []
    for item in error.errors():
        loc = [part if isinstance(part, (str, int)) else str(part) for part in item.get("loc", ())]
        loc = loc or ["body"]  # an error about the whole body (raw-bytes validation) has none
        try:
            message = _message(item, loc)
        except Exception:  # an error's wording must never turn a 422 into a 500
            message = f"{'.'.join(map(str, loc))}: {item.get('msg', 'invalid')}"
        detail.append({"loc": loc, "msg": message, "type": item.get("type", "")})
    log_event(log, "invalid_request", logging.INFO, path=request.url.path,
              fields=",".join(str(entry["loc"][-1]) for entry in detail if entry["loc"]))
    return JSONResponse({"detail": detail}, status_code=422)


# FastAPI answers a body it cannot even decode with "There was an error parsing the body";
# the cause it chains says which of these it was.
UNPARSABLE_BODY = {
    UnicodeDecodeError: "body: not valid JSON text (it is not UTF-8)",
    RecursionError: "body: JSON nested too deeply",
}


async def _invalid_value(request: Request, error: InvalidValue) -> JSONResponse:
    """A value the store refused (dst_core.store.schema): 422 naming the field, like
    any other validation error, and nothing of the request stored."""
    loc: list[str | int] = ["body"]
    for part in error.field.replace("]", "").replace("[", ".").split("."):
        loc.append(int(part) if part.isdigit() else part)
    log_event(log, "invalid_value", logging.INFO, path=request.url.path, field=error.field)
    return JSONResponse({"detail": [{"loc": loc, "msg": str(error), "type": "value_error"}]},
                        status_code=422)


async def _storage_error(request: Request, error: sqlite3.Error) -> JSONResponse:
    """The disk refused a read or write: 507 when it is full, 503 otherwise (read-only,
    I/O error, locked), with sqlite's own words. Nothing committed is lost (a failed
    transaction rolls back), and the next request succeeds once the disk does."""
    text = str(error)
    full = any(phrase in text for phrase in DISK_FULL)
    log_event(log, "storage_fault", logging.ERROR, path=request.url.path, error=text)
    return JSONResponse(
        {"detail": f"storage {'full' if full else 'unavailable'}: {text} (data folder "
                   f"{request.app.state.settings.data_dir}); nothing recorded was lost, retry "
                   "once the disk is writable"},
        status_code=507 if full else 503)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own answer, with a body that could not be decoded named as such, and a read
    that lost its run to a delete midway (its frames gone under it) the 404 of a missing run,
    not a "stored data" 422 that blames the data."""
    if error.status_code == 422 and str(error.detail).startswith("stored data"):
        run_id = request.path_params.get("run_id")
        store = request.app.state.store
        try:
            gone = isinstance(run_id, str) and await asyncio.to_thread(store.get_run, run_id) is None
        except Exception:  # a store that cannot say (a disk fault): the 422 stands, never a 500
            gone = False
        if gone:
            error = StarletteHTTPException(404, detail=f"no run {run_id!r}")
    if error.status_code == 400:
        for kind, reason in UNPARSABLE_BODY.items():
            if isinstance(error.__cause__, kind):
                error = StarletteHTTPException(400, detail=reason)
                break
    return await http_exception_handler(request, error)


def _message(item: dict, loc: list) -> str:
    kind = item.get("type", "")
    text = str(item.get("msg", "invalid"))
    if kind == "json_invalid":
        # FastAPI's own parser puts the character position last in `loc`; a route that
        # validates raw bytes itself (pydantic's model_validate_json) gives no location.
        reason = str((item.get("ctx") or {}).get("error", ""))
        where = f" at position {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return f"body: malformed JSON{where}: {reason}".rstrip(": ")
    if kind == "extra_forbidden":
        text = "unknown field"
    text = text.removeprefix("Value error, ")
    where = loc[1:] if loc[:1] and loc[0] in ("body", "query", "path", "header") else loc
    field = ".".join(part for part in where if isinstance(part, str)) or (loc[0] if loc else "body")
    indices = "".join(f"[{part}]" for part in where if isinstance(part, int))
    return f"{field}{indices}: {text}"


def _configure_logging(settings: Settings) -> None:
    logging.getLogger("sparsescope").setLevel(settings.log_level.upper())
    redact = RedactTokens()
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(item, RedactTokens) for item in logger.filters):
            logger.addFilter(redact)
