"""Structured logs: one line per event, ``key=value`` pairs from ``extra=`` and bound context."""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any

__all__ = ["bind", "configure_logging"]

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "switchboard_log_context", default=None
)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def bind(**values: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Add values to every log line of this task (and tasks it starts)."""
    return _context.set({**(_context.get() or {}), **values})


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {**(_context.get() or {})}
        fields.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        line = (
            f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        if fields:
            line += " " + " ".join(f"{k}={v!r}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger("switchboard")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
