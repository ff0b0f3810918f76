"""Pure-ASGI middleware of the server: who may drive it (Host, Origin, token), what a request
may weigh (headers, body), the page's security headers, and request log lines.

Pure ASGI (not `@app.middleware("http")`) so each one also sees websockets where it matters,
never buffers a body, and lets an HTTPException raised while reading the body reach
FastAPI's own handler.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.logfmt import log_event

log = logging.getLogger("sparsescope.http")
TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']+")


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def token_ok(presented: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal the token."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def presented_token(scope: Scope) -> str | None:
    """The token a request carries: `Authorization: Bearer` (REST, scripts), else `?token=`
    (websockets: a browser cannot set headers on one)."""
    header = _header(scope, b"authorization")
    if header is not None and header[:7].lower() == "bearer ":
        return header[7:].strip()
    if scope["type"] == "websocket":
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        return values[0] if values else None
    return None


def authorized(scope: Scope, token: str | None) -> bool:
    """The one token check of the server, for REST (RequireToken) and websockets (stream)."""
    return not token or token_ok(presented_token(scope), token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def send_json(send: Send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


class RequireToken:
    """Every `/api/` request but the open ones needs `Authorization: Bearer <token>`.

    Websockets check `?token=` in their own route: a browser cannot set headers on one.
    """

    def __init__(self, app: ASGIApp, token: str, open_paths: tuple[str, ...]):
        self.app = app
        self.token = token
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] == "http" and path.startswith("/api/")
                and path not in self.open_paths):
            if not authorized(scope, self.token):
                log_event(log, "unauthorized", logging.WARNING, path=path,
                          client=_client(scope))
                await send_json(send, 401, {"detail": "missing or wrong bearer token"},
                                [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


class HeaderLimit:
    """431 for a request whose headers (names + values) pass `max_bytes`. The socket-level
    bound of `backend.http_limits` keeps such a head from being read whole under uvicorn;
    this gives the same answer under any server."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            size = sum(len(key) + len(value) for key, value in scope.get("headers", []))
            size += len(scope.get("query_string", b"")) + len(scope.get("raw_path", b"") or b"")
            if size > self.max_bytes:
                detail = (f"request headers too large: {size} bytes, at most {self.max_bytes} "
                          "(SPARSESCOPE_MAX_HEADER_BYTES)")
                await _refuse(scope, receive, send, 431, detail)
                return
        await self.app(scope, receive, send)


class SameOrigin:
    """Only the dashboard's own origin (and named `allowed_origins`) drives the server.

    A browser sends `Origin` on every state-changing request (also a `no-cors` fetch or a
    form post, which CORS does not stop) and on every websocket upgrade (which CORS does not
    cover at all): a foreign one is answered 403, so a page on another origin can neither
    start, stop, delete or import runs nor read a run over the websocket. Requests without
    `Origin` (scripts, the CLI, recorders, curl) are not from a page and pass; so does one
    without `Host` (HTTP/1.0: no browser sends that).

    Bound to loopback, `Host` must also name this machine (loopback names, the bound host,
    `allowed_hosts`): a DNS-rebinding page reaches 127.0.0.1 under its own name, and is
    refused (421) before it can read anything.
    """

    def __init__(self, app: ASGIApp, allowed_origins: list[str], allowed_hosts: list[str] | None):
        self.app = app
        self.allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}
        self.allowed_hosts = None if allowed_hosts is None else {
            host.lower().strip("[]") for host in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = (_header(scope, b"host") or "").lower()
        if self.allowed_hosts is not None and host and _host_name(host) not in self.allowed_hosts:
            log_event(log, "foreign_host", logging.WARNING, host=host[:100], client=_client(scope))
            await _refuse(scope, receive, send, 421,
                          f"Host {host[:100]!r} is not this server's name: a page reached it "
                          "under another name (DNS rebinding?); SPARSESCOPE_ALLOWED_HOSTS "
                          "adds names")
            return
        origin = _header(scope, b"origin")
        guarded = scope["type"] == "websocket" or scope.get("method") in STATE_CHANGING
        if guarded and origin is not None and not self._allowed(origin, scope, host):
            log_event(log, "foreign_origin", logging.WARNING, origin=origin[:100],
                      path=scope.get("path"), client=_client(scope))
            await _refuse(scope, receive, send, 403,
                          f"Origin {origin[:100]!r} may not drive this server: only the "
                          "dashboard's own origin (SPARSESCOPE_CORS_ORIGINS adds origins)")
            return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, scope: Scope, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        # The page's own origin names the Host it was loaded from. Only the authority is
        # compared: behind a TLS proxy the page is https:// while this server sees http.
        scheme, _, authority = origin.partition("://")
        return bool(host) and scheme in ("http", "https") and authority == host


def _host_name(host: str) -> str:
    """`127.0.0.1:8000` → `127.0.0.1`, `[::1]:8000` → `::1`."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SecurityHeaders:
    """Headers that keep the dashboard from being framed, sniffed or injected into.

    Every response: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and the
    frame policy (`frame_ancestors`, default 'self'; `X-Frame-Options: SAMEORIGIN` only then,
    as it cannot name other ancestors). The dashboard's own pages (`page_paths`)
    also get the CSP: same-origin scripts only (Plotly is served from /assets, no eval), no
    plugins, styles inline (Plotly sets them), images from data:/blob: (Plotly's exports)."""

    def __init__(self, app: ASGIApp, frame_ancestors: str, page_paths: tuple[str, ...]):
        self.app = app
        self.page_paths = page_paths
        self.common = [(b"x-content-type-options", b"nosniff"),
                       (b"referrer-policy", b"no-referrer")]
        if frame_ancestors.strip() == "'self'":
            self.common.append((b"x-frame-options", b"SAMEORIGIN"))
        self.frames = f"frame-ancestors {frame_ancestors.strip()}"
        self.page_policy = ("default-src 'self'; script-src 'self'; object-src 'none'; "
                            "base-uri 'none'; form-action 'self'; style-src 'self' "
                            "'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
                            f"connect-src 'self'; {self.frames}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        page = path in self.page_paths or path.startswith("/assets/")
        policy = (self.page_policy if page else self.frames).encode()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.common,
                                                  (b"content-security-policy", policy)]}
            await send(message)

        await self.app(scope, receive, with_headers)


class BodySizeLimit:
    """Refuse request bodies above a limit chosen by path (`limits`, else `default_bytes`).

    A declared Content-Length over the limit is answered 413 before anything is read; a
    chunked body is counted as it arrives and cut off with the same 413.
    """

    def limit_for(self, path: str) -> int:
        """The exact path's limit, else that of the longest prefix ending in "/", else the
        default (so every remote-writer route under /api/ingest/ shares one limit)."""
        if path in self.limits:
            return self.limits[path]
        prefixes = [key for key in self.limits if key.endswith("/") and path.startswith(key)]
        return self.limits[max(prefixes, key=len)] if prefixes else self.default_bytes

    def __init__(self, app: ASGIApp, default_bytes: int, limits: dict[str, int]):
        self.app = app
        self.default_bytes = default_bytes
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        detail = f"request body too large: at most {limit} bytes for {scope['path']}"
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_json(send, 400, {"detail": "invalid Content-Length"})
                    return
                if declared > limit:
                    await send_json(send, 413, {"detail": detail})
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, detail=detail)
            return message

        await self.app(scope, counting_receive, send)


class AccessLog:
    """One structured line per request: method, path (never the query: it may hold the
    websocket token), status and duration."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            log_event(log, "request", logging.INFO if status < 500 else logging.ERROR,
                      method=scope.get("method"), path=scope.get("path"), status=status,
                      ms=round((time.perf_counter() - started) * 1000, 1), client=_client(scope))


class RedactTokens(logging.Filter):
    """Uvicorn logs websocket URLs with their query string: blank out `token=…` in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        if "token=" in text:
            record.msg, record.args = TOKEN_IN_TEXT.sub(r"\1***", text), None
        return True


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    """Answer a request (JSON) or refuse a websocket handshake (an HTTP response, where the
    server supports it) with `status` and `detail`."""
    if scope["type"] == "http":
        await send_json(send, status, {"detail": detail})
        return
    await receive()  # websocket.connect
    payload = json.dumps({"detail": detail}).encode()
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "websocket.http.response.body", "body": payload})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None
