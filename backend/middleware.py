"""Pure-ASGI middleware of the server: bearer token, request body limits, request log lines.

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

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.logfmt import log_event

log = logging.getLogger("sparsescope.http")
TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']+")


def token_ok(presented: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal the token."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


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
            header = ""
            for key, value in scope.get("headers", []):
                if key == b"authorization":
                    header = value.decode("latin-1")
            presented = header[7:].strip() if header[:7].lower() == "bearer " else None
            if not token_ok(presented, self.token):
                log_event(log, "unauthorized", logging.WARNING, path=path,
                          client=_client(scope))
                await send_json(send, 401, {"detail": "missing or wrong bearer token"},
                                [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


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


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None
