"""Remote writer: a training job on another machine records into a running sparsescope server.

Events travel in the websocket's JSON wire format to the server's ingest endpoints
(`/api/ingest/runs...`), each carrying a `seq` the writer assigns, so a batch resent after a
lost reply is stored once. Sending happens on a background thread: training never waits for
the network. Batches not yet acknowledged live in a bounded spool file on disk; while the
server is unreachable the thread retries with backoff. It gives up, loudly (a warning at once
and RemoteRecorderError on the next call), when the server refuses the run (bad token, run
ended), when it stays unreachable for `give_up_after_s`, or when the spool is full; the
undelivered batches stay in the spool file, whose path the message names. Only the standard
library is used (urllib), so the library gains no dependency.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections import deque
from pathlib import Path

from dst_core.events import LOCAL_CHANGES
from dst_core.store.run_store import dumps

log = logging.getLogger("sparsescope.remote")


def default_spool_dir() -> Path:
    """Where a remote writer keeps what the server has not acknowledged yet."""
    return Path(os.environ.get("SPARSESCOPE_SPOOL_DIR", Path.home() / ".cache" / "sparsescope"))


class RemoteRecorderError(RuntimeError):
    """The remote recorder gave up: the server refused the run or stayed unreachable."""


class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


def wire_event(event_type: str, step: int, payload: dict, seq: int) -> dict:
    """One event as the ingest endpoint takes it (in-process-only fields left out)."""
    payload = {key: value for key, value in payload.items() if key != LOCAL_CHANGES}
    return {**payload, "seq": seq, "step": int(step), "type": event_type}


class RemoteWriter:
    """Sends one run's events to a server; spools and retries while it is unreachable."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        spool_dir: str | Path | None = None,
        spool_max_bytes: int = 64 * 1024 * 1024,  # a few hours of a small model's frames
        give_up_after_s: float = 300.0,  # a server restart or a network blip, not an outage
        timeout_s: float = 10.0,  # one HTTP request
        heartbeat_s: float = 2.0,  # well under the server's stale timeout
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url: must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        self.spool_max_bytes = spool_max_bytes
        self.give_up_after_s = give_up_after_s
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.run_id = ""
        self.next_seq = 1
        self.spool_path: Path | None = None
        self._pending: deque[tuple[int, int, bytes]] = deque()  # (first seq, last seq, body)
        self._spool_bytes = 0  # bytes of the batches not acknowledged yet (what the bound is on)
        self._file_bytes = 0  # bytes in the spool file (acknowledged batches until compacted)
        self._cond = threading.Condition()
        self._closing = False
        self._error: RemoteRecorderError | None = None
        self._thread: threading.Thread | None = None

    # ---- HTTP ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json"):
        headers = {**self.headers, "Content-Type": content_type}
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            if error.code in (408, 425, 429) or error.code >= 500:
                raise _Retryable(f"HTTP {error.code}: {detail}") from None
            if error.code in (404, 410) and self.run_id and \
                    path.startswith(f"/api/ingest/runs/{self.run_id}/"):
                raise _Fatal(f"run {self.run_id} is no longer on the server: it was deleted "
                             f"there (HTTP {error.code}: {detail}); recording stopped") from None
            raise _Fatal(f"the server answered HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise _Retryable(str(getattr(error, "reason", error))) from None
        return json.loads(text) if text else None

    def _with_retries(self, method: str, path: str, body: bytes | None = None,
                      content_type: str = "application/json"):
        deadline = time.monotonic() + self.give_up_after_s
        delay = 0.2
        while True:
            try:
                return self._request(method, path, body, content_type)
            except _Retryable as error:
                if time.monotonic() >= deadline:
                    raise RemoteRecorderError(
                        f"sparsescope server {self.url} unreachable for {self.give_up_after_s:g} s "
                        f"({error})") from None
                time.sleep(delay)
                delay = min(5.0, delay * 2)
            except _Fatal as error:
                raise RemoteRecorderError(f"{self.url}{path}: {error}") from None

    # ---- writer interface -----------------------------------------------------------------------
    def create(self, name: str, config: dict, info: dict) -> str:
        body = dumps({"name": name, "config": config, "info": info}).encode()
        try:
            created = self._request("POST", "/api/ingest/runs", body)
        except _Retryable as error:
            # Said at once: a wrong URL would otherwise look like a hang for give_up_after_s.
            warnings.warn(f"sparsescope server {self.url} unreachable ({error}); retrying for up "
                          f"to {self.give_up_after_s:g} s (give_up_after_s)", RuntimeWarning,
                          stacklevel=3)
            created = self._with_retries("POST", "/api/ingest/runs", body)
        except _Fatal as error:
            raise RemoteRecorderError(f"{self.url}/api/ingest/runs: {error}") from None
        self.run_id, self.next_seq = created["id"], int(created["next_seq"])
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool_path = self.spool_dir / f"{self.run_id}-{uuid.uuid4().hex[:6]}.spool"
        self.spool_path.write_bytes(b"")
        self._thread = threading.Thread(target=self._send_loop, daemon=True,
                                        name="recorder-remote-sender")
        self._thread.start()
        return self.run_id

    def open(self, run_id: str):
        raise ValueError("run_id: a remote recorder creates its own run on the server")

    def write(self, events: list, summary: dict | None) -> None:
        self._raise_if_gave_up()
        wire = []
        for event_type, step, payload in events:
            wire.append(wire_event(event_type, step, payload, self.next_seq))
            self.next_seq += 1
        if not wire:
            return
        body = dumps({"events": wire, "summary": summary}).encode()
        with self._cond:
            if self._spool_bytes + len(body) > self.spool_max_bytes:
                self._give_up(f"the spool file is full: {self._spool_bytes} bytes of batches the "
                              f"server has not acknowledged yet (spool_max_bytes="
                              f"{self.spool_max_bytes})")
                self._raise_if_gave_up()
            with open(self.spool_path, "ab") as spool:
                spool.write(body + b"\n")
            self._spool_bytes += len(body) + 1
            self._file_bytes += len(body) + 1
            self._pending.append((wire[0]["seq"], wire[-1]["seq"], body))
            self._cond.notify_all()

    def status(self, status: str, error: str | None, step: int) -> None:
        payload = {"status": status} if error is None else {"status": status, "error": error}
        self.write([("status", step, payload)], None)

    def heartbeat(self) -> None:
        """The sender thread beats on its own; nothing to do from the recorder's thread."""

    def put_artifact(self, name: str, data: bytes) -> None:
        self._drain()
        self._raise_if_gave_up()
        self._with_retries("PUT", f"/api/ingest/runs/{self.run_id}/artifacts/{name}", data,
                           "application/octet-stream")

    def close(self) -> None:
        self._drain()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._raise_if_gave_up()
        if self.spool_path is not None:
            self.spool_path.unlink(missing_ok=True)

    # ---- sender thread ----------------------------------------------------------------------------
    def _drain(self) -> None:
        with self._cond:
            while self._pending and self._error is None:
                self._cond.wait(0.1)

    def _send_loop(self) -> None:
        failing_since: float | None = None
        delay = 0.2
        last_contact = time.monotonic()
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(max(0.0, self.heartbeat_s - (time.monotonic() - last_contact)))
                if self._error is not None or (self._closing and not self._pending):
                    return
                batch = self._pending[0] if self._pending else None
            try:
                if batch is not None:
                    self._request("POST", f"/api/ingest/runs/{self.run_id}/events", batch[2])
                    with self._cond:
                        self._acknowledged(self._pending.popleft())
                        self._cond.notify_all()
                elif time.monotonic() - last_contact >= self.heartbeat_s:
                    self._request("POST", f"/api/ingest/runs/{self.run_id}/heartbeat", b"{}")
                else:
                    continue
                last_contact = time.monotonic()
                failing_since, delay = None, 0.2
            except _Retryable as error:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= self.give_up_after_s:
                    with self._cond:
                        self._give_up(f"the server stayed unreachable for {self.give_up_after_s:g} s "
                                      f"({error})")
                    return
                log.info("sparsescope server unreachable (%s); retrying in %.1f s", error, delay)
                time.sleep(delay)
                delay = min(5.0, delay * 2)
            except _Fatal as error:
                with self._cond:
                    self._give_up(str(error))
                return

    def _acknowledged(self, batch: tuple[int, int, bytes]) -> None:
        """Called with the condition held. The bound is on what the server has not taken yet,
        so a writer that is always a batch or two behind a busy server never fills it; the
        file drops its acknowledged batches when everything is in, or once it holds more than
        the bound (rewritten with the pending batches only: at most the bound, rarely)."""
        self._spool_bytes -= len(batch[2]) + 1
        if not self._pending:
            self.spool_path.write_bytes(b"")
            self._spool_bytes = self._file_bytes = 0
        elif self._file_bytes > self.spool_max_bytes:
            self.spool_path.write_bytes(b"".join(body + b"\n" for _, _, body in self._pending))
            self._file_bytes = self._spool_bytes

    def _give_up(self, reason: str) -> None:
        """Called with the condition held: record why, warn once, wake every waiter."""
        if self._error is not None:
            return
        undelivered = ""
        if self._pending:
            undelivered = (f"; events seq {self._pending[0][0]}..{self._pending[-1][1]} were not "
                           f"delivered and are kept in {self.spool_path}")
        message = (f"sparsescope remote recorder gave up on run {self.run_id} at {self.url}: "
                   f"{reason}{undelivered}")
        self._error = RemoteRecorderError(message)
        log.error(message)
        try:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        except RuntimeWarning:  # warnings turned into errors: the error above still stands
            pass
        self._cond.notify_all()

    def _raise_if_gave_up(self) -> None:
        if self._error is not None:
            raise self._error
