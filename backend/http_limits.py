"""Request heads bounded at the socket: uvicorn's HTTP protocol with a size limit on headers.

Why here and not in a middleware: by the time an ASGI app sees a request its headers have
been parsed into memory, and uvicorn's httptools parser accepts a head of any size (a 200 MB
header was answered after a minute, the server 360 MB larger). This protocol counts the bytes
of a request's head as they arrive and answers 431 once they pass the limit, so the memory
a head can take is the limit plus one socket read. The HeaderLimit middleware gives the same
answer to servers run any other way (tests, other ASGI servers).
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

TOO_LARGE = "request headers too large: at most {limit} bytes (SPARSESCOPE_MAX_HEADER_BYTES)"


class BoundedHeadProtocol(HttpToolsProtocol):
    """httptools protocol that refuses a request head larger than `max_head_bytes`."""

    max_head_bytes = 64 * 1024

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._in_head = True
        self._head_bytes = 0
        super().connection_made(transport)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes \
                and not self.transport.is_closing():
            self._send_431()

    def _send_431(self) -> None:
        message = TOO_LARGE.format(limit=self.max_head_bytes).encode("ascii")
        self.transport.write(b"".join([
            STATUS_LINE[431], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(message)).encode("ascii") + b"\r\n",
            b"connection: close\r\n", b"\r\n", message]))
        self.transport.close()


def bounded_http_protocol(max_head_bytes: int) -> type[BoundedHeadProtocol]:
    """The protocol class for `uvicorn.run(http=...)` with this server's header limit."""
    return type("BoundedHeadProtocol", (BoundedHeadProtocol,), {"max_head_bytes": max_head_bytes})
