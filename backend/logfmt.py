"""Structured log lines: `event=run_started run=0123abcd… pid=4242`, one event per line.

logfmt keeps lines greppable by a person and parseable by a log shipper without a JSON
dependency; values with spaces or quotes are quoted, so a line always splits unambiguously.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading


def _value(value: object) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if text == "" or any(char in text for char in ' "=\\\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def format_event(event: str, **fields: object) -> str:
    parts = [f"event={event}"]
    parts += [f"{key}={_value(value)}" for key, value in fields.items() if value is not None]
    return " ".join(parts)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: object) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, format_event(event, **fields))


class ConsoleOffTheLoop:
    """Moves the console handlers of the server's loggers onto a background thread.

    Why: writing to a console that is not being read (a pipe nobody drains, a paused
    terminal) blocks; done on the event loop, one blocked log line freezes every request and
    websocket of the server. Records wait in a bounded queue instead; when it is full, lines
    are dropped (and counted), never the server. Only plain StreamHandlers move (uvicorn's,
    `logging.basicConfig`'s); subclasses such as pytest's capture handlers stay as they are.
    """

    LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "sparsescope")

    def __init__(self, max_lines: int = 10_000):
        self.queue: queue.Queue = queue.Queue(max_lines)
        self.dropped = 0
        self._moved: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            for handler in [item for item in logger.handlers if type(item) is logging.StreamHandler]:
                relay = _Relay(self, handler)
                logger.removeHandler(handler)
                logger.addHandler(relay)
                self._moved.append((logger, handler, relay))
        if self._moved:
            self._thread = threading.Thread(target=self._write, daemon=True, name="console-log")
            self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Write what is queued (at most `timeout_s`: the console may still be blocked) and
        put the handlers back."""
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self.queue.put(None, timeout=timeout_s)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                return  # still blocked: later lines keep going to the queue (or are dropped)
            self._thread = None
        for logger, handler, relay in self._moved:
            logger.removeHandler(relay)
            logger.addHandler(handler)
        self._moved = []

    def _write(self) -> None:
        while (item := self.queue.get()) is not None:
            handler, record = item
            with contextlib.suppress(Exception):
                handler.handle(record)


class _Relay(logging.Handler):
    def __init__(self, console: ConsoleOffTheLoop, target: logging.Handler):
        super().__init__(target.level)
        self.console = console
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.queue.put_nowait((self.target, record))
        except queue.Full:
            self.console.dropped += 1
