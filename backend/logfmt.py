"""Structured log lines: `event=run_started run=0123abcd… pid=4242`, one event per line.

logfmt keeps lines greppable by a person and parseable by a log shipper without a JSON
dependency; values with spaces or quotes are quoted, so a line always splits unambiguously.
"""

from __future__ import annotations

import logging


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
