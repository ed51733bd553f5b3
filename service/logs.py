"""Structured logs: JSON when not on a terminal, readable on one."""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

import structlog


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Route structlog and stdlib logging through one renderer."""
    json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would duplicate our per-request lines; its errors still pass.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def get(name: str) -> structlog.stdlib.BoundLogger:
    """A logger for one module."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def bind_request(scope: Any) -> None:
    """Tag this request's log lines with its id (X-Request-ID or a fresh one), method and
    path; each request runs in its own task, so the tags stay with it."""
    request_id = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=request_id.decode("latin-1") or uuid.uuid4().hex[:16],
        method=scope["method"],
        path=scope["path"],
    )
