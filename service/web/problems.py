"""Errors as RFC 9457 problem details (``application/problem+json``), never a bare 500."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.types import ExceptionHandlersMap

from .. import logs
from ..core.auth import Forbidden, Unauthenticated
from ..core.database import UNAVAILABLE
from ..core.events import AfterHead, Trimmed
from ..core.leases import LeaseLost, NameTaken, UnknownConsumer
from ..core.limits import Limited
from ..core.topics import InvalidInput
from .access import NotJSON

log = logs.get(__name__)


def problem(
    status: int,
    kind: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemDetailsException:
    """A problem with a stable ``type`` (``urn:changefeed:problem:<kind>``)."""
    return ProblemDetailsException(
        status_code=status,
        type_=f"urn:changefeed:problem:{kind}",
        title=title,
        detail=detail,
        headers=headers,
        extra=extra or None,
    )


def render(status: int, kind: str, title: str, detail: str) -> bytes:
    """The body of a problem answered below Litestar (by the HTTP protocol or fastpath)."""
    return json.dumps(
        {
            "type": f"urn:changefeed:problem:{kind}",
            "title": title,
            "status": status,
            "detail": detail,
        }
    ).encode()


def unavailable(detail: str) -> ProblemDetailsException:
    return problem(503, "unavailable", "Service unavailable", detail, headers={"Retry-After": "1"})


def _invalid_input(request: Request[Any, Any, Any], exc: InvalidInput) -> Response[Any]:
    return problem(400, "invalid-input", "Invalid input", str(exc)).to_response(request)


def _after_head(request: Request[Any, Any, Any], exc: AfterHead) -> Response[Any]:
    return problem(
        409,
        "after-head",
        "Starting point beyond the topic's head",
        f"seq {exc.after} is beyond the topic's head ({exc.head}): no such event was ever sent",
        head=exc.head,
    ).to_response(request)


def _unauthenticated(request: Request[Any, Any, Any], exc: Unauthenticated) -> Response[Any]:
    return problem(
        401,
        "unauthenticated",
        "Authentication required",
        str(exc),
        headers={"WWW-Authenticate": 'Bearer realm="changefeed"'},
    ).to_response(request)


def _forbidden(request: Request[Any, Any, Any], exc: Forbidden) -> Response[Any]:
    return problem(403, "forbidden", "Not granted", str(exc)).to_response(request)


def _not_json(request: Request[Any, Any, Any], exc: NotJSON) -> Response[Any]:
    return problem(415, "unsupported-media-type", "Body must be JSON", str(exc)).to_response(
        request
    )


def _limited(request: Request[Any, Any, Any], exc: Limited) -> Response[Any]:
    return problem(
        429,
        "rate-limited",
        "Over a per-subject limit",
        str(exc),
        headers={"Retry-After": str(exc.retry_after)},
    ).to_response(request)


def _trimmed(request: Request[Any, Any, Any], exc: Trimmed) -> Response[Any]:
    return problem(
        410,
        "trimmed",
        "Events removed by retention",
        f"retention removed the events after seq {exc.after} up to seq {exc.first_seq - 1}; "
        f"the first seq still held is {exc.first_seq}",
        first_seq=exc.first_seq,
    ).to_response(request)


def _unknown_consumer(request: Request[Any, Any, Any], exc: UnknownConsumer) -> Response[Any]:
    return problem(
        404, "unknown-consumer", "No such consumer", f"no consumer is named {exc.args[0]!r}"
    ).to_response(request)


def _lease_lost(request: Request[Any, Any, Any], exc: LeaseLost) -> Response[Any]:
    return problem(409, "lease-lost", "Lease not held", str(exc)).to_response(request)


def _name_taken(request: Request[Any, Any, Any], exc: NameTaken) -> Response[Any]:
    return problem(
        409,
        "name-taken",
        "Consumer name in use",
        f"a consumer named {exc.args[0]!r} belongs to another subject: choose another name",
    ).to_response(request)


# Values PostgreSQL refused: JSON it cannot store (a \u0000 in a string), and event data
# against the inbox's rule (too deep, a number too large, too large as stored).
REFUSED = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)


def data_error_detail(exc: asyncpg.PostgresError) -> str:
    """What to tell a client whose value PostgreSQL refused (one of REFUSED): a 400
    invalid-input with PostgreSQL's message and hint."""
    message = str(exc.args[0]) if exc.args else str(exc)
    hint = getattr(exc, "hint", None)
    return f"{message}. {hint}" if hint else message


def _data_error(request: Request[Any, Any, Any], exc: asyncpg.PostgresError) -> Response[Any]:
    detail = data_error_detail(exc)
    return problem(400, "invalid-input", "Invalid input", detail).to_response(request)


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("database.unavailable", error=str(exc), path=request.url.path)
    return unavailable("the database is unreachable; retry shortly").to_response(request)


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("request.failed", path=request.url.path)
    return problem(500, "internal", "Internal error", "see the service log").to_response(request)


def handlers() -> ExceptionHandlersMap:
    """Exception handlers for the app (HTTP errors are mapped by ProblemDetailsPlugin)."""
    mapping: ExceptionHandlersMap = {
        InvalidInput: _invalid_input,
        AfterHead: _after_head,
        Trimmed: _trimmed,
        Unauthenticated: _unauthenticated,
        Forbidden: _forbidden,
        NotJSON: _not_json,
        Limited: _limited,
        UnknownConsumer: _unknown_consumer,
        LeaseLost: _lease_lost,
        NameTaken: _name_taken,
    }
    for refused in REFUSED:
        mapping[refused] = _data_error
    for exc_type in UNAVAILABLE:
        mapping[exc_type] = _unavailable
    mapping[Exception] = _internal
    return mapping
