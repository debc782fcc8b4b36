"""Structured logs, by structlog: every module logs through the standard library, and one
``ProcessorFormatter`` renders each line with the context bound for its task (:func:`bind`:
message, activity ids...) and the call's own ``extra=`` fields, as readable console lines or
as JSON lines (``SWITCHBOARD_LOG_FORMAT``). Nothing secret is ever passed to a log call.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["FORMATS", "bind", "configure_logging"]

FORMATS = ("console", "json")


def bind(**values: Any) -> None:
    """Add values to every log line of this task (and of the tasks it starts)."""
    structlog.contextvars.bind_contextvars(**values)


def _renderer(log_format: str) -> list[Any]:
    if log_format == "json":
        return [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    return [
        structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    ]


def configure_logging(level: str, log_format: str = "console") -> None:
    """Lines of the ``switchboard`` loggers at ``level`` and above, to standard error."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_renderer(log_format),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger("switchboard")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
