"""The dashboard's own files, served so a second open costs no request and a first one little.

Every file under `frontend/` is served at `/assets/<build>/<path>`, where `<build>` is a hash
of the whole folder taken when the app is created. An address therefore names one content for
good: it is sent with `Cache-Control: immutable` for a year, and a new release (any changed
file) has new addresses, so no browser ever runs stale code. The page itself (`/`) is small
and `no-cache`: it is what carries the build into the browser. It loads the modules as one
file, `js/bundle.js`, linked from them here (backend/js_bundle.py: one request instead of one
per module and import level); the module files are served too, and import each other by
relative path, so they resolve inside the same build without knowing it.

Text files are gzip-compressed once, on first request, and kept (the folder is ~2 MB, the
charting bundle 1.5 MB of it → ~0.45 MB on the wire). An address with another build (a page
loaded before an upgrade) gets today's file with `no-cache`, never a 404 mid-session.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from backend.js_bundle import bundle

MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".png": "image/png",
    ".woff2": "font/woff2",
}
COMPRESSED = {".js", ".css", ".html", ".svg", ".txt", ".json", ".map"}
IMMUTABLE = "public, max-age=31536000, immutable"
PREFIX = "/assets"
BUNDLE = "js/bundle.js"  # the page's one script: js/app.js and every module it imports


class StaticAssets:
    """The files of one frontend folder, their build hash and their compressed forms."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.files = {path.relative_to(self.root).as_posix(): path
                      for path in sorted(self.root.rglob("*"))
                      if path.is_file() and not any(part.startswith(".") for part in
                                                    path.relative_to(self.root).parts)}
        digest = hashlib.sha256()
        for name, path in self.files.items():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
        self.build = digest.hexdigest()[:12]
        self.base = f"{PREFIX}/{self.build}"
        if BUNDLE in self.files or f"{BUNDLE}.map" in self.files:
            raise ValueError(f"{BUNDLE} is built from the modules: no file may have its name")
        # Derived from the files the hash covers: same build, same bundle.
        linked = bundle(self.root / "js", "app.js", map_name=Path(BUNDLE).name + ".map")
        self.generated = {BUNDLE: linked.code, f"{BUNDLE}.map": linked.source_map}
        self._bodies: dict[tuple[str, bool], bytes] = {}
        self._lock = threading.Lock()
        self._page = self._render_page()

    def _render_page(self) -> bytes:
        """index.html with the build's addresses."""
        text = self.files["index.html"].read_text(encoding="utf-8")
        return text.replace("{{assets}}", self.base).encode()

    def page(self) -> Response:
        """The dashboard page: revalidated on every load, as it carries the build."""
        return Response(self._page, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    def body(self, name: str, compressed: bool) -> bytes:
        """The file's bytes, gzip-compressed when asked; both kept after the first read."""
        key = (name, compressed)
        with self._lock:
            cached = self._bodies.get(key)
        if cached is None:
            raw = self.generated[name] if name in self.generated else self.files[name].read_bytes()
            cached = gzip.compress(raw, compresslevel=9, mtime=0) if compressed else raw
            with self._lock:
                self._bodies[key] = cached
        return cached

    def serve(self, request: Request, build: str, name: str) -> Response:
        """One file of the folder (404 for anything else: no listing, no path outside it)."""
        if (name not in self.files and name not in self.generated) or name == "index.html":
            return Response("not found", status_code=404, media_type="text/plain")
        current = build == self.build
        etag = f'"{self.build}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"'
        headers = {"Cache-Control": IMMUTABLE if current else "no-cache", "ETag": etag,
                   "Vary": "Accept-Encoding"}
        if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        suffix = Path(name).suffix
        media = MEDIA_TYPES.get(suffix, "application/octet-stream")
        gzip_ok = suffix in COMPRESSED and accepts_gzip(request.headers.get("accept-encoding", ""))
        if gzip_ok:
            headers["Content-Encoding"] = "gzip"
        return Response(self.body(name, gzip_ok), media_type=media, headers=headers)


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip;q=0` refuses it)."""
    for part in header.split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() in ("gzip", "*"):
            quality = params.strip().removeprefix("q=")
            try:
                return not params.strip() or float(quality) > 0
            except ValueError:
                return False
    return False
